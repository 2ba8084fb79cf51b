#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, ASan and UBSan (the CMake project in
# tests/fuzz/standalone/, separate from the g++ build) and runs each for a bounded time on a
# temporary copy of its seed corpus in tests/fuzz/corpus/<target>/ (the repository is never
# written to). Registered with ctest as fuzz.parsers (label fuzz); also runs by hand:
#
#   bash tests/fuzz/run.sh [--build-dir DIR] [target...]
#
#   targets              fuzz_frame_parser fuzz_request_parser fuzz_response_parser
#                        fuzz_frame_relay fuzz_tcp_bridge (default: all)
#   --build-dir DIR      clang build, logs and artifacts (default: <repo>/build-fuzz)
#   UPGATE_FUZZ_SECONDS  fuzzing time per target (default 60)
#
# Installs clang and its runtime libraries (Debian's clang and libclang-rt-dev), and the libraries
# the tunnel target links (zlib1g-dev, libspdlog-dev), when they are missing, as root or through
# sudo. Exit status: 0 when every target ran its time without a finding; 1 on any crash, failed
# invariant (FUZZ_CHECK), leak, UBSan or ASan report, per-input timeout or out-of-memory (the
# reproducer is kept under DIR/artifacts/<target>/ and dumped in hex; rerun it with
# `DIR/<target> FILE`); 2 when the fuzzers could not be built or run.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
all_targets=(fuzz_frame_parser fuzz_request_parser fuzz_response_parser fuzz_frame_relay
             fuzz_tcp_bridge)

build="$root/build-fuzz"
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build="$2"; shift 2 ;;
    --build-dir=*) build="${1#*=}"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    fuzz_*) targets+=("$1"); shift ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${all_targets[@]}")
seconds="${UPGATE_FUZZ_SECONDS:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "run.sh: UPGATE_FUZZ_SECONDS must be a positive integer, not '$seconds'" >&2
  exit 2
fi
mkdir -p "$build"
build=$(cd "$build" && pwd)

# ---- toolchain ---------------------------------------------------------------------------------

# True if clang++ can build and run a libFuzzer + ASan + UBSan binary.
probe_clang() {
  command -v clang >/dev/null && command -v clang++ >/dev/null || return 1
  local d
  d=$(mktemp -d "$build/probe.XXXXXX")
  printf '%s\n' '#include <cstddef>' '#include <cstdint>' \
    'extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }' >"$d/p.cc"
  local ok=0
  clang++ -fsanitize=fuzzer,address,undefined "$d/p.cc" -o "$d/p" >"$d/log" 2>&1 &&
    "$d/p" -runs=1 >>"$d/log" 2>&1 || ok=1
  [[ $ok -eq 0 ]] || sed 's/^/  probe: /' "$d/log" | tail -n 5 >&2
  rm -rf "$d"
  return $ok
}

apt_install() {
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      echo "run.sh: need root (or password-less sudo) to install: $*" >&2
      exit 2
    fi
  fi
  echo "run.sh: installing $*"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
[[ -f /usr/share/llhttp/llhttp.c ]] || missing+=(node-llhttp)
[[ -f /usr/include/zlib.h ]] || missing+=(zlib1g-dev)
[[ -f /usr/include/spdlog/spdlog.h ]] || missing+=(libspdlog-dev)
if ! probe_clang 2>/dev/null; then
  missing+=(clang libclang-rt-dev)
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  apt_install "${missing[@]}"
  if ! probe_clang; then
    echo "run.sh: clang++ still cannot build a -fsanitize=fuzzer,address,undefined binary" >&2
    exit 2
  fi
fi

# ---- build ---------------------------------------------------------------------------------------

# Not the caller's make jobserver (ctest may run under make) nor its compiler choice.
unset MAKEFLAGS MFLAGS MAKELEVEL
echo "run.sh: building ${targets[*]} with $(clang++ --version | head -n 1) in $build"
if ! { cmake -S "$here/standalone" -B "$build" -DCMAKE_C_COMPILER=clang \
         -DCMAKE_CXX_COMPILER=clang++ &&
       cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"; } >"$build/build.log" 2>&1; then
  tail -n 40 "$build/build.log" >&2
  echo "run.sh: build failed (full log: $build/build.log)" >&2
  exit 2
fi

# ---- fuzz ----------------------------------------------------------------------------------------

export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

work_dirs=()
cleanup() { [[ ${#work_dirs[@]} -eq 0 ]] || rm -rf "${work_dirs[@]}"; }
trap cleanup EXIT

hexdump_file() {
  if command -v xxd >/dev/null; then
    xxd "$1" | head -n 64
  else
    od -A x -t x1z -v "$1" | head -n 64
  fi
}

failed=()
mkdir -p "$build/logs"
for t in "${targets[@]}"; do
  bin="$build/$t"
  log="$build/logs/$t.log"
  artifacts="$build/artifacts/$t"
  rm -rf "$artifacts"
  mkdir -p "$artifacts"
  work=$(mktemp -d "$build/corpus-$t.XXXXXX")
  work_dirs+=("$work")
  if [[ -d "$here/corpus/$t" ]]; then
    cp -R "$here/corpus/$t/." "$work/"
  fi
  args=(-max_total_time="$seconds" -rss_limit_mb=2048 -max_len=4096 -timeout=20
        -print_final_stats=1 -artifact_prefix="$artifacts/")
  case "$t" in
    fuzz_request_parser|fuzz_response_parser) args+=(-dict="$here/http.dict") ;;
  esac
  echo "run.sh: $t for ${seconds}s (seeds: $(find "$work" -type f | wc -l))"
  rc=0
  "$bin" "${args[@]}" "$work" >"$log" 2>&1 || rc=$?
  done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)
  stats=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || true)
  if [[ $rc -ne 0 || -z "$done_line" ]] ||
     grep -qE 'FUZZ_CHECK failed|runtime error:|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' "$log"; then
    failed+=("$t")
    echo "run.sh: $t FAILED (exit $rc); log: $log"
    # (|| true: head closing the pipe early must not end the script under pipefail)
    { grep -nE -A 3 'FUZZ_CHECK failed|runtime error:|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)' \
        "$log" | head -n 20 | sed 's/^/  | /'; } || true
    { grep -E -A 30 'ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:' "$log" |
        grep -E '^ +#[0-9]+ ' | head -n 15 | sed 's/^/  | /'; } || true
    for a in "$artifacts"/*; do
      [[ -f "$a" ]] || continue
      echo "  reproducer $a ($(stat -c %s "$a") bytes); rerun: $bin $a"
      { hexdump_file "$a" | sed 's/^/    /'; } || true
    done
  else
    echo "run.sh: $t OK: $done_line; $stats"
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run.sh: findings in: ${failed[*]}"
  exit 1
fi
echo "run.sh: all targets ran ${seconds}s without a finding"
