# Sourced by the tests that drive node packages (tests/browser, tests/interop).
#
# node_deps DIR NAME MODULE [OVERRIDE]
#   Installs the packages pinned by DIR/package.json and DIR/package-lock.json with `npm ci`
#   into a cache folder outside the source tree, so the checkout stays clean and reruns are
#   offline: OVERRIDE if set and non-empty, else /var/tmp/upgate-NAME-node-<hash of the lock>.
#   Skips npm when the folder already holds the same lock and node_modules/MODULE. Two build
#   trees running at once share the folder under a lock. Exports NODE_PATH; returns non-zero if
#   npm fails (the caller reports it).
node_deps() {
  local dir=$1 name=$2 module=$3 override=${4:-}
  local hash node_dir
  hash=$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -c1-16)
  node_dir=${override:-/var/tmp/upgate-$name-node-$hash}
  mkdir -p "$node_dir" || return 1
  (
    flock -w 600 9 || exit 1
    if ! cmp -s "$dir/package-lock.json" "$node_dir/package-lock.json" \
       || [[ ! -f $node_dir/node_modules/$module/package.json ]]; then
      cp "$dir/package.json" "$dir/package-lock.json" "$node_dir/"
      cd "$node_dir" || exit 1
      echo "[$name] npm ci in $node_dir"
      timeout 600 npm ci --no-audit --no-fund --loglevel=error
    fi
  ) 9>"$node_dir/.lock" || return 1
  export NODE_PATH=$node_dir/node_modules
}
