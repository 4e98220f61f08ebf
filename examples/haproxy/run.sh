#!/bin/sh
# Runs the HAProxy example in a copy of this directory, target/examples/haproxy (git ignores
# target/), so the checkout stays as it is: HAProxy's admin socket, admin.sock, is made there.
#
#   examples/haproxy/run.sh haproxy &     # HAProxy, backends on 127.0.0.1:8001 and :8002
#   examples/haproxy/run.sh               # the node, driving it through the copy's admin.sock
#
# With `haproxy` first, the rest of the arguments go to HAProxy; otherwise they go to the node.
# The copy is refreshed but not emptied: a running HAProxy's socket stays in it.
# The node is `cargo run --release`, or the binary ROLLBACK_NODE names.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/examples/haproxy"
mkdir -p "$work"
cp "$here/estate.toml" "$here/haproxy.cfg" "$work/"
cd "$work"
if [ "${1:-}" = haproxy ]; then
    shift
    exec haproxy -f haproxy.cfg "$@"
fi
if [ -n "${ROLLBACK_NODE:-}" ]; then
    exec "$ROLLBACK_NODE" --estate estate.toml "$@"
fi
exec cargo run --quiet --release --manifest-path "$root/Cargo.toml" -- --estate estate.toml "$@"
