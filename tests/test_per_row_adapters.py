"""Per-row adapters in one batch (`adapter_names`, as PEFT): each row equals running it alone with its adapter."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_adapter_model, tiny_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from workbench import AdapterSetup, CompositionError, HeadError, Stack, init

BASE = "__base__"
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0], [21, 22, 23, 24, 25, 26], [31, 32, 33, 0, 0, 0],
                    [41, 42, 43, 44, 45, 46]])  # fmt: skip
MASK = (IDS != 0).long()
ROWS = ["a", BASE, "b", "a", "c"]  # rows of one adapter are not contiguous


def perturb(model, name, scale=0.2):
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * scale)


def model_with(configs: dict, model_type="bert"):
    torch.manual_seed(0)
    model = tiny_adapter_model(model_type)
    for name, config in configs.items():
        model.add_adapter(name, config=config)
        perturb(model, name)
    return model


def alone(model, rows, **inputs):
    """Each row run on its own with its adapter (AdapterSetup; "__base__": no adapter)."""
    outs = []
    for i, name in enumerate(rows):
        with AdapterSetup(None if name == BASE else name, ignore_empty=True), torch.no_grad():
            outs.append(model(**{k: v[i : i + 1] for k, v in inputs.items()})[0])
    return torch.cat(outs)


def assert_rows_match(model, rows=ROWS, ids=IDS, mask=MASK):
    with torch.no_grad():
        together = model(input_ids=ids, attention_mask=mask, adapter_names=rows)[0]
    expected = alone(model, rows, input_ids=ids, attention_mask=mask)
    for i in range(len(rows)):  # padded positions of a row are compared too: they match as well
        torch.testing.assert_close(together[i], expected[i], atol=1e-6, rtol=1e-6)


METHODS = {
    "seq_bn": "seq_bn",
    "par_bn": "par_bn",
    "lora": "lora[init_weights=bert]",
    "ia3": "ia3[init_weights=bert]",
    "prefix": "prefix_tuning",
    "loreft": "loreft",
    "mam": "mam",
}


@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("method", list(METHODS))
def test_each_row_equals_its_adapter_alone(model_type, method):
    model = model_with({n: METHODS[method] for n in "abc"}, model_type)
    assert_rows_match(model)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_rows_of_different_methods_share_a_batch(model_type):
    extra = {"v": "vera[init_weights=bert]", "d": "dora[init_weights=bert]"} if model_type == "llama" else {}
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]", "c": "prefix_tuning", "r": "noreft", **extra},
                       model_type)  # fmt: skip
    rows = ["c", "a", BASE, "r", "b"] if model_type == "bert" else ["v", "a", "d", "c", "b"]
    assert_rows_match(model, rows)


def test_invertible_adapters_and_one_adapter_for_all_rows():
    model = model_with({"a": "seq_bn_inv", "b": "seq_bn_inv", "c": "seq_bn"})
    assert_rows_match(model, ["b", "a", BASE, "c", "b"])
    assert_rows_match(model, ["a"] * 5)
    assert_rows_match(model, [BASE] * 5)


def test_adapter_names_override_the_active_setup_and_leave_it_active():
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]", "c": "seq_bn"})
    expected = alone(model, ROWS, input_ids=IDS, attention_mask=MASK)
    model.set_active_adapters(Stack("a", "c"))
    with torch.no_grad():
        together = model(input_ids=IDS, attention_mask=MASK, adapter_names=ROWS)[0]
    torch.testing.assert_close(together, expected, atol=1e-6, rtol=1e-6)
    assert model.active_adapters == Stack("a", "c")


def test_prompt_tuning_rows_with_prompts_of_one_length():
    model = model_with({"a": "prompt_tuning", "b": "prompt_tuning", "c": "prompt_tuning"})
    rows = ["b", "a", "c", "a", "b"]
    with torch.no_grad():
        together = model(input_ids=IDS, attention_mask=MASK, adapter_names=rows)[0]
    torch.testing.assert_close(together, alone(model, rows, input_ids=IDS, attention_mask=MASK), atol=1e-6, rtol=1e-6)
    with pytest.raises(CompositionError, match="same length"):
        model(input_ids=IDS, attention_mask=MASK, adapter_names=["a", BASE, "b", "a", "c"])


def test_heads_per_row_in_row_order_with_labels():
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]", "c": "prefix_tuning"})
    for name in ("a", "b"):
        model.add_classification_head(name, num_labels=3)
    model.add_classification_head("main", num_labels=3)  # active: rows of "c" and "__base__" use it
    labels = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK, adapter_names=ROWS, labels=labels)
    losses = []
    for i, name in enumerate(ROWS):
        head = name if name in ("a", "b") else "main"
        with AdapterSetup(None if name == BASE else name, head_setup=head, ignore_empty=True), torch.no_grad():
            ref = model(input_ids=IDS[i : i + 1], attention_mask=MASK[i : i + 1], labels=labels[i : i + 1])
        torch.testing.assert_close(out.logits[i], ref.logits[0], atol=1e-6, rtol=1e-6)
        losses.append(ref.loss)
    torch.testing.assert_close(out.loss, torch.stack(losses).mean(), atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # head= wins: one head for every row
        forced = model(input_ids=IDS, attention_mask=MASK, adapter_names=ROWS, head="main").logits
    torch.testing.assert_close(forced[0], alone_head(model, "a", "main", 0), atol=1e-6, rtol=1e-6)


def alone_head(model, name, head, i):
    with AdapterSetup(name, head_setup=head), torch.no_grad():
        return model(input_ids=IDS[i : i + 1], attention_mask=MASK[i : i + 1]).logits[0]


def test_heads_of_different_sizes_are_refused_with_a_pointer():
    model = model_with({"a": "seq_bn", "b": "seq_bn"})
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=5)
    with pytest.raises(HeadError, match="BatchSplit"):
        model(input_ids=IDS[:2], adapter_names=["a", "b"])


def test_training_with_per_row_adapters_reaches_only_the_rows_adapters():
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]", "c": "seq_bn"})
    model.add_classification_head("main", num_labels=2)
    model.train_adapter(["a", "b", "c"])
    out = model(
        input_ids=IDS[:3], attention_mask=MASK[:3], adapter_names=["a", BASE, "b"], labels=torch.tensor([0, 1, 0])
    )
    out.loss.backward()
    grads = {
        n: any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in model._adapter_parameters(n)) for n in "abc"
    }
    assert grads == {"a": True, "b": True, "c": False}


@pytest.mark.parametrize("model_type, config", [("gpt2", "lora[init_weights=bert]"), ("llama", "prefix_tuning"),
                                                ("llama", "seq_bn")])  # fmt: skip
def test_generate_with_per_row_adapters_and_their_lm_heads(model_type, config):
    model = model_with({"a": config, "b": config}, model_type)
    for name in ("a", "b", "lm"):
        model.add_causal_lm_head(name)
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10], [11, 12, 13, 14]])
    mask = (ids != 0).long()
    rows = ["a", BASE, "b"]
    options = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    together = model.generate(input_ids=ids, attention_mask=mask, adapter_names=rows, **options)
    beams = model.generate(input_ids=ids, attention_mask=mask, adapter_names=rows, num_beams=2, **options)
    for i, name in enumerate(rows):
        setup, head = (None, "lm") if name == BASE else (name, name)
        with AdapterSetup(setup, head_setup=head, ignore_empty=True):
            alone_ids = model.generate(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], **options)
            alone_beams = model.generate(
                input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1], num_beams=2, **options
            )
        assert together[i].tolist() == alone_ids[0].tolist()
        assert beams[i].tolist() == alone_beams[0].tolist()


def test_init_models_take_adapter_names_in_forward_and_generate():
    torch.manual_seed(0)
    lm = init(AutoModelForCausalLM.from_config(tiny_config("llama")).eval())
    for name in ("a", "b"):
        lm.add_adapter(name, "lora[init_weights=bert]")
        perturb(lm, name)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]])
    rows = ["b", BASE, "a"]
    with torch.no_grad():
        logits = lm(input_ids=ids, adapter_names=rows).logits
    torch.testing.assert_close(logits, alone(lm, rows, input_ids=ids), atol=1e-6, rtol=1e-6)
    options = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    out = lm.generate(input_ids=ids, adapter_names=rows, **options)
    for i, name in enumerate(rows):
        with AdapterSetup(None if name == BASE else name, ignore_empty=True):
            assert out[i].tolist() == lm.generate(input_ids=ids[i : i + 1], **options)[0].tolist()
    # PEFT's modules_to_save: a trained copy of the classifier, outside the base model, also follows the rows
    cls = init(AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=2)).eval())
    cls.add_adapter("a", "seq_bn")
    perturb(cls, "a")
    with torch.no_grad():
        logits = cls(input_ids=ids, adapter_names=["a", BASE, "a"]).logits
    torch.testing.assert_close(logits, alone(cls, ["a", BASE, "a"], input_ids=ids), atol=1e-6, rtol=1e-6)


BAD = [
    (["a", "b"], "has 2 entries but the batch has 5 rows"),
    (["a", "ghost", "b", "a", "a"], "unknown adapter 'ghost'"),
    ("a", "one adapter name"),
    (["a", 3, "b", "a", "a"], "not 3"),
    ([], "one adapter name"),
]


@pytest.mark.parametrize("rows, message", BAD)
def test_bad_adapter_names_are_refused_and_change_nothing(rows, message):
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]"})
    model.set_active_adapters("a")
    with torch.no_grad():
        before = model(input_ids=IDS, attention_mask=MASK)[0]
    with pytest.raises(CompositionError, match=message):
        model(input_ids=IDS, attention_mask=MASK, adapter_names=rows)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS, attention_mask=MASK)[0], before, atol=0, rtol=0)
    assert model.active_adapters == Stack("a")


def test_a_merged_lora_refuses_per_row_adapters():
    model = model_with({"a": "lora[init_weights=bert]", "b": "lora[init_weights=bert]"})
    model.merge_adapter("a")
    with pytest.raises(CompositionError, match="merged"):
        model(input_ids=IDS[:2], adapter_names=["a", "b"])


def test_rows_that_cannot_share_a_batch_are_refused():
    model = model_with({"l": "lora[init_weights=bert]", "i": "ia3[init_weights=bert]"})
    with pytest.raises(CompositionError, match="cannot share a batch"):
        model(input_ids=IDS[:2], adapter_names=["l", "i"])
