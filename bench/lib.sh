# Shared helpers for the benchmark scripts (sourced).
# Pinning: the proxy under test runs on CPU 0; backends and wrk on CPU 1 (2-core machine).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GG="$ROOT/target/release/graygate"
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
CLK_TCK=$(getconf CLK_TCK)

bench_setup() {
  "$ROOT/scripts/deps.sh" --bench
  (cd "$ROOT" && cargo build --release --quiet --bins --example bare_proxy)
  W=$(mktemp -d /tmp/graygate-bench.XXXXXX)
  ulimit -n 65536 2>/dev/null || true
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for f in "$W"/*.pid; do
    [[ -f $f ]] && kill "$(cat "$f")" 2>/dev/null || true
  done
  pkill -f "$W/" 2>/dev/null || true
  sleep 0.5
}

wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  return 1
}

# nginx backends answering a 9-byte body on the given ports, on the load CPU.
start_backends() {
  local conf="$W/backends.conf" ports=("$@")
  {
    echo "pid $W/backends.pid; error_log $W/backends.error.log; worker_processes 1;"
    echo "events { worker_connections 65536; }"
    echo "http { access_log off; keepalive_requests 100000;"
    echo "  server {"
    for p in "${ports[@]}"; do echo "    listen 127.0.0.1:$p;"; done
    echo "    location / { return 200 \"hello-9b\\n\"; } }"
    echo "}"
  } >"$conf"
  taskset -c "$LOAD_CPU" nginx -p "$W" -c "$conf"
  wait_port "${ports[0]}"
}

# An nginx proxy on $1 (port) with upstream servers $3... ; $2 = seed | tuned.
start_nginx_proxy() {
  local port=$1 kind=$2; shift 2
  local conf="$W/nginx-$kind-$port.conf" servers="" ka="" loc_extra=""
  for p in "$@"; do servers+="server 127.0.0.1:$p weight=1; "; done
  if [[ $kind == tuned ]]; then
    ka="keepalive 64;"
    loc_extra="proxy_http_version 1.1; proxy_set_header Connection \"\";"
  fi
  local policy="ip_hash;"
  [[ ${POLICY:-ip_hash} == round_robin ]] && policy=""
  cat >"$conf" <<NGX
pid $W/nginx-$kind-$port.pid;
error_log $W/nginx-$kind.error.log;
worker_processes ${THREADS:-1};
worker_rlimit_nofile 65536;
events { worker_connections 65536; }
http {
  upstream balance { $policy $servers $ka }
  server {
    listen 127.0.0.1:$port backlog=4096;
    access_log ${ACCESS_LOG:-$W/nginx-$kind.access.log combined};
    error_log $W/nginx-$kind.balance.error.log;
    location / { proxy_pass http://balance; proxy_set_header X-Real-IP \$remote_addr; $loc_extra }
  }
}
NGX
  taskset -c "$PROXY_CPU" nginx -p "$W" -c "$conf"
  wait_port "$port"
  PROXY_PIDFILE="$W/nginx-$kind-$port.pid"
}

# graygate on $1 (port) with upstream servers $2...
start_graygate() {
  local port=$1
  write_graygate_conf "$@"
  taskset -c "$PROXY_CPU" "$GG" -c "$GG_CONF" 2>>"$W/graygate.stderr" &
  wait_port "$port"
  for _ in $(seq 1 100); do [[ -s "$W/graygate-$port.pid" ]] && break; sleep 0.05; done
  PROXY_PIDFILE="$W/graygate-$port.pid"
}

# The bench's graygate config for $1 (port) and upstream servers $2... in $GG_CONF.
write_graygate_conf() {
  local port=$1; shift
  local conf="$W/graygate-$port.yaml"
  {
    echo "pid_file: $W/graygate-$port.pid"
    echo "upgrade_sock: $W/graygate-$port.sock"
    echo "error_log: $W/graygate.error.log"
    echo "threads: ${THREADS:-1}"
    echo "work_stealing: ${WORK_STEALING:-true}"
    echo "worker_connections: 20000"   # the idle test holds 10,000 (the default is 4096)
    echo "grace_period: 3s"
    echo "shutdown_timeout: 3s"
    # Metrics are recorded only with an admin listener (nobody could read them otherwise).
    [[ ${METRICS:-} == on ]] && echo "admin: { listen: \"127.0.0.1:$((port + 1000))\" }"
    echo "upstreams:"
    echo "  balance:"
    echo "    policy: ${POLICY:-ip_hash}"
    echo "    servers:"
    for p in "$@"; do echo "      - { addr: \"127.0.0.1:$p\", weight: 1 }"; done
    echo "servers:"
    echo "  balance:"
    echo "    listen: [\"127.0.0.1:$port\"]"
    echo "    access_log: ${ACCESS_LOG:-$W/graygate.access.log}"
    echo "    error_log: $W/graygate.balance.error.log"
    echo "    locations:"
    echo "      - match: /"
    echo "        proxy_pass: balance"
    echo "        proxy_set_header: { X-Real-IP: \$remote_addr }"
  } >"$conf"
  GG_CONF="$conf"
}

# examples/bare_proxy.rs (a bare Pingora ProxyHttp, round robin) on $1 (port) with upstream
# servers $2...
start_bare() {
  local port=$1; shift
  local addrs=()
  for p in "$@"; do addrs+=("127.0.0.1:$p"); done
  taskset -c "$PROXY_CPU" "$ROOT/target/release/examples/bare_proxy" "$port" "${addrs[@]}" \
    2>>"$W/bare.stderr" &
  echo $! >"$W/bare-$port.pid"
  wait_port "$port"
  PROXY_PIDFILE="$W/bare-$port.pid"
}

# Pids of a process and all its descendants.
tree_pids() {
  local p=$1
  echo "$p"
  for c in $(pgrep -P "$p" 2>/dev/null); do tree_pids "$c"; done
}

# utime+stime ticks of a process tree.
cpu_ticks() {
  local t=0
  for p in $(tree_pids "$1"); do
    [[ -r /proc/$p/stat ]] || continue
    local f
    f=$(sed 's/.*) //' "/proc/$p/stat")
    set -- $f
    t=$((t + ${12} + ${13}))
  done
  echo $t
}

# Sum of VmHWM (peak RSS, kB) or VmRSS over a process tree.
mem_kb() {
  local field=$2 t=0
  for p in $(tree_pids "$1"); do
    local v
    v=$(awk -v f="$field:" '$1==f {print $2}' "/proc/$p/status" 2>/dev/null || true)
    t=$((t + ${v:-0}))
  done
  echo $t
}

stop_proxy() {
  local pid
  pid=$(cat "$PROXY_PIDFILE" 2>/dev/null || true)
  [[ -n $pid ]] && kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
}

# Converts wrk latency like 1.23ms / 456.00us / 1.02s to milliseconds.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
    else printf "%s", v }'
}
