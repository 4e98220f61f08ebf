#!/usr/bin/env bash
# Regenerates the (gitignored) seed corpora from examples/task.jsonl and fuzz/seeds.jsonl:
#   corpus/decode/   one file per input line
#   corpus/session/  runs of 8 consecutive lines (both files in turn), each behind the 8
#                    control bytes the session target reads first (chunk size and completions),
#                    so that no seed line is cut. Short seeds keep libFuzzer's length limit
#                    short at first (it starts at the longest seed and grows while coverage does):
#                    whole files as seeds made every input a 4 KiB, 60-line session, at a tenth
#                    of the executions per second, and found no more coverage.
# Files are named by the SHA-1 of their content, as libFuzzer names its own, so rerunning is
# idempotent and never clobbers what the fuzzer has added.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sources=("$here/../examples/task.jsonl" "$here/seeds.jsonl")

mkdir -p "$here/corpus/decode" "$here/corpus/session"

put() { # put DIR < content
    local tmp sum
    tmp="$(mktemp)"
    cat >"$tmp"
    sum="$(sha1sum "$tmp" | cut -d' ' -f1)"
    mv "$tmp" "$1/$sum"
}

# The session target's control bytes: the first is the chunk size the line splitter is fed in;
# all eight, in turn, say which running lane completes after each line and how (byte / 16: 0-9
# done, 10-12 failed before any change, 13-14 failed part-way, 15 progress). One header lets
# everything succeed, the other mixes failures and progress in.
controls=('\x07\x00\x01\x12\x23\x34\x45\x56' '\x05\xa0\xd1\xf2\x00\xb3\xe4\x11')
GROUP=8

lines=0
groups=0
session=()
for file in "${sources[@]}"; do
    while IFS= read -r line || [[ -n "$line" ]]; do
        session+=("$line")
        [[ -n "$line" ]] || continue
        printf '%s' "$line" | put "$here/corpus/decode"
        lines=$((lines + 1))
    done <"$file"
done
for ((i = 0; i < ${#session[@]}; i += GROUP)); do
    {
        printf "${controls[$((groups % ${#controls[@]}))]}"
        printf '%s\n' "${session[@]:i:GROUP}"
    } | put "$here/corpus/session"
    groups=$((groups + 1))
done

echo "seeded corpus/decode from $lines lines, corpus/session with $groups runs of up to $GROUP lines"
