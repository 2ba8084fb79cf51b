#!/usr/bin/env bash
# Interop test (ctest: interop.node_ws): node's `ws`, a WebSocket implementation independent of
# python-websockets and of upgate, as client and as upstream of upgate in frames mode with
# per-leg permessage-deflate (see ws_roundtrip.test.js for what is checked).
#   1. installs what is missing: nodejs/npm and python3-websockets with apt when root, and `ws`
#      with `npm ci` from tests/interop/package-lock.json into a cache folder outside the source
#      tree (default /var/tmp/upgate-interop-node-<lock hash>; set UPGATE_INTEROP_NODE_DIR to
#      choose), so the checkout stays clean;
#   2. runs ws_roundtrip.test.js, which starts the upstreams and $UPGATE_BIN itself.
# Exit 0 = pass, 1 = fail, 77 = skipped (something is missing and we are not root).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
py=/usr/bin/python3
export UPGATE_BIN=${UPGATE_BIN:-$repo/build/gateway/upgate}
export UPGATE_IT_PYTHON=$py

log() { echo "[interop] $*"; }
fail() { echo "[interop] FAIL: $*" >&2; exit 1; }

# ---- 1. tools ----------------------------------------------------------------------------------
[[ -x $UPGATE_BIN ]] || fail "no upgate binary at $UPGATE_BIN (set UPGATE_BIN)"
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
{ [[ -x $py ]] && "$py" -c 'import websockets' 2>/dev/null; } || missing+=(python3-websockets)
# shellcheck source=../support/apt_deps.sh
source "$repo/tests/support/apt_deps.sh"
apt_rc=0
apt_deps interop "${missing[@]+"${missing[@]}"}" || apt_rc=$?
((apt_rc != 77)) || exit 77
((apt_rc == 0)) || fail "could not install ${missing[*]}"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 18)) || fail "node $(node --version) is too old (>= 18)"

# shellcheck source=../support/node_deps.sh
source "$repo/tests/support/node_deps.sh"
node_deps "$here" interop ws "${UPGATE_INTEROP_NODE_DIR:-}" || fail "npm ci (ws)"
log "ws $(node -p 'require("ws/package.json").version'), node $(node --version)"

# ---- 2. the test -------------------------------------------------------------------------------
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec node "$here/ws_roundtrip.test.js"
