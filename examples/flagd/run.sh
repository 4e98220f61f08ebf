#!/bin/sh
# Runs the flagd example in a fresh copy of this directory, target/examples/flagd (git ignores
# target/), so the checkout stays as it is: the kill switch rewrites the copy's flags.json, never
# examples/flagd/flags.json. Arguments go to the node, such as `--ofrep 127.0.0.1:8016`; requests
# come on standard input (see README.md).
#
# The node is `cargo run --release`, or the binary ROLLBACK_NODE names.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/examples/flagd"
rm -rf "$work"
mkdir -p "$work"
cp "$here/estate.toml" "$here/flags.json" "$work/"
cd "$work"
if [ -n "${ROLLBACK_NODE:-}" ]; then
    exec "$ROLLBACK_NODE" --estate estate.toml "$@"
fi
exec cargo run --quiet --release --manifest-path "$root/Cargo.toml" -- --estate estate.toml "$@"
