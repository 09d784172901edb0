#!/usr/bin/env bash
# Side-by-side throughput: nginx with the seed's config, nginx tuned (access log on and off),
# a bare Pingora proxy (examples/bare_proxy.rs) and graygate (access log on and off), each in
# front of the same two nginx backends, in turn, ROUNDS rounds, one run. Prints a markdown
# table and writes it to bench/RESULTS.md.
#
#   bench/run.sh                 # DURATION=10 ROUNDS=2 CONNS=64 by default
#   CONTENDERS="bare-pingora graygate" IDLE=0 POOLS= KEEP=0 bench/run.sh  # a subset, no file
#   IDLE=10000 bench/run.sh      # also RSS with that many idle keep-alive connections
#   POOLS="2 64 1024" bench/run.sh  # also throughput with pools of those sizes
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNS=${CONNS:-64}
IDLE=${IDLE-10000}
POOLS=${POOLS-2 64 1024}
bench_setup

B1=19001 B2=19002
start_backends $B1 $B2
PORT=18080

# One measurement: prints "rps p50 p99 req_per_cpu_s peak_rss_kb user_share".
measure() {
  local port=$1 pid
  pid=$(cat "$PROXY_PIDFILE")
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null
  local u0 s0
  read -r u0 s0 < <(utime_stime "$pid")
  local out
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/")
  local u1 s1
  read -r u1 s1 < <(utime_stime "$pid")
  local reqs rps p50 p99 errs
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(to_ms "$(awk '$1=="50%" {print $2}' <<<"$out")")
  p99=$(to_ms "$(awk '$1=="99%" {print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx|Socket errors/ {print}' <<<"$out")
  [[ -n $errs ]] && echo "warning: $errs" >&2
  local cpu=$(( (u1 - u0) + (s1 - s0) ))
  local per_cpu user_pct
  per_cpu=$(awk -v r="$reqs" -v c="$cpu" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (c > 0 ? r / (c / hz) : 0) }')
  user_pct=$(awk -v u="$((u1 - u0))" -v c="$cpu" 'BEGIN { printf "%.0f", (c > 0 ? 100 * u / c : 0) }')
  echo "$rps $p50 $p99 $per_cpu $(mem_kb "$pid" VmHWM) $user_pct"
}

utime_stime() {
  local u=0 s=0
  for p in $(tree_pids "$1"); do
    [[ -r /proc/$p/stat ]] || continue
    local f
    f=$(sed 's/.*) //' "/proc/$p/stat")
    set -- $f
    u=$((u + ${12})); s=$((s + ${13}))
  done
  echo "$u $s"
}

declare -A SUM_RPS SUM_CPU BEST_P50 BEST_P99 RSS USER N
run_one() {
  local name=$1
  case $name in
    nginx-seed) start_nginx_proxy $PORT seed $B1 $B2 ;;
    nginx-tuned) start_nginx_proxy $PORT tuned $B1 $B2 ;;
    nginx-tuned-nolog) ACCESS_LOG=off start_nginx_proxy $PORT tuned $B1 $B2 ;;
    bare-pingora) start_bare $PORT $B1 $B2 ;;
    graygate) start_graygate $PORT $B1 $B2 ;;
    graygate-nolog) ACCESS_LOG=off start_graygate $PORT $B1 $B2 ;;
    graygate-metrics) METRICS=on start_graygate $PORT $B1 $B2 ;;
    # Issue 20, goal 5: two worker threads / processes, nothing pinned (both CPUs allowed).
    nginx-tuned-2t) THREADS=2 PROXY_CPU=0,1 start_nginx_proxy $PORT tuned $B1 $B2 ;;
    graygate-2t) THREADS=2 PROXY_CPU=0,1 start_graygate $PORT $B1 $B2 ;;
  esac
  local r
  r=$(measure $PORT)
  stop_proxy
  read -r rps p50 p99 per_cpu rss user <<<"$r"
  echo "  $name: $rps req/s, p50 ${p50}ms, p99 ${p99}ms, $per_cpu req/CPU-s, user ${user}%, peak RSS ${rss} kB" >&2
  SUM_RPS[$name]=$(awk -v a="${SUM_RPS[$name]:-0}" -v b="$rps" 'BEGIN {print a + b}')
  SUM_CPU[$name]=$(( ${SUM_CPU[$name]:-0} + per_cpu ))
  BEST_P50[$name]=$(awk -v a="${BEST_P50[$name]:-999999}" -v b="$p50" 'BEGIN {print (b < a ? b : a)}')
  BEST_P99[$name]=$(awk -v a="${BEST_P99[$name]:-999999}" -v b="$p99" 'BEGIN {print (b < a ? b : a)}')
  RSS[$name]=$rss
  USER[$name]=$user
  N[$name]=$(( ${N[$name]:-0} + 1 ))
}

# nginx-tuned-nolog and graygate-nolog: the same with `access_log off` (issue 20, goal 2);
# bare-pingora: round robin, X-Real-IP, no log, mimalloc, graygate's release profile (goal 1).
# graygate-metrics: with an admin listener, so every request is counted (issue 15: <= 3%).
# nginx-tuned-2t and graygate-2t: `worker_processes 2` / `threads: 2`, not pinned (goal 5).
read -r -a NAMES <<<"${CONTENDERS:-nginx-seed nginx-tuned nginx-tuned-nolog bare-pingora graygate graygate-nolog graygate-metrics nginx-tuned-2t graygate-2t}"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  for n in "${NAMES[@]}"; do run_one "$n"; done
done

avg() { awk -v s="$1" -v n="$2" 'BEGIN { printf "%.0f", s / n }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

declare -A AVG_RPS AVG_CPU
for n in "${NAMES[@]}"; do
  AVG_RPS[$n]=$(avg "${SUM_RPS[$n]}" "${N[$n]}")
  AVG_CPU[$n]=$(avg "${SUM_CPU[$n]}" "${N[$n]}")
done
# One row of the ratio table, "a / b", if both ran.
ratio_row() {
  local a=$1 b=$2 label=$3
  [[ -n ${AVG_RPS[$a]:-} && -n ${AVG_RPS[$b]:-} ]] || return 0
  echo "| $label | $(ratio "${AVG_RPS[$a]}" "${AVG_RPS[$b]}") | $(ratio "${AVG_CPU[$a]}" "${AVG_CPU[$b]}") |"
}

# Idle keep-alive connections: RSS of each proxy holding IDLE of them.
idle_rss() {
  local port=$1 pid
  pid=$(cat "$PROXY_PIDFILE")
  python3 "$ROOT/bench/idle_conns.py" "$port" "$IDLE" "$W/idle.ready" &
  local py=$!
  for _ in $(seq 1 600); do [[ -f $W/idle.ready ]] && break; sleep 0.1; done
  local rss
  rss=$(mem_kb "$pid" VmRSS)
  kill $py 2>/dev/null || true
  wait $py 2>/dev/null || true
  rm -f "$W/idle.ready"
  echo "$rss"
}
declare -A IDLE_RSS BASE_RSS
if [[ $IDLE -gt 0 ]]; then
  for n in nginx-tuned bare-pingora graygate; do
    case $n in
      nginx-tuned) start_nginx_proxy $PORT tuned $B1 $B2 ;;
      bare-pingora) start_bare $PORT $B1 $B2 ;;
      graygate) start_graygate $PORT $B1 $B2 ;;
    esac
    BASE_RSS[$n]=$(mem_kb "$(cat "$PROXY_PIDFILE")" VmRSS)
    IDLE_RSS[$n]=$(idle_rss $PORT)
    echo "  $n: RSS ${BASE_RSS[$n]} kB idle, ${IDLE_RSS[$n]} kB with $IDLE keep-alive connections" >&2
    stop_proxy
  done
fi

# Pool sizes: round robin over N backend ports (ip_hash from one client always picks one).
declare -A POOL_GG POOL_NG
if [[ -n $POOLS ]]; then
  pkill -F "$W/backends.pid" 2>/dev/null || kill "$(cat "$W/backends.pid")"
  sleep 0.5
  maxn=0
  for n in $POOLS; do ((n > maxn)) && maxn=$n; done
  mapfile -t ALLP < <(seq 20001 $((20000 + maxn)))
  start_backends "${ALLP[@]}"
  for n in $POOLS; do
    ports=("${ALLP[@]:0:$n}")
    POLICY=round_robin start_nginx_proxy $PORT tuned "${ports[@]}"
    read -r rps _ _ per_cpu _ _ <<<"$(measure $PORT)"; POOL_NG[$n]="$rps $per_cpu"; stop_proxy
    POLICY=round_robin start_graygate $PORT "${ports[@]}"
    read -r rps _ _ per_cpu _ _ <<<"$(measure $PORT)"; POOL_GG[$n]="$rps $per_cpu"; stop_proxy
    echo "  pool $n: nginx ${POOL_NG[$n]}, graygate ${POOL_GG[$n]} (req/s, req/CPU-s)" >&2
  done
fi

{
  echo "# Benchmark results"
  echo
  echo "Made by \`bench/run.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r), $(nginx -v 2>&1 | sed 's/.*: //')."
  echo "Proxy pinned to CPU $PROXY_CPU with one worker (graygate \`threads: 1\`); two nginx backends (9-byte body) and"
  echo "wrk (\`-t1 -c$CONNS -d${DURATION}s\`) on CPU $LOAD_CPU; $ROUNDS rounds, the contenders in turn; averages of"
  echo "req/s and requests per CPU-second (user+system time of the proxy's processes from /proc), best p50/p99."
  echo "Features on everywhere: ip_hash over two servers, \`X-Real-IP \$remote_addr\`, combined access log."
  echo "nginx seed = the seed's config (no upstream keep-alive); nginx tuned = \`keepalive 64\`, HTTP/1.1 upstream;"
  echo "\`-nolog\` = the same with the access log off; bare-pingora = \`examples/bare_proxy.rs\` (Pingora \`ProxyHttp\`,"
  echo "\`LoadBalancer<RoundRobin>\`, X-Real-IP, no log, mimalloc, graygate's release profile, one thread);"
  echo "\`-2t\` = \`worker_processes 2\` / \`threads: 2\` with the proxy not pinned (either CPU)."
  echo
  echo "| proxy | req/s | p50 ms | p99 ms | req per CPU-s | user CPU % | peak RSS kB |"
  echo "|---|---|---|---|---|---|---|"
  for n in "${NAMES[@]}"; do
    echo "| $n | $(avg "${SUM_RPS[$n]}" "${N[$n]}") | ${BEST_P50[$n]} | ${BEST_P99[$n]} | $(avg "${SUM_CPU[$n]}" "${N[$n]}") | ${USER[$n]} | ${RSS[$n]} |"
  done
  echo
  echo "| ratio | req/s | req per CPU-s |"
  echo "|---|---|---|"
  ratio_row graygate nginx-tuned "graygate / nginx tuned"
  ratio_row graygate nginx-seed "graygate / nginx seed"
  ratio_row bare-pingora nginx-tuned "bare Pingora / nginx tuned"
  ratio_row graygate bare-pingora "graygate / bare Pingora (goal >= 0.95 per CPU-s)"
  ratio_row graygate graygate-nolog "graygate log on / off"
  ratio_row graygate-metrics graygate "graygate metrics on / off (goal >= 0.97 per CPU-s)"
  ratio_row nginx-tuned nginx-tuned-nolog "nginx tuned log on / off (goal: graygate's >= this)"
  ratio_row graygate-2t nginx-tuned-2t "graygate / nginx tuned, 2 threads / 2 workers, unpinned (goal: >= the one-core ratio)"
  if [[ $IDLE -gt 0 ]]; then
    echo
    echo "Idle keep-alive connections ($IDLE clients, one request each, then idle):"
    echo
    echo "| proxy | RSS before kB | RSS with $IDLE idle kB | per connection bytes |"
    echo "|---|---|---|---|"
    for n in nginx-tuned bare-pingora graygate; do
      echo "| $n | ${BASE_RSS[$n]} | ${IDLE_RSS[$n]} | $(awk -v a="${IDLE_RSS[$n]}" -v b="${BASE_RSS[$n]}" -v n="$IDLE" 'BEGIN { printf "%.0f", (a - b) * 1024 / n }') |"
    done
  fi
  if [[ -n $POOLS ]]; then
    echo
    echo "Pool size (round robin, \`keepalive 64\` for nginx):"
    echo
    echo "| servers | nginx req/s | nginx req/CPU-s | graygate req/s | graygate req/CPU-s | ratio per CPU-s |"
    echo "|---|---|---|---|---|---|"
    for n in $POOLS; do
      read -r nr nc <<<"${POOL_NG[$n]}"
      read -r gr gc <<<"${POOL_GG[$n]}"
      echo "| $n | $nr | $nc | $gr | $gc | $(ratio "$gc" "$nc") |"
    done
  fi
} | tee "$ROOT/bench/RESULTS.md.new"
if [[ ${KEEP:-1} == 1 ]]; then
  mv "$ROOT/bench/RESULTS.md.new" "$ROOT/bench/RUN.md"  # RESULTS.md holds the analysis
fi
