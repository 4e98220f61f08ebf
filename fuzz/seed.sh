#!/usr/bin/env bash
# Regenerates the (gitignored) seed corpora from examples/task.jsonl and fuzz/seeds.jsonl:
#   corpus/decode/   one file per input line
#   corpus/session/  each whole file, plus both concatenated
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

lines=0
for file in "${sources[@]}"; do
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ -n "$line" ]] || continue
        printf '%s' "$line" | put "$here/corpus/decode"
        lines=$((lines + 1))
    done <"$file"
    put "$here/corpus/session" <"$file"
done
cat "${sources[@]}" | put "$here/corpus/session"

echo "seeded corpus/decode from $lines lines, corpus/session from ${#sources[@]} files"
