"""What the engine supports, per model type, read from its registries (so the README's table cannot drift).

`support_rows()` lists every model type in `families.ARCHITECTURES`: its family name, the adapter methods its spec
allows, the head types its `AdapterModel` class offers, and whether the `adapters` library 1.3 supports it natively,
through its plugin interface, or not at all. `support_table()` renders them as markdown; `python -m
workbench.core.support` rewrites the README's table between its markers (`--check` only compares). The UI offers
the same model types (`model_families()`), so a family added to the registry appears there and here by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .families import ARCHITECTURES

# adapters 1.3.0: ADAPTER_MODEL_MAPPING_NAMES (plus EncoderDecoderModel and CLIP's towers, which `adapters.init`
# takes as "clip"), and wrappers/interfaces.py
ADAPTERHUB_NATIVE = frozenset(
    "albert bart beit bert bert-generation clip clip_text_model clip_vision_model deberta deberta-v2 distilbert "
    "electra encoder-decoder gpt2 gptj llama mbart mistral mt5 plbart roberta t5 vit whisper xlm-roberta xmod".split()
)
ADAPTERHUB_PLUGIN = frozenset("gemma2 gemma3_text modernbert phi qwen2 qwen3".split())

# Labels only: a model type without one is shown by its own name.
DISPLAY_NAMES = {
    "albert": "ALBERT",
    "bart": "BART",
    "beit": "BEiT",
    "bert": "BERT",
    "bert-generation": "BERT-Generation",
    "clip": "CLIP",
    "clip_text_model": "CLIP text tower",
    "clip_vision_model": "CLIP vision tower",
    "deberta": "DeBERTa",
    "deberta-v2": "DeBERTa-v2/v3",
    "distilbert": "DistilBERT",
    "electra": "ELECTRA",
    "encoder-decoder": "EncoderDecoder",
    "gemma": "Gemma",
    "gemma2": "Gemma 2",
    "gemma3_text": "Gemma 3 (text)",
    "gpt2": "GPT-2",
    "gpt_neox": "GPT-NeoX",
    "gptj": "GPT-J",
    "llama": "Llama",
    "mbart": "mBART",
    "mistral": "Mistral",
    "modernbert": "ModernBERT",
    "mt5": "MT5",
    "olmo2": "OLMo 2",
    "phi": "Phi",
    "phi3": "Phi-3",
    "plbart": "PLBart",
    "qwen2": "Qwen2",
    "qwen3": "Qwen3",
    "roberta": "RoBERTa",
    "t5": "T5",
    "vit": "ViT",
    "whisper": "Whisper",
    "xlm-roberta": "XLM-RoBERTa",
    "xmod": "X-MOD",
}

# A checkpoint to start from, offered by the Model panel (any other Hub id or folder of the family works too).
EXAMPLE_CHECKPOINTS = {
    "albert": "albert/albert-base-v2",
    "bart": "facebook/bart-base",
    "beit": "microsoft/beit-base-patch16-224",
    "bert": "google-bert/bert-base-uncased",
    "bert-generation": "google/bert_for_seq_generation_L-24_bbc_encoder",
    "clip": "openai/clip-vit-base-patch32",
    "deberta": "microsoft/deberta-base",
    "deberta-v2": "microsoft/deberta-v3-base",
    "distilbert": "distilbert/distilbert-base-uncased",
    "electra": "google/electra-small-discriminator",
    "gemma": "google/gemma-2b",
    "gemma2": "google/gemma-2-2b",
    "gemma3_text": "google/gemma-3-1b-pt",
    "gpt2": "openai-community/gpt2",
    "gpt_neox": "EleutherAI/pythia-70m",
    "gptj": "EleutherAI/gpt-j-6b",
    "llama": "HuggingFaceTB/SmolLM2-135M",
    "mbart": "facebook/mbart-large-cc25",
    "mistral": "mistralai/Mistral-7B-v0.1",
    "modernbert": "answerdotai/ModernBERT-base",
    "mt5": "google/mt5-small",
    "olmo2": "allenai/OLMo-2-0425-1B",
    "phi": "microsoft/phi-2",
    "phi3": "microsoft/Phi-3-mini-4k-instruct",
    "plbart": "uclanlp/plbart-base",
    "qwen2": "Qwen/Qwen2.5-0.5B",
    "qwen3": "Qwen/Qwen3-0.6B",
    "roberta": "FacebookAI/roberta-base",
    "t5": "google-t5/t5-small",
    "vit": "google/vit-base-patch16-224",
    "whisper": "openai/whisper-tiny",
    "xlm-roberta": "FacebookAI/xlm-roberta-base",
    "xmod": "facebook/xmod-base",
}

METHOD_ORDER = ("bottleneck", "invertible", "lora", "prefix_tuning", "prompt_tuning", "reft")
HEAD_LABELS = {
    "multilabel_classification": "multilabel",
    "question_answering": "QA",
    "masked_lm": "masked LM",
    "causal_lm": "causal LM",
    "seq2seq_lm": "seq2seq LM",
}
README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"


def display_name(model_type: str) -> str:
    return DISPLAY_NAMES.get(model_type, model_type)


def family_label(model_type: str) -> str:
    """The label a person reads, e.g. "BERT (bert)"; a model type without a display name is shown as itself."""
    name = display_name(model_type)
    return f"{name} ({model_type})" if name != model_type else model_type


def adapterhub_status(model_type: str) -> str:
    """AdapterHub 1.3 support: "native", "plugin" (its AdapterModelInterface) or "none"."""
    return "native" if model_type in ADAPTERHUB_NATIVE else "plugin" if model_type in ADAPTERHUB_PLUGIN else "none"


def model_families() -> list[tuple[str, str]]:
    """(label, model type) of every model type the engine has a spec for, sorted by label."""
    return sorted(((family_label(t), t) for t in ARCHITECTURES), key=lambda item: item[0].lower())


def head_types(model_type: str) -> tuple[str, ...]:
    """The head types `AutoAdapterModel` offers for the model type (its per-family class's list)."""
    from .model_classes import family_head_types

    return tuple(family_head_types(model_type))


def support_rows() -> list[dict]:
    rows = []
    for _, model_type in model_families():
        methods = ARCHITECTURES[model_type].methods
        ordered = [m for m in METHOD_ORDER if m in methods] + sorted(set(methods) - set(METHOD_ORDER))
        rows.append(
            {
                "family": display_name(model_type),
                "model type": model_type,
                "methods": ordered,
                "heads": list(head_types(model_type)),
                "AdapterHub": adapterhub_status(model_type),
            }
        )
    return rows


def support_table() -> str:
    """The support table as markdown (one row per model type)."""
    lines = ["| family | model type | methods | heads | AdapterHub |", "|---|---|---|---|---|"]
    for row in support_rows():
        heads = ", ".join(HEAD_LABELS.get(h, h.replace("_", " ")) for h in row["heads"]) or "–"
        methods = ", ".join(f"`{m}`" for m in row["methods"])
        lines.append(f"| {row['family']} | `{row['model type']}` | {methods} | {heads} | {row['AdapterHub']} |")
    return "\n".join(lines) + "\n"


def readme_with_table(text: str) -> str:
    """`text` with the part between the support-table markers replaced by `support_table()`."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"the README needs one {START} ... {END} section")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{support_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rewrite (or --check) the README's support table.")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true", help="exit 1 if the README's table is out of date")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    wanted = readme_with_table(text)
    if args.check:
        if wanted != text:
            print(f"{args.readme}: the support table is out of date; run python -m workbench.core.support")
            return 1
        return 0
    if wanted != text:
        args.readme.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
