#!/usr/bin/env bash
# The one device command for issue 15 item 5 (benchmarks/README.md, "GPU training throughput (item 5)").
#
# Installs the carried wheels (.whl/, made here by gpu_wheels.sh) into /tmp/site-wb and /tmp/site-adapters, records
# the card and the image's versions, runs the GPU tests (tests/test_cuda.py, tests/test_train.py on CUDA; log in
# $OUT/cuda_tests.log), then gpu_train.py with its full settings; the log, gpu_env.txt and
# gpu_train.{md,json} land in $OUT (rewritten after every job, so a cut-off run keeps its rows). Extra arguments go
# to gpu_train.py (e.g. --note "...", --peak-tflops 989, --budget-s 300). PY: the python (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export OUT=${OUT:-/tmp/gpu_train_out} PYTHONUNBUFFERED=1
mkdir -p "$OUT"
for set in wb adapters; do
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "/tmp/site-$set" \
    .whl/$set/*.whl || { echo "no wheels in .whl/$set: run benchmarks/gpu_wheels.sh here first" >&2; exit 1; }
done
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv 2>&1
  "$PY" -c 'import sys, torch, transformers, peft; print(sys.version.split()[0], torch.__version__, transformers.__version__, "peft", peft.__version__)'
  PYTHONPATH=/tmp/site-adapters${PYTHONPATH:+:$PYTHONPATH} "$PY" -c 'import transformers, adapters; print("adapters job:", adapters.__version__, transformers.__version__)'
  PYTHONPATH=/tmp/site-wb${PYTHONPATH:+:$PYTHONPATH} "$PY" -c 'import transformers, workbench; print("workbench and PEFT jobs: transformers", transformers.__version__)'
} 2>&1 | tee "$OUT/gpu_env.txt"
# the GPU path's tests first (about a minute): the engine on CUDA, and workbench.train's runs on the GPU
PYTHONPATH=/tmp/site-wb${PYTHONPATH:+:$PYTHONPATH} timeout 60 "$PY" -m pytest -q -p no:cacheprovider \
  --continue-on-collection-errors tests/test_cuda.py tests/test_train.py 2>&1 | tee "$OUT/cuda_tests.log" | tail -25
timeout 500 "$PY" benchmarks/gpu_train.py --device cuda --workbench-site /tmp/site-wb \
  --adapters-site /tmp/site-adapters --budget-s 460 --job-timeout 90 "$@" 2>&1 | tee -a "$OUT/gpu_train.log"
