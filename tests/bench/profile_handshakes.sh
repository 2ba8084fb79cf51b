#!/usr/bin/env bash
# Counts per handshake that do not depend on how busy the machine is: user-space instructions
# (valgrind --tool=callgrind) and system calls (strace -c) spent by upgate on a fixed number of
# upgrade handshakes through it (loadgen connect --count N: connect, upgrade, check the 101,
# close handshake, next). A warm-up of the same kind runs first and is not counted.
#
#   tests/bench/profile_handshakes.sh [--upgate PATH] [--bench-dir DIR] [--count N] [-c C]
#                                     [--tool callgrind|strace|both] [--tls] [--keep DIR]
#   --count N   measured sessions (default 2000; callgrind is ~50x slower, so keep N modest)
#   -c C        sessions in flight at once (default 1: no batching of events between sessions)
#   --keep DIR  keep the callgrind output there (for callgrind_annotate)
#
# Output: one line per tool, e.g. "callgrind: 2000 sessions, 41,234 Ir per session" and the
# strace table normalised per session.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UPGATE=$ROOT/build/gateway/upgate
BENCH_DIR=$ROOT/build/tests/bench
COUNT=2000 CONC=1 TOOL=both KEEP=""
while [ $# -gt 0 ]; do
  case $1 in
    --upgate) UPGATE=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --count) COUNT=$2; shift ;;
    -c) CONC=$2; shift ;;
    --tool) TOOL=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "profile_handshakes.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
LOADGEN=$BENCH_DIR/loadgen
ECHO=$BENCH_DIR/echo_server
for f in "$UPGATE" "$LOADGEN" "$ECHO"; do
  [ -x "$f" ] || { echo "profile_handshakes.sh: missing $f" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

TMP=$(mktemp -d /tmp/upgate-prof.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

wait_file() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}

"$ECHO" --port 0 --ready-file "$TMP/echo.ready" >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
wait_file "$TMP/echo.ready" 10 || { echo "echo_server did not start" >&2; exit 1; }
ECHO_ADDR=$(awk '{print $2}' "$TMP/echo.ready")
cat >"$TMP/upgate.yaml" <<EOF
workers: 1
drain_timeout: 0
listeners:
  - name: bench
    address: 127.0.0.1:0
    backlog: 4096
upstreams:
  echo:
    endpoints: [$ECHO_ADDR]
routes:
  - name: echo
    kind: websocket
    upstream: echo
    mode: passthrough
log: { level: warn, access_log: false }
EOF

# start_upgate PREFIX...: upgate under an optional wrapper; sets GW_PID and GW_PORT.
start_upgate() {
  rm -f "$TMP/ready"
  "$@" "$UPGATE" -c "$TMP/upgate.yaml" --ready-file "$TMP/ready" >"$TMP/gw.out" 2>"$TMP/gw.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  wait_file "$TMP/ready" 60 || { echo "upgate did not start: $(tail -3 "$TMP/gw.err")" >&2; exit 1; }
  GW_PORT=$(awk 'NR == 1 {print $2}' "$TMP/ready")
  GW_PORT=${GW_PORT##*:}
}
sessions() {  # sessions N: N handshakes through upgate, bounded in time
  "$LOADGEN" connect --url "ws://127.0.0.1:$GW_PORT/" -c "$CONC" --count "$1" -w 0 -t 600 \
    --conn-timeout 30 --label prof >"$TMP/lg.out" 2>"$TMP/lg.err" ||
    { echo "loadgen failed: $(tail -3 "$TMP/lg.err")" >&2; exit 1; }
  sed -n 's/.*"handshakes":\([0-9]*\).*/\1/p' "$TMP/lg.out"
}
stop_upgate() {
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
}

if [ "$TOOL" = callgrind ] || [ "$TOOL" = both ]; then
  start_upgate valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" --dump-instr=no
  sessions 200 >/dev/null
  callgrind_control -z "$GW_PID" >/dev/null 2>&1
  n=$(sessions "$COUNT")
  callgrind_control -d "$GW_PID" >/dev/null 2>&1
  dump=$(ls -t "$TMP"/cg.out* | head -1)
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  echo "callgrind: $n sessions, $(awk -v i="$ir" -v n="$n" 'BEGIN { printf "%.0f", i / n }') Ir per session (user space, upgate process)"
  [ -n "$KEEP" ] && { mkdir -p "$KEEP"; cp "$dump" "$KEEP/"; }
  stop_upgate
fi

if [ "$TOOL" = strace ] || [ "$TOOL" = both ]; then
  start_upgate
  sessions 200 >/dev/null
  strace -c -f -p "$GW_PID" -o "$TMP/strace.txt" 2>/dev/null &
  ST=$!
  PIDS+=("$ST")
  sleep 1  # attached
  n=$(sessions "$COUNT")
  kill -INT "$ST"
  wait "$ST" 2>/dev/null || true
  echo "strace: $n sessions; system calls per session:"
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall; total has no usecs/call.
  awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
      errs = NF == 6 ? $5 : 0
      printf "  %-14s %7.2f%s\n", $NF, $4 / n, errs ? sprintf("  (%.2f failed)", errs / n) : ""
      total += $4 }
    END { printf "  %-14s %7.2f\n", "total", total / n }' "$TMP/strace.txt"
  stop_upgate
fi
