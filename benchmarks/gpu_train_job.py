"""One job of gpu_train.py: a random-init model, one contender's adapter, timed training steps; prints JSON.

Each contender × model × checkpointing setting runs in its own process, so its peak GPU memory is its own. The
file imports only torch, transformers and the contender's library, because it runs under two stacks: transformers
5 (workbench, PEFT) and transformers 4.57.6 (the `adapters` library, whose wheels gpu_run.sh puts on PYTHONPATH).

Every contender gets the same model: transformers' own task class (LlamaForCausalLM: causal-LM loss on the input
ids; BertForSequenceClassification: 2-label loss on random labels), built from its config on the device with
seed 0, sdpa attention, no attention mask (the synthetic batches have no padding), all weights in `--dtype`.
Trainable: the adapter, plus the BERT classifier; embeddings and the LM head stay frozen in every contender.

    python benchmarks/gpu_train_job.py --family llama --sizes JSON --contender wb_lora --batch 8 --seq 2048
        [--gc] [--device cuda] [--dtype bfloat16] [--warmup 10] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LORA_TARGETS = {"llama": ["q_proj", "v_proj"], "bert": ["query", "value"]}  # AdapterHub's lora default: q and v
COMPILED = "_compiled"  # a contender name's suffix: torch.compile(model) (inductor) once the adapter is added


def build_base(torch, transformers, family: str, sizes: dict, device: str):
    """The task model, randomly initialised on `device` (seed 0), asking for sdpa attention."""
    if family == "llama":
        config = transformers.LlamaConfig(**sizes, tie_word_embeddings=False, attn_implementation="sdpa")
        cls = transformers.LlamaForCausalLM
    else:
        config = transformers.BertConfig(**sizes, num_labels=2, attn_implementation="sdpa")
        cls = transformers.BertForSequenceClassification
    torch.manual_seed(0)
    with torch.device(device):  # born on the GPU: initialising 1B parameters on the CPU alone takes long
        return cls(config), config


def add_contender(model, family: str, contender: str):
    """Add and activate the contender's adapter "a" ("wb_*": workbench, "ah_*": adapters, "peft_lora": PEFT)."""
    library, method = contender.split("_", 1)
    if library == "peft":
        import peft

        task = "CAUSAL_LM" if family == "llama" else "SEQ_CLS"  # SEQ_CLS: the classifier is trained (modules_to_save)
        config = peft.LoraConfig(
            task_type=task, r=8, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS[family]
        )
        return peft.get_peft_model(model, config), peft.__version__
    if library == "wb":
        sys.path.insert(0, str(ROOT))
        import workbench as lib
    else:
        import adapters as lib
    lib.init(model)
    model.add_adapter("a", config=method)
    model.train_adapter("a")
    # the same trainable set as PEFT's: adapter weights, the classifier; never the LM head or the embeddings
    for module, trainable in (
        (model.get_input_embeddings(), False),
        (getattr(model, "lm_head", None), False),
        (getattr(model, "classifier", None), True),
    ):
        for param in module.parameters() if module is not None else ():
            param.requires_grad = trainable
    return model, lib.__version__


def enable_checkpointing(model) -> None:
    """transformers' own activation checkpointing of every layer, non-reentrant (the same call for all)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers ≥ 5.2x; older: gradient_*
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_batch(torch, family: str, vocab: int, batch: int, seq: int, device: str) -> dict:
    """Random ids (seed 0); labels: the ids themselves (causal LM, shifted inside the model) or random 0/1."""
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    if family == "llama":
        inputs = {"input_ids": ids, "labels": ids.clone()}
    else:
        labels = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(1))
        inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in inputs.items()}


def train_steps(torch, model, inputs: dict, warmup: int, steps: int, device: str) -> dict:
    """AdamW on the trainable parameters; `warmup` untimed steps, then `steps` timed ones (CUDA events per step,
    one synchronize at the end). Peak memory is counted from just before the optimizer is built."""
    cuda = device == "cuda"
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    setup_bytes = torch.cuda.memory_allocated() if cuda else None
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def step():
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    warm_start = time.perf_counter()
    loss = model(**inputs).loss  # the first step checks that every trainable parameter gets a gradient
    loss.backward()
    missing = sum(p.grad is None for p in params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    first_loss = loss.item()
    for _ in range(max(warmup - 1, 0)):
        step()
    if cuda:
        torch.cuda.synchronize()
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
    warmup_s = time.perf_counter() - warm_start  # with torch.compile: compiling the graphs, mostly
    losses, cpu_marks = [], []
    start = time.perf_counter()
    for i in range(steps):
        if cuda:
            marks[i].record()
        else:
            cpu_marks.append(time.perf_counter())
        losses.append(step())
    if cuda:
        marks[steps].record()
        torch.cuda.synchronize()
        step_ms = [marks[i].elapsed_time(marks[i + 1]) for i in range(steps)]
    else:
        cpu_marks.append(time.perf_counter())
        step_ms = [1e3 * (b - a) for a, b in zip(cpu_marks, cpu_marks[1:], strict=False)]
    wall_s = time.perf_counter() - start
    return {
        "wall_s": wall_s,
        "warmup_s": warmup_s,
        "step_ms": step_ms,
        "median_step_ms": statistics.median(step_ms),
        "first_loss": first_loss,
        "last_loss": losses[-1].item(),
        "params_without_grad": missing,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
        "setup_bytes": setup_bytes,
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
    }


def run(args) -> dict:
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model, config = build_base(torch, transformers, args.family, json.loads(args.sizes), args.device)
    model, lib_version = add_contender(model, args.family, args.contender.removesuffix(COMPILED))
    model.to(device=args.device, dtype=dtype)
    if args.gc:
        enable_checkpointing(model)
    if args.contender.endswith(COMPILED):  # compiled during the warm-up steps (their time is in warmup_s)
        model = torch.compile(model)
    inputs = make_batch(torch, args.family, config.vocab_size, args.batch, args.seq, args.device)
    build_s = time.perf_counter() - t0
    try:
        result = train_steps(torch, model, inputs, args.warmup, args.steps, args.device)
    except torch.cuda.OutOfMemoryError:
        return {"error": f"CUDA out of memory at batch {args.batch} × {args.seq}"}
    return {
        **result,
        "build_s": build_s,
        "attn_implementation": getattr(config, "_attn_implementation", None),
        "checkpointed_layers": sum(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()),
        "library_version": lib_version,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=list(LORA_TARGETS), required=True)
    parser.add_argument("--sizes", required=True, help="JSON of config sizes (hidden_size, num_hidden_layers, ...)")
    contenders = ["wb_lora", "wb_seq_bn", "ah_lora", "ah_seq_bn", "peft_lora"]
    parser.add_argument("--contender", choices=contenders + [c + COMPILED for c in contenders])
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--seq", type=int, required=True)
    parser.add_argument("--gc", action="store_true", help="activation (gradient) checkpointing of every layer")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    try:
        result = run(args)
    except Exception as exc:  # reported as the row's "n/a: reason"; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
