"""Memory traffic of one training step, counted op by op: a CPU proxy for the GPU table's memory-bound time.

On a GPU the frozen backbone's matrix products take the same time in every library; what an adapter library adds
is elementwise work (adds, casts, copies, norms) whose time is its memory traffic. This script runs one training
step of gpu_train.py's contenders (the same model class, adapter and trainable set: gpu_train_job.py builds them)
under a torch dispatch mode that sees every aten op, and counts the ops and the bytes that the ops other than
matrix products and attention read and write. It runs on a CPU: the ops a step dispatches do not depend on the
device, only their speed does.

Each contender runs in its own process (the `adapters` library in its venv), four times: 1 or 2 layers, batch 1 or
2. The bytes split into a part per layer and token, per token (embeddings, LM head, loss), per layer (the
optimizer) and fixed, which are scaled to gpu_train.py's 1B shape (16 layers, 8 × 2048 tokens) and turned into
milliseconds at a bandwidth (`--bandwidth-tbs`, default 3.35 TB/s, an H100 SXM's HBM3): a floor, since no kernel
reaches full bandwidth.

    python benchmarks/op_census.py [--seq 256] [--workbench-root DIR] [--name op_census] [--note "..."]
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from gpu_train import MODELS  # noqa: E402

CONTENDERS = ("wb_lora", "ah_lora", "peft_lora", "wb_seq_bn", "ah_seq_bn")
COMPUTE_BOUND = {  # matrix products and fused attention: the same work in every library
    "mm", "addmm", "bmm", "baddbmm", "addmv",
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_efficient_attention_backward",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_backward",
}  # fmt: skip


NO_TRAFFIC = {"detach", "lift_fresh", "_unsafe_view", "_reshape_alias", "alias"}  # aliases of existing memory


def traffic(name: str, args, kwargs, out) -> int:
    """Bytes an op reads (each input tensor once) and writes (each output; an in-place one counts as both).
    An embedding lookup reads only the rows it gathers, which is what it writes."""
    import torch
    from torch.utils._pytree import tree_leaves

    def size(t):
        return t.numel() * t.element_size()

    outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
    if name == "embedding":
        return 2 * sum(size(t) for t in outputs)
    inputs = {t.data_ptr(): t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
    return sum(size(t) for t in inputs.values()) + sum(size(t) for t in outputs)


def census_step(model, inputs, optimizer) -> dict:
    """One training step under a dispatch mode: op counts and the bytes non-compute-bound ops read and write."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Census(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()
            self.bytes = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func._overloadpacket.__name__
            if func.is_view or name in NO_TRAFFIC:
                return out
            self.ops[name] += 1
            if name not in COMPUTE_BOUND:
                self.bytes[name] += traffic(name, args, kwargs, out)
            return out

    census = Census()
    with census:
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"ops": dict(census.ops), "bytes": dict(census.bytes)}


def job(contender: str, layers: int, batch: int, seq: int, workbench_root: Path) -> dict:
    """Build gpu_train.py's 1B contender with `layers` layers (bf16, CPU), warm up 2 steps, count the third."""
    import gpu_train_job as build
    import torch
    import transformers

    if contender.startswith("wb_"):  # imported first from `workbench_root`: gpu_train_job's import then reuses it
        sys.path.insert(0, str(workbench_root))
        import workbench  # noqa: F401

    transformers.utils.logging.set_verbosity_error()
    family, sizes, _, _ = MODELS["llama_1b"]
    sizes = {**sizes, "num_hidden_layers": layers}
    model, config = build.build_base(torch, transformers, family, sizes, "cpu")
    model, version = build.add_contender(model, family, contender)
    model.to(torch.bfloat16).train()
    inputs = build.make_batch(torch, family, config.vocab_size, batch, seq, "cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(2):  # the optimizer's state exists from here on
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {**census_step(model, inputs, optimizer), "version": version, "transformers": transformers.__version__}


def run_job(contender: str, layers: int, batch: int, seq: int, workbench_root: Path) -> dict:
    """One job in its own process: the `adapters` venv for ah_*, the project venv else."""
    python = ROOT / (".venv-adapters" if contender.startswith("ah_") else ".venv") / "bin" / "python"
    argv = [str(python), __file__, "--job", contender, "--layers", str(layers), "--batch", str(batch)]
    argv += ["--seq", str(seq), "--workbench-root", str(workbench_root)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(contender: str, counts: dict, seq: int, bandwidth: float) -> dict:
    """Split the bytes of the four jobs ((layers, batch) in {1, 2}²) into a + b·layers + (c + d·layers)·tokens
    and evaluate that at the 1B shape: a, b (the optimizer's state, set-up) do not grow with the batch. c holds
    the embeddings, LM head and loss, and how layer 0 differs from the others (no input gradient to compute)."""
    _, sizes, batch, length = MODELS["llama_1b"]
    total = {key: sum(job["bytes"].values()) for key, job in counts.items()}
    d = (total[2, 2] - total[1, 2] - total[2, 1] + total[1, 1]) / seq  # per layer and token
    b = total[2, 1] - total[1, 1] - d * seq  # per layer
    c = (total[1, 2] - total[1, 1]) / seq - d  # per token, outside the layers
    a = total[1, 1] - b - (c + d) * seq
    layers, tokens = sizes["num_hidden_layers"], batch * length
    at_1b = a + b * layers + (c + d * layers) * tokens
    two = counts[2, 1]
    return {
        "contender": contender,
        "library": two["version"],
        "transformers": two["transformers"],
        "ops_2_layers": sum(two["ops"].values()),
        "compute_ops_2_layers": sum(n for op, n in two["ops"].items() if op in COMPUTE_BOUND),
        "bytes_per_layer_token": d,
        "bytes_per_token_outside_layers": c,
        "bytes_per_layer_fixed": b,
        "bytes_fixed": a,
        "gb_at_1b": at_1b / 1e9,
        "ms_at_1b": 1e3 * at_1b / (bandwidth * 1e12),
        "ops_by_name": two["ops"],
        "bytes_by_name": two["bytes"],
    }


def table(rows: list[dict], seq: int, bandwidth: float) -> str:
    peers = {"wb_lora": "ah_lora", "wb_seq_bn": "ah_seq_bn", "peft_lora": "ah_lora"}
    by_name = {r["contender"]: r for r in rows if "error" not in r}
    lines = [
        f"One bf16 training step (forward, backward, AdamW) of gpu_train.py's Llama-style 1B contenders, batch 1 and "
        f"2 × {seq}, counted with 1 and 2 layers on the CPU; 'at 1B': scaled to 16 layers and 8 × 2048 tokens, ms at "
        f"{bandwidth} TB/s.",
        "",
        "| contender | lib / transformers | ops (2 layers) | of them matmul/attention | bytes per token and layer "
        "| bytes per token, the rest | GB per step at 1B | ms at 1B (floor) | Δ ms vs the adapters library |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['contender']} | n/a: {r['error'][:120]} | | | | | | | |")
            continue
        peer = by_name.get(peers.get(r["contender"], ""))
        delta = f"{r['ms_at_1b'] - peer['ms_at_1b']:+.2f}" if peer else ""
        lines.append(
            f"| {r['contender']} | {r['library']} / {r['transformers']} | {r['ops_2_layers']} | "
            f"{r['compute_ops_2_layers']} | {r['bytes_per_layer_token']:,.0f} | "
            f"{r['bytes_per_token_outside_layers']:,.0f} | {r['gb_at_1b']:.1f} | {r['ms_at_1b']:.1f} | {delta} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--layers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, default=256, help="tokens per counted step (bytes scale linearly)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--workbench-root", type=Path, default=ROOT, help="a checkout of workbench to count")
    parser.add_argument("--bandwidth-tbs", type=float, default=3.35)
    parser.add_argument("--name", default="op_census")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    if args.job:
        print(json.dumps(job(args.job, args.layers, args.batch, args.seq, args.workbench_root)))
        return

    import torch
    import transformers
    from common import facts_markdown, machine_facts, write_results

    facts = machine_facts(torch, transformers.__version__, torch.get_num_threads(), args.note)
    rows = []
    for contender in args.contenders.split(","):
        counts = {(n, b): run_job(contender, n, b, args.seq, args.workbench_root) for n in (1, 2) for b in (1, 2)}
        failed = next((job for job in counts.values() if "error" in job), None)
        rows.append(
            {"contender": contender, **failed} if failed else summarize(contender, counts, args.seq, args.bandwidth_tbs)
        )
        print(f"{contender}: done", flush=True)
    head = subprocess.run(
        ["git", "-C", str(args.workbench_root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    command = "python benchmarks/op_census.py " + " ".join(sys.argv[1:])
    markdown = f"Command: `{command.strip()}` (workbench at {head or args.workbench_root})\n\n"
    markdown += table(rows, args.seq, args.bandwidth_tbs) + "\n\n" + facts_markdown(facts)
    print(markdown)
    write_results(
        ROOT / "benchmarks" / "results",
        args.name,
        "Memory traffic per training step (issue 15, item 5)",
        markdown,
        {"facts": facts, "workbench_commit": head, "rows": rows},
    )


if __name__ == "__main__":
    main()
