#!/usr/bin/env bash
# Load-independent cost per request: instructions (callgrind's Ir) and allocator calls per
# request of the bare Pingora proxy (examples/bare_proxy.rs) and of graygate (ip_hash,
# X-Real-IP, combined access log), each run under `valgrind --tool=callgrind` for the same N
# sequential keep-alive GETs (bench/requests.py) after a warm-up. Unlike req/s, these counts
# do not move with the machine's load, so they compare builds on a busy machine.
#
#   bench/instructions.sh              # N=2000 WARM=500; prints a table, writes INSTRUCTIONS.md
#   KEEP=0 bench/instructions.sh       # no file
#   CG_KEEP=DIR bench/instructions.sh  # also keeps the callgrind files in DIR (for callgrind_annotate)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N=${N:-2000}
WARM=${WARM:-500}
command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed (scripts/deps.sh --bench)" >&2; exit 1; }
bench_setup
B1=19011 B2=19012 PORT=18090
start_backends $B1 $B2

# Waits for the first 200 from the proxy (slow to start under valgrind).
wait_ok() {
  for _ in $(seq 1 120); do
    [[ $(curl -s --max-time 30 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/") == 200 ]] && return 0
    sleep 1
  done
  echo "instructions: the proxy on $PORT did not answer" >&2
  return 1
}

# One contender: prints "instructions_per_request allocations_per_request".
count() {
  local name=$1 out="$W/cg-$1.out" pid
  local vg=(valgrind --tool=callgrind --callgrind-out-file="$out")
  case $name in
    bare-pingora|bare-pingora-timeouts)
      BARE_NGINX_TIMEOUTS=$([[ $name == bare-pingora-timeouts ]] && echo 1 || echo 0) "${vg[@]}" "$ROOT/target/release/examples/bare_proxy" $PORT 127.0.0.1:$B1 127.0.0.1:$B2 \
        >"$W/vg-$name.log" 2>&1 &
      pid=$! ;;
    graygate)
      # The worker alone: valgrind cannot follow the master's re-execution of itself.
      write_graygate_conf $PORT $B1 $B2
      python3 "$ROOT/bench/launch_worker.py" 127.0.0.1:$PORT "$GG_CONF" \
        "${vg[@]}" "$GG" --worker -c "$GG_CONF" >"$W/vg-$name.log" 2>&1 &
      pid=$! ;;
  esac
  wait_ok
  python3 "$ROOT/bench/requests.py" $PORT "$WARM"
  callgrind_control -z $pid >/dev/null
  python3 "$ROOT/bench/requests.py" $PORT "$N"
  callgrind_control -d $pid >/dev/null
  kill -TERM $pid 2>/dev/null || true
  wait $pid 2>/dev/null || true
  # The dump after zeroing is the only one with a part number of 1... (.1); the final one at exit is .
  local dump
  dump=$(ls "$out".* 2>/dev/null | head -1)
  [[ -n ${CG_KEEP:-} ]] && mkdir -p "$CG_KEEP" && cp "$dump" "$CG_KEEP/callgrind-$name.out"
  read -r ir allocs < <(python3 "$ROOT/bench/cgcount.py" "$dump")
  awk -v i="$ir" -v a="$allocs" -v n="$N" 'BEGIN { printf "%.0f %.2f\n", i / n, a / n }'
}

declare -A IR AL
NAMES=(bare-pingora bare-pingora-timeouts graygate)
for c in "${NAMES[@]}"; do
  read -r IR[$c] AL[$c] < <(count $c)
  echo "  $c: ${IR[$c]} instructions, ${AL[$c]} allocations per request" >&2
done
{
  echo "Instructions and allocations per request (callgrind, $N sequential keep-alive GETs over 4"
  echo "connections after $WARM warm-up; all threads of the proxy counted; \`bench/instructions.sh\`;"
  echo "bare-pingora-timeouts = the bare proxy with nginx's 60 s upstream connect/read/send timeouts, which"
  echo "graygate always sets: Pingora's timer for them is part of the gap):"
  echo
  echo "| proxy | instructions / request | allocations / request |"
  echo "|---|---|---|"
  for c in "${NAMES[@]}"; do echo "| $c | ${IR[$c]} | ${AL[$c]} |"; done
  echo "| graygate / bare Pingora with the same upstream timeouts | $(awk -v a="${IR[graygate]}" -v b="${IR[bare-pingora-timeouts]}" 'BEGIN { printf "%.2f", a / b }') | $(awk -v a="${AL[graygate]}" -v b="${AL[bare-pingora-timeouts]}" 'BEGIN { printf "%+.2f", a - b }') |"
  echo "| graygate / bare Pingora | $(awk -v a="${IR[graygate]}" -v b="${IR[bare-pingora]}" 'BEGIN { printf "%.2f", a / b }') | $(awk -v a="${AL[graygate]}" -v b="${AL[bare-pingora]}" 'BEGIN { printf "%+.2f", a - b }') |"
} | tee "$ROOT/bench/INSTRUCTIONS.md.new"
if [[ ${KEEP:-1} == 1 ]]; then
  mv "$ROOT/bench/INSTRUCTIONS.md.new" "$ROOT/bench/INSTRUCTIONS.md"
else
  rm -f "$ROOT/bench/INSTRUCTIONS.md.new"
fi
