#!/usr/bin/env bash
# Container image smoke test (ctest: container.image), for Debian bookworm machines with no
# Docker engine and no reachable container registry. As root:
#   1. installs podman, runc, debootstrap and python3-websockets if missing;
#   2. points podman at a private containers.conf (runtime runc, ulimits within the hard limits);
#   3. makes the debian:bookworm base image with debootstrap unless it already exists (kept
#      between runs) and tags it debian:bookworm-slim too, so docker/Dockerfile builds unchanged;
#   4. builds docker/Dockerfile as upgate:test (--pull=never);
#   5. checks --version and -t on the baked config, then runs the image (host network) with a
#      config mounted over /etc/upgate/upgate.yaml that tunnels to a local echo upstream, does
#      a real WebSocket echo through it, checks it runs as non-root, stops it and checks exit 0.
# Exit 0 = pass, 1 = fail, 77 = skipped (not root). Every wait is bounded.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
here=tests/container
image=upgate:test
py=/usr/bin/python3

t_start=$(date +%s)
phase_start=$t_start
declare -a timings=()
phase_done() {  # phase_done NAME: records the seconds since the previous phase ended
  local now
  now=$(date +%s)
  timings+=("$1: $((now - phase_start))s")
  phase_start=$now
}
report_times() {
  local t
  for t in "${timings[@]}"; do echo "  $t"; done
  echo "total: $(($(date +%s) - t_start))s"
}
log() { echo "[container] $*"; }
fail() {
  echo "[container] FAIL: $*" >&2
  if [[ -n "${cname:-}" ]] && podman container exists "$cname" 2>/dev/null; then
    echo "---- podman logs $cname (last 50 lines) ----" >&2
    podman logs --tail 50 "$cname" >&2 2>&1 || true
  fi
  exit 1
}

if [[ $(id -u) -ne 0 ]]; then
  echo "[container] SKIP: needs root (installs packages, runs rootful podman)"
  exit 77
fi

work=$(mktemp -d /var/tmp/upgate-container.XXXXXX)
cname="upgate-test-$$"
echo_pid=""
cleanup() {
  local rc=$?
  set +e
  if podman container exists "$cname" 2>/dev/null; then podman rm -f -t 0 "$cname" >/dev/null 2>&1; fi
  if [[ -n "$echo_pid" ]]; then kill "$echo_pid" 2>/dev/null; wait "$echo_pid" 2>/dev/null; fi
  rm -rf "$work"
  report_times
  if [[ $rc -eq 0 ]]; then log "PASS"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- 1. tools ----------------------------------------------------------------------------------
missing=()
for cmd_pkg in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${cmd_pkg%%:*}" >/dev/null 2>&1 || missing+=("${cmd_pkg#*:}")
done
[[ -x $py ]] || missing+=(python3)
if ! { [[ -x $py ]] && $py -c 'import websockets' 2>/dev/null; }; then missing+=(python3-websockets); fi
if [[ ${#missing[@]} -gt 0 ]]; then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 apt-get update -qq
  timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
phase_done "tools"

# ---- 2. podman settings ------------------------------------------------------------------------
# crun rejects hybrid cgroups, so runc; container ulimits above the hard limits make runc's
# setrlimit fail, so cap them.
hard_nofile=$(ulimit -Hn)
[[ $hard_nofile == unlimited ]] && hard_nofile=1048576
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${hard_nofile}:${hard_nofile}", "nproc=4096:4096"]

[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$work/containers.conf"

# ---- 3. base images ----------------------------------------------------------------------------
if ! podman image exists debian:bookworm; then
  # The mirror this machine already uses; never a host written into the repository.
  # shellcheck disable=SC2016  # $(...) is apt's format syntax, not the shell's
  targets=$(apt-get indextargets --format '$(REPO_URI) $(CODENAME)' | sort -u)
  mirror=$(awk '$2 == "bookworm" { print $1; exit }' <<<"$targets")
  [[ -n $mirror ]] || fail "no bookworm mirror in 'apt-get indextargets' (is this Debian bookworm?)"
  log "making debian:bookworm with debootstrap from $mirror"
  rootfs="$work/rootfs"
  timeout 900 debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
  awk '$2 ~ /^bookworm(-|$)/ { print "deb " $1 " " $2 " main" }' <<<"$targets" >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import -q --change 'CMD ["bash"]' - docker.io/library/debian:bookworm >/dev/null
  rm -rf "$rootfs"
  base_phase="base image (debootstrap + import)"
else
  log "debian:bookworm exists, reused"
  base_phase="base image (cached)"
fi
if ! podman image exists debian:bookworm-slim; then
  podman tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
fi
phase_done "$base_phase"

# ---- 4. image build ----------------------------------------------------------------------------
log "building $image from docker/Dockerfile"
timeout 1500 podman build --pull=never -f docker/Dockerfile -t "$image" . >"$work/build.log" 2>&1 ||
  { tail -60 "$work/build.log" >&2; fail "podman build failed (full log above, last 60 lines)"; }
phase_done "image build"

# ---- 5. checks ---------------------------------------------------------------------------------
out=$(timeout 60 podman run --rm --network none "$image" --version) || fail "--version failed"
[[ $out =~ ^upgate\ [0-9] ]] || fail "--version printed: $out"
log "version: $out"
out=$(timeout 60 podman run --rm --network none "$image" -t -c /etc/upgate/upgate.yaml 2>&1) ||
  fail "baked config rejected: $out"
[[ $out == *"configuration OK"* ]] || fail "-t printed: $out"
log "baked config: $out"
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[[ -n $user && $user != root && $user != 0 && $user != 0:* ]] || fail "image USER is '$user'"

# Echo upstream on 127.0.0.1, port chosen by the kernel.
$py "$here/ws_peer.py" serve >"$work/echo.out" 2>"$work/echo.err" &
echo_pid=$!
echo_port=""
for _ in $(seq 100); do  # up to 10 s
  echo_port=$(awk '$1 == "PORT" { print $2 }' "$work/echo.out")
  [[ -n $echo_port ]] && break
  kill -0 "$echo_pid" 2>/dev/null || fail "echo upstream exited: $(cat "$work/echo.err")"
  sleep 0.1
done
[[ -n $echo_port ]] || fail "echo upstream did not report its port"

gw_port=$($py "$here/ws_peer.py" free-port)
# The baked config with the listener and the upstream moved to loopback (host network).
sed -e "s|address: 0.0.0.0:8080|address: 127.0.0.1:${gw_port}|" \
    -e "s|endpoints: \[echo:9001\]|endpoints: [127.0.0.1:${echo_port}]|" \
    conf/examples/docker.yaml >"$work/upgate.yaml"
{ grep -q "127.0.0.1:${gw_port}" "$work/upgate.yaml" && grep -q "127.0.0.1:${echo_port}" "$work/upgate.yaml"; } ||
  fail "could not rewrite conf/examples/docker.yaml (listener/endpoint lines changed?)"
chmod 0644 "$work/upgate.yaml"

log "running $image on 127.0.0.1:$gw_port -> echo upstream 127.0.0.1:$echo_port"
timeout 60 podman run -d --name "$cname" --network host \
  -v "$work/upgate.yaml:/etc/upgate/upgate.yaml:ro" "$image" >/dev/null || fail "podman run failed"
up=""
for _ in $(seq 150); do  # up to 15 s
  if (exec 3<>"/dev/tcp/127.0.0.1/$gw_port") 2>/dev/null; then up=1; break; fi
  [[ $(podman inspect --format '{{.State.Running}}' "$cname") == true ]] || fail "container exited"
  sleep 0.1
done
[[ -n $up ]] || fail "gateway not listening on 127.0.0.1:$gw_port after 15 s"
phase_done "checks + container start"

timeout 60 $py "$here/ws_peer.py" check "ws://127.0.0.1:${gw_port}/container-test" ||
  fail "WebSocket echo through the container failed"
# The access log line is written when the session ends, on the container's stdout.
logged=""
for _ in $(seq 50); do  # up to 5 s
  if podman logs "$cname" 2>/dev/null | grep -q '"route":"echo".*"status":101'; then logged=1; break; fi
  sleep 0.1
done
[[ -n $logged ]] || fail "no access log line for the echo session in podman logs"

uid_exec=$(timeout 30 podman exec "$cname" id -u) || fail "podman exec id -u failed"
pid=$(podman inspect --format '{{.State.Pid}}' "$cname")
uid_proc=$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")
[[ $uid_exec != 0 && $uid_proc != 0 ]] || fail "runs as root (exec uid $uid_exec, gateway uid $uid_proc)"
log "non-root: image USER $user, exec uid $uid_exec, gateway process uid $uid_proc"

t_stop=$(date +%s)
timeout 60 podman stop -t 10 "$cname" >/dev/null || fail "podman stop failed"
code=$(podman inspect --format '{{.State.ExitCode}}' "$cname")
log "stopped in $(($(date +%s) - t_stop))s, exit code $code"
[[ $code == 0 ]] || fail "exit code after SIGTERM is $code, expected 0"
phase_done "echo + user + stop"
