#!/usr/bin/env bash
# What upgate's own options cost, measured against its default in ONE run (interleaved reps,
# medians): the proxy's CPU time per 64 B round trip for
#   passthrough   workers: 1, mode: passthrough (the baseline; run.sh compares it to nginx,
#                 HAProxy and a direct connection)
#   frames        workers: 1, mode: frames (every frame parsed and checked on both legs)
#   keepalive     workers: 1, passthrough with keepalive {interval: 1s} (frame tracking and
#                 pings on quiet legs; under load nothing is quiet, so this is the tracking cost)
#   workers2      workers: 2, passthrough, both threads on the proxy core (shared state on the
#                 data path would show as a rise in CPU per message)
# plus the ratio of each to passthrough. Load generator and echo upstream on CPU_CLIENT (0), the
# gateway on CPU_PROXY (1), as in run.sh.
#
# Usage: tests/bench/modes.sh [--reps N] [--duration S] [--upgate PATH] [--bench-dir DIR]
#   defaults: 3 reps of 6 s (about 1.5 minutes); C=50 connections, depth 1, 64 B messages.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
REPS=3 DURATION=6 WARMUP=1 CONNS=50
UPGATE=${UPGATE:-$ROOT/build/gateway/upgate}
BENCH_DIR=$ROOT/build-bench/tests/bench
CPU_CLIENT=${CPU_CLIENT:-0} CPU_PROXY=${CPU_PROXY:-1}
VARIANTS="passthrough frames keepalive workers2"

while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --upgate) UPGATE=$2; shift ;;
    --bench-dir) BENCH_DIR=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "modes.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done

if [ ! -x "$BENCH_DIR/loadgen" ] || [ ! -x "$BENCH_DIR/echo_server" ]; then
  echo "modes.sh: building loadgen and echo_server in $ROOT/build-bench"
  cmake -S "$ROOT" -B "$ROOT/build-bench" -DCMAKE_BUILD_TYPE=Release -DUPGATE_BUILD_TESTS=ON >/dev/null
  cmake --build "$ROOT/build-bench" -j2 --target loadgen echo_server >/dev/null
  BENCH_DIR=$ROOT/build-bench/tests/bench
fi
[ -x "$UPGATE" ] || { echo "modes.sh: no upgate binary at $UPGATE" >&2; exit 2; }

work=$(mktemp -d /tmp/upgate-modes.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_file() {  # wait_file PATH: up to 5 s for a non-empty file
  for _ in $(seq 50); do [ -s "$1" ] && return 0; sleep 0.1; done
  echo "modes.sh: $1 did not appear" >&2
  exit 1
}

taskset -c "$CPU_CLIENT" "$BENCH_DIR/echo_server" --port 0 --ready-file "$work/echo.ready" \
  >"$work/echo.log" 2>&1 &
pids+=($!)
wait_file "$work/echo.ready"
echo_addr=$(awk '{print $NF}' "$work/echo.ready")

config() {  # config VARIANT: the gateway config for one variant
  local workers=1 route="{name: all, upstream: echo}"
  case $1 in
    frames) route="{name: all, upstream: echo, mode: frames}" ;;
    keepalive) route="{name: all, upstream: echo, keepalive: {interval: 1s, timeout: 1s}}" ;;
    workers2) workers=2 ;;
  esac
  cat <<YAML
workers: $workers
listeners: [{name: public, address: "127.0.0.1:0"}]
upstreams: {echo: {endpoints: ["$echo_addr"]}}
routes: [$route]
log: {level: warn, access_log: false}
YAML
}

measure() {  # measure VARIANT REP: one loadgen run against a fresh gateway; appends JSON
  local v=$1 rep=$2
  config "$v" >"$work/$v.yaml"
  rm -f "$work/gw.ready"
  taskset -c "$CPU_PROXY" "$UPGATE" -c "$work/$v.yaml" --ready-file "$work/gw.ready" \
    >/dev/null 2>"$work/gw.err" &
  local gp=$!
  wait_file "$work/gw.ready"
  local addr
  addr=$(awk '/^public /{print $2}' "$work/gw.ready")
  taskset -c "$CPU_CLIENT" "$BENCH_DIR/loadgen" echo --url "ws://$addr/bench" -c "$CONNS" -d 1 \
    -s 64 -t "$DURATION" -w "$WARMUP" --watch "$gp" --label "$v" 2>/dev/null |
    grep '^{' | sed "s/^{/{\"rep\":$rep,/" >>"$work/raw.jsonl"
  kill "$gp"
  wait "$gp" 2>/dev/null || true
}

echo "modes.sh: $REPS reps x $(wc -w <<<"$VARIANTS") variants, ${DURATION}s each, C=$CONNS D=1 64 B"
echo "machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for rep in $(seq "$REPS"); do
  for v in $VARIANTS; do measure "$v" "$rep"; done
done

python3 - "$work/raw.jsonl" "$VARIANTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
variants = sys.argv[2].split()
med = {}
print("| variant | msgs/s | proxy CPU us per round trip | vs passthrough | errors | other load |")
print("|---|---|---|---|---|---|")
for v in variants:
    rs = [r for r in rows if r["label"] == v]
    if not rs:
        continue
    cpu = statistics.median(r["cpu_us_per_msg"] for r in rs)
    med[v] = cpu
    base = med.get("passthrough", cpu)
    print("| %s | %.0f | %.2f | %.2fx | %d | %.2f |" % (
        v, statistics.median(r["msgs_per_s"] for r in rs), cpu, cpu / base,
        sum(r["errors"] for r in rs), statistics.median(r["foreign_share"] for r in rs)))
bad = [v for v in variants if v in med and v != "passthrough" and med[v] > 1.15 * med["passthrough"]]
if bad:
    print("\nover 1.15x passthrough: " + ", ".join(bad))
PY
