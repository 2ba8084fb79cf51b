#!/usr/bin/env bash
# Counts per handshake that do not depend on how busy the machine is: user-space instructions
# (valgrind --tool=callgrind) and system calls (strace -c) spent by the proxy on a fixed number
# of upgrade handshakes through it (loadgen connect --count N: connect, [TLS handshake,] upgrade,
# check the 101, close handshake, next). A warm-up of the same kind runs first and is not
# counted. The same counts for Debian's nginx and HAProxy (configured as in run.sh) put upgate's
# figures next to the anchors'.
#
#   tests/bench/profile_handshakes.sh [--target upgate|nginx|haproxy] [--tls] [--count N] [-c C]
#                                     [--tool callgrind|strace|both] [--keep DIR]
#                                     [--upgate PATH] [--bench-dir DIR]
#   --target T  the proxy to count (default upgate); nginx runs as one process (no master)
#   --tls       wss:// to a TLS 1.3 listener (ECDSA P-256 certificate made here with openssl)
#   --count N   measured sessions (default 2000; callgrind is ~50x slower, so keep N modest,
#               and smaller still with --tls)
#   -c C        sessions in flight at once (default 1: no batching of events between sessions)
#   --keep DIR  keep the callgrind output there (for callgrind_annotate)
#
# Output: one line per tool, e.g. "callgrind: 2000 sessions, 41,234 Ir per session" and the
# strace table normalised per session.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
UPGATE=$ROOT/build/gateway/upgate
BENCH_DIR=$ROOT/build/tests/bench
COUNT=2000 CONC=1 TOOL=both KEEP="" TARGET=upgate TLS=0
while [ $# -gt 0 ]; do
  case $1 in
    --upgate) UPGATE=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --count) COUNT=$2; shift ;;
    -c) CONC=$2; shift ;;
    --tool) TOOL=$2; shift ;;
    --keep) KEEP=$2; shift ;;
    --target) TARGET=$2; shift ;;
    --tls) TLS=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "profile_handshakes.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
LOADGEN=$BENCH_DIR/loadgen
ECHO=$BENCH_DIR/echo_server
case $TARGET in
  upgate) PROXY=$UPGATE ;;
  nginx | haproxy)
    PROXY=$(command -v "$TARGET") ||
      { echo "profile_handshakes.sh: $TARGET is not installed (apt-get install $TARGET)" >&2; exit 1; } ;;
  *) echo "profile_handshakes.sh: --target is upgate, nginx or haproxy" >&2; exit 2 ;;
esac
for f in "$PROXY" "$LOADGEN" "$ECHO"; do
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
SCHEME=ws
if [ "$TLS" = 1 ]; then
  SCHEME=wss
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >"$TMP/openssl.log" 2>&1 ||
    { echo "openssl could not make the certificate: $(cat "$TMP/openssl.log")" >&2; exit 1; }
  cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/cert+key.pem"
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# The proxy's configuration: as in run.sh (proxy_conf.sh), one listener on $PORT.
# shellcheck source=proxy_conf.sh
. "$ROOT/tests/bench/proxy_conf.sh"
case $TARGET in
  upgate)
    if [ "$TLS" = 1 ]; then
      upgate_conf "$TMP/proxy.conf" "$PORT" "$ECHO_ADDR" "$TMP/cert.pem" "$TMP/key.pem"
    else
      upgate_conf "$TMP/proxy.conf" "$PORT" "$ECHO_ADDR"
    fi
    PROXY_ARGS=(-c "$TMP/proxy.conf") ;;
  nginx)
    # One process (no master): what callgrind and strace follow is the worker itself.
    if [ "$TLS" = 1 ]; then
      nginx_conf "$TMP/proxy.conf" "$TMP/nginx" "$ECHO_ADDR" off "" "$PORT" "$TMP/cert.pem" "$TMP/key.pem"
    else
      nginx_conf "$TMP/proxy.conf" "$TMP/nginx" "$ECHO_ADDR" off "$PORT"
    fi
    PROXY_ARGS=(-p "$TMP/nginx" -c "$TMP/proxy.conf" -e "$TMP/nginx/error.log") ;;
  haproxy)
    if [ "$TLS" = 1 ]; then
      haproxy_conf "$TMP/proxy.conf" "$ECHO_ADDR" "" "$PORT" "$TMP/cert+key.pem"
    else
      haproxy_conf "$TMP/proxy.conf" "$ECHO_ADDR" "$PORT"
    fi
    PROXY_ARGS=(-db -f "$TMP/proxy.conf") ;;
esac

# start_proxy PREFIX...: the proxy (in the foreground) under an optional wrapper; sets GW_PID.
start_proxy() {
  "$@" "$PROXY" "${PROXY_ARGS[@]}" >"$TMP/gw.out" 2>"$TMP/gw.err" &
  GW_PID=$!
  PIDS+=("$GW_PID")
  local i
  for ((i = 0; i < 600; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
    kill -0 "$GW_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$TARGET did not start: $(tail -3 "$TMP/gw.err" "$TMP/gw.out")" >&2
  exit 1
}
sessions() {  # sessions N: N handshakes through the proxy, bounded in time
  "$LOADGEN" connect --url "$SCHEME://127.0.0.1:$PORT/" -c "$CONC" --count "$1" -w 0 -t 600 \
    --conn-timeout 30 --label prof >"$TMP/lg.out" 2>"$TMP/lg.err" ||
    { echo "loadgen failed: $(tail -3 "$TMP/lg.err")" >&2; exit 1; }
  sed -n 's/.*"handshakes":\([0-9]*\).*/\1/p' "$TMP/lg.out"
}
stop_proxy() {
  kill -TERM "$GW_PID" 2>/dev/null || true
  wait "$GW_PID" 2>/dev/null || true
}

if [ "$TOOL" = callgrind ] || [ "$TOOL" = both ]; then
  start_proxy valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" --dump-instr=no
  sessions 200 >/dev/null
  callgrind_control -z "$GW_PID" >/dev/null 2>&1
  n=$(sessions "$COUNT")
  callgrind_control -d "$GW_PID" >/dev/null 2>&1
  dump=$(ls -t "$TMP"/cg.out* | head -1)
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  echo "callgrind: $n sessions, $(awk -v i="$ir" -v n="$n" 'BEGIN { printf "%.0f", i / n }') Ir per session (user space, $TARGET process$([ "$TLS" = 1 ] && echo ", TLS 1.3"))"
  [ -n "$KEEP" ] && { mkdir -p "$KEEP"; cp "$dump" "$KEEP/"; }
  stop_proxy
fi

if [ "$TOOL" = strace ] || [ "$TOOL" = both ]; then
  start_proxy
  sessions 200 >/dev/null
  strace -c -f -p "$GW_PID" -o "$TMP/strace.txt" 2>/dev/null &
  ST=$!
  PIDS+=("$ST")
  sleep 1  # attached
  n=$(sessions "$COUNT")
  kill -INT "$ST"
  wait "$ST" 2>/dev/null || true
  echo "strace: $n sessions$([ "$TLS" = 1 ] && echo " over TLS 1.3") through $TARGET; system calls per session:"
  # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall; total has no usecs/call.
  awk -v n="$n" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
      errs = NF == 6 ? $5 : 0
      printf "  %-14s %7.2f%s\n", $NF, $4 / n, errs ? sprintf("  (%.2f failed)", errs / n) : ""
      total += $4 }
    END { printf "  %-14s %7.2f\n", "total", total / n }' "$TMP/strace.txt"
  stop_proxy
fi
