#!/usr/bin/env bash
# Fuzzing smoke test: seeds the corpora, then runs each target for a bounded time, one at a time
# on one core, and prints executions and exec/s per target, and for session whether it met its
# goal of 5,000 exec/s (a figure only: a slow shared machine does not fail the run). Exits
# non-zero on a crash (the input is left in fuzz/artifacts/<target>/). Skips (exit 0) without
# nightly or cargo-fuzz.
#
# decode runs under AddressSanitizer (cargo-fuzz's default): it feeds raw bytes to serde_json's
# and memchr's unsafe code. session runs without a sanitizer, built in its own target directory
# (fuzz/target/unsanitized, so neither build undoes the other): the crate has no unsafe code,
# the bytes reach the same decoder the decode target covers under the sanitizer, and the rest
# is the machine and session in safe Rust, where AddressSanitizer finds nothing and costs each
# input five to seven times its time (its allocator, fake stacks and quarantine).
#
#   FUZZ_SECONDS=60 fuzz/smoke.sh        # default 30 s per target
#   fuzz/smoke.sh session                # only the named targets
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${FUZZ_SECONDS:-30}"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(decode session)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "smoke: skipped: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "smoke: skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi

"$here/seed.sh"
cd "$here"

declare -A extra=([decode]="-max_len=4096" [session]="-max_len=8192")
declare -A build=([session]="--sanitizer none --target-dir $here/target/unsanitized")
declare -A goal=([session]=5000)
summary=()
status=0
for target in "${targets[@]}"; do
    log="$here/target/smoke-$target.log"
    mkdir -p "$here/target"
    echo "smoke: $target for ${seconds}s (log: $log)"
    set +e
    # shellcheck disable=SC2086 # the build options are words
    cargo +nightly fuzz run ${build[$target]:-} "$target" -j 1 -- \
        -max_total_time="$seconds" ${extra[$target]:-} \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
    if [[ -z "$execs" ]]; then # no final stats (e.g. a crash): the last "#N ..." status line
        execs="$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')"
    fi
    rate="$(grep -oE 'exec/s: [0-9]+' "$log" | tail -n 1 | grep -oE '[0-9]+' || true)"
    if [[ -z "$rate" && -n "$execs" ]]; then
        rate="$((execs / (seconds > 0 ? seconds : 1)))"
    fi
    if [[ $rc -eq 0 ]]; then
        verdict=ok
    else
        verdict="FAILED (exit $rc)"
        status=1
        grep -E "panicked at|^thread '|ERROR: libFuzzer|Test unit written to" "$log" | head -n 5 || true
    fi
    against=""
    if [[ -n "${goal[$target]:-}" ]]; then
        if [[ -n "$rate" && "$rate" -ge "${goal[$target]}" ]]; then
            against="  goal ${goal[$target]} exec/s: met"
        else
            against="  goal ${goal[$target]} exec/s: NOT met"
        fi
    fi
    summary+=("$(printf '%-8s %12s execs %8s exec/s  %s%s' "$target" "${execs:-?}" "${rate:-?}" "$verdict" "$against")")
done

echo
printf '%s\n' "${summary[@]}"
exit "$status"
