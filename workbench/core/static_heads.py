"""Heads of transformers' task models (`BertForSequenceClassification`, ...) as AdapterHub flex heads.

A head saved from a task model (`save_adapter`/`save_head` after `init()`) has a head_config.json without a head
`config` but with its `model_class`, and the task model's own weight names (`classifier.weight`). The table says
which flex head reproduces each task head and which flex layer (AdapterHub's numbering: Dropout, Linear,
activation, ...) each static module becomes, so the loaded head computes what the task model computed.
"""

from __future__ import annotations

_NONE = None  # a flex layer without weights (dropout, activation)


def _cls(layers, act, static, **extra):
    return {"head_type": "classification", "layers": layers, "activation_function": act, **extra}, static


_ONE_LAYER = [_NONE, "classifier"]
_TWO_LAYERS = [_NONE, "{dense}", _NONE, _NONE, "{out}"]


def _mlm(dense, norm, decoder, head_type="masked_lm", act="gelu"):
    config = {"head_type": head_type, "layers": 2, "activation_function": act, "layer_norm": True, "bias": True}
    return config, [dense, _NONE, norm, decoder]


def _family_tasks(family: str) -> dict[str, tuple[dict, list]]:
    tag = {"head_type": "tagging", "layers": 1, "activation_function": None}
    qa = ({"head_type": "question_answering", "layers": 1, "activation_function": None}, [_NONE, "qa_outputs"])
    if family == "Bert":
        pooled = {"layers": 1, "activation_function": None, "use_pooler": True}
        mlm = ("cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder")
        return {
            "ForSequenceClassification": ({"head_type": "classification", **pooled}, _ONE_LAYER),
            "ForMultipleChoice": ({"head_type": "multiple_choice", **pooled}, _ONE_LAYER),
            "ForTokenClassification": (tag, _ONE_LAYER),
            "ForQuestionAnswering": qa,
            "ForMaskedLM": _mlm(*mlm),
            "LMHeadModel": _mlm(*mlm, head_type="causal_lm"),
        }
    if family in ("Roberta", "XLMRoberta"):
        two = [s.format(dense="classifier.dense", out="classifier.out_proj") if s else s for s in _TWO_LAYERS]
        pooled = {"layers": 1, "activation_function": None, "use_pooler": True}
        mlm = ("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder")
        return {
            "ForSequenceClassification": _cls(2, "tanh", two, use_pooler=False),
            "ForMultipleChoice": ({"head_type": "multiple_choice", **pooled}, _ONE_LAYER),
            "ForTokenClassification": (tag, _ONE_LAYER),
            "ForQuestionAnswering": qa,
            "ForMaskedLM": _mlm(*mlm),
            "ForCausalLM": _mlm(*mlm, head_type="causal_lm"),
        }
    if family == "DistilBert":
        two = [s.format(dense="pre_classifier", out="classifier") if s else s for s in _TWO_LAYERS]
        return {
            "ForSequenceClassification": _cls(2, "relu", two),
            "ForMultipleChoice": ({"head_type": "multiple_choice", "layers": 2, "activation_function": "relu"}, two),
            "ForTokenClassification": (tag, _ONE_LAYER),
            "ForQuestionAnswering": qa,
            "ForMaskedLM": _mlm("vocab_transform", "vocab_layer_norm", "vocab_projector"),
        }
    decoder = {
        "ForSequenceClassification": _cls(1, None, [_NONE, "score"], bias=False),
        "ForTokenClassification": (tag, _ONE_LAYER if family == "GPT2" else [_NONE, "score"]),
        "ForQuestionAnswering": qa,
        "LMHeadModel" if family == "GPT2" else "ForCausalLM": ({"head_type": "causal_lm"}, ["lm_head"]),
    }
    if family != "GPT2":
        decoder["ForSequenceClassification"][0]["dropout_prob"] = 0
    return decoder


_FAMILIES = ("XLMRoberta", "Roberta", "DistilBert", "Bert", "GPT2", "Llama", "Mistral", "Qwen2")


def static_head_layout(model_class: str) -> tuple[dict, list] | None:
    """(flex head config, static module per flex layer) for a transformers task model class, or None."""
    for family in _FAMILIES:
        if model_class.startswith(family):
            found = _family_tasks(family).get(model_class[len(family) :])
            return (dict(found[0]), list(found[1])) if found else None
    return None


def flex_head_from_static(model_class: str, head_name: str, label2id, num_labels=None) -> tuple[dict, dict]:
    """The flex head config and the weight renames `{static prefix.: heads.<name>.<i>.}` for a static head."""
    config, layers = static_head_layout(model_class)
    if not label2id:
        count = num_labels or 2
        label2id = {f"LABEL_{i}": i for i in range(count)}
    count = num_labels or len(label2id)
    if config["head_type"] == "multiple_choice":
        config.update(num_choices=count, label2id=dict(label2id))
    elif config["head_type"] not in ("masked_lm", "causal_lm"):
        config.update(num_labels=count, label2id=dict(label2id))
    renames = {f"{static}.": f"heads.{head_name}.{i}." for i, static in enumerate(layers) if static}
    return config, renames
