#!/usr/bin/env bash
# Failed requests during hot deploys, measured with wrk (64 keep-alive connections):
# graygate through 20 binary upgrades and 20 reloads, then nginx through 20 reloads, in one run,
# in front of the same nginx backends.
#
#   bench/lifecycle.sh            # COUNT=20 CONNS=64
set -euo pipefail
source "$(dirname "$0")/lib.sh"
COUNT=${COUNT:-20}
CONNS=${CONNS:-64}
bench_setup
start_backends 19001 19002
PORT=18080

# Starts wrk in the background (output in $1); wrk_stop ends it (wrk prints its totals on INT).
wrk_bg() {
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d600s "http://127.0.0.1:$PORT/" >"$1" 2>&1 &
  WRK_PID=$!
}
wrk_stop() {
  sleep 2
  kill -INT "$WRK_PID"
  wait "$WRK_PID" || true
}

# Failed requests in a wrk output: socket errors plus non-2xx/3xx responses.
failed() {
  awk '/Socket errors/ { gsub(",", ""); s += $4 + $6 + $8 + $10 }
       /Non-2xx/ { s += $5 }
       END { print s + 0 }' "$1"
}
total() { awk '/requests in/ {print $1}' "$1"; }

# graygate: upgrades and reloads alternate, one every 0.5 s.
start_graygate $PORT 19001 19002
out="$W/wrk-graygate.txt"
wrk_bg "$out"
sleep 2
up_fail=0 re_fail=0
for i in $(seq 1 "$COUNT"); do
  "$GG" -s upgrade -c "$GG_CONF" >/dev/null || up_fail=$((up_fail + 1))
  sleep 0.25
  "$GG" -s reload -c "$GG_CONF" >/dev/null || re_fail=$((re_fail + 1))
  sleep 0.25
done
wrk_stop
gg_total=$(total "$out"); gg_failed=$(failed "$out")
stop_proxy

# nginx (tuned config): reloads only (its binary upgrade is a manual USR2/WINCH/QUIT dance).
start_nginx_proxy $PORT tuned 19001 19002
NGINX_CONF="$W/nginx-tuned-$PORT.conf"
out="$W/wrk-nginx.txt"
wrk_bg "$out"
sleep 2
for i in $(seq 1 "$COUNT"); do
  nginx -p "$W" -c "$NGINX_CONF" -s reload
  sleep 0.5
done
wrk_stop
ng_total=$(total "$out"); ng_failed=$(failed "$out")
stop_proxy

{
  echo "## Hot deploys under load"
  echo
  echo "Made by \`bench/lifecycle.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, $(nginx -v 2>&1 | sed 's/.*: //'); wrk \`-t1 -c$CONNS\`, keep-alive."
  echo
  echo "| proxy | operations | requests | failed requests |"
  echo "|---|---|---|---|"
  echo "| graygate | $COUNT upgrades + $COUNT reloads (failed commands: $up_fail upgrade, $re_fail reload) | $gg_total | $gg_failed |"
  echo "| nginx | $COUNT reloads (\`nginx -s reload\`) | $ng_total | $ng_failed |"
} | tee "$ROOT/bench/LIFECYCLE.md"
