#!/usr/bin/env bash
# upgate benchmark (targets: README "Performance"). ONE run measures, with
# interleaved repetitions and medians:
#   direct   the load generator straight to the echo upstream (the ceiling)
#   relay    bare_relay: a bare read/send(2) TCP relay in front of the echo upstream, no proxy
#            logic at all: the floor any user-space proxy starts from (no TLS, no fan-out)
#   upgate   workers: 1, passthrough
#   nginx    Debian's nginx, 1 worker, WebSocket proxy (Upgrade/Connection headers)
#   haproxy  Debian's HAProxy, nbthread 1, mode http (WebSocket tunnel after the 101)
# all on loopback; load generator and echo server pinned to CPU 0, the proxy to CPU 1 (taskset).
#
# Scenarios: 64 B echo (C=100, D=1): msgs/s, latency, proxy CPU per round trip
#            16 KiB echo (C=100, D=1): MB/s of payload echoed, proxy CPU per message
#            connect (C=50): full upgrade handshakes per second over fresh TCP connections
#            idle: user-space memory per idle session (PSS delta from smaps_rollup / N)
#            connect_tls (C=50): the same over wss://: fresh TCP + full TLS 1.3 handshake (no
#            resumption) + upgrade + close, per second, and proxy CPU per handshake
#            idle_tls: user-space memory per idle TLS session, measured as idle
#            (TLS: upgate, nginx and HAProxy terminate TLS 1.3 on a second listener with an ECDSA
#            P-256 certificate made with the openssl CLI, and proxy to the same plain echo
#            upstream; the load generator does not verify it. Direct has no TLS: shown as "—".)
#            fanout (direct, upgate, and nginx + Nchan when Debian's libnginx-mod-nchan is
#            installed or installs): N WebSocket subscribers on one channel (1,000 and 5,000), 50 messages
#            at 10/s published by HTTP POST; delivery latency over all subscriber x message
#            pairs, lost deliveries, proxy CPU per delivery. upgate also through its long-poll
#            bridge: loadgen plays the legacy app (--serve-poll) and answers the gateway's held
#            poll with each message; latency runs from that answer to the subscriber. Direct
#            is the floor: echo_server on the proxy's core as a bare fan-out server (one send(2)
#            per subscriber from one shared frame, nothing else), what the kernel's loopback
#            TCP costs before any gateway work
#
# Usage: tests/bench/run.sh [--quick] [--reps N] [--duration S] [--warmup S] [--sessions N]
#                           [--targets "direct relay upgate nginx haproxy"] [--upgate PATH]
#                           [--bench-dir DIR] [--out FILE] [--raw FILE] [--no-install]
#   --quick      1.5 s runs, 0.5 s warmup, 2000 idle sessions, 3 reps (about 3.5 minutes)
#   default      10 s runs, 2 s warmup, 5000 idle sessions, 3 reps (about 18 minutes)
#                (noisy runs measured again add time: see --retry-noisy)
#   --upgate     the gateway binary (default: build/gateway/upgate)
#   --bench-dir  where loadgen, echo_server and bare_relay are (default build-bench/tests/bench; built
#                there with cmake if missing)
#   --out FILE   also write the markdown report to FILE; --raw FILE keeps every JSON line
#   --wait-quiet S  before each rep, wait up to S seconds for other jobs to leave both cores
#                mostly idle (< 25 % busy over 1 s); the background load is logged either way
#   --retry-noisy N  rerun a measurement up to N times when other jobs used more than 10 % of
#                the machine's CPU during it (loadgen's foreign_share; default 2, 0 = never)
#   --report RAW rebuild the report from a --raw file of an earlier run (measures nothing)
#   --nice N     run the load generator, echo server and proxies at nice N (e.g. -10 on a
#                machine where other jobs compete for the two cores; same for every target)
#   --fanout "N..."  subscriber counts of the fan-out runs (default "1000 5000"; "" = none)
# Environment: CPU_CLIENT (default 0) and CPU_PROXY (default 1) choose the cores.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=proxy_conf.sh
. "$ROOT/tests/bench/proxy_conf.sh"
REPS=3 DURATION=10 WARMUP=2 SESSIONS=5000
TARGETS="direct relay upgate nginx haproxy"
UPGATE=${UPGATE:-$ROOT/build/gateway/upgate}
BENCH_DIR=$ROOT/build-bench/tests/bench
OUT="" RAW="" INSTALL=1 NICE=0 WAIT_QUIET=0 RETRY_NOISY=2 NOISE_MAX=0.10 REPORT_FROM=""
CPU_CLIENT=${CPU_CLIENT:-0} CPU_PROXY=${CPU_PROXY:-1}
C_SMALL=100 C_LARGE=100 C_CONNECT=50 D=1
FANOUT="1000 5000" FAN_MSGS=50 FAN_RATE=10

while [ $# -gt 0 ]; do
  case $1 in
    --quick) DURATION=1.5 WARMUP=0.5 SESSIONS=2000 ;;
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --warmup) WARMUP=$2; shift ;;
    --sessions) SESSIONS=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --upgate) UPGATE=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    --out) OUT=$2; shift ;;
    --raw) RAW=$2; shift ;;
    --no-install) INSTALL=0 ;;
    --nice) NICE=$2; shift ;;
    --wait-quiet) WAIT_QUIET=$2; shift ;;
    --retry-noisy) RETRY_NOISY=$2; shift ;;
    --report) REPORT_FROM=$2; shift ;;
    --fanout) FANOUT=$2; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

log() { echo "[bench] $*" >&2; }
die() { echo "[bench] ERROR: $*" >&2; exit 1; }

# ---- Limits ---------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
# A proxy holds 2 fds per session (client leg + upstream leg), plus a few of its own.
MAX_SESSIONS=$(( (NOFILE - 200) / 2 ))
[ "$MAX_SESSIONS" -gt 9800 ] && MAX_SESSIONS=9800
FD_NOTE="open-file limit here: $NOFILE (hard $(ulimit -Hn)); a proxy holds 2 fds per session, so idle runs are capped at $MAX_SESSIONS sessions per process"
if [ "$SESSIONS" -gt "$MAX_SESSIONS" ]; then
  log "idle sessions lowered from $SESSIONS to $MAX_SESSIONS ($FD_NOTE)"
  SESSIONS=$MAX_SESSIONS
fi

# ---- Tools ----------------------------------------------------------------------------------
command -v taskset >/dev/null || die "taskset (util-linux) is required"
[ -n "$REPORT_FROM" ] || command -v openssl >/dev/null || die "the openssl command is required (TLS scenarios)"
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (client core and proxy core)"
LOADGEN=$BENCH_DIR/loadgen
ECHO=$BENCH_DIR/echo_server
RELAY=$BENCH_DIR/bare_relay
if [ ! -x "$LOADGEN" ] || [ ! -x "$ECHO" ] || [ ! -x "$RELAY" ]; then
  log "building loadgen, echo_server and bare_relay in $ROOT/build-bench"
  cmake -S "$ROOT" -B "$ROOT/build-bench" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$ROOT/build-bench" -j2 --target loadgen echo_server bare_relay >/dev/null
  B=$ROOT/build-bench/tests/bench
  LOADGEN=$B/loadgen ECHO=$B/echo_server RELAY=$B/bare_relay
fi
for t in $TARGETS; do
  case $t in
    upgate) [ -x "$UPGATE" ] || die "no upgate binary at $UPGATE (build it or pass --upgate)" ;;
    nginx|haproxy)
      if ! command -v "$t" >/dev/null && [ ! -x "/usr/sbin/$t" ]; then
        [ "$INSTALL" = 1 ] || die "$t is not installed (drop --no-install or the target)"
        log "installing Debian's $t"
        apt-get install -y "$t" >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1; apt-get install -y "$t" >/dev/null; }
      fi ;;
    direct|relay) ;;
    *) die "unknown target $t" ;;
  esac
done
export PATH=$PATH:/usr/sbin
NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
if [ -n "$FANOUT" ] && [[ " $TARGETS " == *" nginx "* ]] && [ ! -f "$NCHAN_MODULE" ] && [ "$INSTALL" = 1 ]; then
  log "installing Debian's libnginx-mod-nchan (fan-out anchor)"
  apt-get install -y libnginx-mod-nchan >/dev/null 2>&1 || log "libnginx-mod-nchan did not install: no Nchan fan-out runs"
fi

PIN_CLIENT="nice -n $NICE taskset -c $CPU_CLIENT"
PIN_PROXY="nice -n $NICE taskset -c $CPU_PROXY"

TMP=$(mktemp -d /tmp/upgate-bench.XXXXXX)
RESULTS=$TMP/results.txt   # lines: rep scenario target JSON
# Every rep starts a fresh upgate: snapshot the binary so a rebuild during the run cannot mix
# builds into one table.
if [[ " $TARGETS " == *" upgate "* ]]; then
  UPGATE_SRC=$UPGATE
  UPGATE_ID="$(sha256sum "$UPGATE" | cut -c1-12), built $(date -r "$UPGATE" '+%F %T')"
  cp "$UPGATE" "$TMP/upgate-under-test"
  UPGATE=$TMP/upgate-under-test
fi
: >"$RESULTS"
declare -A PID        # target -> main PID we started
declare -A PORT       # target -> port
declare -A TPORT      # target -> TLS port (not direct)
ALL_PIDS=()

stop_pid() {  # stop_pid PID: TERM, up to 5 s, then KILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  local pid
  for pid in "${ALL_PIDS[@]+"${ALL_PIDS[@]}"}"; do stop_pid "$pid"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_file() {  # wait_file FILE SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}
port_listening() {  # port_listening PORT: a LISTEN socket on it (from /proc/net/tcp)
  local hex
  hex=$(printf '%04X' "$1")
  awk -v h=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }' /proc/net/tcp
}
wait_port() {  # wait_port PORT SECONDS
  local i
  for ((i = 0; i < $2 * 10; i++)); do port_listening "$1" && return 0; sleep 0.1; done
  return 1
}
free_port() {  # a port below the ephemeral range that nobody listens on
  local p i
  for ((i = 0; i < 200; i++)); do
    p=$((20000 + RANDOM % 10000))
    port_listening "$p" || { echo "$p"; return 0; }
  done
  die "no free port found"
}
pids_of() {  # pids_of PID: PID and its children (nginx master + worker), comma-separated
  local list=$1 f line rest fields
  for f in /proc/[0-9]*/stat; do
    { read -r line <"$f"; } 2>/dev/null || continue
    rest=${line##*) }                # after the command name: state ppid ...
    read -r -a fields <<<"$rest"
    if [ "${fields[1]}" = "$1" ]; then f=${f#/proc/}; list="$list,${f%/stat}"; fi
  done
  echo "$list"
}
pss_kib() {  # pss_kib PID,PID...: summed Pss (KiB) from smaps_rollup
  local total=0 p v
  for p in ${1//,/ }; do
    v=$(awk '/^Pss:/ { print $2; exit }' /proc/"$p"/smaps_rollup 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
json_num() {  # json_num LINE KEY
  sed -n "s/.*\"$2\":\([-0-9.e+]*\).*/\1/p" <<<"$1"
}

# ---- Servers --------------------------------------------------------------------------------
start_echo() {  # start_echo [PORT]
  rm -f "$TMP/echo.ready"
  $PIN_CLIENT "$ECHO" --port "${1:-0}" --ready-file "$TMP/echo.ready" >>"$TMP/echo.log" 2>&1 &
  ECHO_PID=$!
  ALL_PIDS+=("$ECHO_PID")
  wait_file "$TMP/echo.ready" 10 || die "echo_server did not start: $(cat "$TMP/echo.log")"
  ECHO_ADDR=$(awk '{print $2}' "$TMP/echo.ready")
  ECHO_PORT=${ECHO_ADDR##*:}
}

start_upgate() {
  local dir=$TMP/upgate
  mkdir -p "$dir"
  rm -f "$dir/ready"
  LEGACY_PORT=$(free_port)
  cat >"$dir/upgate.yaml" <<EOF
workers: 1
drain_timeout: 0
listeners:
  - name: bench
    address: 127.0.0.1:0
    backlog: 4096
  - name: bench-tls
    address: 127.0.0.1:0
    backlog: 4096
    tls:
      certificates: [{ cert: $TLS_CERT, key: $TLS_KEY }]
      min_version: "1.3"
upstreams:
  echo:
    endpoints: [$ECHO_ADDR]
  legacy:                       # loadgen fanout --serve-poll plays the legacy long-poll app
    endpoints: [127.0.0.1:$LEGACY_PORT]
routes:
  - name: fan
    match: { path_prefix: /fan/ }
    kind: channel
    channel: "{path.1}"
  - name: longpoll
    match: { path_prefix: /lp/ }
    kind: longpoll
    upstream: legacy
    longpoll:
      channel: "{path.1}"
      poll: "/poll?cursor={cursor}"
      cursor: { header: X-Cursor, initial: "0" }
  - name: echo
    kind: websocket
    upstream: echo
    mode: passthrough
admin: { address: 127.0.0.1:0 }
log: { level: warn, access_log: false }
EOF
  $PIN_PROXY "$UPGATE" -c "$dir/upgate.yaml" --ready-file "$dir/ready" >>"$dir/out.log" 2>>"$dir/err.log" &
  PID[upgate]=$!
  ALL_PIDS+=("${PID[upgate]}")
  wait_file "$dir/ready" 10 || die "upgate did not start: $(tail -5 "$dir/err.log")"
  local addr
  addr=$(awk '$1 == "bench" {print $2}' "$dir/ready")
  PORT[upgate]=${addr##*:}
  addr=$(awk '$1 == "bench-tls" {print $2}' "$dir/ready")
  TPORT[upgate]=${addr##*:}
  ADMIN_ADDR=$(awk '$1 == "admin" {print $2}' "$dir/ready")
}

# nginx + Nchan for the fan-out runs only (the echo runs use plain nginx as a proxy).
start_nchan() {
  local dir=$TMP/nchan port
  mkdir -p "$dir/tmp"
  chmod 777 "$dir/tmp"
  port=$(free_port)
  {
    echo "load_module $NCHAN_MODULE;"
    nginx_main "$dir" on $((NOFILE - 100))
    cat <<EOF
  server {
    listen 127.0.0.1:$port backlog=4096;
    location ~ ^/fan/(\w+)$ { nchan_subscriber websocket; nchan_channel_id \$1; }
    location ~ ^/pub/(\w+)$ { nchan_publisher; nchan_channel_id \$1; }
  }
}
EOF
  } >"$dir/nginx.conf"
  $PIN_PROXY nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out.log" 2>&1 &
  NCHAN_PID=$!
  ALL_PIDS+=("$NCHAN_PID")
  wait_port "$port" 10 || die "nginx + Nchan did not start: $(tail -5 "$dir/error.log" "$dir/out.log")"
  NCHAN_PORT=$port
}

start_nginx() {
  local dir=$TMP/nginx port tport
  mkdir -p "$dir/tmp"
  chmod 777 "$dir/tmp"
  port=$(free_port)
  tport=$(free_port)
  while [ "$tport" = "$port" ]; do tport=$(free_port); done
  PROXY_CONNECTIONS=$((NOFILE - 100)) nginx_conf "$dir/nginx.conf" "$dir" "$ECHO_ADDR" on "$port" \
    "$tport" "$TLS_CERT" "$TLS_KEY"
  $PIN_PROXY nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out.log" 2>&1 &
  PID[nginx]=$!
  ALL_PIDS+=("${PID[nginx]}")
  wait_port "$port" 10 && wait_port "$tport" 10 ||
    die "nginx did not start: $(tail -5 "$dir/error.log" "$dir/out.log")"
  PORT[nginx]=$port
  TPORT[nginx]=$tport
}

start_haproxy() {
  local dir=$TMP/haproxy port tport
  mkdir -p "$dir"
  port=$(free_port)
  tport=$(free_port)
  while [ "$tport" = "$port" ]; do tport=$(free_port); done
  PROXY_CONNECTIONS=$MAX_SESSIONS haproxy_conf "$dir/haproxy.cfg" "$ECHO_ADDR" "$port" "$tport" "$TLS_PEM"
  $PIN_PROXY haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
  PID[haproxy]=$!
  ALL_PIDS+=("${PID[haproxy]}")
  wait_port "$port" 10 && wait_port "$tport" 10 || die "haproxy did not start: $(tail -5 "$dir/out.log")"
  PORT[haproxy]=$port
  TPORT[haproxy]=$tport
}

start_relay() {
  rm -f "$TMP/relay.ready"
  $PIN_PROXY "$RELAY" --upstream "$ECHO_ADDR" --ready-file "$TMP/relay.ready" >>"$TMP/relay.log" 2>&1 &
  PID[relay]=$!
  ALL_PIDS+=("${PID[relay]}")
  wait_file "$TMP/relay.ready" 10 || die "bare_relay did not start: $(cat "$TMP/relay.log")"
  PORT[relay]=$(awk '{print $2}' "$TMP/relay.ready" | cut -d: -f2)
}

# no_tls TARGET: true for the targets that speak no TLS (the echo server and the bare relay).
no_tls() { [ "$1" = direct ] || [ "$1" = relay ]; }

start_target() {
  case $1 in
    direct) PID[direct]=$ECHO_PID; PORT[direct]=$ECHO_PORT ;;
    relay) start_relay ;;
    upgate) start_upgate ;;
    nginx) start_nginx ;;
    haproxy) start_haproxy ;;
  esac
}
untrack() {  # untrack PID: forget a PID we stopped, so cleanup never signals a reused one
  local keep=() p
  for p in "${ALL_PIDS[@]}"; do [ "$p" != "$1" ] && keep+=("$p"); done
  ALL_PIDS=("${keep[@]}")
}
stop_target() {
  [ "$1" = direct ] && return 0
  stop_pid "${PID[$1]}"
  untrack "${PID[$1]}"
}

# ---- Runs -----------------------------------------------------------------------------------
# A server that died is reported and restarted (same port for the echo server), so one crash
# shows up as errors in one run rather than spoiling the rest.
ensure_alive() {  # ensure_alive TARGET
  local st
  if ! kill -0 "$ECHO_PID" 2>/dev/null; then
    wait "$ECHO_PID" 2>/dev/null && st=0 || st=$?
    log "ERROR: echo_server died (status $st); restarting it on port $ECHO_PORT"
    untrack "$ECHO_PID"
    start_echo "$ECHO_PORT"
    PID[direct]=$ECHO_PID
  fi
  if [ "$1" != direct ] && ! kill -0 "${PID[$1]}" 2>/dev/null; then
    wait "${PID[$1]}" 2>/dev/null && st=0 || st=$?
    log "ERROR: $1 died (status $st); restarting it"
    untrack "${PID[$1]}"
    start_target "$1"
  fi
}

# target_url SCENARIO TARGET: wss:// to the TLS listener for *_tls scenarios, else ws://.
target_url() {
  if [[ $1 == *_tls ]]; then
    echo "wss://127.0.0.1:${TPORT[$2]}/"
  else
    echo "ws://127.0.0.1:${PORT[$2]}/"
  fi
}

# run_load REP SCENARIO TARGET ARGS...: one loadgen run against TARGET, its JSON line kept.
run_load() {
  local rep=$1 scenario=$2 target=$3
  shift 3
  local watch line limit attempt foreign url
  limit=$(awk -v d="$DURATION" -v w="$WARMUP" 'BEGIN { printf "%d", d + w + 60 }')
  for ((attempt = 0; attempt <= RETRY_NOISY; attempt++)); do
    ensure_alive "$target"
    watch=$(pids_of "${PID[$target]}")
    url=$(target_url "$scenario" "$target")
    line=$(timeout "$limit" $PIN_CLIENT "$LOADGEN" "$@" --url "$url" \
             -t "$DURATION" -w "$WARMUP" --label "$target" --watch "$watch" --watch-echo "$ECHO_PID" \
             2> >(sed 's/^/[bench]   /' >&2)) || log "loadgen reported errors ($scenario, $target)"
    sleep 0.5  # let closes settle before the next run
    foreign=$(json_num "$line" foreign_share)
    if [ -n "$foreign" ] && [ "$attempt" -lt "$RETRY_NOISY" ] &&
       awk -v f="$foreign" -v m="$NOISE_MAX" 'BEGIN { exit !(f > m) }'; then
      log "  other jobs took $(awk -v f="$foreign" 'BEGIN { printf "%.0f", 100 * f }')% of the machine during that run: measuring again in 5 s"
      RETRIES=$((RETRIES + 1))
      sleep 5
      continue
    fi
    break
  done
  if [ -n "$line" ]; then
    echo "$rep $scenario $target $line" >>"$RESULTS"
  fi
}

# run_idle REP TARGET [SCENARIO]: fresh proxy, warm it with a few sessions, PSS baseline, open
# N idle sessions, PSS again; KiB per session = delta / N. SCENARIO idle (default) or idle_tls.
run_idle() {
  local rep=$1 target=$2 scenario=${3:-idle} pids base after lg i line kib url
  ensure_alive "$target"
  pids=$(pids_of "${PID[$target]}")
  url=$(target_url "$scenario" "$target")
  timeout 60 $PIN_CLIENT "$LOADGEN" idle --url "$url" -n 50 -t 0.2 \
    --label "$target-warm" >/dev/null 2>&1 || true
  sleep 0.5
  base=$(pss_kib "$pids")
  rm -f "$TMP/idle.out"
  $PIN_CLIENT "$LOADGEN" idle --url "$url" -n "$SESSIONS" -t 60 \
    --label "$target" >"$TMP/idle.out" 2>"$TMP/idle.err" &
  lg=$!
  ALL_PIDS+=("$lg")
  for ((i = 0; i < 600; i++)); do
    grep -q '"event":"ready"' "$TMP/idle.out" 2>/dev/null && break
    kill -0 "$lg" 2>/dev/null || break
    sleep 0.1
  done
  line=$(grep '"event":"ready"' "$TMP/idle.out" || true)
  if [ -n "$line" ]; then
    sleep 1
    pids=$(pids_of "${PID[$target]}")
    after=$(pss_kib "$pids")
    kib=$(awk -v a="$after" -v b="$base" -v n="$(json_num "$line" established)" \
            'BEGIN { printf "%.2f", (n > 0 ? (a - b) / n : 0) }')
    echo "$rep $scenario $target {\"kib_per_session\":$kib,\"pss_before_kib\":$base,\"pss_after_kib\":$after,\"established\":$(json_num "$line" established),\"failed\":$(json_num "$line" failed)}" >>"$RESULTS"
    log "  [$target] $scenario: $(json_num "$line" established) sessions, PSS $base -> $after KiB: $kib KiB/session"
  else
    log "  [$target] $scenario: sessions did not come up: $(tail -3 "$TMP/idle.err")"
  fi
  kill -USR1 "$lg" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$lg" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$lg"
  untrack "$lg"
  sleep 0.5
}

# The fan-out floor: a second echo_server, on the proxy's core, as a bare fan-out server.
start_fanout_floor() {
  rm -f "$TMP/floor.ready"
  $PIN_PROXY "$ECHO" --ready-file "$TMP/floor.ready" >>"$TMP/floor.log" 2>&1 &
  FLOOR_PID=$!
  ALL_PIDS+=("$FLOOR_PID")
  wait_file "$TMP/floor.ready" 10 || die "echo_server (fan-out floor) did not start: $(cat "$TMP/floor.log")"
  FLOOR_ADDR=$(awk '{print $2}' "$TMP/floor.ready")
}

# run_fanout REP TARGET N: N subscribers on one channel, FAN_MSGS publishes at FAN_RATE/s.
run_fanout() {
  local rep=$1 target=$2 n=$3 url source watch line limit
  case $target in
    direct)
      start_fanout_floor
      url=ws://$FLOOR_ADDR/fan/bench
      source=(--publish-url "http://$FLOOR_ADDR/publish/bench")
      watch=$FLOOR_PID ;;
    upgate)
      ensure_alive upgate
      url=ws://127.0.0.1:${PORT[upgate]}/fan/bench
      source=(--publish-url "http://$ADMIN_ADDR/publish/bench?binary=1")
      watch=$(pids_of "${PID[upgate]}") ;;
    upgate_lp)
      # A fresh channel per run, so each run starts its own poll loop.
      ensure_alive upgate
      url=ws://127.0.0.1:${PORT[upgate]}/lp/r${rep}n$n
      source=(--serve-poll "127.0.0.1:$LEGACY_PORT")
      watch=$(pids_of "${PID[upgate]}") ;;
    nginx)
      start_nchan
      url=ws://127.0.0.1:$NCHAN_PORT/fan/bench
      source=(--publish-url "http://127.0.0.1:$NCHAN_PORT/pub/bench")
      watch=$(pids_of "$NCHAN_PID") ;;
    *) return 0 ;;
  esac
  limit=$(awk -v n="$n" -v m="$FAN_MSGS" -v r="$FAN_RATE" 'BEGIN { printf "%d", n / 200 + m / r + 60 }')
  line=$(timeout "$limit" $PIN_CLIENT "$LOADGEN" fanout --url "$url" -n "$n" "${source[@]}" \
           --messages "$FAN_MSGS" --rate "$FAN_RATE" --label "$target" --watch "$watch" \
           2> >(sed 's/^/[bench]   /' >&2)) || log "loadgen reported errors (fanout $n, $target)"
  if [ "$target" = nginx ]; then
    stop_pid "$NCHAN_PID"
    untrack "$NCHAN_PID"
  elif [ "$target" = direct ]; then
    stop_pid "$FLOOR_PID"
    untrack "$FLOOR_PID"
  fi
  [ -n "$line" ] && echo "$rep fanout$n $target $line" >>"$RESULTS"
  sleep 1  # let the subscribers' closes settle
}

# background_busy: busy share (%) of each CPU over 1 s, e.g. "12 80" (nothing of ours is running)
background_busy() {
  local a b
  a=$(awk '/^cpu[0-9]/ { print $1, $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
  sleep 1
  b=$(awk '/^cpu[0-9]/ { print $1, $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat)
  paste -d' ' <(echo "$a") <(echo "$b") |
    awk '{ t = $6 - $3; printf "%s%d", (NR > 1 ? " " : ""), (t > 0 ? 100 * ($5 - $2) / t : 0) } END { print "" }'
}
wait_quiet() {
  local busy waited=0 max
  busy=$(background_busy)
  while [ "$waited" -lt "$WAIT_QUIET" ]; do
    max=$(tr ' ' '\n' <<<"$busy" | sort -n | tail -1)
    [ "$max" -lt 25 ] && break
    sleep 4
    waited=$((waited + 5))
    busy=$(background_busy)
  done
  log "background load before this rep (busy % per CPU over 1 s): $busy (waited ${waited}s)"
  NOISE+=("$busy")
}

rotate() {  # rotate N WORDS...: the words rotated left by N
  local n=$1
  shift
  local a=("$@") out=() i
  for ((i = 0; i < ${#a[@]}; i++)); do out+=("${a[(i + n) % ${#a[@]}]}"); done
  echo "${out[@]}"
}

# ---- Main -----------------------------------------------------------------------------------
MODEL=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MHZ=$(awk -F': ' '/^cpu MHz/ { printf "%.0f", $2; exit }' /proc/cpuinfo)
MACHINE="$(nproc) CPUs ($MODEL, ${MHZ} MHz), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), Linux $(uname -r)"
VERSIONS="$("$UPGATE" -v 2>&1 | head -1 || true) (${UPGATE_SRC:-$UPGATE}, sha256 ${UPGATE_ID:-?}); $(nginx -v 2>&1 | head -1 || true); $(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f1-3 || true); libuv $(pkg-config --modversion libuv 2>/dev/null || echo '?')"
log "machine: $MACHINE"
log "versions: $VERSIONS"
log "reps $REPS, ${DURATION}s runs after ${WARMUP}s warmup, $SESSIONS idle sessions; client+echo on CPU $CPU_CLIENT, proxy on CPU $CPU_PROXY, nice $NICE"
log "$FD_NOTE"

NOISE=()
RETRIES=0
ELAPSED="?"
read -r -a TLIST <<<"$TARGETS"
STARTED=$(date +%s)
if [ -n "$REPORT_FROM" ]; then
  cp "$REPORT_FROM" "$RESULTS"
  RETRIES="?"
  REPS=$(awk '{ print $1 }' "$RESULTS" | sort -n | tail -1)
  log "report rebuilt from $REPORT_FROM (run parameters not stored in it: pass the same --duration/--warmup/--sessions)"
else
# One ECDSA P-256 certificate for every TLS listener (HAProxy wants certificate and key in one file).
mkdir -p "$TMP/tls"
TLS_CERT=$TMP/tls/cert.pem TLS_KEY=$TMP/tls/key.pem TLS_PEM=$TMP/tls/cert+key.pem
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$TLS_KEY" -out "$TLS_CERT" >"$TMP/tls/openssl.log" 2>&1 ||
  die "openssl could not make the certificate: $(cat "$TMP/tls/openssl.log")"
cat "$TLS_CERT" "$TLS_KEY" >"$TLS_PEM"
start_echo
for ((rep = 1; rep <= REPS; rep++)); do
  read -r -a order <<<"$(rotate $((rep - 1)) "${TLIST[@]}")"
  log "rep $rep/$REPS, order: ${order[*]}"
  wait_quiet
  for t in "${order[@]}"; do start_target "$t"; done
  for t in "${order[@]}"; do
    [ "$t" = direct ] || run_idle "$rep" "$t"
  done
  for t in "${order[@]}"; do
    no_tls "$t" || run_idle "$rep" "$t" idle_tls
  done
  for t in "${order[@]}"; do run_load "$rep" echo64 "$t" echo -c $C_SMALL -d $D -s 64; done
  for t in "${order[@]}"; do run_load "$rep" echo16k "$t" echo -c $C_LARGE -d $D -s 16384; done
  for t in "${order[@]}"; do run_load "$rep" connect "$t" connect -c $C_CONNECT; done
  for t in "${order[@]}"; do
    no_tls "$t" || run_load "$rep" connect_tls "$t" connect -c $C_CONNECT
  done
  for n in $FANOUT; do
    for t in "${order[@]}"; do
      [ "$t" = nginx ] && [ ! -f "$NCHAN_MODULE" ] && continue
      run_fanout "$rep" "$t" "$n"
      [ "$t" = upgate ] && run_fanout "$rep" upgate_lp "$n"
    done
  done
  for t in "${order[@]}"; do stop_target "$t"; done
done
ELAPSED=$(( $(date +%s) - STARTED ))
[ -n "$RAW" ] && cp "$RESULTS" "$RAW"
fi

# ---- Report ---------------------------------------------------------------------------------
# med SCENARIO TARGET KEY: median over reps of KEY ("-" when missing)
med() {
  local v
  v=$(awk -v s="$1" -v t="$2" '$2 == s && $3 == t { $1 = $2 = $3 = ""; print }' "$RESULTS" |
      while read -r line; do json_num "$line" "$3"; done | sort -g |
      awk '{ a[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
  echo "$v"
}
fmt() {  # fmt VALUE [DECIMALS]: thousands separated
  awk -v v="$1" -v p="${2:-0}" 'BEGIN {
    if (v == "-" || v == "—") { print v; exit }
    s = sprintf("%." p "f", v); i = index(s, "."); ip = i ? substr(s, 1, i - 1) : s; fp = i ? substr(s, i) : ""
    while (length(ip) > 3 && match(ip, /[0-9][0-9][0-9][0-9]/)) { n = length(ip); out = "," substr(ip, n - 2) out; ip = substr(ip, 1, n - 3) }
    print ip out fp }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }
# busy SCENARIO TARGET CPU: median busy share of that core over the measured window (/proc/stat)
busy() {
  local b
  b=$(med "$1" "$2" "cpu$3_busy")
  awk -v b="$b" 'BEGIN { if (b == "-") print "-"; else printf "%.0f%%", 100 * b }'
}

share() {  # share SCENARIO TARGET: median foreign_share as a percentage
  local f
  f=$(med "$1" "$2" foreign_share)
  awk -v f="$f" 'BEGIN { if (f == "-") print "-"; else printf "%.0f%%", 100 * f }'
}

lost_sum() {  # lost_sum SCENARIO TARGET: lost deliveries summed over the reps
  awk -v s="$1" -v t="$2" '$2 == s && $3 == t { $1 = $2 = $3 = ""; print }' "$RESULTS" |
    while read -r line; do json_num "$line" lost; done | awk '{ s += $1 } END { print s + 0 }'
}

REPORT=$TMP/report.md
{
  echo "Machine: $MACHINE"
  echo "Versions: $VERSIONS"
  echo "Run: $REPS interleaved reps (medians shown), ${DURATION} s measured after ${WARMUP} s warmup per run; loadgen + echo server on CPU $CPU_CLIENT, proxy on CPU $CPU_PROXY (taskset), nice $NICE; ${ELAPSED} s in all."
  echo "Idle: $SESSIONS sessions per proxy; $FD_NOTE."
  printf 'Background load before each rep (busy %% of each CPU over 1 s, from other jobs):'
  for n in "${NOISE[@]+"${NOISE[@]}"}"; do printf ' [%s]' "${n// /%, }%"; done
  echo

  echo
  echo "| target | 64 B msgs/s (ratio) | 64 B p50 / p99 µs | proxy CPU µs per 64 B round trip | 16 KiB MB/s (ratio) | proxy CPU µs per 16 KiB msg | handshakes/s (ratio) | proxy CPU µs per handshake | KiB per idle session | TLS handshakes/s | proxy CPU µs per TLS handshake | KiB per idle TLS session |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
  d64=$(med echo64 direct msgs_per_s) d16=$(med echo16k direct mb_per_s) dhs=$(med connect direct handshakes_per_s)
  for t in "${TLIST[@]}"; do
    m=$(med echo64 "$t" msgs_per_s) mb=$(med echo16k "$t" mb_per_s) hs=$(med connect "$t" handshakes_per_s)
    idle=$(med idle "$t" kib_per_session)
    ths=$(med connect_tls "$t" handshakes_per_s) tcpu=$(med connect_tls "$t" cpu_us_per_handshake)
    tidle=$(med idle_tls "$t" kib_per_session)
    [ "$t" = direct ] && idle="—"
    no_tls "$t" && ths="—" tcpu="—" tidle="—"  # the echo server and the bare relay speak no TLS
    echo "| $t$([ "$t" = direct ] && echo ' (echo server own cost)')$([ "$t" = relay ] && echo ' (bare read/send relay: the floor)') | $(fmt "$m") ($(ratio "$m" "$d64")) | $(fmt "$(med echo64 "$t" lat_p50_us)") / $(fmt "$(med echo64 "$t" lat_p99_us)") | $(fmt "$(med echo64 "$t" cpu_us_per_msg)" 2) | $(fmt "$mb") ($(ratio "$mb" "$d16")) | $(fmt "$(med echo16k "$t" cpu_us_per_msg)" 2) | $(fmt "$hs") ($(ratio "$hs" "$dhs")) | $(fmt "$(med connect "$t" cpu_us_per_handshake)" 1) | $(fmt "$idle" 1) | $(fmt "$ths") | $(fmt "$tcpu" 1) | $(fmt "$tidle" 1) |"
  done
  if [[ " ${TLIST[*]} " == *" relay "* ]]; then
    echo
    echo "relay is bare_relay on the proxy's core: one read and one send(2) per chunk between two sockets, nothing else, so its CPU per message and memory per session are the floor of any user-space proxy here. It connects upstream as soon as it accepts, before a request is read (no HTTP proxy can), so its handshakes/s is not such a floor."
  fi
  if [ -n "$FANOUT" ]; then
    fan_floor=""
    [[ " ${TLIST[*]} " == *" direct "* ]] &&
      fan_floor=". Direct is echo_server on the proxy's core as a bare fan-out server, one send(2) per subscriber from one shared frame: the floor any gateway on this kernel starts from"
    echo
    echo "Fan-out: $FAN_MSGS messages at $FAN_RATE/s published by HTTP POST to one channel (long-poll bridge: each message is the legacy app's answer to the gateway's held poll); latency from the publisher's send time (bridge: the legacy app's answer) to receipt, over all subscriber x message pairs (medians of the reps)$fan_floor:"
    echo
    echo "| target | subscribers | p50 ms | p99 ms | max ms | lost (all reps) | proxy CPU µs per delivery |"
    echo "|---|---|---|---|---|---|---|"
    for n in $FANOUT; do
      for t in direct upgate upgate_lp nginx; do
        [ "$(med "fanout$n" "$t" deliveries)" = "-" ] && continue
        name=$t
        [ "$t" = direct ] && name="direct (bare send loop: the floor)"
        [ "$t" = nginx ] && name="nginx + Nchan"
        [ "$t" = upgate_lp ] && name="upgate, long-poll bridge"
        lost=$(lost_sum "fanout$n" "$t")
        ms() { awk -v v="$1" 'BEGIN { if (v == "-") print "-"; else printf "%.1f", v / 1000 }'; }
        echo "| $name | $(fmt "$n") | $(ms "$(med "fanout$n" "$t" lat_p50_us)") | $(ms "$(med "fanout$n" "$t" lat_p99_us)") | $(ms "$(med "fanout$n" "$t" lat_max_us)") | $lost | $(fmt "$(med "fanout$n" "$t" cpu_us_per_delivery)" 2) |"
      done
    done
  fi
  echo
  echo "Cores busy during the measured windows (/proc/stat, medians; client core / proxy core):"
  for t in "${TLIST[@]}"; do
    echo "- $t: 64 B $(busy echo64 "$t" "$CPU_CLIENT") / $(busy echo64 "$t" "$CPU_PROXY"), 16 KiB $(busy echo16k "$t" "$CPU_CLIENT") / $(busy echo16k "$t" "$CPU_PROXY"), connect $(busy connect "$t" "$CPU_CLIENT") / $(busy connect "$t" "$CPU_PROXY")$(no_tls "$t" || echo ", TLS connect $(busy connect_tls "$t" "$CPU_CLIENT") / $(busy connect_tls "$t" "$CPU_PROXY")")"
  done
  echo "(The proxy core is busy in direct runs only with other jobs' work: a noisy machine shows here."
  echo "In TLS connect runs the client core also does the load generator's half of every handshake: when it is near 100 % busy, TLS handshakes/s is the client's limit and proxy CPU per TLS handshake is the figure to compare.)"
  errs=$(awk '{ $1 = $2 = $3 = ""; print }' "$RESULTS" | while read -r line; do json_num "$line" errors; done | awk '{ s += $1 } END { print s + 0 }')
  echo "Load generator errors over all runs: $errs. Runs measured again because other jobs took > $(awk -v m="$NOISE_MAX" 'BEGIN { printf "%.0f", 100 * m }') % of the machine: $RETRIES (at most $RETRY_NOISY per measurement)."
  printf 'Other jobs'"'"' share of the machine during the kept runs (median, 64 B / 16 KiB / connect / TLS connect):'
  for t in "${TLIST[@]}"; do
    printf ' %s %s / %s / %s / %s;' "$t" "$(share echo64 "$t")" "$(share echo16k "$t")" "$(share connect "$t")" "$(share connect_tls "$t")"
  done
  echo
  if [[ " ${TLIST[*]} " == *" upgate "* ]]; then
    echo
    echo "Targets (performance.md) for upgate, in this run:"
    awk -v um="$(med echo64 upgate msgs_per_s)" -v nm="$(med echo64 nginx msgs_per_s)" -v hm="$(med echo64 haproxy msgs_per_s)" \
        -v uc="$(med echo64 upgate cpu_us_per_msg)" -v nc="$(med echo64 nginx cpu_us_per_msg)" -v hc="$(med echo64 haproxy cpu_us_per_msg)" \
        -v rc="$(med echo64 relay cpu_us_per_msg)" \
        -v ub="$(med echo16k upgate mb_per_s)" -v db="$d16" \
        -v uh="$(med connect upgate handshakes_per_s)" -v nh="$(med connect nginx handshakes_per_s)" -v hh="$(med connect haproxy handshakes_per_s)" \
        -v ui="$(med idle upgate kib_per_session)" \
        -v ut="$(med connect_tls upgate handshakes_per_s)" -v nt="$(med connect_tls nginx handshakes_per_s)" \
        -v uti="$(med idle_tls upgate kib_per_session)" \
        -v fp="$(med fanout5000 upgate lat_p99_us)" -v fc="$(med fanout5000 upgate cpu_us_per_delivery)" \
        -v fl="$(lost_sum fanout5000 upgate)" -v lp="$(med fanout5000 upgate_lp lat_p99_us)" \
        -v lc="$(med fanout5000 upgate_lp cpu_us_per_delivery)" -v ll="$(lost_sum fanout5000 upgate_lp)" \
        -v dp="$(med fanout5000 direct lat_p99_us)" -v dc="$(med fanout5000 direct cpu_us_per_delivery)" '
      function ok(c) { return c ? "met" : "MISSED" }
      function best(a, b) { if (a == "-") return b; if (b == "-") return a; return a > b ? a : b }
      function least(a, b) { if (a == "-") return b; if (b == "-") return a; return a < b ? a : b }
      BEGIN {
        bm = best(nm, hm); bc = least(nc, hc); bh = best(nh, hh)
        if (um != "-" && bm != "-") printf "- 64 B msgs/s >= best anchor (%.0f): %.0f, %s\n", bm, um, ok(um >= bm)
        if (uc != "-" && bc != "-") printf "- CPU per 64 B round trip <= 0.75 x %.2f = %.2f us: %.2f us, %s\n", bc, 0.75 * bc, uc, ok(uc <= 0.75 * bc)
        if (uc != "-" && rc != "-" && rc > 0) printf "- the floor in this run for CPU per 64 B round trip, a bare read/send relay: %.2f us; upgate %.2f us, %.2fx it\n", rc, uc, uc / rc
        if (ub != "-" && db != "-") printf "- 16 KiB >= 0.80 x direct (%.0f MB/s): %.0f MB/s = %.2f x direct, %s\n", 0.8 * db, ub, ub / db, ok(ub >= 0.8 * db)
        if (uh != "-" && bh != "-") printf "- handshakes/s >= best anchor (%.0f): %.0f, %s\n", bh, uh, ok(uh >= bh)
        if (ui != "-") printf "- idle plain session <= 2 KiB: %.2f KiB, %s\n", ui, ok(ui <= 2)
        if (ut != "-" && nt != "-") printf "- TLS handshakes/s >= nginx (%.0f): %.0f, %s\n", nt, ut, ok(ut >= nt)
        if (uti != "-") printf "- idle TLS session <= 8 KiB: %.2f KiB, %s\n", uti, ok(uti <= 8)
        if (fp != "-") printf "- fan-out, 5,000 subscribers: p99 <= 25 ms: %.1f ms, %s; CPU per delivery <= 5 us: %.2f us, %s; 0 lost: %d, %s\n", fp / 1000, ok(fp <= 25000), fc, ok(fc <= 5), fl, ok(fl == 0)
        if (lp != "-") printf "- the same through the long-poll bridge: p99 %.1f ms, %s; %.2f us per delivery, %s; %d lost, %s\n", lp / 1000, ok(lp <= 25000), lc, ok(lc <= 5), ll, ok(ll == 0)
        if (dp != "-" && fp != "-" && dp > 0 && dc > 0) printf "- the floor in this run for fan-out to 5,000, a bare send loop: p99 %.1f ms, %.2f us per delivery; upgate %.2fx its p99, %.2fx its CPU\n", dp / 1000, dc, fp / dp, fc / dc
      }'
  fi
} >"$REPORT"
echo
cat "$REPORT"
[ -n "$OUT" ] && cp "$REPORT" "$OUT"
exit 0
