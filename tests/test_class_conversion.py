"""Static heads of init()-ed `...For<Task>` models: save_head/load_head, conversion to and from flex heads."""

import json

import pytest
import torch
from tiny import tiny_config
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import workbench
from workbench import AdapterLoadError, AutoAdapterModel, HeadError

TASKS = {
    "seq": (AutoModelForSequenceClassification, lambda b, s: {"labels": torch.tensor([0, 1][:b])}),
    "tok": (AutoModelForTokenClassification, lambda b, s: {"labels": torch.zeros(b, s, dtype=torch.long)}),
    "qa": (
        AutoModelForQuestionAnswering,
        lambda b, s: {
            "start_positions": torch.zeros(b, dtype=torch.long),
            "end_positions": torch.ones(b, dtype=torch.long),
        },
    ),
    "mlm": (AutoModelForMaskedLM, lambda b, s: {"labels": torch.zeros(b, s, dtype=torch.long)}),
    "clm": (AutoModelForCausalLM, lambda b, s: {"labels": torch.zeros(b, s, dtype=torch.long)}),
}
CASES = [
    ("bert", "seq"), ("bert", "tok"), ("bert", "qa"), ("bert", "mlm"), ("roberta", "seq"), ("roberta", "mlm"),
    ("distilbert", "seq"), ("gpt2", "seq"), ("gpt2", "clm"), ("llama", "seq"), ("llama", "clm"), ("llama", "tok"),
    # the encoder families of issue 12, as AdapterHub's head_utils converts them
    ("albert", "seq"), ("albert", "tok"), ("albert", "qa"), ("albert", "mlm"), ("electra", "seq"), ("electra", "mlm"),
    ("electra", "clm"), ("deberta", "seq"), ("deberta", "tok"), ("deberta", "mlm"), ("deberta-v2", "seq"),
    ("deberta-v2", "mlm"), ("xmod", "seq"), ("xmod", "mlm"), ("bert-generation", "clm"),
]  # fmt: skip
# ALBERT's and ELECTRA's embeddings are narrower than their hidden states (the LM heads project back to them);
# activations other than the flex heads' defaults show that the converted head takes the config's
FAMILY_OVERRIDES = {
    "albert": dict(embedding_size=16, hidden_act="gelu_new"),
    "electra": dict(embedding_size=16),
    "deberta": dict(pooler_hidden_act="tanh", hidden_act="relu"),
    "deberta-v2": dict(pooler_hidden_act="relu"),
}


def static_model(model_type, task):
    overrides = FAMILY_OVERRIDES.get(model_type, {})
    if model_type in ("bert", "electra", "xmod", "bert-generation"):
        overrides = dict(overrides, is_decoder=task == "clm")
    config = tiny_config(model_type, **overrides)
    torch.manual_seed(0)
    return workbench.init(TASKS[task][0].from_config(config).eval())


def flex_copy(static):
    flex = AutoAdapterModel.from_config(static.config).eval()
    flex.load_state_dict(static.state_dict(), strict=False)
    return flex


def inputs(batch=2, seq=6):
    return {"input_ids": torch.randint(1, 100, (batch, seq))}


@pytest.mark.parametrize(("model_type", "task"), CASES)
def test_static_head_converts_to_an_equal_flex_head(tmp_path, model_type, task):
    static = static_model(model_type, task)
    flex = flex_copy(static)
    static.save_head(tmp_path)
    saved = json.loads((tmp_path / "head_config.json").read_text())
    assert saved["config"] is None and saved["model_class"] == type(static).__name__
    info = {}
    assert flex.load_head(tmp_path, load_as="test", loading_info=info) == "test"
    aliases = {"cls.predictions.bias", "lm_head.bias", "predictions.bias"}
    assert info["missing_keys"] == [] and set(info["unexpected_keys"]) <= aliases
    if model_type in ("deberta", "deberta-v2", "bert-generation"):  # their AdapterHub classes ignore the alias
        assert info["unexpected_keys"] == []
    data = {**inputs(), **TASKS[task][1](2, 6)}
    out_static, out_flex = static(**data), flex(**data)
    assert torch.allclose(out_static.loss, out_flex.loss, atol=1e-6)
    assert torch.allclose(out_static[1], out_flex[1], atol=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "albert", "electra", "deberta-v2"])
def test_multiple_choice_converts(tmp_path, model_type):
    config = tiny_config(model_type, **FAMILY_OVERRIDES.get(model_type, {}))
    static = workbench.init(AutoModelForMultipleChoice.from_config(config).eval())
    flex = flex_copy(static)
    static.save_head(tmp_path)
    flex.load_head(tmp_path, load_as="mc")
    ids, labels = torch.randint(1, 100, (2, 2, 5)), torch.tensor([0, 1])
    assert torch.allclose(static(input_ids=ids, labels=labels).logits, flex(input_ids=ids, labels=labels).logits)


@pytest.mark.parametrize(
    ("model_type", "task", "overrides", "match"),
    [
        ("electra", AutoModelForMultipleChoice, dict(summary_type="last"), "summary_type='last'"),
        ("electra", AutoModelForMultipleChoice, dict(summary_activation=""), "summary_activation=''"),
        ("deberta", AutoModelForMaskedLM, dict(legacy=False), "legacy=False"),
    ],
)
def test_heads_no_flex_head_equals_are_refused(tmp_path, model_type, task, overrides, match):
    """A configuration under which the task class's head computes something else is refused, naming it."""
    config = tiny_config(model_type, **FAMILY_OVERRIDES.get(model_type, {}), **overrides)
    static = workbench.init(task.from_config(config).eval())
    static.save_head(tmp_path)
    flex = AutoAdapterModel.from_config(static.config)
    with pytest.raises(HeadError, match=match):
        flex.load_head(tmp_path, load_as="x")
    assert "x" not in flex.heads


def test_full_model_conversion_from_a_checkpoint(tmp_path):
    static = static_model("bert", "seq")
    static.config.id2label, static.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    static.save_pretrained(tmp_path)
    flex, info = AutoAdapterModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert flex.active_head == "default" and flex.heads["default"].id2label == {0: "neg", 1: "pos"}
    data = inputs()
    assert torch.allclose(static(**data).logits, flex.eval()(**data, head="default").logits)


def test_tied_lm_head_checkpoint_converts(tmp_path):
    static = static_model("gpt2", "clm")
    static.save_pretrained(tmp_path)
    flex = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert flex.heads["default"][-1].weight is flex.get_input_embeddings().weight
    data = inputs()
    assert torch.allclose(static(**data).logits, flex(**data).logits, atol=1e-6)


def test_adapter_with_static_head_round_trips(tmp_path):
    static = static_model("bert", "seq")
    static.add_adapter("a", config="seq_bn")
    static.set_active_adapters("a")
    static.save_adapter(tmp_path / "a", "a")  # with_head=True: the static head is saved beside it
    assert (tmp_path / "a" / "head_config.json").is_file()
    flex = flex_copy(static)
    flex.load_adapter(tmp_path / "a", set_active=True)
    assert "a" in flex.heads
    data = inputs()
    assert torch.allclose(static(**data).logits, flex(**data).logits, atol=1e-6)
    other = static_model("bert", "seq")
    torch.nn.init.zeros_(other.classifier.weight)
    other.load_adapter(tmp_path / "a")
    assert torch.equal(other.classifier.weight, static.classifier.weight)


def test_flex_head_loads_into_an_equal_static_head(tmp_path):
    static = static_model("bert", "seq")
    flex = flex_copy(static)
    flex.add_classification_head("cls", layers=1, activation_function=None, use_pooler=True)
    flex.save_head(tmp_path, "cls")
    static.load_head(tmp_path)
    assert torch.equal(static.classifier.weight, flex.heads["cls"][1].weight)
    flex.add_classification_head("deep", layers=2)
    flex.save_head(tmp_path / "deep", "deep")
    with pytest.raises(HeadError, match="differs"):
        static.load_head(tmp_path / "deep")


def test_static_head_errors(tmp_path):
    static = static_model("bert", "seq")
    static.save_head(tmp_path)
    with pytest.raises(HeadError, match="load_as"):
        flex_copy(static).load_head(tmp_path)
    other = static_model("bert", "tok")
    with pytest.raises(HeadError, match="not of this"):
        other.load_head(tmp_path)
    weights = torch.load(tmp_path / "pytorch_model_head.bin", weights_only=True)
    torch.save({**weights, "surprise.weight": torch.ones(3)}, tmp_path / "pytorch_model_head.bin")
    with pytest.raises(AdapterLoadError, match="surprise"):
        flex_copy(static).load_head(tmp_path, load_as="x")
    with pytest.raises(AdapterLoadError, match="surprise"):
        static.load_head(tmp_path)
