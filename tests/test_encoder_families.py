"""More encoders (issue 12): ALBERT, DeBERTa, DeBERTa-v2, ELECTRA, BERT-Generation, X-MOD and ModernBERT.

Every method a family's spec allows changes the output, trains and saves/loads bit-exactly; the methods it refuses
raise when added and leave the model as it was. Outputs against the `adapters` library are in test_conformance.py
(`<family>-*` cases); here are the family-specific behaviours: ALBERT's shared layer, X-MOD's language adapters,
ModernBERT's prefix tuning with padding and local attention.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModel

import workbench
from workbench import AutoAdapterModel, UnsupportedModelError
from workbench.core.errors import UnsupportedMethodError
from workbench.core.families import ARCHITECTURES
from workbench.core.plugin_interfaces import PLUGIN_INTERFACES

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {
    "albert": dict(NO_DROPOUT, embedding_size=16),
    "electra": dict(NO_DROPOUT, embedding_size=16),
    "bert-generation": NO_DROPOUT,
    "deberta": dict(NO_DROPOUT, relative_attention=True, pos_att_type=["c2p", "p2c"]),
    "deberta-v2": dict(NO_DROPOUT, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=8),
    "xmod": dict(NO_DROPOUT, default_language="en_XX"),
    "modernbert": dict(local_attention=4, global_attn_every_n_layers=2, bos_token_id=0, eos_token_id=2),
}
METHODS = {
    "bottleneck": "seq_bn",
    "invertible": "seq_bn_inv",
    "lora": "lora[intermediate_lora=True,output_lora=True]",
    "prefix_tuning": "prefix_tuning[bottleneck_size=16]",
    "prompt_tuning": "prompt_tuning[prompt_length=3]",
    "reft": "loreft[prefix_positions=1,suffix_positions=1]",
}
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 0, 0, 0], [18, 19, 20, 21, 22, 23, 0, 0]])
MASK = (IDS != 0).long()


def config(family: str, **overrides):
    return AutoConfig.for_model(family, **{**SIZES, "pad_token_id": 0, **FAMILIES[family], **overrides})


def model_of(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return AutoAdapterModel.from_config(config(family, **overrides)).eval()


def add_task(model, family: str, name: str, method_config: str) -> dict:
    """Adapter and head `name` (BERT-Generation has LM heads only), trainable; returns a batch with labels."""
    model.add_adapter(name, config=method_config)
    if family == "bert-generation":
        model.add_masked_lm_head(name)
        labels = torch.where(MASK.bool(), IDS, -100)
        if method_config.startswith("prompt_tuning"):  # the prompt's positions come first and have no label
            labels = torch.cat([torch.full((3, 3), -100), labels], dim=1)
    else:
        model.add_classification_head(name, num_labels=2)
        labels = torch.tensor([0, 1, 1])
    model.train_adapter(name)
    return dict(input_ids=IDS, attention_mask=MASK, labels=labels)


def hidden(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(input_ids=IDS, attention_mask=MASK, **kwargs).last_hidden_state


def train(model, batch: dict, steps: int = 4) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.02)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


ALLOWED = [(f, m) for f in FAMILIES for m in METHODS if m in ARCHITECTURES[f].methods]
REFUSED = [(f, m) for f in FAMILIES for m in METHODS if m not in ARCHITECTURES[f].methods]


def test_refusals_are_the_documented_ones():
    assert sorted(REFUSED) == [("modernbert", "prompt_tuning")]


@pytest.mark.parametrize("family,method", ALLOWED)
def test_method_changes_output_trains_and_reloads_bit_exactly(family, method, tmp_path):
    model = model_of(family)
    before = hidden(model)
    batch = add_task(model, family, "a", METHODS[method])
    model.set_active_adapters("a")
    losses = train(model, batch)
    assert losses[-1] < losses[0], f"{family}/{method}: loss did not go down: {losses}"
    after = hidden(model)
    after = after[:, -before.shape[1] :] if method == "prompt_tuning" else after  # prompts come first
    assert (after - before).abs().max() > 1e-3, f"{family}/{method}: the trained adapter does not change the output"

    with torch.no_grad():
        want = model(input_ids=IDS, attention_mask=MASK, head="a").logits
    model.save_adapter(str(tmp_path), "a")
    model.delete_adapter("a")
    model.delete_head("a")
    assert model.load_adapter(str(tmp_path)) == "a"
    model.set_active_adapters("a")
    with torch.no_grad():
        got = model(input_ids=IDS, attention_mask=MASK, head="a").logits
    assert torch.equal(got, want), f"{family}/{method}: reloaded adapter differs"


@pytest.mark.parametrize("family,method", REFUSED)
def test_refused_method_raises_at_add_time_and_changes_nothing(family, method):
    model = model_of(family)
    keys, before = set(model.state_dict()), hidden(model)
    with pytest.raises(UnsupportedMethodError, match=f"{method} adapters are not available for model type '{family}'"):
        model.add_adapter("a", config=METHODS[method])
    assert not model.adapters and set(model.state_dict()) == keys
    assert torch.equal(hidden(model), before)


def test_deberta_fused_projection_takes_no_dora():
    """DeBERTa's fused `in_proj` (AdapterHub refuses DoRA on DeBERTa); DeBERTa-v2's separate projections take it."""
    model = model_of("deberta")
    with pytest.raises(UnsupportedModelError, match="fused q|k|v"):
        model.add_adapter("a", config="dora")
    assert not model.adapters
    model_of("deberta-v2").add_adapter("a", config="dora")


def test_deberta_v2_convolution_refuses_prompt_tuning():
    model = model_of("deberta-v2", conv_kernel_size=3)
    with pytest.raises(UnsupportedMethodError, match="conv_kernel_size=3"):
        model.add_adapter("a", config="prompt_tuning")
    assert not model.adapters and not hasattr(model.base_model, "prompt_tuning")


# --- DeBERTa: prefixes through hooks on the disentangled attention (methods/prefix_deberta.py) ---------------------

DEBERTAS = ["deberta", "deberta-v2", "deberta-v3"]


def deberta_of(name: str):
    """DeBERTa, DeBERTa-v2, and v2 in DeBERTa-v3's layout (shared position keys: `key_proj` also projects the
    relative position embeddings, which must get no prefix rows)."""
    if name == "deberta-v3":
        return model_of("deberta-v2", share_att_key=True, position_biased_input=False, type_vocab_size=0)
    return model_of(name)


@pytest.mark.parametrize("name", DEBERTAS)
def test_deberta_prefix_pads_rows_and_deletes_cleanly(name):
    """Each padded row equals that row alone (prefix columns attend, padding does not, relative positions are the
    tokens' own); every query sees the prefix slots (attention over P + T keys); deleting restores the model."""
    model = deberta_of(name)
    attention = model.base_model.encoder.layer[0].attention.self
    before = hidden(model)
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=16]")
    model.set_active_adapters("p")
    with torch.no_grad():
        out = model.base_model(input_ids=IDS, attention_mask=MASK, output_attentions=True)
        for row, length in enumerate(MASK.sum(dim=1).tolist()):
            alone = model.base_model(input_ids=IDS[row : row + 1, :length]).last_hidden_state
            assert torch.allclose(out.last_hidden_state[row, :length], alone[0], atol=1e-5), f"row {row}"
    assert (out.last_hidden_state - before).abs().max() > 1e-3
    assert out.attentions[0].shape == (3, 4, 8, 3 + 8)
    assert out.attentions[0][:, :, :, :3].sum() > 0.1  # the prefix slots get attention
    model.delete_adapter("p")
    assert torch.equal(hidden(model), before)
    assert not {"disentangled_att_bias", "disentangled_attention_bias"} & set(vars(attention))
    assert not attention.in_proj._forward_hooks if name == "deberta" else not attention.key_proj._forward_hooks


@pytest.mark.parametrize("name", DEBERTAS)
def test_deberta_prefix_parallel_and_batch_split_match_single_adapters(name):
    """Per-row prefixes of two lengths (the shorter one padded with masked slots)."""
    model = deberta_of(name)
    for adapter, length in (("a", 2), ("b", 5)):
        model.add_adapter(adapter, config=f"prefix_tuning[prefix_length={length},bottleneck_size=16]")
    singles = {}
    for adapter in "ab":
        model.set_active_adapters(adapter)
        singles[adapter] = hidden(model)
    model.set_active_adapters(workbench.Parallel("a", "b"))
    both = hidden(model)
    torch.testing.assert_close(both[:3], singles["a"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[3:], singles["b"], atol=1e-5, rtol=1e-4)
    model.set_active_adapters(workbench.BatchSplit("a", "b", batch_sizes=[1, 2]))
    split = hidden(model)
    torch.testing.assert_close(split[:1], singles["a"][:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split[1:], singles["b"][1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", DEBERTAS)
def test_deberta_prefix_sees_the_lora_adapted_keys_whichever_was_added_first(name):
    """LoRA on the projections the prefix rows are added to runs first (the prefix rows are not LoRA'd), in either
    order of adding; a gated prefix (UniPELT's) trains there too."""
    outputs = []
    for order in (("lora", "p"), ("p", "lora")):
        model = deberta_of(name)
        for adapter in order:
            torch.manual_seed(1 if adapter == "p" else 2)
            config = "lora[init_weights='bert']" if adapter == "lora" else "prefix_tuning[bottleneck_size=16]"
            model.add_adapter(adapter, config=config)
        model.set_active_adapters(workbench.Stack("lora", "p"))
        outputs.append(hidden(model))
    assert torch.equal(outputs[0], outputs[1])
    model = deberta_of(name)
    batch = add_task(model, "deberta" if name == "deberta" else "deberta-v2", "g", "prefix_tuning[use_gating=True]")
    gate = model.base_model.encoder.layer[1].attention.self.prefix_tuning.prefix_gates["g"].weight
    start = gate.detach().clone()
    losses = train(model, batch)
    assert losses[-1] < losses[0]
    assert not torch.equal(gate, start)  # the gates get gradients through the prefix rows


# --- ALBERT: one layer, shared across depth ---------------------------------------------------------------------


def test_albert_adapters_sit_on_the_shared_layer_and_act_on_every_pass():
    model = model_of("albert", num_hidden_layers=3)
    model.add_adapter("a", config="double_seq_bn")
    assert "albert.encoder.albert_layer_groups.0.albert_layers.0.attention.attention_adapters.adapters.a." in str(
        list(model.state_dict())
    )
    model.set_active_adapters("a")
    calls = []
    adapter = model.albert.encoder.albert_layer_groups[0].albert_layers[0].output_adapters.adapters["a"]
    adapter.register_forward_hook(lambda *args: calls.append(1))
    hidden(model)
    assert len(calls) == 3  # once per pass of the shared layer


def test_albert_inner_groups_get_an_adapter_each():
    model = model_of("albert", inner_group_num=2)
    model.add_adapter("a", config="seq_bn")
    layers = model.albert.encoder.albert_layer_groups[0].albert_layers
    assert all("a" in layer.output_adapters.adapters for layer in layers)


def test_albert_layer_groups_are_numbered_in_one_sequence():
    """AdapterHub numbers the layers of all groups in one sequence: group 1's layer is layer 1 (leave_out, keys)."""
    model = model_of("albert", num_hidden_layers=5, num_hidden_groups=2)
    model.add_adapter("a", config="seq_bn[leave_out=[0]]")
    groups = model.albert.encoder.albert_layer_groups
    assert not any(
        key.startswith("albert.encoder.albert_layer_groups.0.") for key in model.state_dict() if ".a." in key
    )
    assert "albert.encoder.albert_layer_groups.1.albert_layers.0.output_adapters.adapters.a.adapter_down.0.weight" in (
        model.state_dict()
    )
    model.set_active_adapters("a")
    calls = []
    groups[1].albert_layers[0].output_adapters.adapters["a"].register_forward_hook(lambda *args: calls.append(1))
    hidden(model)
    assert len(calls) == 2  # passes 3 and 4 of 5 run group 1


def test_albert_chunked_ffn_is_refused():
    with pytest.raises(UnsupportedModelError, match="chunk_size"):
        model_of("albert", chunk_size_feed_forward=4)
    base = AutoModel.from_config(config("albert", chunk_size_feed_forward=4))
    with pytest.raises(UnsupportedModelError, match="chunk_size"):
        workbench.init(base)
    assert type(base).__name__ == "AlbertModel" and not hasattr(base, "_engine")


# --- X-MOD: AdapterHub's adapters replace the language adapters ---------------------------------------------------


def test_xmod_language_adapters_are_removed_and_lang_ids_refused():
    model = model_of("xmod")
    assert not any("adapter_modules" in key for key in model.state_dict())
    model.add_adapter("a", config="seq_bn")
    model.set_active_adapters("a")
    before = hidden(model)
    with pytest.raises(ValueError, match="does not support `lang_ids`"):
        model(input_ids=IDS, attention_mask=MASK, lang_ids=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="Use `set_active_adapters`"):
        model.base_model.set_default_language("en_XX")
    assert torch.equal(hidden(model), before)
    model.base_model.freeze_embeddings_and_language_adapters()
    assert not any(p.requires_grad for n, p in model.named_parameters() if "embeddings" in n or ".adapters.a." in n)


def test_xmod_checkpoints_load_without_reporting_the_removed_language_adapters(tmp_path):
    """The language adapters X-MOD's preparation removes are not missing keys; missing keys are the model's own."""
    from transformers import XmodForSequenceClassification

    torch.manual_seed(0)
    task = workbench.init(XmodForSequenceClassification(config("xmod")).eval())
    task.add_adapter("a", config="seq_bn")
    task.save_pretrained(tmp_path / "task")
    loaded, info = workbench.load_model(tmp_path / "task", XmodForSequenceClassification, output_loading_info=True)
    assert not info["missing_keys"] and "a" in loaded.adapters_config
    flex, info = AutoAdapterModel.from_pretrained(tmp_path / "task", output_loading_info=True)
    assert sorted(info["missing_keys"]) == ["roberta.pooler.dense.bias", "roberta.pooler.dense.weight"]  # no pooler
    assert flex.active_head == "default"


def test_xmod_other_norm_layouts_are_refused():
    with pytest.raises(UnsupportedModelError, match="pre_norm=True"):
        model_of("xmod", pre_norm=True)


# --- ModernBERT -----------------------------------------------------------------------------------------------------


def test_modernbert_prefix_tuning_pads_and_attends_locally():
    """Prefixes on global and local (4-token window) layers: each padded row equals that row run alone."""
    model = model_of("modernbert")
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=16]")
    model.set_active_adapters("p")
    batch = hidden(model)
    with torch.no_grad():
        for row, length in enumerate(MASK.sum(dim=1).tolist()):
            alone = model.base_model(input_ids=IDS[row : row + 1, :length]).last_hidden_state
            assert torch.allclose(batch[row, :length], alone[0], atol=1e-5), f"row {row}"


def test_modernbert_lora_runs_before_a_bottleneck_on_the_same_projection():
    """`mlp.Wo` carries the output adapters and the output LoRA: the bottleneck sees the LoRA'd projection whichever
    was added first (AdapterHub's LoRA replaces the module, its bottleneck hooks the result)."""
    outputs = []
    for order in (("bn", "lora"), ("lora", "bn")):
        model = model_of("modernbert")
        for name in order:
            torch.manual_seed(1 if name == "bn" else 2)
            model.add_adapter(name, config="seq_bn" if name == "bn" else "lora[output_lora=True,init_weights='bert']")
        model.set_active_adapters(workbench.Stack("lora", "bn"))
        outputs.append(hidden(model))
    assert torch.equal(outputs[0], outputs[1])


def test_modernbert_spec_is_adapterhubs_plugin_interface():
    """`init` with AdapterHub's ModernBERT plugin interface builds the same adapters as the shipped spec: same keys,
    same outputs (the conformance cases compare the spec with the library)."""
    interface = PLUGIN_INTERFACES["modernbert"]  # AdapterHub's (its `wrappers/interfaces.py` entry)
    outputs, keys = [], []
    for kwargs in ({}, {"interface": interface}):
        torch.manual_seed(0)
        model = workbench.init(AutoModel.from_config(config("modernbert")).eval(), **kwargs)
        with torch.no_grad():  # distinct norms: the adapters read the last layer's `mlp_norm`
            for layer in model.layers:
                layer.mlp_norm.weight.uniform_(0.5, 1.5)
        torch.manual_seed(1)
        model.add_adapter("a", config="double_seq_bn")
        model.add_adapter("b", config="lora[init_weights='bert',output_lora=True]")
        model.set_active_adapters(workbench.Stack("b", "a"))
        outputs.append(hidden(model))
        keys.append(sorted(model.adapter_state_dict("a")) + sorted(model.adapter_state_dict("b")))
    assert keys[0] == keys[1]
    assert torch.equal(outputs[0], outputs[1])
