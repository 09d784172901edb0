#!/usr/bin/env bash
# TLS side by side: nginx (tuned, the same OpenSSL 3 library) and graygate with the same
# ECDSA P-256 certificate, in front of the same nginx backends, per CPU-second of the proxy:
#   handshakes  a new TLS 1.3 connection per request (wrk, `Connection: close`)
#   keepalive   HTTP/1.1 keep-alive requests over TLS (wrk)
#   h2          HTTP/2 requests over TLS (h2load, CONNS connections, STREAMS streams each)
# Prints a markdown table; with KEEP=1 (the default) appends it to bench/RESULTS.md.
#
#   bench/tls.sh                              # DURATION=10 CONNS=64 STREAMS=10
#   DURATION=2 KEEP=0 bench/tls.sh            # a quick check, no file written
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-10}
KEEP=${KEEP:-1}
bench_setup
command -v h2load >/dev/null || { echo "h2load missing (scripts/deps.sh --bench)" >&2; exit 1; }

B1=19101 B2=19102
start_backends $B1 $B2
PORT=18443

# A test CA and one P-256 certificate for localhost, shared by both proxies.
openssl ecparam -name prime256v1 -genkey -noout -out "$W/ca.key"
openssl req -x509 -new -key "$W/ca.key" -subj "/CN=bench CA" -days 2 -out "$W/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$W/site.key"
openssl req -new -key "$W/site.key" -subj "/CN=localhost" -out "$W/site.csr" 2>/dev/null
echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$W/site.ext"
openssl x509 -req -in "$W/site.csr" -CA "$W/ca.crt" -CAkey "$W/ca.key" -CAcreateserial \
  -days 2 -extfile "$W/site.ext" -out "$W/site.crt" 2>/dev/null

start_nginx_tls() {
  local conf="$W/nginx-tls.conf"
  cat >"$conf" <<NGX
pid $W/nginx-tls.pid;
error_log $W/nginx-tls.error.log;
worker_processes 1;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  upstream balance { ip_hash; server 127.0.0.1:$B1; server 127.0.0.1:$B2; keepalive 64; }
  server {
    listen 127.0.0.1:$PORT ssl http2 backlog=4096;
    ssl_certificate $W/site.crt;
    ssl_certificate_key $W/site.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    keepalive_requests 1000000;
    access_log $W/nginx-tls.access.log combined;
    location / { proxy_pass http://balance; proxy_http_version 1.1;
      proxy_set_header Connection ""; proxy_set_header X-Real-IP \$remote_addr; }
  }
}
NGX
  taskset -c "$PROXY_CPU" nginx -p "$W" -c "$conf"
  wait_port $PORT
  PROXY_PIDFILE="$W/nginx-tls.pid"
}

start_graygate_tls() {
  local conf="$W/graygate-tls.yaml"
  cat >"$conf" <<YAML
pid_file: $W/graygate-tls.pid
error_log: $W/graygate-tls.error.log
threads: 1
worker_connections: 20000
grace_period: 3s
shutdown_timeout: 3s
upstreams:
  balance:
    policy: ip_hash
    servers: [ { addr: "127.0.0.1:$B1" }, { addr: "127.0.0.1:$B2" } ]
servers:
  balance:
    listen: [ { addr: "127.0.0.1:$PORT", tls: { cert: $W/site.crt, key: $W/site.key } } ]
    keepalive_requests: 1000000
    access_log: $W/graygate-tls.access.log
    locations:
      - { match: /, proxy_pass: balance, proxy_set_header: { X-Real-IP: \$remote_addr } }
YAML
  taskset -c "$PROXY_CPU" "$GG" -c "$conf" 2>>"$W/graygate-tls.stderr" &
  wait_port $PORT
  for _ in $(seq 1 100); do [[ -s "$W/graygate-tls.pid" ]] && break; sleep 0.05; done
  PROXY_PIDFILE="$W/graygate-tls.pid"
}

URL="https://127.0.0.1:$PORT/"

# One load of kind $1; prints "requests cpu_ticks".
load() {
  local kind=$1 pid out reqs c0 c1
  pid=$(cat "$PROXY_PIDFILE")
  c0=$(cpu_ticks "$pid")
  case $kind in
    handshakes)
      out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" -H "Connection: close" "$URL")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out") ;;
    keepalive)
      out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "$URL")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out") ;;
    h2)
      out=$(taskset -c "$LOAD_CPU" h2load -c"$CONNS" -m"$STREAMS" -D"$DURATION" "$URL" 2>&1)
      reqs=$(awk '/^requests:/ {print $8}' <<<"$out") ;;   # "N succeeded"
  esac
  c1=$(cpu_ticks "$pid")
  local errs
  errs=$(awk '/Non-2xx|Socket errors|errored, [1-9]/ {print}' <<<"$out")
  [[ -n $errs ]] && echo "warning ($kind): $errs" >&2
  echo "${reqs:-0} $((c1 - c0))"
}

# The TLS versions and protocols really used, checked once per proxy.
check() {
  local v
  v=$(curl -sS --cacert "$W/ca.crt" --http2 -o /dev/null -w "%{http_version}" \
    --resolve "localhost:$PORT:127.0.0.1" "https://localhost:$PORT/")
  [[ $v == 2 ]] || { echo "expected HTTP/2 from $1, got $v" >&2; exit 1; }
  echo | openssl s_client -connect "127.0.0.1:$PORT" 2>/dev/null | grep -q "TLSv1.3" ||
    { echo "expected TLS 1.3 from $1" >&2; exit 1; }
}

declare -A PER_CPU
for proxy in nginx graygate; do
  case $proxy in
    nginx) start_nginx_tls ;;
    graygate) start_graygate_tls ;;
  esac
  check $proxy
  for kind in handshakes keepalive h2; do
    read -r reqs ticks < <(load $kind)
    per=$(awk -v r="$reqs" -v t="$ticks" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (t > 0 ? r / (t / hz) : 0) }')
    PER_CPU[$proxy.$kind]=$per
    echo "  $proxy $kind: $reqs requests, $per per CPU-second" >&2
  done
  stop_proxy
done

table="## TLS (ECDSA P-256, TLS 1.3), per CPU-second of the proxy

| load | nginx | graygate | graygate / nginx |
|---|---|---|---|"
for kind in handshakes keepalive h2; do
  n=${PER_CPU[nginx.$kind]} g=${PER_CPU[graygate.$kind]}
  ratio=$(awk -v g="$g" -v n="$n" 'BEGIN { printf "%.2f", (n > 0 ? g / n : 0) }')
  table+="
| $kind | $n | $g | ${ratio}x |"
done
table+="

handshakes: a new connection per request (wrk, \`Connection: close\`); keepalive: wrk over
TLS, $CONNS connections; h2: h2load, $CONNS connections x $STREAMS streams. ${DURATION}s each,
proxy on CPU $PROXY_CPU, load and backends on CPU $LOAD_CPU, same certificate and OpenSSL."
echo "$table"
if [[ $KEEP == 1 ]]; then
  printf "\n%s\n" "$table" >"$ROOT/bench/TLS.md"
fi
