"""How well a training step compiles: torch.compile graph breaks and graphs per method and composition, for
workbench, PEFT LoRA and the `adapters` library (in its own venv).

Why it matters (issue 15, item 5): on a GPU the step of a frozen backbone is mostly transformers' own kernels, and
what lies above the matmuls (norms, rotary, activations, residual adds) is what `torch.compile` fuses. A graph
break cuts that fusion, so the count says whether compiling can pay. Each row builds a tiny model (2 layers,
hidden 64, no dropout) with its adapter, runs one forward and backward in eager mode and twice compiled (the
second call must reuse the graph), and reports Dynamo's graph breaks by reason, the graphs compiled, and the
largest difference of the adapter's gradients to eager. The backend is "aot_eager": breaks and graphs are
Dynamo's (the same under inductor), and the gradients then differ from eager only by a graph's float order.

    python benchmarks/compile_breaks.py [--note "..."]      # about two minutes on CPU
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PEER_PY = ROOT / ".venv-adapters" / "bin" / "python"
COMMON = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, vocab_size=256)
LLAMA = dict(**COMMON, num_key_value_heads=4, attn_implementation="sdpa")
BERT = dict(**COMMON, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)
# row name -> (library, model family, adapters {name: config}, active setup as text (None: "a" alone))
METHODS = ("seq_bn", "double_seq_bn", "par_bn", "compacter[reduction_factor=4]", "lora", "ia3", "dora", "vera",
           "prefix_tuning", "loreft[dropout=0.0]", "seq_bn_inv", "mam", "unipelt")  # fmt: skip
ROWS = {
    "peft lora (llama)": ("peft", "llama", {"a": "lora"}, None),
    **{f"workbench {m} (llama)": ("wb", "llama", {"a": m}, None) for m in METHODS},
    "workbench prompt_tuning (bert)": ("wb", "bert", {"a": "prompt_tuning"}, None),
    **{
        f"workbench {setup} (bert)": ("wb", "bert", {"a": "seq_bn", "b": "lora"}, setup)
        for setup in (
            "Stack('a', 'b')",
            "Parallel('a', 'b')",
            "BatchSplit('a', 'b', batch_sizes=[1, 1])",
            "Average('a', 'b')",
        )
    },
    **{  # Split and Fuse take bottleneck adapters only
        f"workbench {setup} (bert)": ("wb", "bert", {"a": "seq_bn", "c": "seq_bn"}, setup)
        for setup in ("Split('a', 'c', splits=[16, 16])", "Fuse('a', 'c')")
    },
    "adapters lora (llama)": ("ah", "llama", {"a": "lora"}, None),
    "adapters seq_bn (llama)": ("ah", "llama", {"a": "seq_bn"}, None),
    "adapters prefix_tuning (llama)": ("ah", "llama", {"a": "prefix_tuning"}, None),
    "adapters Stack('a', 'b') (bert)": ("ah", "bert", {"a": "seq_bn", "b": "lora"}, "Stack('a', 'b')"),
}


def build(torch, transformers, library: str, family: str, adapters: dict, setup: str | None):
    """The tiny task model with the row's adapters, trained set = the adapters, moved off their identity init."""
    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA))
    else:
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**BERT))
    if library == "peft":
        import peft

        config = peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        model = peft.get_peft_model(model, config)
    else:
        if library == "wb":
            sys.path.insert(0, str(ROOT))
            import workbench as lib
        else:
            import adapters as lib
        lib.init(model)
        for name, config in adapters.items():
            model.add_adapter(name, config=config)
        blocks = vars(lib) if library == "wb" else vars(importlib.import_module("adapters.composition"))
        composition = eval(setup, dict(blocks)) if setup else "a"  # noqa: S307 (the rows' own text, above)
        if setup and setup.startswith("Fuse"):
            model.add_adapter_fusion(composition)
        model.train_adapter(composition if setup and setup.startswith("Fuse") else list(adapters))
        model.set_active_adapters(composition)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for param in trainable.values():
            param.add_(torch.randn_like(param) * 0.1)
    return model, trainable


def _reason(text: str) -> str:
    """Dynamo's reason, short: its first line and its explanation."""
    lines = [line.strip() for line in text.splitlines()]
    explanation = next((line.removeprefix("Explanation: ") for line in lines if line.startswith("Explanation")), "")
    return f"{lines[0]}: {explanation}"[:140].replace("|", "/")


def measure(row: str) -> dict:
    import torch
    import torch._dynamo as dynamo
    import transformers

    transformers.utils.logging.set_verbosity_error()
    library, family, adapters, setup = ROWS[row]
    try:
        model, trainable = build(torch, transformers, library, family, adapters, setup)
    except Exception as exc:  # a method or composition the library does not have
        return {"row": row, "error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    ids = torch.randint(0, COMMON["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(0))

    def grads(step_model):
        model.zero_grad(set_to_none=True)
        out = step_model(input_ids=ids)
        out.logits.float().pow(2).mean().backward()
        return {name: p.grad.clone() for name, p in trainable.items() if p.grad is not None}

    eager = grads(model)
    dynamo.reset()
    dynamo.utils.counters.clear()
    step = torch.compile(model, backend="aot_eager")
    try:
        compiled = grads(step)
        grads(step)
    except Exception as exc:
        return {"row": row, "error": f"compiled step failed: {type(exc).__name__}: {str(exc)[:160]}"}
    reasons = Counter()
    for text, n in dynamo.utils.counters["graph_break"].items():
        reasons[_reason(text)] += n
    worst = max(((compiled[k] - eager[k]).abs().max().item() for k in eager if k in compiled), default=float("nan"))
    graphs = dynamo.utils.counters["stats"]["unique_graphs"]
    return {"row": row, "graph_breaks": sum(reasons.values()), "graphs": graphs,
            "reasons": dict(reasons), "max_grad_diff": worst, "grads_missing": len(set(eager) - set(compiled)),
            "library_version": _version(library), "transformers": transformers.__version__}  # fmt: skip


def _version(library: str) -> str:
    return importlib.import_module({"wb": "workbench", "ah": "adapters", "peft": "peft"}[library]).__version__


def run_row(row: str) -> dict:
    """In this process, or the `adapters` venv's for its rows."""
    if ROWS[row][0] != "ah":
        return measure(row)
    if not PEER_PY.exists():
        return {"row": row, "error": "no .venv-adapters (make -C tests/conformance venv)"}
    proc = subprocess.run([str(PEER_PY), __file__, "--worker", row], capture_output=True, text=True, timeout=600)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"row": row, "error": f"exit {proc.returncode}: {proc.stderr.strip()[-200:]}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--note", default="")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--only", default="", help="comma-separated substrings of row names")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker)))
        return
    import torch
    import transformers
    from common import facts_markdown, machine_facts, write_results

    names = [r for r in ROWS if not args.only or any(part in r for part in args.only.split(","))]
    rows = [run_row(name) for name in names]
    head = (
        "| row | graph breaks | graphs (2 calls) | by reason | max gradient difference to eager | "
        "library / transformers |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['row']} | n/a: {r['error']} | | | | |")
            continue
        reasons = "; ".join(f"{n}× {reason}" for reason, n in r["reasons"].items()) or "–"
        missing = f" ({r['grads_missing']} gradients missing)" if r["grads_missing"] else ""
        lines.append(f"| {r['row']} | {r['graph_breaks']} | {r['graphs']} | {reasons} | {r['max_grad_diff']:.1e}"
                     f"{missing} | {r['library_version']} / {r['transformers']} |")  # fmt: skip
    facts = machine_facts(torch, transformers.__version__, torch.get_num_threads(), args.note)
    markdown = "\n\n".join([f"Command: `{' '.join(['python', *sys.argv])}`", "\n".join(lines), facts_markdown(facts)])
    print(markdown)
    write_results(RESULTS, "compile_breaks", "torch.compile graph breaks of a training step", markdown,
                  {"command": sys.argv, "facts": facts, "rows": rows, "llama": LLAMA, "bert": BERT})  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
