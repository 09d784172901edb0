#!/usr/bin/env bash
# The seed's app-server block, side by side: nginx and graygate (imported from the same nginx
# text with `graygate import-nginx`) serving a 1 KB and a 1 MB file from disk (`location
# ~/media/ { root ...; }`) and passing the rest to one uWSGI app (`uwsgi_pass`), in turn,
# ROUNDS rounds, one run. Prints a markdown table and writes it to bench/SEED.md.
#
#   bench/seed.sh                # DURATION=10 ROUNDS=2 CONNS=64 by default
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-64}
bench_setup

mkdir -p "$W/static/media" "$W/www"
# mktemp -d is 0700: nginx's worker (nobody) would answer 403 for every file.
chmod 755 "$W"
head -c 1024 /dev/urandom >"$W/static/media/1k.bin"
head -c 1048576 /dev/urandom >"$W/static/media/1m.bin"
cp /etc/nginx/uwsgi_params /etc/nginx/mime.types "$W/"
cat >"$W/app.py" <<'PY'
def application(env, start):
    start("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"hello-9b\n"]
PY
APP=19101
# The app on the load CPU, as the backends of bench/run.sh: it is the same for both contenders.
taskset -c "$LOAD_CPU" uwsgi --plugin python3 --need-app --disable-logging --processes 1 \
  --socket "127.0.0.1:$APP" --wsgi-file "$W/app.py" --pidfile "$W/uwsgi.pid" \
  >"$W/uwsgi.log" 2>&1 &
wait_port $APP
PORT=18090

# The seed's block (Step 2), with its ports and paths made local.
server_block() {
  cat <<NGX
server {
listen 127.0.0.1:$PORT backlog=4096;
location / {
add_header Access-Control-Allow-Origin *;
root $W/www/;
include uwsgi_params;
uwsgi_pass 127.0.0.1:$APP;
uwsgi_read_timeout 360;
}
location ~/media/{
root $W/static/;
}
location = /favicon.ico {
log_not_found off;
}
access_log $W/seed.access.log;
error_log $W/seed.error.log;
}
NGX
}
server_block >"$W/seed.conf"

start_nginx_seed() {
  cat >"$W/nginx-seed.conf" <<NGX
pid $W/nginx-seed.pid;
error_log $W/nginx.error.log;
worker_processes 1;
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  include mime.types;
  default_type application/octet-stream;
  sendfile on;
  include seed.conf;
}
NGX
  taskset -c "$PROXY_CPU" nginx -p "$W" -c "$W/nginx-seed.conf"
  wait_port "$PORT"
  for _ in $(seq 1 100); do [[ -s "$W/nginx-seed.pid" ]] && break; sleep 0.05; done
  PROXY_PIDFILE="$W/nginx-seed.pid"
}

start_graygate_seed() {
  {
    echo "pid_file: $W/graygate-seed.pid"
    echo "upgrade_sock: $W/graygate-seed.sock"
    echo "error_log: $W/graygate.error.log"
    echo "threads: 1"
    echo "worker_connections: 20000"
    echo "grace_period: 3s"
    echo "shutdown_timeout: 3s"
    "$GG" import-nginx "$W/seed.conf" 2>>"$W/import.stderr"
  } >"$W/graygate-seed.yaml"
  taskset -c "$PROXY_CPU" "$GG" -c "$W/graygate-seed.yaml" 2>>"$W/graygate.stderr" &
  wait_port "$PORT"
  # -s, not -f: the master creates the file before it writes its pid into it (a CPU sample
  # read from the empty file counted no ticks).
  for _ in $(seq 1 100); do [[ -s "$W/graygate-seed.pid" ]] && break; sleep 0.05; done
  PROXY_PIDFILE="$W/graygate-seed.pid"
}

# One measurement of PATH: prints "rps req_per_cpu_s mbytes_per_s".
measure() {
  local path=$1 pid out c0 c1 reqs rps cpu
  pid=$(cat "$PROXY_PIDFILE")
  [[ -n $pid ]] || { echo "no pid in $PROXY_PIDFILE" >&2; exit 1; }
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT$path" >/dev/null
  c0=$(cpu_ticks "$pid")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$PORT$path")
  c1=$(cpu_ticks "$pid")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  grep -q "Non-2xx\|Socket errors" <<<"$out" && echo "warning: $path: $(grep 'Non-2xx\|Socket errors' <<<"$out")" >&2
  cpu=$((c1 - c0))
  echo "$rps $(awk -v r="$reqs" -v c="$cpu" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (c > 0 ? r / (c / hz) : 0) }')"
}

CASES=("/media/1k.bin" "/media/1m.bin" "/app")
declare -A RPS CPU
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  for who in nginx graygate; do
    case $who in
      nginx) start_nginx_seed ;;
      graygate) start_graygate_seed ;;
    esac
    for c in "${CASES[@]}"; do
      read -r rps per_cpu <<<"$(measure "$c")"
      echo "  $who $c: $rps req/s, $per_cpu req/CPU-s" >&2
      RPS[$who$c]=$(awk -v a="${RPS[$who$c]:-0}" -v b="$rps" 'BEGIN {print a + b}')
      CPU[$who$c]=$(( ${CPU[$who$c]:-0} + per_cpu ))
    done
    stop_proxy
  done
done

avg() { awk -v s="$1" -v n="$ROUNDS" 'BEGIN { printf "%.0f", s / n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
{
  echo "# The seed's app server: static files and uWSGI"
  echo
  echo "Made by \`bench/seed.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores, $(nginx -v 2>&1 | sed 's/.*: //'), uWSGI $(uwsgi --version)."
  echo "The seed's app-server block (CORS header, \`location ~/media/ { root }\`, \`uwsgi_pass\`) under nginx"
  echo "(\`sendfile on\`, one worker) and under graygate (\`import-nginx\` of the same text, \`threads: 1\`),"
  echo "each pinned to CPU $PROXY_CPU; uWSGI (one process, a 9-byte answer) and wrk (\`-t1 -c$CONNS -d${DURATION}s\`)"
  echo "on CPU $LOAD_CPU; $ROUNDS rounds; averages. Access log on (combined) for both."
  echo
  echo "| request | nginx req/s | nginx req/CPU-s | graygate req/s | graygate req/CPU-s | graygate / nginx per CPU-s |"
  echo "|---|---|---|---|---|---|"
  for c in "${CASES[@]}"; do
    label=$c
    case $c in
      /media/1k.bin) label="static 1 KB" ;;
      /media/1m.bin) label="static 1 MB" ;;
      /app) label="uwsgi_pass (9-byte app)" ;;
    esac
    nc=$(avg "${CPU[nginx$c]}"); gc=$(avg "${CPU[graygate$c]}")
    echo "| $label | $(avg "${RPS[nginx$c]}") | $nc | $(avg "${RPS[graygate$c]}") | $gc | $(ratio "$gc" "$nc") |"
  done
} | tee "$ROOT/bench/SEED.md.new"
if [[ ${KEEP:-1} == 1 ]]; then
  mv "$ROOT/bench/SEED.md.new" "$ROOT/bench/SEED.md"
fi
