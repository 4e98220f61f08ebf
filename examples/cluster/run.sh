#!/bin/sh
# Runs a three-node cluster, n1 n2 n3, sharing one PostgreSQL database as its store, and fails its
# leader over. Everything lives in a temp dir (mktemp, under /tmp) that is removed at exit, so the
# checkout stays as it is: a throwaway PostgreSQL 15 server (initdb, listening only on a Unix
# socket in that dir; as root it runs as `rollbacktest` if that user exists, else `nobody`) with
# a database `rollback`, and the nodes, each reading its requests from a FIFO there.
#
# It asks each node for its status, disables new_checkout through n2, rolls back to version 2
# through n3, printing each reply (JSON lines on stdout; what it does goes to stderr). Then it
# kills the leader (kill -9) and asks a survivor for its status until another leader shows up,
# and says how long that took. Arguments go to every node, such as `--pace 0.05`.
#
# The node is `cargo build --release`'s, or the binary ROLLBACK_NODE names; it needs cluster mode
# (`--store`, `--node-id`). PG_BIN overrides where PostgreSQL's binaries are.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pg_bin=${PG_BIN:-/usr/lib/postgresql/15/bin}
nodes="n1 n2 n3"

say() { echo "cluster example: $*" >&2; }
fail() {
    say "$*"
    exit 1
}

work=$(mktemp -d /tmp/rn-cluster.XXXXXX)
pg_started=""
cleanup() {
    status=$?
    trap - EXIT INT TERM
    # The end of input, then the signals, for whichever node is still there.
    exec 3>&- 4>&- 5>&-
    for n in $nodes; do
        if [ -f "$work/$n.pid" ]; then
            kill -TERM "$(cat "$work/$n.pid")" 2>/dev/null || true
        fi
    done
    sleep 0.2
    for n in $nodes; do
        if [ -f "$work/$n.pid" ]; then
            kill -KILL "$(cat "$work/$n.pid")" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        for n in $nodes; do
            if [ -s "$work/$n.err" ]; then
                say "stderr of $n (last lines):"
                tail -n 20 "$work/$n.err" >&2
            fi
        done
    fi
    if [ -n "$pg_started" ]; then
        (cd "$work/pg" && as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -m immediate stop) \
            >/dev/null 2>&1 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# A write to a node that died fails (and ends the script) instead of killing it unannounced.
trap '' PIPE

# PostgreSQL: as root, as an unprivileged user (the server refuses to run as root).
if [ "$(id -u)" -eq 0 ]; then
    if id rollbacktest >/dev/null 2>&1; then pg_user=rollbacktest; else pg_user=nobody; fi
    command -v runuser >/dev/null || fail "running as root, and runuser is missing to run PostgreSQL as $pg_user"
    as_pg() { runuser -u "$pg_user" -- "$@"; }
else
    pg_user=$(id -un)
    as_pg() { "$@"; }
fi
[ -x "$pg_bin/initdb" ] || fail "no PostgreSQL at $pg_bin (set PG_BIN)"
mkdir "$work/pg"
chmod 711 "$work"
if [ "$(id -u)" -eq 0 ]; then chown "$pg_user" "$work/pg"; fi
(cd "$work/pg" && as_pg "$pg_bin/initdb" -A trust -E UTF8 --locale=C --no-sync -U "$pg_user" \
    -D "$work/pg/data") >"$work/initdb.log" 2>&1 || {
    cat "$work/initdb.log" >&2
    fail "initdb failed"
}
pg_started=yes
(cd "$work/pg" && as_pg "$pg_bin/pg_ctl" -D "$work/pg/data" -l "$work/pg/server.log" -w -t 30 \
    -o "-c listen_addresses= -c unix_socket_directories=$work/pg -c fsync=off" start) \
    >/dev/null 2>&1 || {
    cat "$work/pg/server.log" >&2 || true
    fail "PostgreSQL did not start"
}
"$pg_bin/createdb" -h "$work/pg" -U "$pg_user" rollback
store="postgres://$pg_user@/rollback?host=$work/pg"
say "PostgreSQL 15 up; store $store"

# The node.
if [ -n "${ROLLBACK_NODE:-}" ]; then
    node=$ROLLBACK_NODE
else
    target=${CARGO_TARGET_DIR:-$root/target}
    cargo build --quiet --release --manifest-path "$root/Cargo.toml"
    node="$(cd "$target/release" && pwd)/rollback-node"
fi
help=$("$node" --help 2>&1) || fail "$node --help failed: $help"
case "$help" in
    *--store*--node-id* | *--node-id*--store*) ;;
    *) fail "$node has no cluster mode: its --help names no --store and --node-id options" ;;
esac

# Three nodes, each reading the FIFO nK.in (held open on fd 3, 4, 5), writing nK.out and nK.err.
fd=3
for n in $nodes; do
    mkfifo "$work/$n.in"
    "$node" --store "$store" --node-id "$n" "$@" <"$work/$n.in" >"$work/$n.out" 2>"$work/$n.err" &
    echo $! >"$work/$n.pid"
    eval "exec $fd>\"\$work/\$n.in\""
    fd=$((fd + 1))
done
say "nodes $nodes started"

fd_of() {
    case $1 in
        n1) echo 3 ;;
        n2) echo 4 ;;
        n3) echo 5 ;;
    esac
}

msg_id=0
# send NODE BODY-WITHOUT-BRACES: sends {BODY,"msg_id":N} from `oncall`; N is in $msg_id.
send() {
    [ -f "$work/$1.pid" ] && kill -0 "$(cat "$work/$1.pid")" 2>/dev/null || fail "$1 is not running"
    msg_id=$((msg_id + 1))
    printf '{"src":"oncall","dest":"%s","body":{%s,"msg_id":%d}}\n' "$1" "$2" "$msg_id" \
        >&"$(fd_of "$1")"
}

# reply NODE ID SECONDS: the reply to message ID, in $line; fails when none comes in time.
reply() {
    deadline=$(($(date +%s) + $3))
    while :; do
        line=$(grep -E "\"in_reply_to\":$2[,}]" "$work/$1.out" | head -n 1) || true
        [ -n "$line" ] && return 0
        kill -0 "$(cat "$work/$1.pid")" 2>/dev/null || fail "$1 exited before replying to $2"
        [ "$(date +%s)" -lt "$deadline" ] || fail "$1 did not reply to $2 within $3 s"
        sleep 0.05
    done
}

# ask NODE BODY: sends, waits, prints the reply.
ask() {
    send "$1" "$2"
    reply "$1" "$msg_id" 30
    echo "$line"
}

# The leader a status reply names ("cluster":{…"leader":"nK"…}), or nothing.
leader_of() {
    printf '%s\n' "$1" | sed -n 's/.*"leader":"\([^"]*\)".*/\1/p'
}

for n in $nodes; do
    ask "$n" '"type":"status"'
done
ask n2 '"type":"disable_feature","feature":"new_checkout"'
ask n3 '"type":"rollback","version":2'

# Who leads (once someone does).
deadline=$(($(date +%s) + 30))
leader=""
while [ -z "$leader" ]; do
    send n1 '"type":"status"'
    reply n1 "$msg_id" 30
    leader=$(leader_of "$line")
    [ -n "$leader" ] || [ "$(date +%s)" -lt "$deadline" ] || fail "no leader within 30 s: $line"
    [ -n "$leader" ] || sleep 0.1
done
case " $nodes " in
    *" $leader "*) ;;
    *) fail "the leader is $leader, not one of $nodes: $line" ;;
esac
say "the leader is $leader; kill -9"

# Kill it, and ask a survivor until it names another leader.
for n in $nodes; do
    if [ "$n" != "$leader" ]; then
        survivor=$n
        break
    fi
done
killed_at=$(date +%s%N)
pid=$(cat "$work/$leader.pid")
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
rm "$work/$leader.pid"
eval "exec $(fd_of "$leader")>&-"
deadline=$(($(date +%s) + 60))
while :; do
    send "$survivor" '"type":"status"'
    reply "$survivor" "$msg_id" 30
    new=$(leader_of "$line")
    if [ -n "$new" ] && [ "$new" != "$leader" ]; then
        break
    fi
    [ "$(date +%s)" -lt "$deadline" ] || fail "no new leader 60 s after killing $leader: $line"
    sleep 0.1
done
elapsed_ms=$((($(date +%s%N) - killed_at) / 1000000))
echo "$line"
say "new leader $new, $elapsed_ms ms after kill -9 of $leader"
for n in $nodes; do
    if [ "$n" != "$leader" ]; then
        ask "$n" '"type":"status"'
    fi
done
