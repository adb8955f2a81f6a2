"""Setups are checked whole before they take effect; failed calls leave the model exactly as it was."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_bad_values import assert_unchanged, snapshot
from tiny import tiny_adapter_model

from workbench import (
    AdapterConfigError,
    AdapterLoadError,
    AdapterSetup,
    Average,
    BatchSplit,
    CompositionError,
    ConfigUnion,
    Fuse,
    Parallel,
    ParBnConfig,
    PrefixTuningConfig,
    Split,
    Stack,
)
from workbench.core.composition import Block
from workbench.core.keys import is_adapter_key


def model_with(configs: dict, model_type="bert"):
    model = tiny_adapter_model(model_type)
    for name, config in configs.items():
        model.add_adapter(name, config=config)
    return model


BAD_SETUPS = [
    (lambda: "ghost", "unknown adapter 'ghost'"),
    (lambda: Fuse("a", "b"), "needs an AdapterFusion"),
    (lambda: Stack(), "at least one"),
    (lambda: BatchSplit("a", "b", batch_sizes=[-1, 5]), "positive integers"),
    (lambda: BatchSplit("a", "b", batch_sizes=[1, 2, 3]), "has 2 children"),
    (lambda: Split("a", "b", splits=[0, 4]), "positive integers"),
    (lambda: Average("a", "b", weights=[1, -1]), "sum to 0"),
    (lambda: Average("a", "b", weights=[1, float("nan")]), "finite"),
    (lambda: Average("a", "p"), "prefix_tuning adapter, which takes part in BatchSplit, MultiTask, Parallel, Stack"),
    (lambda: Split("a", "l", splits=[2, 2]), "lora adapter"),
    (lambda: Fuse("a", "l"), "AdapterFusion 'a,l'"),
    (lambda: Stack(Parallel("a", Parallel("a", "b"))), "may not contain"),
]


@pytest.mark.parametrize("make, message", BAD_SETUPS)
def test_bad_setups_are_refused_on_activation_and_change_nothing(make, message):
    model = model_with({"a": "seq_bn", "b": "seq_bn", "l": "lora", "p": "prefix_tuning"})
    model.set_active_adapters("a")
    before = snapshot(model)
    with pytest.raises(CompositionError, match=message):
        model.set_active_adapters(make())
    assert_unchanged(model, before)


def test_failed_prefix_add_restores_the_attention_implementation_and_hooks():
    model = model_with({"a": "seq_bn"})
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    before = snapshot(model)
    union = ConfigUnion(PrefixTuningConfig(), ParBnConfig(phm_layer=True, reduction_factor=32))
    with pytest.raises(AdapterConfigError, match="phm_dim"):  # PHM sizes 32 -> 1: fails after prefix tuning is set up
        model.add_adapter("p", config=union)
    assert_unchanged(model, before)
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks
    model.add_adapter("p", config="prefix_tuning", set_active=True)  # later prefix tuning still works
    model(input_ids=torch.tensor([[5, 6, 7]]))


def test_deleting_the_last_adapter_removes_every_hook_and_container():
    model = tiny_adapter_model("llama")
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    names = {n for n, _ in model.named_modules()}
    for config in ("double_seq_bn_inv", "lora", "prefix_tuning", "ia3"):
        model.add_adapter("x", config=config)
        model.delete_adapter("x")
        assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks, config
        assert {n for n, _ in model.named_modules()} == names, config
    assert model.config._attn_implementation == tiny_adapter_model("llama").config._attn_implementation


@pytest.mark.parametrize("name", ["/tmp/evil", "../up", "a.b", "training", ""])
def test_names_that_could_escape_a_folder_or_clash_are_refused(tmp_path, name):
    model = model_with({})
    with pytest.raises(AdapterConfigError):
        model.add_adapter(name)
    assert model.adapters == {}


def test_owned_modules_are_exactly_the_adapters_weights():
    """The per-adapter registry (flat costs) finds the same weights as a scan of the whole state dict."""
    configs = {"a": "seq_bn_inv", "l": "lora[intermediate_lora=True]", "p": "prefix_tuning[use_gating=True]"}
    model = model_with({**configs, "c": "compacter[reduction_factor=8]"})
    state = model.state_dict()
    for name in model.adapters:
        scanned = {k for k in state if is_adapter_key(k, name)}
        assert set(model.adapter_state_dict(name)) == scanned, name
        assert {k for k, _ in model._adapter_parameters(name)} == scanned, name


def test_add_load_activate_and_delete_touch_only_the_adapters_own_modules(tmp_path, monkeypatch):
    """Flat costs, checked by structure (speed itself is measured in benchmarks/engine_scaling.py): none of these
    calls walks the whole model, so their cost does not grow with the number of adapters loaded."""
    model = model_with({f"a{i}": "seq_bn" for i in range(3)})
    model.save_adapter(tmp_path / "a0", "a0")

    def walk(*args, **kwargs):
        raise AssertionError("walked every module or weight of the model")

    # (`parameters()` stays: the engine reads only its first item, the model's device and dtype)
    for method in ("modules", "named_modules", "named_parameters", "state_dict", "train", "apply", "children"):
        for module in (model, model.base_model):
            monkeypatch.setattr(module, method, walk)  # an instance attribute shadows the method
    model.add_adapter("b", config="seq_bn")
    model.add_adapter("l", config="lora")
    model.load_adapter(str(tmp_path / "a0"), load_as="c", with_head=False)
    model.set_active_adapters(Stack("b", "c"))
    model.delete_adapter("c")
    assert set(model.adapters) == {"a0", "a1", "a2", "b", "l"}


@pytest.mark.parametrize("call", ["train_adapter", "train_adapter_fusion"])
def test_training_a_bad_setup_changes_nothing(call):
    model = model_with({"a": "seq_bn", "b": "seq_bn"})
    before = snapshot(model)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(CompositionError):
        getattr(model, call)(Fuse("a", "b") if call == "train_adapter_fusion" else Stack("a", "ghost"))
    assert_unchanged(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable and not model.training


def test_overwrite_with_a_config_that_fails_keeps_the_old_adapter():
    model = model_with({"a": "seq_bn"})
    model.set_active_adapters("a")
    before = snapshot(model)
    with pytest.raises(AdapterConfigError, match="phm_dim"):
        model.add_adapter("a", config="compacter[reduction_factor=32]", overwrite_ok=True)  # 32 -> 1: not divisible
    assert_unchanged(model, before)
    model.add_adapter("a", config="lora", overwrite_ok=True)
    assert type(model.adapters["a"]).__name__ == "LoRAConfig"


# --- each channel or slice equals its own adapter's pass, whatever the children are (found by a red-team pass) ---


def _pass(model, setup, ids):
    with torch.no_grad(), AdapterSetup(setup):
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


MIXED_CHILDREN = [
    ("bert", {"a": "seq_bn", "b": "seq_bn[leave_out=[0]]"}),  # b absent from layer 0
    ("bert", {"a": "seq_bn", "b": "lora[init_weights=bert]"}),  # no bottleneck in b at all
    ("gpt2", {"a": "lora[init_weights=bert]", "b": "seq_bn"}),
    ("llama", {"a": "par_bn", "b": "seq_bn"}),  # different pre-processing of the layer's residual
    ("llama", {"a": "prefix_tuning", "b": "double_seq_bn"}),
]


@pytest.mark.parametrize("model_type, configs", MIXED_CHILDREN)
def test_parallel_and_batch_split_channels_equal_single_passes(model_type, configs):
    torch.manual_seed(0)
    model = model_with(configs, model_type)
    with torch.no_grad():
        for name in configs:
            for _, param in model._adapter_parameters(name):
                param.add_(torch.randn_like(param) * 0.2)
    ids = torch.randint(3, 90, (2, 6))
    single = {name: _pass(model, name, ids) for name in configs}
    both = _pass(model, Parallel("a", "b"), ids)
    torch.testing.assert_close(both[:2], single["a"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[2:], single["b"], atol=1e-5, rtol=1e-4)
    split = _pass(model, BatchSplit("a", "b", batch_sizes=[1, 1]), ids)
    torch.testing.assert_close(split[:1], single["a"][:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split[1:], single["b"][1:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("block", [Parallel, Average, lambda *n: BatchSplit(*n, batch_sizes=[1, 1])])
def test_lora_and_ia3_on_one_projection_are_not_combined_row_wise(block):
    model = model_with({"l": "lora", "i": "ia3"})
    with pytest.raises(CompositionError, match="mixes LoRA and \\(IA\\)\\^3"):
        model.set_active_adapters(block("l", "i"))


def test_a_merged_adapter_refuses_calls_that_would_not_run_it():
    model = model_with({"a": "lora[init_weights=bert]", "b": "lora[init_weights=bert]"})
    model.set_active_adapters("a")
    model.merge_adapter("a")
    ids = torch.tensor([[5, 6, 7]])
    model(input_ids=ids)  # the merged adapter is the call's setup: fine
    with pytest.raises(CompositionError, match="merged"), AdapterSetup("b"):
        model(input_ids=ids)
    model.set_active_adapters("b")  # activating another setup undoes the merge
    model(input_ids=ids)


def test_a_reused_adapter_setup_is_checked_again_after_the_model_changes():
    model = model_with({"a": "seq_bn", "b": "seq_bn"})
    scope = AdapterSetup(Average("a", "b"))
    with scope:
        model(input_ids=torch.tensor([[5, 6]]))
    model.add_adapter("b", config="prefix_tuning", overwrite_ok=True)
    with pytest.raises(CompositionError, match="prefix_tuning adapter"), scope:
        model(input_ids=torch.tensor([[5, 6]]))


@pytest.mark.parametrize("call, setup", [("train_adapter", None), ("train_adapter", []), ("train_adapter_fusion", "a")])
def test_training_nothing_is_refused_before_anything_changes(call, setup):
    model = model_with({"a": "seq_bn"})
    model.set_active_adapters("a")
    before = snapshot(model)
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(CompositionError):
        getattr(model, call)(setup)
    assert_unchanged(model, before)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable and not model.training


def test_averages_that_cannot_be_normalised_are_refused():
    with pytest.raises(CompositionError, match="inf"):
        Average("a", "b", weights=[1e308, 1e308])


# --- adapters absent from some layers (leave_out) in Fuse and Average, as AdapterHub runs them (fidelity red team) ---


def _perturbed(configs: dict, model_type="bert", fusion=None):
    torch.manual_seed(0)
    model = model_with(configs, model_type)
    if fusion:
        model.add_adapter_fusion(fusion)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adapter" in name or "lora" in name or "prompt" in name or "invertible" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def _layer_outputs(model, setup, ids):
    with torch.no_grad(), AdapterSetup(setup):
        return model(input_ids=ids, output_hidden_states=True).hidden_states


def test_a_fusion_fuses_the_adapters_present_in_a_layer_where_another_is_left_out(tmp_path):
    """Layer 0 holds only b: AdapterHub puts a fusion layer there anyway and fuses b alone (b used to be skipped)."""
    model = _perturbed({"a": "seq_bn[leave_out=[0]]", "b": "seq_bn"}, fusion=Fuse("a", "b"))
    assert any(".layer.0." in k and "adapter_fusion_layer.a,b." in k for k in model.state_dict())
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = _layer_outputs(model, None, ids)[1]
    fused = _layer_outputs(model, Fuse("a", "b"), ids)
    assert (fused[1] - plain).abs().max() > 1e-2  # b ran in layer 0
    model.save_adapter_fusion(tmp_path / "f", "a,b")
    model.delete_adapter_fusion("a,b")
    model.load_adapter_fusion(tmp_path / "f")  # the file holds layer 0's fusion too
    torch.testing.assert_close(_layer_outputs(model, Fuse("a", "b"), ids)[-1], fused[-1])


def test_a_fusion_whose_last_adapter_is_left_out_where_others_run_is_refused():
    model = _perturbed({"a": "seq_bn[leave_out=[0]]", "b": "seq_bn"}, fusion=Fuse("b", "a"))
    before = snapshot(model)
    with pytest.raises(CompositionError, match="last adapter 'a' is not in layer 0"):
        model.set_active_adapters(Fuse("b", "a"))
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "a, b",
    [
        ("lora[attn_matrices=['q']]", "lora[attn_matrices=['k']]"),
        ("ia3[attn_matrices=['k'],intermediate_lora=False]", "ia3[attn_matrices=['v'],intermediate_lora=False]"),
    ],
)
def test_an_average_scales_a_child_alone_in_a_module_by_one_over_n_as_adapterhub(a, b):
    """AdapterHub's rule: a child alone in a module gets sum(weights)/n of its delta, whatever its weight; so with
    a and b on different projections, Average(a, b) is Stack(a, b) with every delta halved."""
    model = _perturbed({"a": a, "b": b})
    ids = torch.tensor([[5, 6, 7, 8]])
    got = _layer_outputs(model, Average("a", "b", weights=[0.3, 0.7]), ids)[-1]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.mul_(0.5)
    torch.testing.assert_close(got, _layer_outputs(model, Stack("a", "b"), ids)[-1])


def test_an_average_scales_a_bottleneck_alone_at_a_site_by_one_over_n(tmp_path):
    """b (LoRA, zero delta) has no bottleneck: a alone at every site gives half its output, as Average(a, a) does."""
    model = _perturbed({"a": "seq_bn"})
    model.add_adapter("b", config="lora")
    model.save_adapter(tmp_path / "a", "a", with_head=False)
    model.load_adapter(tmp_path / "a", load_as="a2", with_head=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    got = _layer_outputs(model, Average("a", "b", weights=[0.3, 0.7]), ids)[-1]
    torch.testing.assert_close(got, _layer_outputs(model, Average("a", "a2"), ids)[-1])


@pytest.mark.parametrize(
    "configs, setup",
    [
        ({"a": "seq_bn", "b": "seq_bn", "c": "seq_bn[leave_out=[0]]"}, Average("a", "b", "c")),
        ({"a": "lora", "b": "lora", "c": "lora[leave_out=[0]]"}, Average("a", "b", "c")),
        ({"a": "seq_bn[leave_out=[0]]", "b": "seq_bn"}, Average(Stack("a"), "b")),
    ],
)
def test_an_average_with_some_children_absent_from_a_layer_without_adapterhub_rule_is_refused(configs, setup):
    model = model_with(configs)
    model.set_active_adapters("a")
    before = snapshot(model)
    with pytest.raises(CompositionError, match="AdapterHub's rule"):
        model.set_active_adapters(setup)
    assert_unchanged(model, before)


# --- prompt tunings and invertible adapters act on the whole batch, before channels split it (fidelity red team) ---

CHANNEL_SETUPS = [
    ({"a": "prompt_tuning", "b": "prompt_tuning"}, Parallel("a", "b")),
    ({"a": "prompt_tuning", "b": "prompt_tuning"}, BatchSplit("a", "b", batch_sizes=[1, 1])),
    ({"a": "prompt_tuning", "b": "seq_bn"}, Parallel("a", "b")),  # used to fail with a bare size mismatch
    ({"a": "seq_bn", "b": "prompt_tuning"}, Parallel("a", "b")),  # b's rows would get no prompt
    ({"a": "seq_bn_inv", "b": "seq_bn_inv"}, Parallel("a", "b")),
    ({"a": "seq_bn_inv", "b": "seq_bn_inv"}, BatchSplit("a", "b", batch_sizes=[1, 1])),
    ({"a": "seq_bn", "b": "seq_bn_inv"}, Stack(BatchSplit("a", "b", batch_sizes=[1, 1]), "a")),
]


@pytest.mark.parametrize("configs, setup", CHANNEL_SETUPS)
def test_channels_starting_with_different_prompts_or_invertible_adapters_are_refused(configs, setup):
    model = model_with(configs)
    model.set_active_adapters("a")
    before = snapshot(model)
    with pytest.raises(CompositionError, match="channels of .* start with (prompt tuning|invertible adapter)s"):
        model.set_active_adapters(setup)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "method, make",
    [
        ("prompt_tuning", lambda a, b: Parallel(Stack("p", a), Stack("p", b))),
        ("prompt_tuning", lambda a, b: Stack("p", Parallel(a, b))),  # a block further on: p acts for every channel
        ("seq_bn_inv", lambda a, b: Stack("p", Parallel(a, b))),
        ("seq_bn_inv", lambda a, b: Stack("p", BatchSplit(a, b, batch_sizes=[2, 2]))),
    ],
)
def test_channels_that_share_their_first_prompt_or_invertible_adapter_equal_their_own_passes(method, make):
    model = _perturbed({"p": method, "a": "lora[init_weights=bert]", "b": "lora[init_weights=bert]"})
    ids = torch.randint(3, 90, (2, 6))
    both = _pass(model, make("a", "b"), torch.cat([ids, ids]) if "BatchSplit" in repr(make("a", "b")) else ids)
    torch.testing.assert_close(both[:2], _pass(model, Stack("p", "a"), ids), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[2:], _pass(model, Stack("p", "b"), ids), atol=1e-5, rtol=1e-4)


def test_an_average_without_normalised_weights_survives_to_dict_and_a_saved_setup(tmp_path):
    setup = Average("a", "b", weights=[0.5, 1.5], normalize_weights=False)
    assert Block.from_dict(setup.to_dict()).weights == [0.5, 1.5]
    model = model_with({"a": "seq_bn", "b": "seq_bn"})
    model.save_adapter_setup(tmp_path, setup)
    loaded, _ = tiny_adapter_model().load_adapter_setup(tmp_path)
    assert loaded == setup and loaded.weights == [0.5, 1.5]
    assert "normalize_weights" not in Average("a", "b", weights=[1, 3]).to_dict()  # AdapterHub's form otherwise


def test_a_fusion_file_without_the_layers_that_hold_none_of_its_adapters_still_loads(tmp_path):
    """Files saved before fusion layers were placed in every layer (AdapterHub's) lack those that never run."""
    model = _perturbed({"a": "seq_bn[leave_out=[0]]", "b": "seq_bn[leave_out=[0]]"}, fusion=Fuse("a", "b"))
    model.save_adapter_fusion(tmp_path / "f", "a,b", use_safetensors=True)
    path = tmp_path / "f" / "model_adapter_fusion.safetensors"
    state = load_file(path)
    save_file({k: v for k, v in state.items() if ".layer.0." not in k}, path)
    model.delete_adapter_fusion("a,b")
    model.load_adapter_fusion(tmp_path / "f")
    save_file({k: v for k, v in state.items() if ".layer.1." not in k}, path)  # a layer where they run: refused
    model.delete_adapter_fusion("a,b")
    with pytest.raises(AdapterLoadError, match="lacks weight"):
        model.load_adapter_fusion(tmp_path / "f")
