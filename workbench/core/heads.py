"""Prediction heads with AdapterHub's layout (`heads.<name>.<i>.weight`) and `head_config.json` fields."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig
from transformers.modeling_outputs import (
    CausalLMOutputWithPast,
    ImageClassifierOutput,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqSequenceClassifierOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .errors import HeadError
from .methods.activations import KNOWN_ACTIVATIONS, activation
from .transformers_api import cache_of


def _dropout_prob(model_config, config: dict) -> float:
    for value in (
        config.get("dropout_prob"),
        getattr(model_config, "classifier_dropout", None),
        getattr(model_config, "hidden_dropout_prob", None),
    ):
        if value is not None:
            return value
    return 0.0


def _model_config(model):
    """A head is built from a model (AdapterHub's `head_class(model, name, ...)`) or from its config."""
    return model if isinstance(model, PretrainedConfig) else model.config


class PredictionHead(nn.Sequential):
    """AdapterHub's head base: an `nn.Sequential` with a `name` and a `config` dict, built by `build(model)`.

    Custom heads subclass it as in AdapterHub (`super().__init__(name)`, set `self.config`, `self.build(model)`,
    `super().forward(x)` runs the layers) and are called as `head(outputs, cls_output, attention_mask, return_dict,
    labels=..., **kwargs)`. The built-in heads below also take the model's config instead of the model.
    """

    head_type = ""
    defaults: dict = {}
    arg_order: tuple = ()  # AdapterHub's positional arguments after (model, head_name)

    def __init__(self, name: str | None = None):
        super().__init__()
        self.config: dict = {}
        self.name = name

    def build(self, model) -> None:
        """Add the layers `self.config` describes (Dropout/Linear/activation, AdapterHub's module numbering)."""
        model_config = _model_config(model)
        check_head_options(self.config)
        for i, module in enumerate(self._build(model_config)):
            self.add_module(str(i), module)
        self._init_weights(getattr(model_config, "initializer_range", 0.02))
        if isinstance(model, nn.Module):
            self.train(model.training)

    def _build(self, model_config) -> list[nn.Module]:
        hidden, cfg = model_config.hidden_size, self.config
        p = _dropout_prob(model_config, cfg)
        out = cfg.get("num_labels", 1 if "num_choices" in cfg else hidden)
        modules: list[nn.Module] = []
        for i in range(cfg["layers"]):
            modules.append(nn.Dropout(p))
            if i < cfg["layers"] - 1:
                modules.append(nn.Linear(hidden, hidden))
                if cfg["activation_function"]:
                    modules.append(activation(cfg["activation_function"]))
            else:
                modules.append(nn.Linear(hidden, out, bias=cfg.get("bias", True)))
                if out is hidden and cfg.get("activation_function"):  # no label count: a hidden-size output layer
                    modules.append(activation(cfg["activation_function"]))
        return modules

    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def id2label(self) -> dict[int, str] | None:
        label2id = self.config.get("label2id")
        return {int(v): k for k, v in label2id.items()} if label2id else None

    def get_output_embeddings(self) -> nn.Module | None:
        """The layer tied to the input embeddings (LM heads); None for other heads, as in AdapterHub."""
        return None

    def get_label_names(self) -> list[str]:
        return ["labels"]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class BuiltinHead(PredictionHead):
    """A head type of `HEAD_TYPES`: `Head(model_or_config, head_name=None, *AdapterHub's positional args, **options)`
    with the options checked against `defaults` (`id2label` becomes the saved `label2id`)."""

    def __init__(self, model, head_name: str | None = None, *args, id2label=None, **options):
        super().__init__(head_name)
        if len(args) > len(self.arg_order):
            raise HeadError(f"{self.head_type} head: too many positional arguments {args!r}")
        for key, value in zip(self.arg_order, args, strict=False):
            if key in options or (key == "id2label" and id2label is not None):
                raise HeadError(f"{self.head_type} head: {key} given twice")
            if key == "id2label":
                id2label = value
            else:
                options[key] = value
        unknown = set(options) - set(self.defaults)
        if unknown:
            raise HeadError(f"{self.head_type} head: unknown option(s) {sorted(unknown)}")
        model_config = _model_config(model)
        if self.head_type in ("masked_lm", "causal_lm", "seq2seq_lm") and options.get("vocab_size") is None:
            options["vocab_size"] = model_config.vocab_size
        count_key = "num_choices" if "num_choices" in self.defaults else "num_labels"
        count = options.get(count_key, self.defaults.get(count_key))
        if id2label is not None:
            options["label2id"] = label2id_for(id2label, count, head_name or self.head_type)
        elif "label2id" in self.defaults and options.get("label2id") is None and self.head_type not in _LM_TYPES:
            # A head sized on the meta device (checked against a file before anything is allocated) needs no label
            # names: a hostile num_labels must not build millions of them first.
            if torch.get_default_device().type != "meta":
                options["label2id"] = label2id_for(None, count, head_name or self.head_type)
        self.config = {"head_type": self.head_type, **self.defaults, **options}
        self.build(model)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        raise NotImplementedError


_LM_TYPES = ("masked_lm", "causal_lm")


def label2id_for(id2label, count: int | None, where: str) -> dict[str, int] | None:
    """AdapterHub's `label2id` for a head: from `id2label` (checked against the label count) or LABEL_i."""
    if id2label:
        if not isinstance(id2label, Mapping):
            raise HeadError(f"head {where!r}: id2label={id2label!r} must be a dict of label ids to labels")
        if count is not None and len(id2label) != count:
            raise HeadError(f"head {where!r}: {count} labels expected but id2label has {len(id2label)}: {id2label}")
        try:  # ids are ints or digit strings (config.json); int(1.5) or int(True) would hide a mistake
            label2id = {str(label): int(i) for i, label in id2label.items() if not isinstance(i, bool | float)}
        except (TypeError, ValueError):
            label2id = {}
        if len(label2id) != len(id2label):
            raise HeadError(f"head {where!r}: id2label={id2label!r} must map distinct integer ids to distinct labels")
        return label2id
    return {f"LABEL_{i}": i for i in range(count)} if isinstance(count, int) and count > 0 else None


MAX_HEAD_LAYERS = 64  # heads have 1-2 layers; a bound keeps a hostile head_config.json from exhausting memory


def check_head_options(config: dict) -> None:
    """Refuse head options that would crash (or silently misbehave) when the head is built or run, with the key
    and value named: label counts, layers and sizes must be positive integers, and so on."""
    kind = f"{config.get('head_type')} head"

    def bad(key: str, what: str) -> HeadError:
        return HeadError(f"{kind}: {key}={config[key]!r} must be {what}")

    for key in ("num_labels", "num_choices", "layers", "vocab_size", "embedding_size"):
        value = config.get(key)
        if key not in config or (key == "embedding_size" and value is None):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(key, "an integer >= 1")
        if key == "layers" and value > MAX_HEAD_LAYERS:  # each layer is a hidden x hidden Linear
            raise bad(key, f"at most {MAX_HEAD_LAYERS}")
    act = config.get("activation_function")
    if act and (not isinstance(act, str) or act.lower() not in KNOWN_ACTIVATIONS):  # None or "": no activation
        raise bad("activation_function", f"None or a known activation ({', '.join(KNOWN_ACTIVATIONS)})")
    p = config.get("dropout_prob")
    if p is not None and (isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1):
        raise bad("dropout_prob", "None or a probability in [0, 1)")
    for key in ("bias", "use_pooler", "layer_norm", "shift_labels", "multilabel"):
        if key in config and not isinstance(config[key], bool):
            raise bad(key, "true or false")
    _check_label2id(config, bad)


def _check_label2id(config: dict, bad) -> None:
    """label2id maps label names to distinct ids in range(num_labels) (or num_choices)."""
    label2id = config.get("label2id")
    if label2id is None:
        return
    count_key = "num_labels" if "num_labels" in config else "num_choices"
    count = config.get(count_key)
    ids = list(label2id.values()) if isinstance(label2id, dict) else []
    ints = all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
    if not isinstance(label2id, dict) or not all(isinstance(k, str) for k in label2id) or not ints:
        raise bad("label2id", "a dict of label names to integer ids")
    if len(set(ids)) != len(ids):
        raise bad("label2id", "a dict whose ids are distinct")
    if count is not None and not all(0 <= i < count for i in ids):
        raise bad("label2id", f"a dict whose ids are in range({count}) ({count_key}={count})")
    if count is not None and len(ids) != count:
        raise bad("label2id", f"a dict naming every one of the {count} labels ({count_key}={count})")


_SEQ2SEQ_FIELDS = (
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
    "encoder_last_hidden_state",
    "encoder_hidden_states",
    "encoder_attentions",
)


def _output(outputs, plain: type, seq2seq: type, **fields):
    """A head's output; for an encoder-decoder model's output AdapterHub's Seq2Seq type, carrying the encoder's and
    decoder's states along."""
    if isinstance(outputs, Seq2SeqModelOutput):
        return seq2seq(**fields, **{key: outputs.get(key) for key in _SEQ2SEQ_FIELDS})
    return plain(**fields)


def _cls(outputs, cls_output, config: dict, kwargs: dict) -> torch.Tensor:
    """The sequence representation: the model's (it knows how its family pools), else the pooler's or token 0."""
    if cls_output is not None:
        return cls_output
    if config.get("use_pooler") and kwargs.get("pooled_output") is not None:
        return kwargs["pooled_output"]
    return outputs[0][:, 0]


class ClassificationHead(BuiltinHead):
    head_type = "classification"
    defaults = {
        "num_labels": 2,
        "layers": 2,
        "activation_function": "tanh",
        "label2id": None,
        "use_pooler": False,
        "bias": True,
        "dropout_prob": None,
    }
    arg_order = ("num_labels", "layers", "activation_function", "id2label", "use_pooler", "bias", "dropout_prob")

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = self.run(_cls(outputs, cls_output, self.config, kwargs))
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            n = self.config["num_labels"]
            loss = (
                F.mse_loss(logits.view(-1), labels.view(-1).float())
                if n == 1
                else F.cross_entropy(logits.view(-1, n), labels.view(-1))
            )
        return _output(outputs, SequenceClassifierOutput, Seq2SeqSequenceClassifierOutput, loss=loss, logits=logits)


class MultiLabelClassificationHead(ClassificationHead):
    head_type = "multilabel_classification"

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = self.run(_cls(outputs, cls_output, self.config, kwargs))
        labels = kwargs.get("labels")
        loss = F.binary_cross_entropy_with_logits(logits, labels.float()) if labels is not None else None
        return _output(outputs, SequenceClassifierOutput, Seq2SeqSequenceClassifierOutput, loss=loss, logits=logits)


class ImageClassificationHead(BuiltinHead):
    """AdapterHub's image classification head: one head type for single-label (cross-entropy), multi-label
    (`multilabel`, binary cross-entropy) and regression (`num_labels=1`, mean squared error)."""

    head_type = "image_classification"
    defaults = {
        "num_labels": 2,
        "layers": 2,
        "activation_function": "tanh",
        "multilabel": False,
        "label2id": None,
        "use_pooler": False,
        "bias": True,
        "dropout_prob": None,
    }
    arg_order = (
        "num_labels", "layers", "activation_function", "multilabel", "id2label", "use_pooler", "bias", "dropout_prob"
    )  # fmt: skip

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = self.run(_cls(outputs, cls_output, self.config, kwargs))
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            n = self.config["num_labels"]
            if n == 1:
                loss = F.mse_loss(logits.view(-1), labels.view(-1).to(logits.dtype))
            elif self.config["multilabel"]:
                loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits.view(-1, n), labels.view(-1))
        extras = {k: outputs.get(k) for k in ("hidden_states", "attentions")} if isinstance(outputs, Mapping) else {}
        return ImageClassifierOutput(loss=loss, logits=logits, **extras)


class TaggingHead(BuiltinHead):
    head_type = "tagging"
    defaults = {"num_labels": 2, "layers": 1, "activation_function": "tanh", "label2id": None, "dropout_prob": None}
    arg_order = ("num_labels", "layers", "activation_function", "id2label", "dropout_prob")

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = self.run(outputs[0])
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            if attention_mask is not None:
                labels = torch.where(
                    attention_mask.view(-1) == 1, labels.view(-1), torch.full_like(labels.view(-1), -100)
                )
            loss = F.cross_entropy(logits.view(-1, self.config["num_labels"]), labels.view(-1), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


class MultipleChoiceHead(BuiltinHead):
    head_type = "multiple_choice"
    defaults = {
        "num_choices": 2,
        "layers": 2,
        "activation_function": "tanh",
        "label2id": None,
        "use_pooler": False,
        "dropout_prob": None,
    }
    arg_order = ("num_choices", "layers", "activation_function", "id2label", "use_pooler", "dropout_prob")

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        # one score per choice: the batch's own choice count (the model passes it) shapes the logits
        choices = kwargs.get("choices") or self.config["num_choices"]
        logits = self.run(_cls(outputs, cls_output, self.config, kwargs)).view(-1, choices)
        labels = kwargs.get("labels")
        loss = F.cross_entropy(logits, labels.view(-1)) if labels is not None else None
        return MultipleChoiceModelOutput(loss=loss, logits=logits)


class QuestionAnsweringHead(BuiltinHead):
    head_type = "question_answering"
    defaults = {"num_labels": 2, "layers": 1, "activation_function": "tanh", "label2id": None, "dropout_prob": None}
    arg_order = ("num_labels", "layers", "activation_function", "id2label", "dropout_prob")

    def get_label_names(self) -> list[str]:
        return ["start_positions", "end_positions"]

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        logits = self.run(outputs[0])
        start, end = (t.squeeze(-1) for t in logits.split(1, dim=-1))
        start_positions, end_positions = kwargs.get("start_positions"), kwargs.get("end_positions")
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start.shape[1]
            start_positions = start_positions.clamp(0, ignored)
            end_positions = end_positions.clamp(0, ignored)
            loss = (
                F.cross_entropy(start, start_positions, ignore_index=ignored)
                + F.cross_entropy(end, end_positions, ignore_index=ignored)
            ) / 2
        return _output(
            outputs,
            QuestionAnsweringModelOutput,
            Seq2SeqQuestionAnsweringModelOutput,
            loss=loss,
            start_logits=start,
            end_logits=end,
        )


class LMHead(BuiltinHead):
    """Transform layers (Linear, activation, LayerNorm) then the vocabulary projection (the output embeddings)."""

    defaults = {
        "vocab_size": None,
        "embedding_size": None,
        "layers": 1,
        "activation_function": "gelu",
        "layer_norm": False,
        "bias": True,
        "shift_labels": False,
        "label2id": None,
    }

    def _build(self, model_config):
        cfg = self.config
        hidden = model_config.hidden_size
        size = cfg.get("embedding_size") or hidden
        eps = getattr(model_config, "layer_norm_eps", None) or 1e-12
        modules: list[nn.Module] = []
        for i in range(cfg["layers"] - 1):
            modules.append(nn.Linear(hidden if i == 0 else size, size))
            if cfg["activation_function"]:
                modules.append(activation(cfg["activation_function"]))
            if cfg["layer_norm"]:
                modules.append(nn.LayerNorm(size, eps=eps))
        modules.append(nn.Linear(size if cfg["layers"] > 1 else hidden, cfg["vocab_size"], bias=cfg["bias"]))
        return modules

    def get_output_embeddings(self) -> nn.Module:
        return self[-1]

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self[len(self) - 1] = new_embeddings

    def logits(self, hidden, invert=None):
        for module in list(self)[:-1]:
            hidden = module(hidden)
        if invert is not None:
            hidden = invert(hidden)
        return self[-1](hidden)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, invert=None, **kwargs):
        logits = self.logits(outputs[0], invert)
        labels = kwargs.get("labels")
        loss = None
        if labels is not None:
            if self.config["shift_labels"]:
                logits_for_loss, labels = logits[..., :-1, :], labels[..., 1:]
            else:
                logits_for_loss = logits
            loss = F.cross_entropy(logits_for_loss.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        output_cls = CausalLMOutputWithPast if self.head_type == "causal_lm" else MaskedLMOutput
        return output_cls(loss=loss, logits=logits)


class MaskedLMHead(LMHead):
    head_type = "masked_lm"
    defaults = {**LMHead.defaults, "layers": 2, "layer_norm": True}


class CausalLMHead(LMHead):
    head_type = "causal_lm"
    defaults = {
        **LMHead.defaults,
        "layers": 1,
        "activation_function": None,
        "bias": False,
        "shift_labels": True,
        "dropout_prob": None,
    }


class Seq2SeqLMHead(LMHead):
    """The vocabulary projection over an encoder-decoder model's decoder output (AdapterHub's `seq2seq_lm`)."""

    head_type = "seq2seq_lm"
    defaults = {  # AdapterHub's seq2seq_lm config has no embedding_size (its files would not load with one)
        **{k: v for k, v in LMHead.defaults.items() if k != "embedding_size"},
        "layers": 1,
        "activation_function": None,
        "bias": False,
        "shift_labels": False,
    }

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, invert=None, **kwargs):
        lm = super().forward(outputs, cls_output, attention_mask, return_dict, invert, **kwargs)
        return seq2seq_output(Seq2SeqLMOutput(loss=lm.loss, logits=lm.logits), outputs)


# A head over an encoder-decoder model returns the Seq2Seq variant of its output, carrying the model's encoder and
# decoder states (as AdapterHub's heads do, and transformers' `...ForConditionalGeneration` models).
_SEQ2SEQ_OUTPUTS = {
    SequenceClassifierOutput: Seq2SeqSequenceClassifierOutput,
    QuestionAnsweringModelOutput: Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqLMOutput: Seq2SeqLMOutput,
}
_SEQ2SEQ_STATES = (
    "decoder_hidden_states",
    "decoder_attentions",
    "cross_attentions",
    "encoder_last_hidden_state",
    "encoder_hidden_states",
    "encoder_attentions",
)


def seq2seq_output(result, outputs):
    """`result` as its Seq2Seq output class with `outputs`' encoder/decoder states, when `outputs` is an
    encoder-decoder model's output; otherwise (and for custom heads' outputs) `result` unchanged."""
    target = _SEQ2SEQ_OUTPUTS.get(type(result))
    if target is None or not isinstance(outputs, Seq2SeqModelOutput):
        return result
    fields = {k: v for k, v in result.items()}
    fields.update({k: outputs.get(k) for k in _SEQ2SEQ_STATES if outputs.get(k) is not None})
    key, cache = cache_of(outputs)
    if cache is not None:
        fields[key] = cache
    return target(**fields)


HEAD_TYPES: dict[str, type[PredictionHead]] = {
    cls.head_type: cls
    for cls in (
        ClassificationHead,
        MultiLabelClassificationHead,
        ImageClassificationHead,
        TaggingHead,
        MultipleChoiceHead,
        QuestionAnsweringHead,
        MaskedLMHead,
        CausalLMHead,
        Seq2SeqLMHead,
    )
}


def head_from_config(model_config, config: dict) -> PredictionHead:
    """Rebuild a head from the `config` dict of a head_config.json."""
    if not isinstance(config, dict):
        raise HeadError(f"config={config!r} must be a JSON object with a 'head_type'")
    options = dict(config)
    head_type = options.pop("head_type", None)
    if not isinstance(head_type, str) or head_type not in HEAD_TYPES:
        raise HeadError(f"head_type={head_type!r} is not a known head type (known: {', '.join(HEAD_TYPES)})")
    return HEAD_TYPES[head_type](model_config, **options)


from .dependency_parsing import BiaffineParsingHead  # noqa: E402  (it builds on BuiltinHead above)

HEAD_TYPES[BiaffineParsingHead.head_type] = BiaffineParsingHead
