"""Timing helpers shared by inference_overhead.py (project venv) and peer_adapters.py (the `adapters` venv).

Only torch and the standard library: this file must import under both transformers 5 and 4.57.6.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import UTC, datetime


def hidden(output):
    return output["last_hidden_state"] if hasattr(output, "keys") else output[0]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def make_inputs(torch, vocab: int, batch: int, length: int, device: str) -> dict:
    """The same batch in every process: random ids from seed 0 (CPU generator), all attended, segment 0."""
    gen = torch.Generator().manual_seed(0)
    inputs = {
        "input_ids": torch.randint(0, vocab, (batch, length), generator=gen),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
    }
    return {k: v.to(device) for k, v in inputs.items()}


def time_interleaved(torch, models: dict, inputs: dict, repeats: int, warmup: int, device: str):
    """Warm up every model, then time `repeats` rounds round-robin (the first model of a round rotates).

    `models` must hold "bare" first. Returns (times ms per model, max|Δ| of last_hidden_state vs bare,
    errors for models that failed to run (removed from `models`), timed seconds).
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {}
    diffs: dict[str, float] = {}
    errors: dict[str, str] = {}
    with torch.inference_mode():
        reference = hidden(models["bare"](**inputs)).float()
        for name, model in list(models.items()):
            try:
                for _ in range(warmup):
                    out = hidden(model(**inputs)).float()
                diffs[name] = (out - reference).abs().max().item()
                times[name] = []
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                del models[name]
        order = list(models)
        start = time.perf_counter()
        for r in range(repeats):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                sync()
                t0 = time.perf_counter()
                models[name](**inputs)
                sync()
                times[name].append((time.perf_counter() - t0) * 1e3)
        elapsed = time.perf_counter() - start
    return times, diffs, errors, elapsed


def summarize(times: dict[str, list[float]], diffs: dict[str, float]) -> dict[str, dict]:
    """Per model: median/IQR ms, ratio of medians to "bare", and the paired (per-round) ratio with its IQR."""
    bare = times["bare"]
    bare_median = statistics.median(bare)
    stats = {}
    for name, ts in times.items():
        q1, med, q3 = quartiles(ts)
        pq1, paired, pq3 = quartiles([t / b for t, b in zip(ts, bare, strict=True)])
        stats[name] = dict(
            median_ms=med,
            q1_ms=q1,
            q3_ms=q3,
            iqr_ms=q3 - q1,
            min_ms=min(ts),
            ratio=med / bare_median,
            min_ratio=min(ts) / min(bare),
            paired_ratio=paired,
            paired_q1=pq1,
            paired_q3=pq3,
            max_abs_diff_vs_bare=diffs[name],
            times_ms=ts,
        )
    return stats


def table(rows: list[dict], with_target: bool) -> str:
    """Markdown table of summarize()d rows (each also with "description", optionally "target_ratio"/"error")."""
    header = ["variant", "median ms", "IQR ms", "ratio", "paired", "paired IQR", "min ratio"]
    header += ["target", "max|Δ|", ""] if with_target else ["max|Δ|"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        target = f"≤ {row['target_ratio']:.2f}" if row.get("target_ratio") else "–"
        if "error" in row:
            cells = [row["description"]] + ["n/a"] * 6 + ([target, "n/a", ""] if with_target else ["n/a"])
        else:
            cells = [
                row["description"],
                f"{row['median_ms']:.1f}",
                f"{row['iqr_ms']:.1f}",
                f"{row['ratio']:.3f}",
                f"{row['paired_ratio']:.3f}",
                f"{row['paired_q1']:.3f}–{row['paired_q3']:.3f}",
                f"{row['min_ratio']:.3f}",
            ]
            cells += [target] if with_target else []
            cells += [f"{row['max_abs_diff_vs_bare']:.1e}"] + ([row.get("verdict", "")] if with_target else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prepare_adapter_variant(model, variant: str, device: str, dtype):
    """The same recipe on either library's AdapterModel (AdapterHub API names): add, activate, merge.

    `variant`: "none" (nothing added), "inactive" (seq_bn added), "seq_bn", "lora", "lora_merged".
    """
    if variant != "none":
        model.add_adapter("a", config="lora" if variant.startswith("lora") else "seq_bn")
    if variant in ("seq_bn", "lora", "lora_merged"):
        model.set_active_adapters("a")
    model = model.to(device=device, dtype=dtype).eval()
    if variant == "lora_merged":
        model.merge_adapter("a")
    return model


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else platform.processor(), else the architecture."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(torch, transformers_version: str, threads: int, note: str) -> dict:
    """What a result depends on: CPU, cores, torch threads, library versions, date, and the run's note
    (whether the machine was quiet: say so with --note; an empty note is reported as 'not stated')."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "cores": cores,
        "threads": threads,
        "torch": torch.__version__,
        "transformers": transformers_version,
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_1min_at_start": load,
        "note": note or "not stated",
    }


def facts_markdown(facts: dict) -> str:
    """The machine facts as a markdown bullet list."""
    load = facts["load_average_1min_at_start"]
    return "\n".join(
        [
            f"- CPU: {facts['cpu']} ({facts['machine']}), {facts['cores']} cores available, "
            f"torch threads {facts['threads']}",
            f"- torch {facts['torch']}, transformers {facts['transformers']}, Python {facts['python']}",
            f"- date (UTC): {facts['date']}; 1-minute load average at start: "
            + (f"{load:.2f}" if load is not None else "n/a"),
            f"- machine quiet? {facts['note']}",
        ]
    )


def time_rounds(variants: dict, repeats: int, warmup: int) -> tuple[dict[str, list[float]], dict]:
    """Warm up every variant, then time `repeats` rounds round-robin (the first variant of a round rotates).

    `variants`: name -> callable() returning (milliseconds it timed, its output); the callable times only what
    it measures (e.g. forwards, not the set_active_adapters between them). The caller picks the grad mode.
    Returns the times (ms) per variant and each variant's last output.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    for name, run in variants.items():
        for _ in range(warmup):
            outputs[name] = run()[1]
    order = list(variants)
    for r in range(repeats):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            ms, outputs[name] = variants[name]()
            times[name].append(ms)
    return times, outputs


def paired(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """Quartiles over rounds of numerator / denominator in the same round (cancels slow drift in load)."""
    return quartiles([a / b for a, b in zip(numerator, denominator, strict=True)])


def write_results(results_dir, name: str, title: str, markdown: str, data: dict) -> None:
    """Write `<name>.md` (the printed table under a title) and `<name>.json` (the raw figures) to `results_dir`."""
    import json

    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{name}.md").write_text(f"# {title}\n\n{markdown}\n")
    (results_dir / f"{name}.json").write_text(json.dumps(data, indent=1))
