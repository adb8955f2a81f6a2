"""AdapterHub's per-architecture classes (`BertAdapterModel`, ...) and `ADAPTER_MODEL_MAPPING`.

Each class is `AdapterModel` fixed to one model type, with AdapterHub's list of head types for it. AdapterHub code
names them directly (`BertAdapterModel(config)`, `ADAPTER_MODEL_MAPPING[BertConfig].head_types`). Families the
engine does not support yet still have their class, which refuses with UnsupportedModelError when built, so such
code fails with a clear message rather than an ImportError.
"""

from __future__ import annotations

from collections.abc import Mapping

from transformers import AutoConfig

from .adapter_model import AdapterModel
from .errors import UnsupportedModelError
from .families import ARCHITECTURES

_ENCODER_HEADS = (
    "classification",
    "multilabel_classification",
    "tagging",
    "multiple_choice",
    "question_answering",
    "dependency_parsing",
    "masked_lm",
    "causal_lm",
)
# ALBERT and DeBERTa: AdapterHub offers no dependency parsing or causal LM head there
_ENCODER_HEADS_NO_LM = tuple(h for h in _ENCODER_HEADS if h not in ("dependency_parsing", "causal_lm"))
_SEQ2SEQ_HEADS = ("classification", "multilabel_classification", "question_answering", "seq2seq_lm")
_DECODER_HEADS = ("classification", "multilabel_classification", "tagging", "question_answering", "causal_lm")
_BIDIRECTIONAL_HEADS = tuple(h for h in _ENCODER_HEADS if h != "causal_lm")

# The head types of families the engine supports but AdapterHub has no AdapterModel class for (its plugin interface,
# or none): the heads that read their sequences the way the family's own task models do. CLIP's towers, like CLIP,
# have none (their task models project to an embedding space; no flex head reads that).
HEADS_WITHOUT_CLASS = {
    **dict.fromkeys(("gpt_neox", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "qwen3", "olmo2"), _DECODER_HEADS),
    "modernbert": _BIDIRECTIONAL_HEADS,
    "clip_text_model": (),
    "clip_vision_model": (),
    "encoder-decoder": (),  # AdapterHub adapts EncoderDecoderModel through adapters.init only (its own LM head)
}

# model type -> (class name, head types), AdapterHub 1.3's families
_FAMILIES = {
    "albert": ("AlbertAdapterModel", _ENCODER_HEADS_NO_LM),
    "bart": ("BartAdapterModel", _SEQ2SEQ_HEADS),
    "beit": ("BeitAdapterModel", ("image_classification",)),
    "bert": ("BertAdapterModel", _ENCODER_HEADS),
    "bert-generation": ("BertGenerationAdapterModel", ("masked_lm", "causal_lm")),
    "clip": ("CLIPAdapterModel", ()),
    "deberta": ("DebertaAdapterModel", _ENCODER_HEADS_NO_LM),
    "deberta-v2": ("DebertaV2AdapterModel", _ENCODER_HEADS_NO_LM),
    "distilbert": ("DistilBertAdapterModel", _ENCODER_HEADS),
    "electra": ("ElectraAdapterModel", _ENCODER_HEADS),
    "gpt2": ("GPT2AdapterModel", _DECODER_HEADS),
    "gptj": ("GPTJAdapterModel", _DECODER_HEADS),
    "llama": ("LlamaAdapterModel", _DECODER_HEADS),
    "mbart": ("MBartAdapterModel", _SEQ2SEQ_HEADS),
    "mistral": ("MistralAdapterModel", _DECODER_HEADS),
    "mt5": ("MT5AdapterModel", _SEQ2SEQ_HEADS),
    "plbart": ("PLBartAdapterModel", _SEQ2SEQ_HEADS),
    "qwen2": ("Qwen2AdapterModel", _DECODER_HEADS),
    "roberta": ("RobertaAdapterModel", _ENCODER_HEADS),
    "t5": ("T5AdapterModel", _SEQ2SEQ_HEADS),
    "vit": ("ViTAdapterModel", ("image_classification",)),
    "whisper": ("WhisperAdapterModel", ("seq2seq_lm",)),
    "xlm-roberta": ("XLMRobertaAdapterModel", _ENCODER_HEADS),
    "xmod": ("XmodAdapterModel", _ENCODER_HEADS),
}


# Static-head aliases the family's AdapterHub class does not report as unexpected when it converts a static head
# (`load_head(..., loading_info=...)`): AdapterHub's `_keys_to_ignore_on_load_unexpected` of these classes.
_IGNORED_UNEXPECTED = {
    "deberta": ["cls.predictions.bias"],
    "deberta-v2": ["cls.predictions.bias"],
    "bert-generation": ["lm_head.bias"],
}


def _family_class(model_type: str, class_name: str, head_types: tuple) -> type[AdapterModel]:
    supported = model_type in ARCHITECTURES

    def __init__(self, config_or_base, *args, **kwargs):
        if not supported:
            raise UnsupportedModelError(
                f"{class_name}: model type {model_type!r} is not supported by the adapter engine yet "
                f"(supported: {', '.join(sorted(ARCHITECTURES))})"
            )
        AdapterModel.__init__(self, config_or_base, *args, **kwargs)
        if self.config.model_type.replace("_", "-") != model_type:
            raise UnsupportedModelError(
                f"{class_name} is for model type {model_type!r}, not {self.config.model_type!r}"
            )

    return type(
        class_name,
        (AdapterModel,),
        {
            "__init__": __init__,
            "head_types": head_types,
            "model_type": model_type,
            "__module__": __name__,
            "_keys_to_ignore_on_load_unexpected": _IGNORED_UNEXPECTED.get(model_type),
        },
    )


ADAPTER_MODEL_CLASSES: dict[str, type[AdapterModel]] = {
    model_type: _family_class(model_type, name, heads) for model_type, (name, heads) in _FAMILIES.items()
}
globals().update({cls.__name__: cls for cls in ADAPTER_MODEL_CLASSES.values()})


class _AdapterModelMapping(Mapping):
    """Config class (or model type) -> the family's AdapterModel class, for the families the engine supports."""

    def _model_type(self, key) -> str | None:
        if isinstance(key, str):
            return key.replace("_", "-")
        model_type = getattr(key, "model_type", None)
        return model_type.replace("_", "-") if isinstance(model_type, str) else None

    def __getitem__(self, key):
        model_type = self._model_type(key)
        if model_type not in ARCHITECTURES or model_type not in ADAPTER_MODEL_CLASSES:
            raise KeyError(key)
        return ADAPTER_MODEL_CLASSES[model_type]

    def __contains__(self, key) -> bool:
        model_type = self._model_type(key)
        return model_type in ARCHITECTURES and model_type in ADAPTER_MODEL_CLASSES

    def __iter__(self):
        for model_type in ARCHITECTURES:
            if model_type in ADAPTER_MODEL_CLASSES:
                yield type(AutoConfig.for_model(model_type))

    def __len__(self) -> int:
        return sum(1 for _ in self)


ADAPTER_MODEL_MAPPING = _AdapterModelMapping()


def family_head_types(model_type: str) -> tuple[str, ...]:
    """The head types a model of this type offers: its AdapterHub class's list, else `HEADS_WITHOUT_CLASS`'s, else
    (a model described by an interface) every head type."""
    if model_type in ADAPTER_MODEL_MAPPING:
        return ADAPTER_MODEL_MAPPING[model_type].head_types
    return HEADS_WITHOUT_CLASS.get(model_type, AdapterModel.head_types)


__all__ = ["ADAPTER_MODEL_MAPPING", "ADAPTER_MODEL_CLASSES", *(c.__name__ for c in ADAPTER_MODEL_CLASSES.values())]
