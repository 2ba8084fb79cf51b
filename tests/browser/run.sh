#!/usr/bin/env bash
# Browser test (ctest: browser.ticker): a real headless Chromium opens the stock-ticker demo page
# THROUGH upgate and sees live prices arrive over a WebSocket served by the longpoll bridge.
#   1. installs what is missing: Debian's chromium (and nodejs/npm) with apt when root, and
#      playwright-core with `npm ci` from tests/browser/package-lock.json into a cache folder
#      outside the source tree (default /var/tmp/upgate-browser-node-<lock hash>; set
#      UPGATE_BROWSER_NODE_DIR to choose), so the checkout stays clean;
#   2. starts docker/demo/ticker_app.py (port 0, --tick 0.3) and checks the page loaded from the
#      app directly shows "closed" (the app serves no WebSocket: the page needs upgate);
#   3. starts $UPGATE_BIN (2 workers, listener 127.0.0.1:0, `ticker` longpoll + `site` http
#      routes to the app) and checks the page, /poll and /send through it with curl;
#   4. runs ticker.test.js: >= 3 price updates over the WebSocket within 30 s, state
#      "connected", a BUY click gets the app's order reply; screenshot ./ticker.png;
#   5. checks the app's /stats (the order arrived as a POST; never more than one poll in flight
#      for the page's channel), SIGTERMs upgate (exit 0 required), stops the app.
# Screenshots (ticker.png, ticker-direct.png) go to the working directory (ctest's: the build's
# tests/browser). Exit 0 = pass, 1 = fail, 77 = skipped (something is missing and we are not root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=$(pwd)
py=/usr/bin/python3
chromium=/usr/bin/chromium
upgate=${UPGATE_BIN:-$repo/build/gateway/upgate}
symbols=GOOG,AAPL,MSFT,AMZN   # the app's default symbols, which the page subscribes to

now_ms() { echo $(($(date +%s%N) / 1000000)); }
secs_since() { local d=$(($(now_ms) - $1)); printf '%d.%d' $((d / 1000)) $((d % 1000 / 100)); }
t_start=$(now_ms)
phase_start=$t_start
declare -a timings=()
phase_done() {  # phase_done NAME: the seconds since the previous phase ended
  timings+=("$(printf '%-10s %6ss' "$1:" "$(secs_since "$phase_start")")")
  phase_start=$(now_ms)
}
log() { echo "[browser] $*"; }

work=$(mktemp -d /tmp/upgate-browser.XXXXXX)
app_pid=""
gw_pid=""
fail() {
  echo "[browser] FAIL: $*" >&2
  if [[ -s $work/upgate.err ]]; then
    echo "---- upgate stderr (last 40 lines) ----" >&2; tail -n 40 "$work/upgate.err" >&2
  fi
  if [[ -s $work/app.err ]]; then
    echo "---- ticker app stderr (last 25 lines) ----" >&2; tail -n 25 "$work/app.err" >&2
  fi
  exit 1
}
stop_rc=""
stop_pid() {  # stop_pid PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL. Sets stop_rc to
  local pid=$1 secs=$2 i  # the exit code, or "killed" (not in $(...): wait needs this shell)
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < secs * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    stop_rc=killed
    return 0
  fi
  stop_rc=0
  wait "$pid" 2>/dev/null || stop_rc=$?
}
cleanup() {
  local rc=$?
  set +e
  [[ -n $gw_pid ]] && stop_pid "$gw_pid" 10
  [[ -n $app_pid ]] && stop_pid "$app_pid" 5
  rm -rf "$work"
  local t
  for t in "${timings[@]}"; do echo "  $t"; done
  printf '  total:     %6ss\n' "$(secs_since "$t_start")"
  [[ $rc -eq 0 ]] && log "PASS"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

wait_for() {  # wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 10; i++)); do
    if "$@"; then return 0; fi
    sleep 0.1
  done
  fail "$what: not within ${secs}s"
}

# ---- 1. tools ----------------------------------------------------------------------------------
[[ -x $upgate ]] || fail "no upgate binary at $upgate (set UPGATE_BIN)"
missing=()
[[ -x $chromium ]] || missing+=(chromium)
[[ -x $py ]] || missing+=(python3)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
# shellcheck source=../support/apt_deps.sh
source "$repo/tests/support/apt_deps.sh"
apt_rc=0
apt_deps browser "${missing[@]+"${missing[@]}"}" || apt_rc=$?
if ((apt_rc == 77)); then
  trap - EXIT
  rm -rf "$work"
  exit 77
fi
((apt_rc == 0)) || fail "could not install ${missing[*]}"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 18)) || fail "node $(node --version) is too old for playwright-core (>= 18)"

# shellcheck source=../support/node_deps.sh
source "$repo/tests/support/node_deps.sh"
node_deps "$here" browser playwright-core "${UPGATE_BROWSER_NODE_DIR:-}" \
  || fail "npm ci (playwright-core)"
phase_done tools

# ---- 2. the legacy app, alone --------------------------------------------------------------------
"$py" "$repo/docker/demo/ticker_app.py" --host 127.0.0.1 --port 0 --tick 0.3 --symbols "$symbols" \
  >"$work/app.out" 2>"$work/app.err" &
app_pid=$!
app_listening() {
  kill -0 "$app_pid" 2>/dev/null || fail "the ticker app exited: $(cat "$work/app.err")"
  grep -qs '^ticker app on http://' "$work/app.out"
}
wait_for 10 "the ticker app listening" app_listening
app_port=$(sed -n 's#^ticker app on http://127\.0\.0\.1:\([0-9]*\)/$#\1#p' "$work/app.out")
[[ -n $app_port ]] || fail "cannot read the app's port from: $(cat "$work/app.out")"
log "ticker app (pid $app_pid) on 127.0.0.1:$app_port"
phase_done app

log "the page loaded from the app directly (no upgate) must show \"closed\""
node "$here/ticker.test.js" --url "http://127.0.0.1:$app_port/" --expect closed \
  --screenshot "$out/ticker-direct.png" || fail "the page loaded from the app directly"
phase_done direct

# ---- 3. upgate in front of it --------------------------------------------------------------------
cat >"$work/upgate.yaml" <<EOF
workers: 2
listeners:
  - name: public
    address: 127.0.0.1:0
upstreams:
  legacy:
    endpoints: [127.0.0.1:$app_port]
routes:
  - name: ticker
    match: { path_prefix: /ticker }
    kind: longpoll
    upstream: legacy
    longpoll:
      channel: "{query.symbols}"
      poll: "/poll?symbols={query.symbols}&cursor={cursor}"
      cursor: { header: X-Cursor, initial: "0" }
      split: json_array
      send: /send
  - name: site
    match: { path_prefix: / }
    kind: http
    upstream: legacy
EOF
"$upgate" -t -c "$work/upgate.yaml" >"$work/check.out" 2>&1 \
  || fail "upgate -t rejects the config:
$(cat "$work/check.out")
config:
$(cat "$work/upgate.yaml")"
"$upgate" -c "$work/upgate.yaml" --ready-file "$work/ready" >"$work/upgate.out" 2>"$work/upgate.err" &
gw_pid=$!
gw_ready() {
  kill -0 "$gw_pid" 2>/dev/null || fail "upgate exited before writing its ready file"
  [[ -s $work/ready ]]
}
wait_for 15 "upgate's ready file" gw_ready
gw_addr=$(awk '$1 == "public" { print $2 }' "$work/ready")
[[ $gw_addr =~ ^127\.0\.0\.1:[0-9]+$ ]] || fail "unexpected ready file: $(cat "$work/ready")"
base="http://$gw_addr"
log "upgate (pid $gw_pid) on $gw_addr"

# Plain HTTP through the `site` route first: if these fail, the browser cannot work either.
curl -fsS --max-time 10 "$base/" -o "$work/page.html" || fail "GET $base/ through upgate"
grep -q '<title>upgate stock ticker</title>' "$work/page.html" || fail "GET / through upgate: not the page"
curl -fsS --max-time 10 "$base/poll?symbols=GOOG&cursor=0" -o "$work/poll.json" \
  || fail "GET /poll through upgate"
grep -q '"symbol":"GOOG"' "$work/poll.json" || fail "GET /poll through upgate: $(cat "$work/poll.json")"
log "GET / and /poll through upgate: ok"
phase_done upgate

# ---- 4. the browser, through upgate --------------------------------------------------------------
node "$here/ticker.test.js" --url "$base/" --expect connected --min-updates 3 --timeout 30 \
  --screenshot "$out/ticker.png" || fail "the page loaded through upgate"
phase_done browser

# ---- 5. what the app saw, and a clean stop -------------------------------------------------------
stats=$(curl -fsS --max-time 10 "http://127.0.0.1:$app_port/stats") || fail "GET /stats from the app"
log "app stats: $stats"
"$py" - "$stats" "$symbols" <<'EOF' || fail "the app's stats"
import json, sys
stats, key = json.loads(sys.argv[1]), sys.argv[2]
problems = []
if stats["orders"] < 1:
    problems.append("no order reached the app's /send (BUY went nowhere)")
if stats["polls"].get(key, 0) < 1:
    problems.append("upgate never polled /poll?symbols=%s" % key)
if stats["max_in_flight"].get(key, 0) > 1:
    problems.append("%d polls were in flight at once for channel %s (want 1)"
                    % (stats["max_in_flight"][key], key))
for p in problems:
    print("[browser] " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

stop_pid "$gw_pid" 15
gw_pid=""
[[ $stop_rc == 0 ]] || fail "upgate did not exit 0 after SIGTERM (exit: $stop_rc)"
log "upgate stopped on SIGTERM with exit 0"
stop_pid "$app_pid" 5
app_pid=""
[[ $stop_rc == 0 ]] || fail "the ticker app did not exit 0 after SIGTERM (exit: $stop_rc)"
phase_done teardown
