"""Inference speed of the base model, each adapter and each composition: one forward pass over a batch.

Each setup gets `warmup` untimed passes, then `repeats` timed ones; the table reports the median (robust to a
noisy machine). On a GPU the clock waits for the device (`torch.cuda.synchronize`); on a CPU the linears multiply
through oneDNN, as in `predict`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import pandas as pd
import torch

from ..core.composition import Parallel
from ..core.context import AdapterSetup
from ..core.onednn_linear import onednn_linears
from .setups import check_setup, heads_for, setup_label

COLUMNS = ["setup", "batch_size", "median_s", "min_s", "texts_per_s", "slowdown", "device"]


def inference_speed(
    model,
    tokenizer,
    texts: list[str],
    setups,
    repeats: int = 5,
    warmup: int = 1,
    max_length: int = 128,
    progress: Callable[[int, int, str], None] | None = None,
) -> pd.DataFrame:
    """Seconds per forward pass over `texts` (one batch) for each setup (None: the base model).

    `slowdown` is each median over the base model's (1.0 for the base; NaN when the base is not measured).
    `progress(done, total, setup_label)` is called after each setup. The model's mode and setup are unchanged.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0 (got repeats={repeats}, warmup={warmup})")
    texts = [t for t in ([texts] if isinstance(texts, str) else texts) if t.strip()]
    if not texts:
        raise ValueError("no input texts: give at least one non-empty text")
    blocks = [check_setup(model, setup) for setup in setups]
    if not blocks:
        raise ValueError("no setups to time: give None (the base model), adapter names or compositions")
    device = next(model.parameters()).device
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in encoded.items()}
    rows = []
    was_training = model.training
    model.eval()
    try:
        for done, block in enumerate(blocks, start=1):
            times = _time_setup(model, block, inputs, repeats, warmup, device)
            rows.append(
                {
                    "setup": setup_label(block),
                    "batch_size": len(texts),
                    "median_s": statistics.median(times),
                    "min_s": min(times),
                    "texts_per_s": len(texts) / statistics.median(times),
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
                }
            )
            if progress is not None:
                progress(done, len(blocks), rows[-1]["setup"])
    finally:
        model.train(was_training)
    base = next((r["median_s"] for r in rows if r["setup"] == setup_label(None)), None)
    for row in rows:
        row["slowdown"] = row["median_s"] / base if base else float("nan")
    return pd.DataFrame(rows, columns=COLUMNS)


def _time_setup(model, block, inputs: dict, repeats: int, warmup: int, device: torch.device) -> list[float]:
    heads = heads_for(model, block)
    head_setup = heads if isinstance(block, Parallel) and len(heads) > 1 else (heads[0] if heads else None)
    if hasattr(model, "heads") and not heads:
        run = model.base_model  # no head for this setup: time the base model with its adapters
    else:
        run = model
    times = []
    with torch.inference_mode(), onednn_linears(model), AdapterSetup(block, head_setup=head_setup):
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            run(**inputs)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
