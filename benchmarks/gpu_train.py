"""GPU training throughput in bf16 (issue 15, item 5): workbench against the `adapters` library and PEFT.

Two random-init models: BERT-base size (hidden 768, 12 layers, 110M parameters; sequence classification) and a
Llama-style 1.2B (hidden 2048, 16 layers, FFN 8192, 32 heads, vocab 32000: 1.07B in its layers, 1.2B in all;
causal LM). Contenders: workbench seq_bn and lora (`workbench.init`, `add_adapter`, `train_adapter`), the same two
in the `adapters` library 1.3.0 (transformers 4.57.6, its own process and packages), and PEFT LoRA with
AdapterHub's lora default (r 8, α 8, q and v, no dropout); each without and with activation checkpointing. Every
contender × model × setting is one process (gpu_train_job.py), so its peak GPU memory is its own; a job that
runs past --job-timeout, or that starts after --budget-s, is a row saying so. Results are rewritten after every
job (benchmarks/results/gpu_train.{json,md}, and copied to $OUT when it is set), so a cut-off run keeps its rows.

    python benchmarks/gpu_train.py [--device cuda] [--note "quiet"] [--peak-tflops 989] [--budget-s 420]
        [--adapters-python .venv-adapters/bin/python | --adapters-site /tmp/site-adapters]
        [--workbench-site /tmp/site-wb] [--name gpu_train]    # gpu_run.sh: the device command, with the wheels
    python benchmarks/gpu_train.py --device cpu --tiny     # every path on tiny configs (to $TMPDIR/gpu_train_tiny.*)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
JOB = Path(__file__).with_name("gpu_train_job.py")

MODELS = {  # name: (family, config sizes, batch, sequence length) -- batches sized for an 80 GB H100
    "llama_1b": (
        "llama",
        dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
             num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048),
        8, 2048,
    ),
    "bert_base": (
        "bert",
        dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, num_attention_heads=12,
             vocab_size=30522, max_position_embeddings=512),
        64, 512,
    ),
}  # fmt: skip
TINY = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, vocab_size=256)
CONTENDERS = {
    "wb_lora": "workbench lora",
    "ah_lora": "adapters 1.3.0 lora",
    "peft_lora": "PEFT lora (r 8, α 8, q+v)",
    "wb_seq_bn": "workbench seq_bn",
    "ah_seq_bn": "adapters 1.3.0 seq_bn",
}
COMPILED = "_compiled"  # torch.compile(model) (inductor) after the adapter is added; not run unless named
CONTENDERS |= {name + COMPILED: f"{text}, torch.compile" for name, text in CONTENDERS.items()}
DEFAULT_CONTENDERS = [name for name in CONTENDERS if not name.endswith(COMPILED)]
PEERS = {"wb_lora": ("ah_lora", "peft_lora"), "wb_seq_bn": ("ah_seq_bn", None)}  # workbench row: (adapters, PEFT)
PEERS |= {wb + COMPILED: tuple(p + COMPILED if p else None for p in peers) for wb, peers in PEERS.items()}
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
FLOPS_NOTE = (
    "MFU = tokens/s × model FLOPs per token / the card's dense bf16 peak. Model FLOPs per token of a "
    "frozen-backbone step: forward 2·M + 4·L·s·d, backward 2·M + 8·L·s·d (gradients of the activations through "
    "every matrix product and attention; no weight gradients for frozen weights), plus 6·T for the trainable "
    "weights T (forward, activation and weight gradients): 4·M + 12·L·s·d + 6·T. M: the matrix-product weights "
    "(attention and FFN projections of all L layers, the LM head or pooler and classifier; not the embeddings), "
    "s: sequence length, d: hidden size; attention counted in full (PaLM's convention; a causal kernel skips "
    "about half of it). With checkpointing the recomputed forward is NOT counted (model FLOPs, not hardware "
    "FLOPs), so checkpointing lowers MFU."
)


def matmul_params(family: str, sizes: dict) -> int:
    """M in FLOPS_NOTE: the weights that take part in a matrix product per token."""
    d, layers, ffn = sizes["hidden_size"], sizes["num_hidden_layers"], sizes["intermediate_size"]
    if family == "llama":
        kv = d // sizes["num_attention_heads"] * sizes.get("num_key_value_heads", sizes["num_attention_heads"])
        return layers * (2 * d * d + 2 * d * kv + 3 * d * ffn) + d * sizes["vocab_size"]
    return layers * (4 * d * d + 2 * d * ffn) + d * d + 2 * d  # + pooler + 2-label classifier


def flops_per_token(family: str, sizes: dict, seq: int, trainable: int) -> float:
    """FLOPS_NOTE's 4·M + 12·L·s·d + 6·T."""
    attention = 4 * sizes["num_hidden_layers"] * seq * sizes["hidden_size"]
    return 4 * matmul_params(family, sizes) + 3 * attention + 6 * trainable


def card_peak(name: str, given: float | None) -> float | None:
    """Dense bf16 peak TFLOP/s: --peak-tflops, else looked up from the device name (None when unknown)."""
    if given:
        return given
    return next((peak for key, peak in PEAK_TFLOPS if all(part in name for part in key.split())), None)


def card_facts(device: str) -> dict:
    """The card, its memory, CUDA and a measured bf16 matmul rate (8192³, mean of 10 after 3 warm-ups)."""
    import torch

    if device != "cuda":
        return {"name": "cpu", "measured_matmul_tflops": None}
    props = torch.cuda.get_device_properties(0)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ a
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    torch.cuda.synchronize()
    rate = 10 * 2 * 8192**3 / (time.perf_counter() - start) / 1e12
    del a
    torch.cuda.empty_cache()  # this process stays alive beside the jobs: keep only its context
    return {
        "name": torch.cuda.get_device_name(0),
        "memory_gib": props.total_memory / 2**30,
        "multiprocessors": props.multi_processor_count,
        "cuda": torch.version.cuda,
        "measured_matmul_tflops": rate,
    }


def jobs(args) -> list[tuple[str, str, bool]]:
    """(model, contender, checkpointing) in priority order: the 1B model first, checkpointing after."""
    return [
        (model, contender, gc)
        for model in args.models.split(",")
        for gc in args.gc
        for contender in args.contenders.split(",")
    ]


def run_job(args, model: str, contender: str, gc: bool) -> dict:
    family, sizes, batch, seq = MODELS[model]
    if args.tiny:
        sizes, batch, seq = {**TINY, "max_position_embeddings": 64}, 2, 32
        sizes |= {"num_key_value_heads": 4} if family == "llama" else {}
    batch = args.batch.get(model, batch)
    cmd = [
        *([args.adapters_python] if contender.startswith("ah_") else [sys.executable]),
        str(JOB),
        *("--family", family, "--sizes", json.dumps(sizes), "--contender", contender),
        *("--batch", str(batch), "--seq", str(seq), "--device", args.device, "--dtype", args.dtype),
        *("--warmup", str(args.warmup), "--steps", str(args.steps)),
        *(["--gc"] if gc else []),
    ]
    env = dict(os.environ)
    site = args.adapters_site if contender.startswith("ah_") else args.workbench_site
    if site:  # carried packages first: transformers 4.57.6 for the adapters jobs, 5.24 for workbench and PEFT
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
    row = {"model": model, "contender": contender, "gc": gc, "batch": batch, "seq": seq, "family": family}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.job_timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"timed out after {args.job_timeout} s (--job-timeout)"}
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"}
    if "error" in result and proc.stderr.strip():
        print(proc.stderr.strip()[-2000:], file=sys.stderr)
    row.update(result)
    if "error" not in row:
        tokens = batch * seq
        median_s = row["median_step_ms"] / 1e3
        row["samples_per_s"] = batch / median_s
        row["tokens_per_s"] = tokens / median_s
        row["mean_tokens_per_s"] = tokens * args.steps / row["wall_s"]
        row["flops_per_token"] = flops_per_token(family, sizes, seq, row["trainable_params"])
        row["tflops"] = row["tokens_per_s"] * row["flops_per_token"] / 1e12
        row["mfu"] = row["tflops"] / args.peak if args.peak else None
    return row


def add_ratios(rows: list[dict]) -> None:
    """Per workbench row: tokens/s over the `adapters` library's and PEFT's in the same model and setting."""
    by_key = {(r["model"], r["gc"], r["contender"]): r for r in rows}
    for row in rows:
        for peer, key in zip(PEERS.get(row["contender"], (None, None)), ("x_adapters", "x_peft"), strict=True):
            other = by_key.get((row["model"], row["gc"], peer)) if peer else None
            if other and "tokens_per_s" in row and "tokens_per_s" in other:
                row[key] = row["tokens_per_s"] / other["tokens_per_s"]


def table(rows: list[dict]) -> str:
    head = (
        "| model | checkpointing | contender | batch × seq | samples/s | tokens/s | step ms (IQR) | MFU | "
        "peak GiB | peak − set-up GiB | × adapters | × PEFT | trainable | lib / transformers |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["model"], "on" if r["gc"] else "off", CONTENDERS[r["contender"]], f"{r['batch']} × {r['seq']}"]
        if "error" in r:
            lines.append("| " + " | ".join(cells + [f"n/a: {r['error']}"] + [""] * 9) + " |")
            continue
        q1, _, q3 = statistics.quantiles(r["step_ms"], n=4) if len(r["step_ms"]) > 1 else [r["step_ms"][0]] * 3
        peak = f"{r['peak_bytes'] / 2**30:.1f}" if r.get("peak_bytes") else "–"
        steps = f"{(r['peak_bytes'] - r['setup_bytes']) / 2**30:.1f}" if r.get("peak_bytes") else "–"
        cells += [
            f"{r['samples_per_s']:.1f}",
            f"{r['tokens_per_s']:,.0f}",
            f"{r['median_step_ms']:.1f} ({q1:.1f}–{q3:.1f})",
            f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "n/a",
            peak,
            steps,
            f"{r['x_adapters']:.2f}" if "x_adapters" in r else "",
            f"{r['x_peft']:.2f}" if "x_peft" in r else "",
            f"{r['trainable_params']:,}",
            f"{r['library_version']} / {r['transformers']}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    """The issue's targets on the 1B model without checkpointing: ≥ 1.5× the `adapters` library, ≥ 40 % MFU."""
    out = []
    for r in rows:
        if r["model"] != "llama_1b" or r["gc"] or not r["contender"].startswith("wb_") or "error" in r:
            continue
        x, mfu = r.get("x_adapters"), r.get("mfu")
        parts = [f"{x:.2f}× the adapters library ({'met' if x >= 1.5 else 'NOT met'}: ≥ 1.5×)" if x else "no ratio"]
        parts += [f"MFU {100 * mfu:.1f}% ({'met' if mfu >= 0.40 else 'NOT met'}: ≥ 40%)"] if mfu is not None else []
        out.append(f"- 1B, {CONTENDERS[r['contender']]}: " + "; ".join(parts))
    return out


def report(args, facts: dict, card: dict, rows: list[dict], elapsed: float, final: bool) -> None:
    """Write the table (results/gpu_train[_tiny].{md,json}; printed when `final`); copy both to $OUT if set."""
    from common import facts_markdown, write_results

    add_ratios(rows)
    peak = f"{args.peak:.0f} TFLOP/s" if args.peak else "unknown: give --peak-tflops"
    measured = card["measured_matmul_tflops"]
    setting = (
        f"{args.dtype} on {card['name']} (dense bf16 peak used for MFU: {peak}; measured 8192³ bf16 matmul: "
        + (f"{measured:.0f} TFLOP/s" if measured else "n/a")
        + f"); {args.warmup} warm-up + {args.steps} timed steps per job; AdamW (lr 1e-4) on the trainable "
        f"parameters; {len(rows)} of {len(jobs(args))} jobs, {elapsed:.0f} s"
        + ("; TINY configs (a check of the paths, not a measurement)" if args.tiny else "")
    )
    legend = (
        "samples/s, tokens/s: batch (× seq) / median step time (CUDA events around forward + backward + AdamW "
        "step); × adapters / × PEFT: workbench tokens/s over the peer's for the same method (PEFT: lora only), "
        "same model and setting, same run; peak GiB: torch.cuda.max_memory_allocated over the optimizer's "
        "creation and all steps (weights included), each job its own process; peak − set-up: less the memory "
        "held when the optimizer was created (weights, adapter, batch): activations, gradients, optimizer "
        "state; trainable: parameters the "
        "optimizer updates (adapter + BERT classifier).\n\n" + FLOPS_NOTE
    )
    markdown = "\n\n".join(
        [
            f"Command: `{' '.join(['python', *sys.argv])}`",
            setting,
            table(rows),
            "\n".join(verdicts(rows)) or "(no 1B workbench row: no verdict)",
            legend,
            facts_markdown(facts) + f"\n- card: {json.dumps(card)}",
        ]
    )
    if final:
        print(markdown)
    name = f"{args.name}_tiny" if args.tiny else args.name
    results = Path(tempfile.gettempdir()) if args.tiny else RESULTS  # a tiny run is a check, not a result
    data = {"command": sys.argv, "setting": setting, "facts": facts, "card": card, "rows": rows}
    data |= {"flops_note": FLOPS_NOTE, "models": MODELS}
    write_results(results, name, "GPU training throughput (issue 15, item 5)", markdown, data)
    if os.environ.get("OUT"):
        for suffix in (".md", ".json"):
            shutil.copy(results / f"{name}{suffix}", Path(os.environ["OUT"]) / f"{name}{suffix}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="tiny configs (2 layers, hidden 64), batch 2 × 32")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--contenders", default=",".join(DEFAULT_CONTENDERS), help=f"of {', '.join(CONTENDERS)}")
    parser.add_argument("--gc", default="off,on", help="checkpointing settings to run: off,on | off | on")
    parser.add_argument("--batch", default="", help="batch overrides, e.g. llama_1b=4,bert_base=32")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--job-timeout", type=int, default=120, help="seconds before one job is given up")
    parser.add_argument("--budget-s", type=int, default=420, help="start no job after this many seconds")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak")
    parser.add_argument("--adapters-python", default=None, help="python for the adapters jobs")
    parser.add_argument("--adapters-site", default=None, help="put first on PYTHONPATH for the adapters jobs")
    parser.add_argument("--workbench-site", default=None, help="put first on PYTHONPATH for the workbench jobs")
    parser.add_argument("--note", default="", help="was the machine quiet? (reported)")
    parser.add_argument("--name", default="gpu_train", help="results file name (results/NAME.{md,json})")
    args = parser.parse_args()
    args.gc = [{"off": False, "on": True}[g] for g in args.gc.split(",")]
    args.batch = {k: int(v) for k, v in (item.split("=") for item in args.batch.split(",") if item)}
    venv = ROOT / ".venv-adapters" / "bin" / "python"
    args.adapters_python = args.adapters_python or (str(venv) if venv.exists() else sys.executable)
    return args


def main() -> None:
    args = parse_args()
    import torch
    import transformers
    from common import machine_facts

    facts = machine_facts(torch, transformers.__version__, torch.get_num_threads(), args.note)
    card = card_facts(args.device)
    args.peak = card_peak(card["name"], args.peak_tflops) if args.device == "cuda" else args.peak_tflops
    print(f"card: {card}", file=sys.stderr)
    rows, start = [], time.perf_counter()
    for model, contender, gc in jobs(args):
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            row = {"model": model, "contender": contender, "gc": gc, "batch": "–", "seq": "–"}
            rows.append({**row, "error": f"skipped: the time budget (--budget-s {args.budget_s}) was spent"})
            continue
        rows.append(run_job(args, model, contender, gc))
        r = rows[-1]
        status = r.get("error") or f"{r['tokens_per_s']:,.0f} tokens/s, peak {r.get('peak_bytes') or 0:,} B"
        print(f"[{time.perf_counter() - start:.0f} s] {model} {contender} gc={gc}: {status}", file=sys.stderr)
        report(args, facts, card, rows, time.perf_counter() - start, final=False)
    report(args, facts, card, rows, time.perf_counter() - start, final=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
