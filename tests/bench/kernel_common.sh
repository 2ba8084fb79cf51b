# shellcheck shell=bash disable=SC2034  # sets variables for the scripts that source it
# Shared by handshake_kernel.sh and echo_kernel.sh (sourced, not run): the echo upstream and the
# three proxies configured as run.sh configures them, inside the private network namespace the
# calling script has entered, and the counters read around a fixed amount of work.
#
# The caller calls in_private_netns "$@" first, sets UPGATE, BENCH_DIR and optionally PIN_CLIENT /
# PIN_PROXY (a command prefix such as "taskset -c 0"; empty: no pinning), then calls
# kernel_setup.

# shellcheck source=proxy_conf.sh
. "$(dirname "${BASH_SOURCE[0]}")/proxy_conf.sh"

# in_private_netns "$@": runs the calling script again, with the same arguments, in a network
# namespace of its own (unshare -n, so root), unless this already is that run.
in_private_netns() {
  [ "${UPGATE_PRIVATE_NETNS:-0}" = 1 ] && return 0
  UPGATE_PRIVATE_NETNS=1 exec unshare -n "$0" "$@"
}

kernel_setup() {  # kernel_setup NAME: loopback up, fd limit, temp dir, cleanup on exit
  ip link set lo up
  export PATH=$PATH:/usr/sbin
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  LOADGEN=$BENCH_DIR/loadgen ECHO=$BENCH_DIR/echo_server
  TMP=$(mktemp -d "/tmp/upgate-$1.XXXXXX")
  PIDS=()
  trap kernel_cleanup EXIT
}

stop_all() {  # every process started by start_echo / start_proxy, by PID
  local p
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]+"${PIDS[@]}"}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}

kernel_cleanup() {
  stop_all
  rm -rf "$TMP"
}

wait_file() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do [ -s "$1" ] && return 0; sleep 0.1; done
  return 1
}
wait_port() {
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.1
  done
  return 1
}

start_echo() {
  rm -f "$TMP/echo.ready"
  ${PIN_CLIENT:-} "$ECHO" --port 0 --ready-file "$TMP/echo.ready" >"$TMP/echo.log" 2>&1 &
  ECHO_PID=$!
  PIDS+=("$ECHO_PID")
  wait_file "$TMP/echo.ready" 10 || { echo "echo_server did not start" >&2; exit 1; }
  ECHO_ADDR=$(awk '{print $2}' "$TMP/echo.ready")
  ECHO_PORT=${ECHO_ADDR##*:}
}

PROXY_PORT=18080
# start_proxy TARGET: sets PROXY_PORT and PROXY_PID (the process that does the work). "direct"
# starts nothing: the load generator talks to the echo server (PROXY_PID empty).
start_proxy() {
  local dir=$TMP/$1
  if [ "$1" = direct ]; then
    PROXY_PORT=$ECHO_PORT PROXY_PID=
    return 0
  fi
  mkdir -p "$dir/tmp"
  PROXY_PORT=$((PROXY_PORT + 1))
  case $1 in
    upgate)
      upgate_conf "$dir/upgate.yaml" "$PROXY_PORT" "$ECHO_ADDR"
      ${PIN_PROXY:-} "$UPGATE" -c "$dir/upgate.yaml" --ready-file "$dir/ready" >"$dir/out.log" 2>&1 &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      ;;
    haproxy)
      haproxy_conf "$dir/haproxy.cfg" "$ECHO_ADDR" "$PROXY_PORT"
      ${PIN_PROXY:-} haproxy -db -f "$dir/haproxy.cfg" >"$dir/out.log" 2>&1 &
      PROXY_PID=$!
      PIDS+=("$PROXY_PID")
      ;;
    nginx)
      nginx_conf "$dir/nginx.conf" "$dir" "$ECHO_ADDR" on "$PROXY_PORT"
      chmod 777 "$dir/tmp"
      ${PIN_PROXY:-} nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/out.log" 2>&1 &
      PIDS+=($!)
      ;;
    *) echo "unknown target $1" >&2; exit 2 ;;
  esac
  wait_port "$PROXY_PORT" 10 || { echo "$1 did not start" >&2; exit 1; }
  if [ "$1" = nginx ]; then
    sleep 0.3
    PROXY_PID=$(pgrep -P "${PIDS[-1]}" | head -1)  # the worker
  fi
}

# Every Tcp* counter (nstat -a: absolute values), one "name value" a line.
nstat_snap() { nstat -az 2>/dev/null | awk '$1 ~ /^Tcp/ { print $1, $2 }'; }

strace_table() {  # strace_table FILE N LABEL: strace -c output as calls per unit of work
  awk -v n="$2" -v who="$3" '$1 ~ /^[0-9.]+$/ && $NF != "total" {
      errs = NF == 6 ? $5 : 0
      total += $4
      if ($4 / n < 0.005) next
      printf "  %-8s %-14s %7.2f%s\n", who, $NF, $4 / n, errs ? sprintf("  (%.2f failed)", errs / n) : "" }
    END { printf "  %-8s %-14s %7.2f\n", who, "total", total / n }' "$1"
}
