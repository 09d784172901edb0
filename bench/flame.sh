#!/usr/bin/env bash
# CPU flame graphs of graygate and the bare Pingora proxy under the same wrk load:
# `perf record -e cpu-clock` (no hardware counters needed) with DWARF call graphs of the proxy
# process for FLAME_SECONDS (default 8), folded and drawn by bench/flame.py into
# bench/flame-graygate.svg and bench/flame-bare.svg, then bench/profile_us.py turns both profiles
# into microseconds per request, function by function (bench/PROFILE.md): each profile's share of
# samples times the proxy's CPU time per request, measured just before without perf attached.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
FLAME_SECONDS=${FLAME_SECONDS:-8}
bench_setup
B1=19051 B2=19052 PORT=18085
start_backends $B1 $B2
profile() {
  local name=$1 pid
  pid=$(cat "$PROXY_PIDFILE")
  # The worker: graygate's master only waits; the bare proxy is one process.
  local w
  # graygate's master forks its worker after binding: wait for it.
  for _ in $(seq 1 100); do
    w=$(pgrep -P "$pid" | head -1 || true)
    [[ -n $w || $name == bare ]] && break
    sleep 0.05
  done
  [[ -n $w ]] || w=$pid
  taskset -c "$LOAD_CPU" wrk -t1 -c64 -d2s "http://127.0.0.1:$PORT/" >/dev/null
  # CPU per request without perf attached (perf's own sampling cost lands in the process's
  # system time): requests / (utime + stime) of the worker over a plain wrk run.
  local u0 u1 out reqs
  u0=$(awk '{print $14 + $15}' "/proc/$w/stat")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d${FLAME_SECONDS}s "http://127.0.0.1:$PORT/")
  u1=$(awk '{print $14 + $15}' "/proc/$w/stat")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  RATE[$name]=$(awk -v r="$reqs" -v c="$((u1 - u0))" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", r / (c / hz) }')
  echo "  $name: ${RATE[$name]} requests per CPU-second without perf" >&2
  taskset -c "$LOAD_CPU" wrk -t1 -c64 -d$((FLAME_SECONDS + 2))s "http://127.0.0.1:$PORT/" >/dev/null &
  local wrk=$!
  sleep 1
  perf record -q -e cpu-clock -F 499 --call-graph dwarf,16384 -p "$w" -o "$W/$name.data" -- sleep "$FLAME_SECONDS" 2>/dev/null
  wait $wrk
  perf script -i "$W/$name.data" -F ip,sym,dso 2>/dev/null >"$W/$name.txt"
  python3 "$ROOT/bench/flame.py" --folded <"$W/$name.txt" >"$W/flame-$name.folded"
  python3 "$ROOT/bench/flame.py" "$name under wrk -c64 (perf -e cpu-clock)" <"$W/$name.txt" >"$ROOT/bench/flame-$name.svg"
  echo "  $name: bench/flame-$name.svg ($(awk '{s += $NF} END {print s}' "$W/flame-$name.folded") samples)" >&2
}
declare -A RATE
start_graygate $PORT $B1 $B2
profile graygate
stop_proxy
start_bare $PORT $B1 $B2
profile bare
stop_proxy
{
  echo "# Where graygate's extra CPU per request goes (issue 20, goal 1)"
  echo
  echo "Made by \`bench/flame.sh\` on $(date -u +%F): $(nproc) cores, $(uname -r); proxy pinned to CPU $PROXY_CPU,"
  echo "wrk -t1 -c64 on CPU $LOAD_CPU; \`perf record -e cpu-clock -F 499 --call-graph dwarf\` of the worker for"
  echo "${FLAME_SECONDS} s; microseconds = share of samples x CPU per request measured without perf."
  echo "Flame graphs: bench/flame-graygate.svg, bench/flame-bare.svg."
  echo
  python3 "$ROOT/bench/profile_us.py" "$W/graygate.txt" "${RATE[graygate]}" "$W/bare.txt" "${RATE[bare]}" 30
} >"$ROOT/bench/PROFILE.md"
echo "  bench/PROFILE.md" >&2
