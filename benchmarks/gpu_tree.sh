#!/usr/bin/env bash
# What a device call sends must stay under 64 MiB, counted as disk usage: tracked and untracked-not-ignored files
# plus the carried .whl. The conformance fixtures alone (about 5,500 small files, 63 MiB on disk) are over it, and
# the GPU run does not read them, so they leave the index for the call and come back after it:
#
#     bash benchmarks/gpu_tree.sh slim       # before the device call: untrack the fixtures (they stay on disk)
#     bash benchmarks/gpu_tree.sh restore    # right after it: track them again (commit nothing in between)
#     bash benchmarks/gpu_tree.sh size       # what a call would send now
set -euo pipefail
cd "$(dirname "$0")/.."
FIXTURES=tests/conformance/fixtures
EXCLUDE=$(git rev-parse --git-path info/exclude)
case ${1:-size} in
  slim)
    git rm -r -q --cached "$FIXTURES"
    grep -qxF "/$FIXTURES/" "$EXCLUDE" || echo "/$FIXTURES/" >>"$EXCLUDE"
    ;;
  restore)
    sed -i "\#^/$FIXTURES/\$#d" "$EXCLUDE"
    git reset -q -- "$FIXTURES"
    ;;
  size) ;;
  *) echo "usage: $0 slim|restore|size" >&2; exit 2 ;;
esac
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -c --files0-from=- 2>/dev/null | tail -1 | cut -f1)
whl=$(du -s .whl 2>/dev/null | cut -f1 || echo 0)
echo "a device call would send $(( (tree + ${whl:-0}) / 1024 )) MiB (tree $(( tree / 1024 )) + .whl $(( ${whl:-0} / 1024 ))) of 64"
