"""Which model family (transformers `model_type`) an adapter in a listing is for.

The Hub's listing item says it for AdapterHub repos (`config.model_type`); adapter_config.json says it too. The
archived AdapterHub index and PEFT repos only name the base model (`bert-base-multilingual-cased`,
`facebook/mbart-large-cc25`, `Qwen/Qwen3-0.6B`), so the family is read from that name: the archive's names exactly,
others by the family names checkpoint ids carry. A name nothing matches gives None ("unknown"), never a guess
from a substring inside a word (`roberta` is not `bert`).
"""

from __future__ import annotations

import re

# Base-model names of the archived AdapterHub index (all 291 entries use one of these), and other common ones.
KNOWN_MODELS = {
    "aubmindlab/bert-base-arabert": "bert",
    "bert-base-multilingual-cased": "bert",
    "bert-base-multilingual-uncased": "bert",
    "bert-base-uncased": "bert",
    "distilbert-base-uncased": "distilbert",
    "facebook/bart-base": "bart",
    "facebook/bart-large": "bart",
    "facebook/mbart-large-cc25": "mbart",
    "gpt2": "gpt2",
    "roberta-base": "roberta",
    "roberta-large": "roberta",
    "xlm-roberta-base": "xlm-roberta",
    "xlm-roberta-large": "xlm-roberta",
    "sentence-transformers/all-MiniLM-L6-v2": "bert",
}

# (name part, model type), tried in order: longer and more specific names before the names they contain.
NAME_PATTERNS = (
    ("xlm-roberta", "xlm-roberta"),
    ("distilbert", "distilbert"),
    ("distilroberta", "roberta"),
    ("modernbert", "modernbert"),
    ("mdeberta", "deberta-v2"),
    ("deberta-v3", "deberta-v2"),
    ("deberta-v2", "deberta-v2"),
    ("deberta", "deberta"),
    ("roberta", "roberta"),
    ("albert", "albert"),
    ("electra", "electra"),
    ("bert_for_seq_generation", "bert-generation"),
    ("bert-generation", "bert-generation"),
    ("xmod", "xmod"),
    ("minilm", "bert"),
    ("bert", "bert"),
    ("mbart", "mbart"),
    ("plbart", "plbart"),
    ("bart", "bart"),
    ("mt5", "mt5"),
    ("t5", "t5"),
    ("whisper", "whisper"),
    ("clip", "clip"),
    ("beit", "beit"),
    ("vit", "vit"),
    ("gpt-j", "gptj"),
    ("gptj", "gptj"),
    ("gpt-neox", "gpt_neox"),
    ("pythia", "gpt_neox"),
    ("gpt2", "gpt2"),
    ("distilgpt2", "gpt2"),
    ("gemma-3", "gemma3_text"),
    ("gemma-2", "gemma2"),
    ("gemma", "gemma"),
    ("phi-3", "phi3"),
    ("phi-4", "phi3"),
    ("phi", "phi"),
    ("qwen3", "qwen3"),
    ("qwen2", "qwen2"),
    ("olmo-2", "olmo2"),
    ("olmo", "olmo"),
    ("smollm", "llama"),
    ("llama", "llama"),
    ("mistral", "mistral"),
)
# a name part counts only as a whole word of the id: not preceded by a letter or digit, not followed by a letter
_PATTERNS = tuple((re.compile(rf"(?<![a-z0-9]){re.escape(part)}(?![a-z])"), kind) for part, kind in NAME_PATTERNS)


def model_type_of(model_name: str | None, model_type: str | None = None) -> str | None:
    """The family of an adapter's base model: `model_type` when the listing gives one, else from the name."""
    if isinstance(model_type, str) and model_type:
        return model_type
    if not isinstance(model_name, str) or not model_name:
        return None
    if model_name in KNOWN_MODELS:
        return KNOWN_MODELS[model_name]
    name = model_name.lower().rsplit("/", 1)[-1]
    return next((kind for pattern, kind in _PATTERNS if pattern.search(name)), None)
