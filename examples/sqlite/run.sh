#!/bin/sh
# Runs the SQLite example in a fresh copy of this directory, target/examples/sqlite (git ignores
# target/), so the checkout stays as it is: app.db is created there, beside the copied estate.
# Arguments go to the node; requests come on standard input (see README.md).
#
# The node is `cargo run --release`, or the binary ROLLBACK_NODE names.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/examples/sqlite"
rm -rf "$work"
mkdir -p "$work"
cp -R "$here/estate.toml" "$here/migrations" "$work/"
cd "$work"
if [ -n "${ROLLBACK_NODE:-}" ]; then
    exec "$ROLLBACK_NODE" --estate estate.toml "$@"
fi
exec cargo run --quiet --release --manifest-path "$root/Cargo.toml" -- --estate estate.toml "$@"
