# Sourced by the test scripts that need Debian packages beyond the build's (tests/browser,
# tests/interop).
#
# apt_deps TAG PACKAGE...
#   Installs the packages named (the caller lists only what is missing) with apt-get when run as
#   root. Returns 0 when they are installed (or none were named), 77 when some are missing and
#   this is not root (it prints the SKIP line; the caller exits 77, ctest's "skipped"), 1 when
#   apt-get fails (it prints which step).
apt_deps() {
  local tag=$1
  shift
  [[ $# -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "[$tag] SKIP: missing $* (run as root to install them with apt)"
    return 77
  fi
  echo "[$tag] installing with apt: $*"
  DEBIAN_FRONTEND=noninteractive timeout 300 apt-get update -qq \
    || { echo "[$tag] apt-get update failed" >&2; return 1; }
  DEBIAN_FRONTEND=noninteractive timeout 900 \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { echo "[$tag] apt-get install $* failed" >&2; return 1; }
}
