"""How well a training step compiles: torch.compile graph breaks for workbench LoRA and seq_bn, against PEFT LoRA.

Why it matters (issue 15, item 5): on a GPU the step of a frozen backbone is mostly transformers' own kernels, and
what lies above the matmuls (norms, rotary, activations, residual adds) is what `torch.compile` fuses. A graph
break cuts that fusion, so the count says whether compiling can pay. Each row compiles a tiny Llama (2 layers,
hidden 64) with its adapter, runs one forward and backward with a causal-LM loss, checks the adapter's gradients
against eager, and counts Dynamo's graph breaks by reason (`torch._dynamo.utils.counters`).

    python benchmarks/compile_breaks.py [--note "..."]      # about a minute on CPU
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SIZES = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
             vocab_size=256, attn_implementation="sdpa")  # fmt: skip


def build(torch, transformers, contender: str):
    """A tiny Llama with the contender's adapter, moved off its identity-like init so gradients are non-trivial."""
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SIZES))
    if contender == "peft_lora":
        import peft

        config = peft.LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        model = peft.get_peft_model(model, config)
    else:
        sys.path.insert(0, str(ROOT))
        import workbench

        workbench.init(model)
        model.add_adapter("a", config=contender.removeprefix("wb_"))
        model.train_adapter("a")
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for param in trainable.values():
            param.add_(torch.randn_like(param) * 0.1)
    return model, trainable


def _reason(text: str) -> str:
    """Dynamo's reason, short: its first line and its explanation (`ContextVar.get` is named only there)."""
    lines = [line.strip() for line in text.splitlines()]
    explanation = next((line.removeprefix("Explanation: ") for line in lines if line.startswith("Explanation")), "")
    return f"{lines[0]}: {explanation}"[:140].replace("|", "/")


def breaks_of(torch, transformers, contender: str) -> dict:
    import torch._dynamo as dynamo

    model, trainable = build(torch, transformers, contender)
    ids = torch.randint(0, SIZES["vocab_size"], (2, 32), generator=torch.Generator().manual_seed(0))

    def grads(step_model):
        model.zero_grad(set_to_none=True)
        step_model(input_ids=ids, labels=ids).loss.backward()
        return {name: p.grad.clone() for name, p in trainable.items()}

    eager = grads(model)
    dynamo.reset()
    dynamo.utils.counters.clear()
    compiled = grads(torch.compile(model))
    reasons = Counter({_reason(text): n for text, n in dynamo.utils.counters["graph_break"].items()})
    worst = max((compiled[k] - eager[k]).abs().max().item() for k in eager)
    return {"contender": contender, "graph_breaks": sum(reasons.values()), "reasons": dict(reasons),
            "max_grad_diff": worst, "layers": SIZES["num_hidden_layers"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    import torch
    import transformers
    from common import facts_markdown, machine_facts, write_results

    rows = [breaks_of(torch, transformers, c) for c in ("peft_lora", "wb_lora", "wb_seq_bn")]
    head = "| contender | graph breaks (2 layers) | by reason | max gradient difference to eager |"
    lines = [head, "|---|---|---|---|"]
    for r in rows:
        reasons = "; ".join(f"{n}× {reason}" for reason, n in r["reasons"].items()) or "–"
        lines.append(f"| {r['contender']} | {r['graph_breaks']} | {reasons} | {r['max_grad_diff']:.1e} |")
    facts = machine_facts(torch, transformers.__version__, torch.get_num_threads(), args.note)
    markdown = "\n\n".join([f"Command: `{' '.join(['python', *sys.argv])}`", "\n".join(lines), facts_markdown(facts)])
    print(markdown)
    write_results(RESULTS, "compile_breaks", "torch.compile graph breaks of a training step", markdown,
                  {"command": sys.argv, "facts": facts, "rows": rows, "sizes": SIZES})  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
