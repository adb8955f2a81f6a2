#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks for gpu_train.py (it has no network; they travel as `carry`).
#
# .whl/wb: what workbench and the PEFT peer need beyond that machine's image (python 3.12, torch 2.11, transformers
#   5.17, huggingface_hub 1.33, tokenizers 0.23.2, peft, accelerate): transformers 5.24 (workbench refuses older
#   ones), httpx2 and its two packages the image lacks (workbench.hub imports httpx2, which huggingface_hub >= 2
#   brings along; the image's 1.33 does not), and datasets with the two packages of it the image lacks
#   (workbench.train reads data through it; tests/test_train.py runs there).
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
download .whl/wb transformers==5.24.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 datasets==5.2.0 dill==0.4.1 \
  multiprocess==0.70.19
download .whl/adapters adapters==1.3.0 transformers==4.57.6 huggingface_hub==0.36.2 tokenizers==0.22.2
ls -l .whl/wb .whl/adapters
bash benchmarks/gpu_tree.sh size
