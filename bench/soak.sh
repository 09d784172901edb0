#!/usr/bin/env bash
# Soak: graygate under mixed and hostile clients while its backends fail and restart and it is
# reloaded, upgraded and its logs rotated. See bench/SOAK.md.
#
#   bench/soak.sh                    # 10 minutes
#   SOAK_SECONDS=120 bench/soak.sh   # a short trial
#
# Every 10 s: requests sent, unexpected failures, RSS and fds of the master and the workers,
# access log lines vs requests sent. At the end: the summary and a PASS/FAIL verdict (exit 1).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
SOAK_SECONDS=${SOAK_SECONDS:-600}
# RSS and fds are compared from the first sample after warm-up to the last one.
WARMUP=${SOAK_WARMUP:-$((SOAK_SECONDS >= 300 ? 60 : 30))}
WRK_CONNS=${SOAK_WRK_CONNS:-16}
WRK_DELAY_MS=${SOAK_WRK_DELAY_MS:-20}
bench_setup
B=$ROOT/bench
mkdir -p "$W/logs"
PORT=18090 BA=19101 BB=19102
CONF=$W/graygate.yaml

# The gateway's config; $1 = weight of the first server (reloads alternate 1 and 2).
# max_fails 0: the injected resets would otherwise rest both servers (as in nginx) and turn
# the 1% into "no live upstreams" for everybody; failed servers are still retried.
write_conf() {
  cat >"$CONF.tmp" <<YAML
pid_file: $W/gg.pid
error_log: $W/logs/error.log
threads: 1
upstreams:
  app:
    policy: ip_hash
    servers:
      - { addr: "127.0.0.1:$BA", weight: $1, max_fails: 0 }
      - { addr: "127.0.0.1:$BB", weight: 1, max_fails: 0 }
servers:
  soak:
    listen: ["127.0.0.1:$PORT"]
    access_log: $W/logs/access.log
    error_log: $W/logs/soak.error.log
    locations:
      - match: /
        proxy_pass: app
        proxy_set_header: { X-Real-IP: \$remote_addr }
YAML
  mv "$CONF.tmp" "$CONF"
}

# Backends: graceful restart = SIGTERM (stop listening, close idle, finish in flight), then
# a new process on the same port once the old one has let go of it.
start_backend() {
  taskset -c "$LOAD_CPU" python3 "$B/soak_backend.py" "$1" "b$1" >>"$W/backend.out" 2>&1 &
  echo $! >"$W/backend-$1.pid"
  wait_port "$1"
}
restart_backend() {
  kill -TERM "$(cat "$W/backend-$1.pid")"
  for _ in $(seq 1 40); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null || break
    sleep 0.05
  done
  start_backend "$1"
}

T0=$(date +%s)
now() { echo $(($(date +%s) - T0)); }
# A control command in the background, one line in events.log: T NAME RC OUTPUT.
declare -A OPPID
op() {
  local name=$1; shift
  if [[ -n ${OPPID[$name]:-} ]] && kill -0 "${OPPID[$name]}" 2>/dev/null; then
    echo "$(now) $name busy previous-still-running" >>"$W/events.log"
    return
  fi
  (
    out=$("$@" 2>&1) && rc=0 || rc=$?
    echo "$(now) $name $rc $(tr '\n' ' ' <<<"$out")" >>"$W/events.log"
  ) &
  OPPID[$name]=$!
}
# Log rotation as logrotate does it: rename, then reopen. $1 = the rotation's number.
rotate() {
  for f in access.log error.log soak.error.log; do
    [[ -f $W/logs/$f ]] && mv "$W/logs/$f" "$W/logs/$f.$1"
  done
  "$GG" -s reopen -c "$CONF"
}

write_conf 1
start_backend $BA
start_backend $BB
taskset -c "$PROXY_CPU" "$GG" -c "$CONF" 2>>"$W/logs/stderr" &
wait_port $PORT
for _ in $(seq 1 100); do [[ -s $W/gg.pid ]] && break; sleep 0.05; done

echo "soak: ${SOAK_SECONDS}s, work dir $W" >&2
taskset -c "$LOAD_CPU" python3 "$B/soak_client.py" $PORT "$W/client.json" "$W/failures.jsonl" \
  2>>"$W/client.stderr" &
CLIENT=$!
taskset -c "$LOAD_CPU" wrk -t1 -c"$WRK_CONNS" -d"${SOAK_SECONDS}s" --timeout 30s \
  -s "$B/soak_wrk.lua" "http://127.0.0.1:$PORT/" -- "$W/wrk.json" "$WRK_DELAY_MS" \
  $((T0 + SOAK_SECONDS - 3)) \
  >"$W/wrk.out" 2>&1 &
WRK=$!

# The schedule, offset so that the 10 s samples fall outside an upgrade's overlap:
# reload at :05 of every 10 s, reopen at :15/:45, upgrade at :02 of every minute,
# backend A restarts at :20, backend B at :50.
next=0 weight=1 rot=0
while ((next <= SOAK_SECONDS)); do
  t=$(now)
  while ((next <= t && next <= SOAK_SECONDS)); do
    s=$next
    next=$((next + 1))
    ((s == 0)) && continue
    if ((s % 10 == 0)); then python3 "$B/soak_report.py" sample "$W" "$s"; fi
    if ((s % 10 == 5)); then
      weight=$((3 - weight))
      write_conf $weight
      op reload "$GG" -s reload -c "$CONF"
    fi
    if ((s % 30 == 15)); then
      rot=$((rot + 1))
      op reopen rotate $rot
    fi
    if ((s % 60 == 2)); then op upgrade "$GG" -s upgrade -c "$CONF"; fi
    if ((s % 60 == 20)); then op restart-a restart_backend $BA; fi
    if ((s % 60 == 50)); then op restart-b restart_backend $BB; fi
  done
  sleep 0.2
done

# Stop the load, let every command finish, stop graygate gracefully (its logs flush), count.
kill -TERM $CLIENT 2>/dev/null || true
wait $CLIENT || true
wait $WRK || true
for p in "${OPPID[@]}"; do wait "$p" 2>/dev/null || true; done
python3 "$B/soak_report.py" sample "$W" "$(now)" idle
master=$(cat "$W/gg.pid")
"$GG" -s quit -c "$CONF" || kill -QUIT "$master"
for _ in $(seq 1 900); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
for p in $BA $BB; do kill -TERM "$(cat "$W/backend-$p.pid")" 2>/dev/null || true; done
rc=0
python3 "$B/soak_report.py" summary "$W" "$WARMUP" | tee "$W/summary.txt" || rc=$?
exit $rc
