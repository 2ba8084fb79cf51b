#!/usr/bin/env bash
# bench.smoke (ctest, label bench): a correctness smoke for the benchmark tools, not a timing.
# Runs the load generator for a couple of seconds directly against the echo server, through
# the bare relay (run.sh's floor for a proxy) and through upgate (workers: 1, passthrough), with
# --verify (every echoed byte checked), plus a
# short connect-mode run through upgate, then the same over wss:// through a TLS listener of
# upgate (ECDSA P-256 certificate made here with the openssl CLI, verified by loadgen with --ca);
# passes when messages and handshakes flowed without errors. Last, a small fan-out (40
# subscribers, 5 messages) against the echo server's bare fan-out mode (run.sh's floor) and
# through upgate's channel route and publish API: every delivery must arrive.
#
#   smoke.sh LOADGEN ECHO_SERVER UPGATE BARE_RELAY
set -euo pipefail

LOADGEN=${1:?loadgen path}
ECHO=${2:?echo_server path}
UPGATE=${3:?upgate path}
RELAY=${4:?bare_relay path}

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TMP=$(mktemp -d /tmp/upgate-bench-smoke.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT

fail() {
  echo "bench.smoke: FAIL: $*" >&2
  for f in "$TMP"/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}

# wait_file FILE SECONDS: until FILE exists (bounded).
wait_file() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  return 1
}

# json_num LINE KEY: the number stored under "KEY" in a flat JSON line.
json_num() {
  sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"
}

command -v openssl >/dev/null || fail "the openssl command is required (Debian package openssl)"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >"$TMP/openssl.log" 2>&1 ||
  fail "openssl could not make a certificate: $(cat "$TMP/openssl.log")"

"$ECHO" --ready-file "$TMP/echo.ready" >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
wait_file "$TMP/echo.ready" 10 || fail "echo_server did not start"
ECHO_ADDR=$(awk '{print $2}' "$TMP/echo.ready")
"$RELAY" --upstream "$ECHO_ADDR" --ready-file "$TMP/relay.ready" >"$TMP/relay.log" 2>&1 &
PIDS+=($!)
wait_file "$TMP/relay.ready" 10 || fail "bare_relay did not start"
RELAY_ADDR=$(awk '{print $2}' "$TMP/relay.ready")

cat >"$TMP/upgate.yaml" <<EOF
workers: 1
drain_timeout: 0
listeners:
  - name: bench
    address: 127.0.0.1:0
  - name: bench-tls
    address: 127.0.0.1:0
    tls:
      certificates: [{ cert: $TMP/cert.pem, key: $TMP/key.pem }]
      min_version: "1.3"
upstreams:
  echo:
    endpoints: [$ECHO_ADDR]
routes:
  - name: fan
    match: { path_prefix: /fan/ }
    kind: channel
    channel: "{path.1}"
  - name: echo
    kind: websocket
    upstream: echo
    mode: passthrough
admin: { address: 127.0.0.1:0 }
log: { level: warn, access_log: false }
EOF
"$UPGATE" -c "$TMP/upgate.yaml" --ready-file "$TMP/upgate.ready" >"$TMP/upgate.log" 2>&1 &
PIDS+=($!)
wait_file "$TMP/upgate.ready" 10 || fail "upgate did not start"
UPGATE_ADDR=$(awk '$1 == "bench" {print $2}' "$TMP/upgate.ready")
UPGATE_TLS_ADDR=$(awk '$1 == "bench-tls" {print $2}' "$TMP/upgate.ready")
ADMIN_ADDR=$(awk '$1 == "admin" {print $2}' "$TMP/upgate.ready")

run() {  # run LABEL ARGS...: one loadgen run, its JSON line in $LINE
  local label=$1
  shift
  LINE=$("$LOADGEN" "$@" --label "$label" 2>>"$TMP/loadgen.log") || fail "$label: loadgen exited non-zero: $LINE"
  echo "$LINE"
}

for size in 64 20000 70000; do  # 7-, 16- and 64-bit frame lengths
  run "direct-$size" echo --url "ws://$ECHO_ADDR/" -c 8 -d 2 -s $size -t 1 -w 0.2 --verify
  [ "$(json_num "$LINE" msgs)" -gt 0 ] || fail "no messages echoed directly (size $size)"
  run "relay-$size" echo --url "ws://$RELAY_ADDR/" -c 8 -d 2 -s $size -t 0.5 -w 0.1 --verify
  [ "$(json_num "$LINE" msgs)" -gt 0 ] || fail "no messages echoed through the bare relay (size $size)"
  [ "$(json_num "$LINE" errors)" -eq 0 ] || fail "errors through the bare relay (size $size)"
  run "upgate-$size" echo --url "ws://$UPGATE_ADDR/" -c 8 -d 2 -s $size -t 1 -w 0.2 --verify
  [ "$(json_num "$LINE" msgs)" -gt 0 ] || fail "no messages echoed through upgate (size $size)"
  [ "$(json_num "$LINE" errors)" -eq 0 ] || fail "errors through upgate (size $size)"
done
run upgate-connect connect --url "ws://$UPGATE_ADDR/" -c 4 -t 1 -w 0.2
[ "$(json_num "$LINE" handshakes)" -gt 0 ] || fail "no handshakes through upgate"

# wss://: 64 B and 70,000 B (a message over several TLS records), then TLS handshakes.
for size in 64 70000; do
  run "upgate-tls-$size" echo --url "wss://$UPGATE_TLS_ADDR/" --ca "$TMP/cert.pem" \
    -c 4 -d 2 -s $size -t 0.5 -w 0.1 --verify
  [ "$(json_num "$LINE" msgs)" -gt 0 ] || fail "no messages echoed over TLS (size $size)"
  [ "$(json_num "$LINE" errors)" -eq 0 ] || fail "errors over TLS (size $size)"
done
run upgate-tls-connect connect --url "wss://$UPGATE_TLS_ADDR/" --ca "$TMP/cert.pem" -c 4 -t 0.5 -w 0.1
[ "$(json_num "$LINE" handshakes)" -gt 0 ] || fail "no TLS handshakes through upgate"

fanout() {  # fanout LABEL URL PUBLISH_URL: 40 subscribers, 5 messages, none lost
  run "$1" fanout --url "$2" --publish-url "$3" -n 40 --messages 5 --rate 20
  [ "$(json_num "$LINE" deliveries)" -eq 200 ] || fail "$1: $(json_num "$LINE" deliveries) of 200 deliveries"
  [ "$(json_num "$LINE" lost)" -eq 0 ] && [ "$(json_num "$LINE" errors)" -eq 0 ] ||
    fail "$1: deliveries lost or errors"
}
fanout direct-fanout "ws://$ECHO_ADDR/fan/smoke" "http://$ECHO_ADDR/publish/smoke"
fanout upgate-fanout "ws://$UPGATE_ADDR/fan/smoke" "http://$ADMIN_ADDR/publish/smoke?binary=1"
echo "bench.smoke: OK"
