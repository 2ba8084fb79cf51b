#!/usr/bin/env bash
# Kernel-side counts per echoed message that do not depend on how busy the machine is, for
# upgate, HAProxy and nginx configured as run.sh configures them, and for the load generator
# talking to the echo server directly: TCP segments and their kinds (nstat), pure ACKs by leg
# (tcpdump with an in-kernel filter that passes only pure ACKs), system calls by kind of the
# proxy, the load generator and the echo server, and epoll_wait calls and events returned per
# call of each (perf, from the syscall tracepoints: no ptrace, so the batching measured is the
# batching of an unobserved run, give or take the tracepoints' own cost).
#
# Scenario of run.sh's 64 B echo: loadgen echo -c 100 -d 1 -s 64, load generator and echo server
# pinned to CPU 0, the proxy to CPU 1. Everything runs in a private network namespace (unshare
# -n, so root), so nstat sees only the benchmark's own segments.
#
# Each count is taken over two runs of different lengths (--short and --long seconds, no warm-up)
# and the difference is divided by the difference in round trips: the handshakes, the closes
# and the messages in flight at the end are the same in both runs and cancel. Two passes per
# target: segments (nstat, tcpdump), then system calls (perf).
#
#   tests/bench/echo_kernel.sh [--upgate PATH] [--bench-dir DIR] [-c C] [-d D] [-s S]
#                              [--short T1] [--long T2] [--targets "upgate haproxy nginx direct"]
#                              [--cpus CLIENT,PROXY | --no-pin] [--no-perf] [--trace]
#   --trace   instead of counting: a few round trips at C=1 after a warm-up, printed as the
#             segments on lo (tcpdump) and the proxy's system calls (strace -f), in order
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$ROOT/tests/bench/kernel_common.sh"
in_private_netns "$@"
UPGATE=$ROOT/build/gateway/upgate
BENCH_DIR=$ROOT/build-bench/tests/bench
CONC=100 DEPTH=1 SIZE=64 SHORT=1 LONG=3 TARGETS="upgate haproxy nginx direct" CPUS=0,1 PERF=1
TRACE=0
while [ $# -gt 0 ]; do
  case $1 in
    --upgate) UPGATE=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    -c) CONC=$2; shift ;;
    -d) DEPTH=$2; shift ;;
    -s) SIZE=$2; shift ;;
    --short) SHORT=$2; shift ;;
    --long) LONG=$2; shift ;;
    --targets) TARGETS=$2; shift ;;
    --cpus) CPUS=$2; shift ;;
    --no-pin) CPUS= ;;
    --no-perf) PERF=0 ;;
    --trace) TRACE=1 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { print }' "$0"; exit 0 ;;
    *) echo "echo_kernel.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
UPGATE=$(realpath "$UPGATE")
BENCH_DIR=$(realpath "$BENCH_DIR")
PIN_CLIENT='' PIN_PROXY=''
if [ -n "$CPUS" ]; then
  PIN_CLIENT="taskset -c ${CPUS%,*}" PIN_PROXY="taskset -c ${CPUS#*,}"
fi
kernel_setup echok

# echo_run T [PID_VAR]: loadgen echo for T seconds without warm-up; prints the round trips
# counted. With PID_VAR, the load generator waits on the fifo $TMP/go after it is started, its
# PID is stored in PID_VAR and the caller must write to the fifo and call echo_wait.
LG_PID=
echo_run() {
  local t=$1
  # shellcheck disable=SC2206  # PIN_CLIENT is a command prefix: split on purpose
  local cmd=($PIN_CLIENT "$LOADGEN" echo --url "ws://127.0.0.1:$PROXY_PORT/" -c "$CONC" -d "$DEPTH"
    -s "$SIZE" -w 0 -t "$t" --conn-timeout 30 --label k)
  if [ $# -eq 1 ]; then
    /usr/bin/time -o "$TMP/lg.time" -f 'cpu.loadgen.user_us %U\ncpu.loadgen.sys_us %S
cs.loadgen.voluntary %w\ncs.loadgen.involuntary %c' \
      "${cmd[@]}" >"$TMP/lg.out" 2>"$TMP/lg.err" || lg_failed
    lg_msgs
    return
  fi
  rm -f "$TMP/go"
  mkfifo "$TMP/go"
  # The shell's PID stays the load generator's through exec, so perf can attach before it runs.
  sh -c 'read -r _ <"$0"; exec "$@"' "$TMP/go" "${cmd[@]}" >"$TMP/lg.out" 2>"$TMP/lg.err" &
  LG_PID=$!
}
echo_wait() { wait "$LG_PID" || lg_failed; }  # not in a subshell: it waits for our child
lg_failed() { echo "loadgen failed: $(tail -3 "$TMP/lg.err")" >&2; exit 1; }
lg_msgs() { sed -n 's/.*"msgs":\([0-9]*\).*/\1/p' "$TMP/lg.out"; }

# proc_snap WHO PID: CPU time (µs; the kernel counts in ticks) and context switches of every
# thread of PID.
proc_snap() {
  [ -n "$2" ] || return 0
  local tick
  tick=$(getconf CLK_TCK)
  cat /proc/"$2"/task/*/stat | sed 's/.*) //' |
    awk -v w="$1" -v t="$tick" '{ u += $12; s += $13 }
      END { printf "cpu.%s.user_us %d\ncpu.%s.sys_us %d\n", w, u * 1e6 / t, w, s * 1e6 / t }'
  cat /proc/"$2"/task/*/status | awk -v w="$1" '/^voluntary_ctxt/ { v += $2 } /^nonvoluntary_ctxt/ { n += $2 }
      END { printf "cs.%s.voluntary %d\ncs.%s.involuntary %d\n", w, v, w, n }'
}

# Pure ACKs: no SYN/FIN/RST and no payload. On lo every segment is captured once.
PURE_ACK='tcp and tcp[tcpflags] & (tcp-syn|tcp-fin|tcp-rst) == 0 and ip[2:2] - ((ip[0] & 0xf) << 2) - ((tcp[12] & 0xf0) >> 2) == 0'

# Counters of one run, "name value" a line, appended to $TMP/c.<run>.
segments_pass() {  # segments_pass RUN T
  local out=$TMP/c.$1
  nstat_snap >"$TMP/n0"
  tcpdump -i lo -nn -s 64 -B 16384 -w "$TMP/acks.pcap" "$PURE_ACK" 2>"$TMP/td.err" &
  local td=$!
  sleep 0.5
  { proc_snap proxy "$PROXY_PID"; proc_snap echo_server "$ECHO_PID"; } >"$TMP/p0"
  echo "msgs $(echo_run "$2")" >"$out"
  { proc_snap proxy "$PROXY_PID"; proc_snap echo_server "$ECHO_PID"; } >"$TMP/p1"
  # /usr/bin/time prints seconds: as µs, and the load generator's whole run.
  awk '$1 ~ /^cpu/ { $2 *= 1e6 } { print }' "$TMP/lg.time" >>"$out"
  awk 'NR == FNR { a[$1] = $2; next } { print $1, $2 - a[$1] }' "$TMP/p0" "$TMP/p1" >>"$out"
  sleep 0.3  # last ACKs
  nstat_snap >"$TMP/n1"
  kill -INT "$td"
  wait "$td" 2>/dev/null || true
  grep -q '^0 packets dropped by kernel' "$TMP/td.err" ||
    echo "  warning: tcpdump dropped packets: $(grep dropped "$TMP/td.err" | tr '\n' ' ')" >&2
  awk 'NR == FNR { a[$1] = $2; next }
    $1 !~ /Curr|Max|Min|Algorithm/ { print "seg." $1, $2 - a[$1] }' "$TMP/n0" "$TMP/n1" >>"$out"
  # Pure ACKs by leg and by direction: a = sent by the end that is the client of the leg.
  tcpdump -r "$TMP/acks.pcap" -nn 2>/dev/null | awk -v p=".$PROXY_PORT" -v e=".$ECHO_PORT" \
    -v direct="$([ -z "$PROXY_PID" ] && echo 1 || echo 0)" '
    { src = $3; dst = $5; sub(/:$/, "", dst)
      sp = substr(src, match(src, /\.[0-9]+$/)); dp = substr(dst, match(dst, /\.[0-9]+$/))
      if (direct == 1) { if (dp == e) lg++; else if (sp == e) ec++; next }
      if (dp == p) lg++; else if (sp == p) pc++; else if (dp == e) pu++; else if (sp == e) ec++ }
    END { printf "ack.loadgen %d\nack.proxy-to-loadgen %d\nack.proxy-to-echo %d\nack.echo_server %d\n",
          lg, pc, pu, ec }' >>"$out"
}

# System calls by kind and epoll_wait returns of the three processes.
perf_pass() {  # perf_pass RUN T
  local out=$TMP/c.$1 who pid pids=() st=()
  echo_run "$2" bg
  local -A procs=([loadgen]=$LG_PID [echo_server]=$ECHO_PID)
  [ -n "$PROXY_PID" ] && procs[proxy]=$PROXY_PID
  for who in "${!procs[@]}"; do
    pid=${procs[$who]}
    pids+=("$pid")
    perf stat -x, -e 'syscalls:sys_enter_*' -p "$pid" -o "$TMP/ps.$who" 2>/dev/null &
    st+=($!)
  done
  perf record -q -o "$TMP/ep.data" -e syscalls:sys_exit_epoll_wait -e syscalls:sys_exit_epoll_pwait \
    -p "$(IFS=,; echo "${pids[*]}")" 2>/dev/null &
  st+=($!)
  sleep 1  # perf attached
  echo go >"$TMP/go"
  echo_wait
  echo "msgs $(lg_msgs)" >"$out"
  kill -INT "${st[@]}"
  wait "${st[@]}" 2>/dev/null || true
  for who in "${!procs[@]}"; do
    awk -F, -v w="$who" '$1 ~ /^[0-9]+$/ && $1 > 0 {
        n = $3; sub(/^syscalls:sys_enter_/, "", n); print "sys." w "." n, $1; t += $1 }
      END { print "sys." w ".total", t + 0 }' "$TMP/ps.$who" >>"$out"
  done
  perf script -i "$TMP/ep.data" -F pid,trace 2>/dev/null | awk -v lg="$LG_PID" -v ec="$ECHO_PID" \
    -v px="${PROXY_PID:-none}" '
    function hex(s,  i, v) {  # "0x1f" (mawk has no strtonum)
      if (s !~ /^0x/) return s + 0
      s = tolower(substr(s, 3)); v = 0
      for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
      return v }
    { w = $1 == lg ? "loadgen" : $1 == ec ? "echo_server" : $1 == px ? "proxy" : ""
      if (w == "") next
      r = hex($NF); calls[w]++; ev[w] += r; if (r == 0) zero[w]++ }
    END { for (w in calls) {
            print "ep." w ".calls", calls[w]; print "ep." w ".events", ev[w]
            print "ep." w ".empty", zero[w] + 0 } }' >>"$out"
}

# per_rt A B: every counter present in B, as (B - A) / (msgs B - msgs A).
per_rt() {
  awk 'NR == FNR { a[$1] = $2; next } { b[$1] = $2; k[++n] = $1 }
    END { d = b["msgs"] - a["msgs"]; if (d <= 0) { print "no round trips"; exit 1 }
          print "rt", d
          for (i = 1; i <= n; i++) if (k[i] != "msgs") printf "%s %.3f\n", k[i], (b[k[i]] - a[k[i]]) / d }' "$1" "$2"
}

report() {  # report TARGET FILE
  local f=$2
  echo "== $1: per round trip (difference of ${SHORT} s and ${LONG} s runs: $(awk '$1 == "rt" { print $2 }' "$f") round trips), C=$CONC D=$DEPTH S=$SIZE"
  awk '$1 ~ /^seg\./ && ($2 >= 0.005 || $2 <= -0.005) { sub(/^seg\./, "", $1); printf "  %-28s %7.3f\n", $1, $2 }' "$f"
  awk '$1 ~ /^ack\./ { sub(/^ack\./, "", $1); printf "  pure ACKs sent by %-18s %7.3f\n", $1, $2 }' "$f"
  awk '$1 ~ /^cpu\./ { split($1, p, "."); c[p[2]] = c[p[2]] sprintf(" %s %.2f", p[3] == "user_us" ? "user" : "sys", $2); who[p[2]] = 1 }
       $1 ~ /^cs\./ { split($1, p, "."); x[p[2]] = x[p[2]] sprintf(" %s %.3f", p[3], $2) }
       END { for (w in who) printf "  %-12s CPU µs:%s; context switches:%s\n", w, c[w], x[w] }' "$f"
  awk '$1 ~ /^sys\./ { split($1, p, "."); if (p[3] == "total") tot[p[2]] = $2
                       else if ($2 >= 0.005) printf "  syscalls %-12s %-14s %7.3f\n", p[2], p[3], $2 }
       $1 ~ /^ep\./ { split($1, p, "."); ep[p[2], p[3]] = $2; who[p[2]] = 1 }
       END { for (w in tot) printf "  syscalls %-12s %-14s %7.3f\n", w, "total", tot[w]
             for (w in who) if (ep[w, "calls"] > 0)
               printf "  epoll_wait %-12s %.3f calls, %.3f empty, %.2f events per call\n", w,
                 ep[w, "calls"], ep[w, "empty"], ep[w, "events"] / ep[w, "calls"] }' "$f"
}

for t in $TARGETS; do
  start_echo
  start_proxy "$t"
  echo_run 0.5 >/dev/null  # warm-up
  if [ "$TRACE" = 1 ]; then
    tcpdump -i lo -nn -tt -l -c 40 tcp >"$TMP/dump" 2>/dev/null &
    TD=$!
    ST=
    if [ -n "$PROXY_PID" ]; then
      strace -f -tt -p "$PROXY_PID" -e 'trace=!clock_gettime' -o "$TMP/trace" 2>/dev/null &
      ST=$!
    fi
    sleep 1
    CONC=1 echo_run 0.002 >/dev/null
    sleep 0.5
    kill -INT $ST "$TD" 2>/dev/null || true
    wait $ST "$TD" 2>/dev/null || true
    echo "== $t: C=1 (proxy :$PROXY_PORT, echo :$ECHO_PORT); first 40 segments, then proxy calls"
    sed -E 's/^[0-9]+\.([0-9]+) IP /\1 /; s/, (win|options) .*//' "$TMP/dump"
    [ -z "$ST" ] || grep -v 'resumed>\|SIGINT\|detached' "$TMP/trace" | sed -E 's/^[0-9]+ +//' | head -80
    stop_all
    continue
  fi
  sleep 0.3
  segments_pass s "$SHORT"
  segments_pass l "$LONG"
  per_rt "$TMP/c.s" "$TMP/c.l" >"$TMP/r.$t"
  if [ "$PERF" = 1 ]; then
    perf_pass s "$SHORT"
    perf_pass l "$LONG"
    per_rt "$TMP/c.s" "$TMP/c.l" | grep -v '^rt ' >>"$TMP/r.$t"
  fi
  report "$t" "$TMP/r.$t"
  stop_all
done
