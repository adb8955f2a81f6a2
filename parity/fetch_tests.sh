#!/usr/bin/env bash
# Puts the `adapters` library's own tests (tests/test_methods, tests/test_misc and the fixtures they read) at a
# pinned commit into $DEST. The source is its git repository: a URL (default) or a local clone/mirror.
#   parity/fetch_tests.sh [DEST]      ADAPTERS_REPO=/path/to/adapters.git parity/fetch_tests.sh
set -euo pipefail
REPO=${ADAPTERS_REPO:-https://github.com/adapter-hub/adapters.git}
# adapters 1.3.0's sources (the release on PyPI; its library code is identical to this commit's).
COMMIT=${ADAPTERS_COMMIT:-88f18ebd6}
DEST=${1:-.parity/adapters}
# tests/fixtures/audio_datasets is left out: its encoded Common Voice sample is a large binary that clones made
# without blobs may lack, and its speech-commands set is never encoded; parity/adapters_offline.py makes stand-ins.
PATHS="conftest.py tests/__init__.py tests/test_methods tests/test_misc tests/fixtures/__init__.py
       tests/fixtures/SiBERT tests/fixtures/samples pyproject.toml tests/fixtures/hub-index.sample.json tests/fixtures/sample_text.txt"
# what is fetched: the commit and the paths, so that a change of either fetches again
STAMP="$COMMIT $(echo $PATHS | cksum | cut -d' ' -f1)"

if [ -f "$DEST/.commit" ] && [ "$(cat "$DEST/.commit")" = "$STAMP" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -d "$REPO" ] && git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" archive "$COMMIT" $PATHS | tar x -C "$tmp"
else
    git clone -q --filter=blob:none --no-checkout "$REPO" "$tmp/repo"
    git -C "$tmp/repo" archive "$COMMIT" $PATHS | tar x -C "$tmp"
    rm -rf "$tmp/repo"
fi
# The tests read MRPC from the transformers submodule's fixtures; the repository keeps the same files here.
mkdir -p "$tmp/hf_transformers/tests/fixtures/tests_samples"
cp -r "$tmp/tests/fixtures/samples/MRPC" "$tmp/hf_transformers/tests/fixtures/tests_samples/MRPC"
rm -rf "$DEST" && mkdir -p "$(dirname "$DEST")" && mv "$tmp" "$DEST" && trap - EXIT
echo "$STAMP" > "$DEST/.commit"
echo "adapters tests at $COMMIT in $DEST"
