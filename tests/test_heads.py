"""Heads chosen by compositions as AdapterHub chooses them, and outputs with AdapterHub's shapes.

The adapters library's own outputs for these setups are in the conformance fixtures (tests/test_conformance.py);
these tests cover the rules and the errors around them.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_adapter_model

import workbench
from workbench import AdapterSetup, BatchSplit, CompositionError, Fuse, HeadError, Parallel, Stack
from workbench.core.heads import ClassificationHead, PredictionHead
from workbench.core.outputs import MultiHeadOutput

IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0], [12, 13, 0, 0]])
MASK = (IDS != 0).long()


def model_with_heads():
    torch.manual_seed(0)
    model = tiny_adapter_model()
    for name, labels in (("a", 2), ("b", 3)):
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=labels)
    return model


def run(model, **kwargs):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kwargs)


def test_stack_picks_the_last_adapters_head_and_fuse_keeps_the_active_one():
    model = model_with_heads()
    model.set_active_adapters(Stack("a", "b"))
    assert model.active_head == "b" and run(model).logits.shape == (3, 3)
    model.add_adapter_fusion(["a", "b"])
    model.active_head = "a"
    model.set_active_adapters(Fuse("a", "b"))
    assert model.active_head == "a" and run(model).logits.shape == (3, 2)


def test_parallel_gives_one_output_per_channel_and_sums_losses():
    model = model_with_heads()
    model.set_active_adapters(Parallel("a", "b"))
    assert model.active_head == ["a", "b"]
    out = run(model, labels=torch.tensor([0, 1, 1]))
    assert isinstance(out, MultiHeadOutput) and [o.logits.shape for o in out.head_outputs] == [(3, 2), (3, 3)]
    torch.testing.assert_close(out.loss, out[0].loss + out[1].loss)
    with AdapterSetup("a", head_setup="a"):  # the same rows through a alone give channel 0's logits
        torch.testing.assert_close(run(model).logits, out[0].logits)


def test_batch_split_heads_run_each_slice_through_its_own_head():
    model = model_with_heads()
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    out = run(model, labels=torch.tensor([1, 2, 0]))
    assert [o.logits.shape for o in out.head_outputs] == [(1, 2), (2, 3)]
    with AdapterSetup("b", head_setup="b"):
        torch.testing.assert_close(run(model).logits[1:], out[1].logits)
    torch.testing.assert_close(out.loss, out[0].loss + out[1].loss)


def test_an_explicit_head_wins_and_a_single_head_under_parallel_is_an_error():
    model = model_with_heads()
    model.delete_head("b")
    model.active_head = "a"
    model.set_active_adapters(Parallel("a", "b"))  # b has no head: the active head stays "a"
    assert model.active_head == "a"
    with pytest.raises(HeadError, match="parallel channels"):
        run(model)
    out = run(model, head="a")  # documented: head= runs that head on every (replicated) row
    assert out.logits.shape == (6, 2)
    with pytest.raises(HeadError, match="ghost"):
        run(model, head="ghost")


def test_fusion_head_is_saved_and_loaded_under_its_saved_name(tmp_path):
    model = model_with_heads()
    model.add_adapter_fusion(["a", "b"])
    model.add_classification_head("fuse_head", num_labels=4)
    model.save_adapter_fusion(tmp_path / "fusion", "a,b", with_head="fuse_head")
    model.delete_adapter_fusion("a,b")
    model.delete_head("fuse_head")
    model.load_adapter_fusion(tmp_path / "fusion", with_head=True)
    assert "fuse_head" in model.heads and model.adapter_fusions == {"a,b": ["a", "b"]}
    model.set_active_adapters(Fuse("a", "b"))
    model.active_head = "fuse_head"
    assert run(model).logits.shape == (3, 4)


def test_loading_without_set_active_keeps_the_active_head(tmp_path):
    """As AdapterHub: `set_active` covers the loaded head too; the active adapter keeps running through its head."""
    model = model_with_heads()
    model.add_adapter_fusion(["a", "b"])
    model.add_classification_head("fuse_head", num_labels=4)
    model.save_adapter(tmp_path / "b", "b")
    model.save_adapter_fusion(tmp_path / "fusion", "a,b", with_head="fuse_head")
    model.set_active_adapters("a")
    model.active_head = "a"
    before = run(model).logits
    model.load_adapter(tmp_path / "b", load_as="b2")
    model.delete_adapter_fusion("a,b")
    model.delete_head("fuse_head")
    model.load_adapter_fusion(tmp_path / "fusion")
    assert model.active_head == "a" and model.config.num_labels == 2
    assert torch.equal(run(model).logits, before)
    model.load_adapter(tmp_path / "b", load_as="b3", set_active=True)
    assert model.active_head == "b3" and run(model).logits.shape == (3, 3)


def test_an_adapter_setup_without_head_setup_takes_the_heads_its_composition_implies():
    model = model_with_heads()
    model.active_head = "a"
    with AdapterSetup(Stack("a", "b")):  # as AdapterHub: the Stack's last adapter's head, not the active one
        assert run(model).logits.shape == (3, 3)
    with AdapterSetup(Parallel("a", "b")):
        assert [o.logits.shape for o in run(model).head_outputs] == [(3, 2), (3, 3)]
    with AdapterSetup("a", head_setup="b"), AdapterSetup("b"):
        assert run(model).logits.shape == (3, 3)
    model.add_adapter("headless", config="seq_bn")
    with AdapterSetup("headless"):  # no head of its own: the active head stays
        assert run(model).logits.shape == (3, 2)


def test_generate_under_parallel_gives_each_channel_its_adapter_and_head():
    torch.manual_seed(0)
    model = tiny_adapter_model("gpt2")
    for name in ("x", "y"):
        model.add_adapter(name, config="seq_bn[init_weights=bert]")
        model.add_causal_lm_head(name)
    prompt = torch.tensor([[5, 6, 7], [9, 3, 4]])
    model.set_active_adapters(Parallel("x", "y"))
    together = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    alone = []
    for name in ("x", "y"):
        with AdapterSetup(name, head_setup=name):
            alone.append(model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False))
    assert together.shape == (4, 7) and torch.equal(together, torch.cat(alone))
    model.set_active_adapters("x")
    model.active_head = ["x", "y"]
    with pytest.raises(CompositionError, match="heads"):
        model.generate(input_ids=prompt, max_new_tokens=2)


def test_save_pretrained_with_a_merged_lora_keeps_the_base_weights_clean(tmp_path):
    torch.manual_seed(0)
    model = tiny_adapter_model()
    model.add_adapter("l", config="lora[init_weights=bert]")
    model.set_active_adapters("l")
    with_l = run(model).last_hidden_state
    model.merge_adapter("l")
    model.save_pretrained(tmp_path)
    reloaded = workbench.AutoAdapterModel.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(run(reloaded).last_hidden_state, run(tiny_adapter_model_like(model)).last_hidden_state)
    reloaded.load_adapter(str(tmp_path / "adapters" / "l"), set_active=True)
    torch.testing.assert_close(run(reloaded).last_hidden_state, with_l, atol=1e-5, rtol=1e-4)


def tiny_adapter_model_like(model):
    """The same base weights with no adapter and no merge."""
    model.reset_adapter()
    plain = tiny_adapter_model()
    plain.load_state_dict(model.state_dict(), strict=False)
    return plain


def test_multi_head_output_has_one_entry_per_head():
    model = model_with_heads()
    model.active_head = BatchSplit("a", "b", batch_sizes=[1, 2])
    out = run(model)
    assert len(out) == 2 and [o.logits.shape for o in out] == [(1, 2), (2, 3)]
    out[0] = "x"
    assert out.head_outputs[0] == "x"


def test_config_prediction_heads_labels_and_delete_head():
    model = model_with_heads()
    model.add_tagging_head("t", num_labels=3, id2label={0: "O", 1: "B", 2: "I"})
    assert set(model.config.prediction_heads) == {"a", "b", "t"}
    assert model.get_prediction_heads_config()["t"]["head_type"] == "tagging"
    assert model.get_labels() == ["O", "B", "I"] and model.get_labels_dict("t") == {0: "O", 1: "B", 2: "I"}
    assert model.get_labels("a") == ["LABEL_0", "LABEL_1"]
    model.delete_head("t")
    assert "t" not in model.config.prediction_heads and model.active_head is None
    model.active_head = ["a"]  # one head reads as its name, as in AdapterHub
    assert model.active_head == "a"


def test_prediction_heads_in_the_config_are_rebuilt(tmp_path):
    model = model_with_heads()
    model.save_pretrained(tmp_path)
    reloaded = workbench.AutoAdapterModel.from_pretrained(tmp_path)
    assert reloaded.get_prediction_heads_config() == model.get_prediction_heads_config()
    for name in ("a", "b"):
        torch.testing.assert_close(reloaded.heads[name][1].weight, model.heads[name][1].weight)


class TwoLayerTagger(PredictionHead):
    """A custom head written as for AdapterHub: config, build(model), super().forward for the layers."""

    def __init__(self, model, head_name, **config):
        super().__init__(head_name)
        self.config = config
        self.build(model=model)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=False, **kwargs):
        return (super().forward(outputs[0]),) + outputs[2:]


def test_custom_heads_are_added_run_saved_and_loaded(tmp_path):
    model = model_with_heads()
    model.register_custom_head("tag", TwoLayerTagger)
    model.add_custom_head("tag", "custom", num_labels=3, layers=2, activation_function="tanh")
    assert model.active_head == "custom" and model.config.prediction_heads["custom"]["head_type"] == "tag"
    assert run(model)[0].shape == (3, 4, 3)
    model.save_head(tmp_path, "custom")
    other = model_with_heads()
    with pytest.raises(HeadError, match="tag"):
        other.load_head(tmp_path)
    other.register_custom_head("tag", TwoLayerTagger)
    other.load_head(tmp_path)
    torch.testing.assert_close(other.heads["custom"][1].weight, model.heads["custom"][1].weight)
    with pytest.raises(HeadError, match="register_custom_head"):
        model.add_custom_head("unknown", "x")


def test_builtin_heads_take_adapterhubs_constructor():
    model = model_with_heads()
    head = ClassificationHead(model, "c", 4, 1, None, {0: "w", 1: "x", 2: "y", 3: "z"})
    model.add_prediction_head(head)  # AdapterHub's form: the name comes from the head
    assert model.active_head == "c" and model.get_labels() == ["w", "x", "y", "z"]
    assert run(model).logits.shape == (3, 4)


def test_dependency_parsing_head_scores_arcs_and_relations(tmp_path):
    model = model_with_heads()
    model.add_dependency_parsing_head("dp", num_labels=5)
    starts = torch.tensor([[1, 2, 3, 4], [1, 3, 0, 0], [1, 2, 0, 0]])
    arcs = torch.tensor([[1, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    out = run(model, word_starts=starts, labels_arcs=arcs, labels_rels=torch.ones_like(arcs))
    assert out.rel_preds.shape == (3, 4, 5, 5) and out.arc_preds.shape == (3, 4, 5)
    assert torch.isfinite(out.loss)
    model.save_head(tmp_path, "dp")
    state = torch.load(tmp_path / "pytorch_model_head.bin")
    assert set(state) == {"heads.dp.biaffine_arcs.weight", "heads.dp.biaffine_rels.weight"}
    other = model_with_heads()
    other.load_head(tmp_path)
    torch.testing.assert_close(other.heads["dp"].biaffine_rels.weight, model.heads["dp"].biaffine_rels.weight)
    decoder = tiny_adapter_model("gpt2")
    with pytest.raises(HeadError, match="dependency_parsing"):
        decoder.add_dependency_parsing_head("dp")


def test_lm_heads_tie_to_the_embeddings_and_train_them_only_when_asked():
    torch.manual_seed(0)
    model = tiny_adapter_model("gpt2")
    model.add_adapter("x", config="seq_bn")
    model.add_causal_lm_head("x")
    assert model.get_output_embeddings() is model.heads["x"][-1]
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    model.train_adapter("x")
    assert not any(p.requires_grad for p in model.get_output_embeddings().parameters())
    assert any(p.requires_grad for p in model.heads["x"].parameters())  # the transform layers train
    model.train_adapter("x", train_embeddings=True)
    assert all(p.requires_grad for p in model.get_output_embeddings().parameters())
    model.add_classification_head("c")
    assert model.get_output_embeddings() is None


def test_a_static_task_head_loads_as_a_flex_head(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    from workbench.core import files

    torch.manual_seed(0)
    model = model_with_heads()
    config = BertConfig(**{**model.config.to_dict(), "num_labels": 3})
    static = BertForSequenceClassification(config).eval()
    files.write_json(
        tmp_path / files.HEAD_CONFIG_NAME,
        {
            "config": None,
            "model_class": "BertForSequenceClassification",
            "model_type": "bert",
            "name": None,
            "hidden_size": config.hidden_size,
            "num_labels": 3,
            "label2id": {"x": 0, "y": 1, "z": 2},
            "version": "1",
        },
    )
    files.write_weights(
        tmp_path / files.HEAD_WEIGHTS_NAME,
        {k: v for k, v in static.state_dict().items() if k.startswith("classifier.")},
    )
    model.load_head(tmp_path, load_as="static")
    model.bert.load_state_dict(static.bert.state_dict(), strict=False)
    model.set_active_adapters(None)
    model.eval()
    assert model.get_labels("static") == ["x", "y", "z"]
    assert model.heads["static"].config["use_pooler"] is True
    with torch.no_grad():
        expected = static(input_ids=IDS, attention_mask=MASK).logits
    torch.testing.assert_close(run(model, head="static").logits, expected)


def test_multiple_choice_logits_follow_the_batchs_choice_count():
    """A head made for 2 choices scores each choice on its own: 3 choices give (batch, 3) logits, each the score of
    that choice alone (not rows regrouped by the head's count)."""
    torch.manual_seed(0)
    model = tiny_adapter_model()
    model.add_multiple_choice_head("mc", num_choices=2)
    ids = torch.randint(3, 90, (2, 3, 5))
    logits = model(input_ids=ids, labels=torch.tensor([0, 2])).logits
    alone = torch.stack([model(input_ids=ids[:, c : c + 1]).logits[:, 0] for c in range(3)], dim=1)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, alone, atol=1e-6, rtol=1e-5)
