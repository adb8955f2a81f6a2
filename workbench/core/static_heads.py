"""Static heads: the task layers of transformers' `...For<Task>` models, and their conversion to flex heads.

A model made with `init()` from e.g. `BertForSequenceClassification` has one unnamed head (its `classifier`).
As AdapterHub does, `save_head` writes it as a *static* head: `head_config.json` with `"config": null`, the
model class and its labels, and the weights under their own names (`classifier.weight`). A flex-head model
(`AutoAdapterModel`) converts such a head on loading, and a transformers checkpoint of such a class in
`from_pretrained` (as head "default"), through `STATIC_TO_FLEX`: for each class, the flex head config it equals
and the module that becomes each index of the flex head's `nn.Sequential` (None: a layer without weights).
Conversion is exact: the flex head computes what the static head does (`tests/test_class_conversion.py`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from . import files
from .errors import AdapterLoadError, HeadError
from .weight_checks import check_weights


def _head(head_type: str, modules: list[str | None], /, **config) -> tuple[dict, tuple]:
    return {"head_type": head_type, **config}, tuple(modules)


_LINEAR = {"layers": 1, "activation_function": None}
_TWO_LAYER = [None, "classifier.dense", None, None, "classifier.out_proj"]  # dropout, dense, tanh, dropout, out


def _encoder(cls: str, dense: str, norm: str, decoder: str, pooled: bool) -> dict[str, tuple]:
    """The heads of a BERT-like encoder family (`pooled`: its sequence classifier reads the pooler output)."""
    lm = {"layers": 2, "activation_function": "gelu", "layer_norm": True, "bias": True}
    classification = (
        _head("classification", [None, "classifier"], **_LINEAR, use_pooler=True)
        if pooled
        else _head("classification", _TWO_LAYER, layers=2, activation_function="tanh", use_pooler=False)
    )
    return {
        f"{cls}ForSequenceClassification": classification,
        f"{cls}ForMultipleChoice": _head("multiple_choice", [None, "classifier"], **_LINEAR, use_pooler=True),
        f"{cls}ForTokenClassification": _head("tagging", [None, "classifier"], **_LINEAR),
        f"{cls}ForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
        f"{cls}ForMaskedLM": _head("masked_lm", [dense, None, norm, decoder], **lm),
        (f"{cls}LMHeadModel" if pooled else f"{cls}ForCausalLM"): _head(
            "causal_lm", [dense, None, norm, decoder], **lm
        ),
    }


def _lm(head_type: str, modules: list[str], activation: str = "gelu") -> tuple[dict, tuple]:
    """A masked/causal LM head: dense, activation, norm, decoder."""
    return _head(head_type, modules, layers=2, activation_function=activation, layer_norm=True, bias=True)


def _pooled_two_layer(head_type: str, dense: str, out: str, activation: str) -> tuple[dict, tuple]:
    """A classifier over the first token: dropout, dense, activation, dropout, out (DeBERTa's pooler, ELECTRA's)."""
    return _head(head_type, [None, dense, None, None, out], layers=2, activation_function=activation, use_pooler=False)


def _more_encoders() -> dict[str, tuple]:
    """ALBERT, ELECTRA, DeBERTa (v1, v2/v3), X-MOD and BERT-Generation, as AdapterHub's head_utils converts them.
    An activation "config:<attribute>" is the model config's (ALBERT's MLM head, DeBERTa's pooler and MLM head
    use theirs), so the flex head computes what the static one does whatever the config says."""
    deberta = {}
    for cls in ("Deberta", "DebertaV2"):
        deberta |= {
            f"{cls}ForSequenceClassification": _pooled_two_layer(
                "classification", "pooler.dense", "classifier", "config:pooler_hidden_act"
            ),
            f"{cls}ForTokenClassification": _head("tagging", [None, "classifier"], **_LINEAR),
            f"{cls}ForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
            f"{cls}ForMaskedLM": _lm(
                "masked_lm",
                [
                    "cls.predictions.transform.dense",
                    None,
                    "cls.predictions.transform.LayerNorm",
                    "cls.predictions.decoder",
                ],
                "config:hidden_act",
            ),
        }
    deberta["DebertaV2ForMultipleChoice"] = _pooled_two_layer(
        "multiple_choice", "pooler.dense", "classifier", "config:pooler_hidden_act"
    )
    albert = {
        "AlbertForSequenceClassification": _head("classification", [None, "classifier"], **_LINEAR, use_pooler=True),
        "AlbertForMultipleChoice": _head("multiple_choice", [None, "classifier"], **_LINEAR, use_pooler=True),
        "AlbertForTokenClassification": _head("tagging", [None, "classifier"], **_LINEAR),
        "AlbertForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
        "AlbertForMaskedLM": _lm(
            "masked_lm",
            ["predictions.dense", None, "predictions.LayerNorm", "predictions.decoder"],
            "config:hidden_act",
        ),
    }
    electra_lm = ["generator_predictions.dense", None, "generator_predictions.LayerNorm", "generator_lm_head"]
    electra = {
        "ElectraForSequenceClassification": _pooled_two_layer(
            "classification", "classifier.dense", "classifier.out_proj", "gelu"
        ),
        "ElectraForMultipleChoice": _pooled_two_layer(
            "multiple_choice", "sequence_summary.summary", "classifier", "config:summary_activation"
        ),
        "ElectraForTokenClassification": _head("tagging", [None, "classifier"], **_LINEAR),
        "ElectraForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
        "ElectraForMaskedLM": _lm("masked_lm", electra_lm),
        "ElectraForCausalLM": _lm("causal_lm", electra_lm),
    }
    return {
        **albert,
        **electra,
        **deberta,
        **_encoder("Xmod", "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", pooled=False),
        "BertGenerationDecoder": _head("causal_lm", ["lm_head.decoder"], **_LINEAR, bias=True),
    }


def _decoder(cls: str, tagger: str, lm_bias: bool = False) -> dict[str, tuple]:
    """The heads of a decoder family; its sequence classifier (`score`) reads the last non-pad token."""
    heads = {
        f"{cls}ForSequenceClassification": _head("classification", [None, "score"], **_LINEAR, bias=False),
        f"{cls}ForTokenClassification": _head("tagging", [None, tagger], **_LINEAR),
        f"{cls}ForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
    }
    lm = {"bias": True} if lm_bias else {}  # GPT-J's and Phi's lm_head have a bias
    heads[f"{cls}LMHeadModel" if cls == "GPT2" else f"{cls}ForCausalLM"] = _head("causal_lm", ["lm_head"], **lm)
    return heads


def _t5(cls: str) -> dict[str, tuple]:
    """T5 and mT5: the LM head over the decoder (scaled and tied as the flex head is, see `ArchSpec.lm_tying`) and
    the classifier on the decoder state at the last <eos> (`classification_head`: dense, tanh, out_proj)."""
    return {
        f"{cls}ForConditionalGeneration": _head("seq2seq_lm", ["lm_head"], **_LINEAR, bias=False),
        f"{cls}ForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
        f"{cls}ForSequenceClassification": _head(
            "classification",
            [None, "classification_head.dense", None, None, "classification_head.out_proj"],
            layers=2,
            activation_function="tanh",
        ),
    }


def _seq2seq(cls: str, qa: bool = True) -> dict[str, tuple]:
    """The heads of a BART-like encoder-decoder family. Its LM head's `final_logits_bias` has no place in a flex
    head: it is dropped when it is zero (as in the published checkpoints), see `rename_to_flex`."""
    classifier = [None, "classification_head.dense", None, None, "classification_head.out_proj"]
    heads = {
        f"{cls}ForSequenceClassification": _head("classification", classifier, layers=2, activation_function="tanh"),
        f"{cls}ForConditionalGeneration": _head("seq2seq_lm", ["lm_head"]),
    }
    if qa:
        heads[f"{cls}ForQuestionAnswering"] = _head("question_answering", [None, "qa_outputs"], **_LINEAR)
    return heads


STATIC_TO_FLEX: dict[str, tuple[dict, tuple]] = {
    **_encoder(
        "Bert",
        "cls.predictions.transform.dense",
        "cls.predictions.transform.LayerNorm",
        "cls.predictions.decoder",
        pooled=True,
    ),  # fmt: skip
    **_encoder("Roberta", "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", pooled=False),
    **_encoder("XLMRoberta", "lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", pooled=False),
    **_more_encoders(),
    "DistilBertForSequenceClassification": _head(
        "classification", [None, "pre_classifier", None, None, "classifier"], layers=2, activation_function="relu"
    ),
    "DistilBertForMultipleChoice": _head(
        "multiple_choice", [None, "pre_classifier", None, None, "classifier"], layers=2, activation_function="relu"
    ),
    "DistilBertForTokenClassification": _head("tagging", [None, "classifier"], **_LINEAR),
    "DistilBertForQuestionAnswering": _head("question_answering", [None, "qa_outputs"], **_LINEAR),
    "DistilBertForMaskedLM": _head(
        "masked_lm",
        ["vocab_transform", None, "vocab_layer_norm", "vocab_projector"],
        layers=2,
        activation_function="gelu",
        layer_norm=True,
        bias=True,
    ),
    # image models: ViT's classifier reads [CLS], BEiT's its pooler (the mean of the patch tokens)
    "ViTForImageClassification": _head("image_classification", [None, "classifier"], **_LINEAR),
    "BeitForImageClassification": _head("image_classification", [None, "classifier"], **_LINEAR, use_pooler=True),
    **_decoder("GPT2", "classifier"),
    **_decoder("Llama", "score"),
    **_decoder("Mistral", "score"),
    **_decoder("Qwen2", "score"),
    # current decoders (GPT-J's as AdapterHub's head_utils); Gemma 2/3's causal LM soft-caps its logits when its
    # config says so, which no flex head does: `flex_config` refuses those
    **_decoder("GPTJ", "classifier", lm_bias=True),
    **_decoder("GPTNeoX", "classifier"),
    **_decoder("Gemma", "score"),
    **_decoder("Gemma2", "score"),
    "Gemma3ForCausalLM": _head("causal_lm", ["lm_head"]),
    **_decoder("Phi", "score", lm_bias=True),
    **_decoder("Phi3", "score"),
    **_decoder("Qwen3", "score"),
    **_decoder("Olmo2", "score"),
    "WhisperForConditionalGeneration": _head("seq2seq_lm", ["proj_out"], **_LINEAR, bias=False),
    **_t5("T5"),
    **_t5("MT5"),
    **_seq2seq("Bart"),
    **_seq2seq("MBart"),
    **_seq2seq("PLBart", qa=False),  # transformers has no PLBartForQuestionAnswering
}
_NO_LABELS = ("masked_lm", "causal_lm", "seq2seq_lm")
# Config values a task class's head needs to equal its flex head: ELECTRA's multiple-choice summary must read the first
# token through its projection; DeBERTa's MLM head has another layout unless `legacy`.
_CONVERTIBLE_ONLY_WITH = {
    "ElectraForMultipleChoice": {"summary_type": "first", "summary_use_proj": True},
    "DebertaForMaskedLM": {"legacy": True},
    "DebertaV2ForMaskedLM": {"legacy": True},
}
# Static weights a flex head has no place for, which it may drop when they are zero (they then change nothing).
_DROPPABLE_IF_ZERO = ("final_logits_bias",)


def flex_config(model_class: str, model_config, label2id=None, num_labels=None) -> tuple[dict, dict[str, str]]:
    """The flex head config that equals static head `model_class`, and the renaming {static module: flex index}.

    Raises HeadError if the class has no known flex equivalent."""
    if model_class not in STATIC_TO_FLEX:
        raise HeadError(
            f"a head of {model_class or 'an unnamed class'} cannot be converted to a flex head "
            "(known: the ...For<Task> classes of the architectures workbench ships, see static_heads.STATIC_TO_FLEX)"
        )
    template, layers = STATIC_TO_FLEX[model_class]
    softcap = getattr(model_config, "final_logit_softcapping", None)
    if template["head_type"] == "causal_lm" and softcap:
        raise HeadError(
            f"{model_class} soft-caps its logits (final_logit_softcapping={softcap}), which no flex causal LM head "
            "does: it cannot be converted"
        )
    for attribute, wanted in _CONVERTIBLE_ONLY_WITH.get(model_class, {}).items():
        value = getattr(model_config, attribute, None)
        if value != wanted:
            raise HeadError(
                f"{model_class} with {attribute}={value!r} has a head no flex head equals (it converts with "
                f"{attribute}={wanted!r})"
            )
    config = dict(template)
    activation = config.get("activation_function") or ""
    if activation.startswith("config:"):
        attribute = activation.removeprefix("config:")
        value = getattr(model_config, attribute, None)
        if not value:
            raise HeadError(f"{model_class} with {attribute}={value!r}: its head has no activation a flex head takes")
        config["activation_function"] = value
    if config["head_type"] in _NO_LABELS:
        config["vocab_size"] = model_config.vocab_size
        if getattr(model_config, "embedding_size", None):
            config["embedding_size"] = model_config.embedding_size
    else:
        label2id = {str(k): int(v) for k, v in (label2id or model_config.label2id or {}).items()} or None
        count = num_labels or (len(label2id) if label2id else 2)
        config["num_choices" if config["head_type"] == "multiple_choice" else "num_labels"] = count
        config["label2id"] = label2id if label2id and len(label2id) == count else None
    return config, {module: str(i) for i, module in enumerate(layers) if module is not None}


def rename_to_flex(state: dict[str, torch.Tensor], renames: dict[str, str], head_name: str, source) -> tuple:
    """`state` (static keys) under `heads.<head_name>.<i>.` keys; returns (renamed, dropped aliases).

    A key outside the renaming is accepted only as an alias of a renamed tensor (e.g. BERT's
    `cls.predictions.bias`, which is `cls.predictions.decoder.bias`): such keys are dropped and returned."""
    renamed, rest = {}, {}
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if module in renames:
            renamed[f"heads.{head_name}.{renames[module]}.{param}"] = tensor
        else:
            rest[key] = tensor
    dropped = []
    for key, tensor in rest.items():
        if key in _DROPPABLE_IF_ZERO:
            if torch.count_nonzero(tensor):
                raise AdapterLoadError(
                    f"{source}: static head weight {key!r} is not zero, and a flex head has no place for it"
                )
        elif not any(t.shape == tensor.shape and torch.equal(t, tensor) for t in renamed.values()):
            raise AdapterLoadError(f"{source}: static head weight {key!r} has no place in the converted flex head")
        dropped.append(key)
    return renamed, dropped


def rename_to_static(state: dict[str, torch.Tensor], renames: dict[str, str], head_name: str) -> dict:
    """The inverse of `rename_to_flex`: `heads.<head_name>.<i>.<param>` -> `<static module>.<param>`."""
    back = {index: module for module, index in renames.items()}
    pattern = re.compile(rf"^heads\.{re.escape(head_name)}\.(\d+)\.(\w+)$")
    out = {}
    for key, tensor in state.items():
        match = pattern.match(key)
        if match is None or match.group(1) not in back:
            raise HeadError(f"flex head weight {key!r} has no place in a static head")
        out[f"{back[match.group(1)]}.{match.group(2)}"] = tensor
    return out


# --- the static head of an init()-ed transformers model --------------------------------------------------------


def _own_head_modules(model) -> tuple[str, ...]:
    """The head modules of a task model that is its own base model (T5ForConditionalGeneration holds `encoder`,
    `decoder` and `lm_head` itself): the modules its conversion names, as AdapterHub saves them."""
    entry = STATIC_TO_FLEX.get(type(model).__name__)
    return tuple(module for module in entry[1] if module) if entry else ()


def has_static_head(model) -> bool:
    """Whether `model` (an init()-ed transformers model) has task layers outside its base model."""
    return model._engine.base is not model or bool(_own_head_modules(model))


def static_state(model) -> dict[str, torch.Tensor]:
    """The static head's weights: every weight of the model outside the base model (and the engine); for a model
    that is its own base model, the weights of its head modules."""
    from .keys import is_engine_key

    state = model.state_dict()
    if model._engine.base is model:
        modules = _own_head_modules(model)
        return {k: v for k, v in state.items() if k.rpartition(".")[0] in modules}
    prefix = model._engine.base_prefix
    return {k: v for k, v in state.items() if not k.startswith(prefix) and not is_engine_key(k)}


def save_static(model, save_directory, use_safetensors: bool = False) -> None:
    """Write the static head as AdapterHub does: `"config": null`, the model class and its label map."""
    if not has_static_head(model):
        raise HeadError(f"{type(model).__name__} has no prediction head to save")
    folder = Path(save_directory)
    config = model.config
    data = {**model._file_meta(None), "config": None, "label2id": dict(config.label2id or {})}
    data["num_labels"] = config.num_labels
    files.write_json(folder / files.HEAD_CONFIG_NAME, data)
    name = files.SAFE_HEAD_WEIGHTS_NAME if use_safetensors else files.HEAD_WEIGHTS_NAME
    files.write_weights(folder / name, static_state(model))


def load_static(model, save_directory, id2label=None, loading_info: dict | None = None) -> None:
    """Load a head saved by `save_static` from a model of the same class, or a flex head whose config equals this
    class's static head (the inverse conversion); labels come from the file unless `id2label` is given."""
    from .heads import label2id_for

    if not has_static_head(model):
        raise HeadError(f"{type(model).__name__} has no prediction head to load into")
    folder = Path(save_directory)
    config_path = folder / files.HEAD_CONFIG_NAME
    data = files.read_saved_meta(config_path, "head")
    model._check_compatible(data, config_path)
    weights_path = files.find_weights(folder, files.HEAD_WEIGHTS_NAME, files.SAFE_HEAD_WEIGHTS_NAME)
    if weights_path is None:
        raise HeadError(f"no head weights ({files.HEAD_WEIGHTS_NAME}) in {folder}")
    state = files.read_weights(weights_path)
    own_class = type(model).__name__
    if data["config"] is None:
        if data.get("model_class") != own_class:
            raise HeadError(f"{config_path} is a head of {data.get('model_class')}, not of this {own_class}")
        label2id = data.get("label2id")
    else:  # a flex head: only one that equals this class's static head can be loaded into it
        flex = dict(data["config"])
        label2id = flex.get("label2id")
        count = flex.get("num_labels", flex.get("num_choices"))
        expected, renames = flex_config(own_class, model.config, label2id, count)
        differing = [k for k, v in expected.items() if k != "label2id" and flex.get(k, v) != v]
        if differing:
            raise HeadError(f"{config_path}: the flex head differs from {own_class}'s head in {sorted(differing)}")
        state = rename_to_static(state, renames, data.get("name") or "")
    own = static_state(model)
    if data["config"] is not None:  # what a flex head has no place for is zero in the static head it equals
        state.update({k: torch.zeros_like(v) for k, v in own.items() if k in _DROPPABLE_IF_ZERO and k not in state})
    check_weights(state, {k: tuple(v.shape) for k, v in own.items()}, weights_path)
    count = model.config.num_labels
    if id2label is not None:
        label2id = label2id_for(id2label, count, str(config_path))
    elif label2id is not None:
        label2id = label2id_for({v: k for k, v in label2id.items()}, count, str(config_path))
    own = {k: v for k, v in model.state_dict(keep_vars=True).items() if k in own}
    model._load_weights(state, own, weights_path)
    if label2id:
        model.config.label2id = dict(label2id)
        model.config.id2label = {i: label for label, i in label2id.items()}
    if loading_info is not None:
        loading_info.update(missing_keys=[], unexpected_keys=[])


# --- transformers checkpoints of static-head classes -------------------------------------------------------------


# Head modules that checkpoints name differently from the model (transformers renames them when loading): GPT-NeoX
# (Pythia) checkpoints keep the output embedding as `embed_out`, the module is `lm_head`.
CHECKPOINT_NAMES = {"embed_out.": "lm_head."}


def module_name(key: str) -> str:
    """A checkpoint key under the model's module name."""
    old = next((old for old in CHECKPOINT_NAMES if key.startswith(old)), None)
    return CHECKPOINT_NAMES[old] + key[len(old) :] if old else key


def checkpoint_head_state(
    name_or_path, base_prefix: str, base_names=frozenset(), **hub_kwargs
) -> dict[str, torch.Tensor]:
    """The weights outside the base model in a transformers checkpoint (safetensors, sharded or not, or a
    tensors-only .bin), under the model's module names; {} if none is found. `base_names`: the base model's
    top-level modules, for task models that hold them without the prefix (T5ForConditionalGeneration's `shared`,
    `encoder`, `decoder`)."""
    state = _checkpoint_head_state(name_or_path, base_prefix, base_names, **hub_kwargs)
    return {module_name(k): v for k, v in state.items()}


def _checkpoint_head_state(name_or_path, base_prefix: str, base_names, **hub_kwargs) -> dict[str, torch.Tensor]:
    folder = Path(str(name_or_path))

    def locate(filename: str) -> Path | None:
        if folder.is_dir():
            return folder / filename if (folder / filename).is_file() else None
        try:
            from transformers.utils import cached_file

            found = cached_file(str(name_or_path), filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        except (OSError, ValueError, TypeError):
            return None
        return Path(found) if found else None

    outside = lambda key: not key.startswith(base_prefix + ".") and key.split(".", 1)[0] not in base_names  # noqa: E731
    index = locate("model.safetensors.index.json")
    if index is not None:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        shards = {shard for key, shard in weight_map.items() if outside(key)}
        state = {}
        for shard in sorted(shards):
            path = locate(shard)
            if path is not None and "/" not in shard and ".." not in shard:
                state.update({k: v for k, v in files.read_weights(path).items() if outside(k)})
        return state
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = locate(filename)
        if path is not None:
            return {k: v for k, v in files.read_weights(path).items() if outside(k)}
    return {}
