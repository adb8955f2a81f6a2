#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for gpu_train.py (it has no network; they travel as `carry`).
#
# .whl/wb: what `import workbench` needs beyond that machine's image (python 3.12, torch 2.11, transformers 5.17,
#   huggingface_hub 1.33, tokenizers 0.23.2, peft, accelerate): httpx2 and its two packages the image lacks
#   (workbench.hub imports httpx2, which huggingface_hub >= 2 brings along; the image's 1.33 does not).
#   Workbench runs on the image's transformers 5.17 (checked with gpu_train.py --device cpu --tiny).
# .whl/adapters: the `adapters` library 1.3.0 and the stack it is pinned to (transformers 4.57.6, huggingface_hub
#   < 1.0, tokenizers <= 0.23.0), installed apart (--target /tmp/site-adapters) and put on PYTHONPATH for its jobs
#   only. tokenizers is an abi3 wheel, so the same file also serves the local check on python 3.11.
#
#     bash benchmarks/gpu_wheels.sh [PYTHON]      # PYTHON with pip; default .venv/bin/python or python3
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
EXCLUDE=$(git rev-parse --git-path info/exclude)  # the common one, also from a worktree
grep -qxF '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >>"$EXCLUDE"
download() {  # folder, then NAME==VERSION ...
  local dir=$1
  shift
  mkdir -p "$dir"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "$@"
}
download .whl/wb httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
download .whl/adapters adapters==1.3.0 transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2
ls -l .whl/wb .whl/adapters
# what a device call sends: tracked and untracked-not-ignored files, plus the carried .whl (limit: 64 MiB)
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
whl=$(du -cb .whl | tail -1 | cut -f1)
total=$(( (tree + whl) / 1048576 ))
echo "working tree $(( tree / 1048576 )) MiB + .whl $(( whl / 1048576 )) MiB = ${total} MiB of the 64 MiB a device call may send"
[ "$total" -lt 62 ] || echo "WARNING: too close to 64 MiB: ignore (info/exclude) untracked files the run does not need" >&2
