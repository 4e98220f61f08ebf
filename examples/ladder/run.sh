#!/bin/sh
# Walks the escalation ladder up to its third rung against a real Prometheus. Everything lives in
# a temp dir (mktemp, under /tmp) that is removed at exit, so the checkout stays as it is:
#
# - the test application (`cargo run --example ladder_app`), whose error ratio is high while the
#   node's schema is above version 2 (it reads the node's status with a viewer token), serving
#   /metrics;
# - Debian's `prometheus`, scraping it every second;
# - the node on the built-in example estate with an admin token and this [ladder]: the signal
#   `error_rate` = app_error_ratio above 0.05, sampled every second, bad after 2 samples, 4 s to
#   clear each rung; rungs: disable_feature new_checkout, switch_traffic green -> blue, rollback
#   to version 3 (which needs an admin's approval).
#
# The kill switch and the traffic switch do not clear the signal, so the ladder climbs to the
# rollback and waits in awaiting_approval; the script approves it (`approve_rung` over HTTP, as an
# admin), the schema goes to version 2 and the signal clears. It prints each change of
# status_ok.ladder as it happens, then the ladder's history entries with their `why`.
#
# The node is `cargo build --release`'s, or the binary ROLLBACK_NODE names; the application is
# the release build of the `ladder_app` example, or the binary LADDER_APP names. PROMETHEUS
# overrides the prometheus binary.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
prometheus=${PROMETHEUS:-prometheus}

say() { echo "ladder example: $*" >&2; }
fail() {
    say "$*"
    exit 1
}

work=$(mktemp -d /tmp/rn-ladder.XXXXXX)
cleanup() {
    status=$?
    trap - EXIT INT TERM
    for pid in node app prom; do
        if [ -f "$work/$pid.pid" ]; then
            kill -TERM "$(cat "$work/$pid.pid")" 2>/dev/null || true
        fi
    done
    sleep 0.3
    for pid in node app prom; do
        if [ -f "$work/$pid.pid" ]; then
            kill -KILL "$(cat "$work/$pid.pid")" 2>/dev/null || true
        fi
    done
    wait 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        for log in node.err app.err prom.err; do
            if [ -s "$work/$log" ]; then
                say "last lines of $log:"
                tail -n 15 "$work/$log" >&2
            fi
        done
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

command -v "$prometheus" >/dev/null 2>&1 || fail "no $prometheus (apt-get install prometheus, or set PROMETHEUS)"
command -v curl >/dev/null 2>&1 || fail "curl is needed to talk to the node and Prometheus"
command -v python3 >/dev/null 2>&1 || fail "python3 is needed to pick free ports and read JSON"

target=${CARGO_TARGET_DIR:-$root/target}
if [ -n "${ROLLBACK_NODE:-}" ]; then
    node=$ROLLBACK_NODE
else
    cargo build --quiet --release --manifest-path "$root/Cargo.toml"
    node="$(cd "$target/release" && pwd)/rollback-node"
fi
if [ -n "${LADDER_APP:-}" ]; then
    app=$LADDER_APP
else
    cargo build --quiet --release --manifest-path "$root/Cargo.toml" --example ladder_app
    app="$(cd "$target/release/examples" && pwd)/ladder_app"
fi

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
node_port=$(free_port)
app_port=$(free_port)
prom_port=$(free_port)
node_url="http://127.0.0.1:$node_port"
prom_url="http://127.0.0.1:$prom_port"

# The estate: the built-in example, an admin token (its secret stays in the temp dir), the ladder.
umask 077
"$node" example-estate >"$work/estate.toml"
"$node" new-token alice admin 2>/dev/null >"$work/token.txt"
secret=$(head -n 1 "$work/token.txt")
{ echo; tail -n +3 "$work/token.txt"; } >>"$work/estate.toml"
rm "$work/token.txt"
cat >>"$work/estate.toml" <<EOF

[ladder]
prometheus = "$prom_url"
interval_seconds = 1
bad_samples = 2
verify_seconds = 4
max_runs = 1

[[ladder.signals]]
name = "error_rate"
query = "max(app_error_ratio)"
above = 0.05

[[ladder.rungs]]
action = {type = "disable_feature", feature = "new_checkout"}

[[ladder.rungs]]
action = {type = "switch_traffic", from = "green", to = "blue"}

[[ladder.rungs]]
action = {type = "rollback", version = 3}
EOF

# The node, its stdin held open (its end would not stop a --listen node anyway).
"$node" --estate "$work/estate.toml" --listen "127.0.0.1:$node_port" \
    </dev/null >"$work/node.out" 2>"$work/node.err" &
echo $! >"$work/node.pid"

api() { curl -s -H "Authorization: Bearer $secret" "$@"; }
ladder_of() {
    python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin).get("ladder"), sort_keys=True))'
}
i=0
until api "$node_url/v1/status" >/dev/null 2>&1; do
    i=$((i + 1))
    [ "$i" -lt 100 ] || fail "the node did not answer on $node_url"
    sleep 0.1
done
say "node up on $node_url (the incident page is at $node_url/)"

# The application, bad while the schema is above version 2.
LADDER_APP_TOKEN=$secret "$app" --listen "127.0.0.1:$app_port" --node "$node_url" \
    --bad-while schema_above:2 >"$work/app.out" 2>"$work/app.err" &
echo $! >"$work/app.pid"

# Prometheus, scraping it every second.
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: app
    static_configs:
      - targets: ['127.0.0.1:$app_port']
EOF
"$prometheus" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prom.err" 2>&1 &
echo $! >"$work/prom.pid"
say "prometheus on $prom_url scraping the application on 127.0.0.1:$app_port"

# Follow status_ok.ladder until it clears, approving the rollback when it waits for that.
last=""
approved=""
started=$(date +%s)
while :; do
    now=$(date +%s)
    [ $((now - started)) -lt 120 ] || fail "the ladder did not clear within 120 s (last: $last)"
    ladder=$(api "$node_url/v1/status" | ladder_of)
    if [ "$ladder" != "$last" ]; then
        echo "$ladder"
        last=$ladder
    fi
    case "$ladder" in
        *'"state": "awaiting_approval"'*)
            if [ -z "$approved" ]; then
                rung=$(echo "$ladder" | python3 -c 'import json, sys; print(json.load(sys.stdin)["rung"])')
                say "rung $rung (the rollback) waits for an admin: approving it as alice"
                api -X POST "$node_url/v1/messages" \
                    -d "{\"type\": \"approve_rung\", \"rung\": $rung, \"msg_id\": 1}"
                echo
                approved=yes
            fi
            ;;
        *'"state": "cleared"'*) break ;;
        *'"state": "exhausted"'*) fail "the ladder is exhausted" ;;
    esac
    sleep 0.5
done
say "cleared after $(($(date +%s) - started)) s; the ladder's history:"
api "$node_url/v1/history" | python3 -c '
import json, sys
for e in json.load(sys.stdin)["entries"]:
    if e["src"] == "ladder":
        print(json.dumps({"seq": e["seq"], "request": e["request"], "reply": e["reply"]["type"], "why": e.get("why")}, sort_keys=True))
'
