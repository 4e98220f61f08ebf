#!/bin/sh
# Runs the node as a service on the built-in example estate, in target/examples/service (git
# ignores target/), so the checkout stays as it is. It makes two tokens with `new-token` — an
# operator and an admin — writes their secrets to target/examples/service/operator.secret and
# admin.secret (mode 600), appends their [[tokens]] lines (hashes only) to a copy of the example
# estate, and starts the node with --listen (127.0.0.1:8080 unless arguments say otherwise, such
# as `--listen 127.0.0.1:9090 --pace 0.05`). Open http://127.0.0.1:8080/ and log in with a
# secret; stop it with Ctrl-C (SIGINT) or SIGTERM.
#
# The node is `cargo run --release`, or the binary ROLLBACK_NODE names.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work="$root/target/examples/service"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
if [ -n "${ROLLBACK_NODE:-}" ]; then
    node="$ROLLBACK_NODE"
else
    cargo build --quiet --release --manifest-path "$root/Cargo.toml"
    node="$root/target/release/rollback-node"
fi
umask 077
"$node" example-estate > estate.toml
for who in operator admin; do
    "$node" new-token "$who" "$who" 2>/dev/null > token.txt
    head -n 1 token.txt > "$who.secret"
    { echo; tail -n +3 token.txt; } >> estate.toml
done
rm token.txt
echo "rollback-node example: secrets in $work/operator.secret and $work/admin.secret" >&2
case " $* " in
    *" --listen "*) exec "$node" --estate estate.toml "$@" ;;
    *) exec "$node" --estate estate.toml --listen 127.0.0.1:8080 "$@" ;;
esac
