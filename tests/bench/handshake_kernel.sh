#!/usr/bin/env bash
# Kernel-side counts per upgrade handshake that do not depend on how busy the machine is: TCP
# segments (nstat), system calls of the proxy, the load generator and the echo upstream
# (strace -c), and which socket of each leg ends in TIME_WAIT (ss), for upgate, HAProxy and
# nginx configured as run.sh configures them. loadgen connect --count N -c C: fresh TCP
# connection, upgrade, 101 checked, close handshake, next.
#
# Everything runs in a private network namespace (unshare -n, so root), so nstat sees only the
# benchmark's own segments. Two passes per target: segments and TIME_WAIT without strace, then
# system calls with strace attached to all three processes (ptrace changes the timing, so
# epoll_wait and EAGAIN counts of that pass are upper bounds).
#
#   tests/bench/handshake_kernel.sh [--upgate PATH] [--bench-dir DIR] [--count N] [-c C]
#                                   [--targets "upgate haproxy nginx"] [--no-strace] [--trace]
#   --trace   instead of counting: one session at C=1 after a warm-up, printed as the segments
#             on lo (tcpdump) and the proxy's system calls (strace -f), in order
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/tests/bench/kernel_common.sh"
in_private_netns "$@"
UPGATE=$ROOT/build/gateway/upgate
BENCH_DIR=$ROOT/build-bench/tests/bench
COUNT=5000 CONC=50 TARGETS="upgate haproxy nginx" STRACE=1 TRACE=0
while [ $# -gt 0 ]; do
  case $1 in
    --upgate) UPGATE=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --count) COUNT=$2; shift ;;
    -c) CONC=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --no-strace) STRACE=0 ;;
    --trace) TRACE=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "handshake_kernel.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
UPGATE=$(realpath "$UPGATE")
BENCH_DIR=$(realpath "$BENCH_DIR")
kernel_setup hsk

sessions() {  # sessions N [WRAPPER...]: N handshakes; prints the handshakes counted
  local n=$1
  shift
  "$@" "$LOADGEN" connect --url "ws://127.0.0.1:$PROXY_PORT/" -c "$CONC" --count "$n" -w 0 -t 600 \
    --conn-timeout 30 --label k >"$TMP/lg.out" 2>"$TMP/lg.err" ||
    { echo "loadgen failed: $(tail -3 "$TMP/lg.err")" >&2; exit 1; }
  sed -n 's/.*"handshakes":\([0-9]*\).*/\1/p' "$TMP/lg.out"
}

# TIME_WAIT sockets by which end holds them: the proxy's listening port or the echo port as the
# local or the peer port.
tw_counts() {
  ss -Htan state time-wait | awk -v p=":$PROXY_PORT" -v e=":$ECHO_PORT" '
    { l = substr($3, match($3, /:[0-9]+$/)); r = substr($4, match($4, /:[0-9]+$/)) }
    l == p { pc++ } r == p { lg++ } l == e { ec++ } r == e { pu++ }
    END { printf "%d %d %d %d\n", lg, pc, pu, ec }'
}

for t in $TARGETS; do
  start_echo
  start_proxy "$t"
  sessions 200 >/dev/null  # warm-up
  if [ "$TRACE" = 1 ]; then
    tcpdump -i lo -nn -tt -l -c 1000 tcp >"$TMP/dump" 2>/dev/null &
    TD=$!
    strace -f -tt -p "$PROXY_PID" -e 'trace=!clock_gettime' -o "$TMP/trace" 2>/dev/null &
    ST=$!
    sleep 1
    CONC=1 sessions 1 >/dev/null
    sleep 0.5
    kill -INT "$ST" "$TD"
    wait "$ST" "$TD" 2>/dev/null || true
    echo "== $t: one session (proxy :$PROXY_PORT, echo :$ECHO_PORT)"
    sed -E 's/^[0-9]+\.([0-9]+) IP /\1 /; s/, (win|options|length) .*//' "$TMP/dump"
    grep -v 'resumed>\|SIGINT\|detached' "$TMP/trace" | sed -E 's/^[0-9]+ +//'
    stop_all
    continue
  fi
  sleep 0.5
  read -r tw0 <<<"$(tw_counts | tr ' ' ,)"
  nstat_snap >"$TMP/n0"
  n=$(sessions "$COUNT")
  sleep 1  # last FINs and ACKs
  nstat_snap >"$TMP/n1"
  read -r tw1 <<<"$(tw_counts | tr ' ' ,)"
  echo "== $t: $n sessions, C=$CONC; per handshake:"
  awk -v n="$n" 'NR == FNR { a[$1] = $2; next }
    $2 != a[$1] && $1 !~ /Curr|Max|Min|Algorithm/ { printf "  %-26s %7.2f\n", $1, ($2 - a[$1]) / n }' \
    "$TMP/n0" "$TMP/n1"
  awk -v a="$tw0" -v b="$tw1" -v n="$n" 'BEGIN {
      split(a, x, ","); split(b, y, ",")
      split("loadgen proxy-client-leg proxy-upstream-leg echo_server", w, " ")
      for (i = 1; i <= 4; i++) printf "  TIME_WAIT %-20s %5.2f\n", w[i], (y[i] - x[i]) / n }'
  if [ "$STRACE" = 1 ]; then
    strace -c -f -p "$PROXY_PID" -o "$TMP/st.proxy" 2>/dev/null &
    SP=$!
    strace -c -f -p "$ECHO_PID" -o "$TMP/st.echo" 2>/dev/null &
    SE=$!
    sleep 1
    n=$(sessions "$COUNT" strace -c -f -o "$TMP/st.lg")
    kill -INT "$SP" "$SE"
    wait "$SP" "$SE" 2>/dev/null || true
    echo "  system calls per handshake ($n sessions under strace):"
    strace_table "$TMP/st.proxy" "$n" "$t"
    strace_table "$TMP/st.lg" "$n" loadgen
    strace_table "$TMP/st.echo" "$n" echo
  fi
  stop_all
done
