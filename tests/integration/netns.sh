#!/usr/bin/env bash
# Runs an integration test in a network namespace of its own, with its loopback up: a test there
# may drop packets with nftables (a peer that vanishes without a FIN or a reset) and touch
# nothing of the machine's own network. Needs root; installs nftables when it is missing.
#
#   netns.sh PYTHON TEST.py [ARGS...]
#
# Exits 77 (ctest's "skipped") when not root, or when the machine cannot make a network
# namespace with nftables in it.
set -euo pipefail
# shellcheck source=../support/apt_deps.sh
. "$(dirname "${BASH_SOURCE[0]}")/../support/apt_deps.sh"
if [[ $(id -u) -ne 0 ]]; then
  echo "[netns] SKIP: a network namespace and nftables need root"
  exit 77
fi
missing=()
command -v nft >/dev/null || missing+=(nftables)
command -v ip >/dev/null || missing+=(iproute2)
rc=0
apt_deps netns "${missing[@]}" || rc=$?
[[ $rc -eq 0 ]] || exit "$rc"
# Root in a container may still lack the rights to make a namespace, or the kernel nftables.
if ! probe=$(unshare --net -- bash -c 'ip link set lo up && nft list tables' 2>&1); then
  echo "[netns] SKIP: cannot make a network namespace with nftables here: $probe"
  exit 77
fi
export UPGATE_NETNS=1
exec unshare --net -- bash -c 'ip link set lo up && exec "$@"' netns "$@"
