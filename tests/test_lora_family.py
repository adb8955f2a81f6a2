"""DoRA, VeRA and DvoRA: configs, reference computations written out here, merge/reset, compositions, PEFT parity.

The `adapters` library's own outputs are checked in tests/test_conformance.py (its fixtures have zero biases, so the
bias handling of AdapterHub's DoRA is checked here against the formula)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_base_model

import workbench
from workbench import (
    ADAPTER_CONFIG_MAP,
    AdapterConfigError,
    Average,
    BatchSplit,
    CompositionError,
    DoRAConfig,
    DvoRAConfig,
    LoRAConfig,
    Parallel,
    Stack,
    UnsupportedModelError,
    VeraConfig,
)

peft = pytest.importorskip("peft")
ATOL = 1e-5


def _ids(batch=3, length=6):
    return torch.randint(1, 100, (batch, length), generator=torch.Generator().manual_seed(0))


def _hidden(model, ids=None):
    with torch.no_grad():
        return model(input_ids=_ids() if ids is None else ids).last_hidden_state


def _noisy_base(model_type):
    """A tiny base model with non-zero biases (DoRA conventions differ in how they treat the bias)."""
    base = tiny_base_model(model_type)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in base.named_parameters():
            if name.endswith("bias"):
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return base


def _perturb(model, scale=0.2):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in (".loras.", "lora_", "vera_lambda")):
                param.add_(scale * torch.randn(param.shape, generator=gen))


def _model(model_type="bert", *adapters):
    model = workbench.init(_noisy_base(model_type))
    for name, config in adapters:
        model.add_adapter(name, config=config)
    _perturb(model)
    return model.eval()


# --- configs --------------------------------------------------------------------------------------------------


def test_config_names_and_defaults_are_adapterhubs():
    assert ADAPTER_CONFIG_MAP["dora"] == DoRAConfig() == LoRAConfig(use_dora=True)
    assert ADAPTER_CONFIG_MAP["vera"] == VeraConfig()
    assert ADAPTER_CONFIG_MAP["dvora"] == DvoRAConfig()
    vera = VeraConfig().to_dict()
    assert (vera["vera_d"], vera["vera_b"], vera["init_weights"], vera["r"], vera["alpha"]) == (0.1, 0.0, "vera", 8, 8)
    assert vera["architecture"] == "lora" and vera["use_dora"] is False
    assert DvoRAConfig().use_dora and DvoRAConfig().vera_d == 0.1
    assert workbench.AdapterConfig.load("vera[vera_d=1,vera_b=0.5]").vera_d == 1.0  # ints count as VeRA values


@pytest.mark.parametrize(
    "config,match",
    [
        ("vera[vera_b=None]", "both vera_d and vera_b"),
        ("ia3[use_dora=True]", "use_dora=True needs composition_mode='add'"),
        ("vera[vera_b='x']", "vera_b='x' must be"),
        ("lora[vera_d=0.1,composition_mode='scale',r=1]", "both vera_d and vera_b"),
    ],
)
def test_bad_values_name_the_key(config, match):
    with pytest.raises(AdapterConfigError, match=match):
        workbench.AdapterConfig.load(config)


def test_gpt2_fused_attention_is_refused_and_its_ffn_takes_dora():
    model = workbench.init(tiny_base_model("gpt2"))
    for config in ("dora", "vera", "dvora"):
        with pytest.raises(UnsupportedModelError, match="c_attn"):
            model.add_adapter("a", config=config)
        assert (
            model.adapters == {}
            and not hasattr(model.base_model, "shared_parameters")
            or not len(model.base_model.shared_parameters)
        )
    model.add_adapter("a", config="dora[selfattn_lora=False,intermediate_lora=True,output_lora=True]")


# --- reference computations --------------------------------------------------------------------------------


def _capture(module):
    seen = {}
    handle = module.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    return seen, handle


def test_adapterhub_dora_scales_the_whole_output_by_magnitude_over_unscaled_norm():
    model = _model("bert", ("a", "dora[r=4,alpha=12]"))
    model.set_active_adapters("a")
    query = model.encoder.layer[0].attention.self.query
    seen, handle = _capture(query)
    _hidden(model)
    handle.remove()
    lora = query.loras["a"]
    w, b, x = query.weight, query.bias, seen["x"]
    delta = lora.lora_B @ lora.lora_A
    scale = lora.m.weight.view(-1) / torch.linalg.norm(w + delta, dim=1)  # the unscaled delta, as the library
    expected = scale * (x @ w.t() + b + 3.0 * x @ delta.t())  # alpha / r = 3
    torch.testing.assert_close(seen["y"], expected, atol=ATOL, rtol=0)


def test_vera_delta_is_scaled_product_of_shared_pair_and_its_matrices():
    model = _model("llama", ("a", "vera[r=4,alpha=8]"))  # q (32 -> 32) and v (32 -> 16) slice one pair
    model.set_active_adapters("a")
    shared = model.shared_parameters["a"]
    assert tuple(shared.lora_A.shape) == (4, 32) and tuple(shared.lora_B.shape) == (32, 4)
    v_proj = model.layers[0].self_attn.v_proj
    seen, handle = _capture(v_proj)
    _hidden(model)
    handle.remove()
    lora = v_proj.loras["a"]
    delta = lora.vera_B @ shared.lora_B[:16] @ lora.vera_D @ shared.lora_A
    torch.testing.assert_close(seen["y"], seen["x"] @ (v_proj.weight + 2.0 * delta).t(), atol=ATOL, rtol=0)


# --- merging ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type,config",
    [
        ("bert", "dora[r=4,alpha=16,attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]"),
        ("llama", "dora"),
        ("gpt2", "lora[use_dora=True,selfattn_lora=False,intermediate_lora=True,output_lora=True]"),  # Conv1D
        ("bert", "vera[intermediate_lora=True]"),
        ("llama", "dvora[output_lora=True]"),
        ("bert", "dvora"),
    ],
)
def test_merge_matches_reference_and_reset_is_bit_exact(model_type, config):
    model = _model(model_type, ("a", config))
    model.set_active_adapters("a")
    unmerged = _hidden(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    targets = [t for t in model._method("lora").targets.values() if "a" in t.loras]
    expected = {}
    with torch.no_grad():
        for t in targets:  # the merged weight and bias, computed here in (out, in) layout
            lora, w = t.loras["a"], t.dense(t.module.weight)
            delta = lora.delta_w
            merged = w + lora.scaling * delta
            bias = t.module.bias
            if hasattr(lora, "m"):
                scale = lora.m.weight.view(-1) / torch.linalg.norm(w + delta, dim=1)
                merged, bias = scale.unsqueeze(1) * merged, None if bias is None else scale * bias
            expected[t.path] = (merged, bias)
    model.merge_adapter("a")
    for t in targets:
        torch.testing.assert_close(t.dense(t.module.weight), expected[t.path][0], atol=1e-6, rtol=1e-6)
        if expected[t.path][1] is not None:
            torch.testing.assert_close(t.module.bias, expected[t.path][1], atol=1e-6, rtol=1e-6)
        # reset keeps no copy of the weight: int8 rounding steps (and the rare entries they cannot reach)
        undo = t.restore["undo"]
        assert undo.copy is None and undo.nbytes() <= t.module.weight.numel() * t.module.weight.element_size() // 2
    torch.testing.assert_close(_hidden(model), unmerged, atol=ATOL, rtol=0)
    with torch.no_grad():  # an adapter changed while merged must not spoil the reset
        next(iter(targets)).loras["a"].vera_D.add_(1.0) if "vera" in config else None
    model.reset_adapter()
    after = model.state_dict()
    changed = [k for k, v in before.items() if ".loras." not in k and not torch.equal(after[k], v)]
    assert not changed, f"reset_adapter left {changed[:3]} different"


# --- compositions ------------------------------------------------------------------------------------------


def test_parallel_and_batch_split_finish_each_rows_with_their_own_dora():
    model = _model("bert", ("a", "dora"), ("b", "dvora"), ("c", "lora[init_weights=bert]"))
    singles = {}
    for name in "abc":
        model.set_active_adapters(name)
        singles[name] = _hidden(model)
    model.set_active_adapters(Parallel("a", "b", "c"))
    out = _hidden(model)
    for i, name in enumerate("abc"):
        torch.testing.assert_close(out[3 * i : 3 * i + 3], singles[name], atol=ATOL, rtol=0)
    model.set_active_adapters(BatchSplit("c", Stack("a"), "b", batch_sizes=[1, 1, 1]))
    out = _hidden(model)
    for i, name in enumerate("cab"):
        torch.testing.assert_close(out[i], singles[name][i], atol=ATOL, rtol=0)


def test_stack_and_average_apply_the_last_adapters_magnitude_as_adapterhub():
    model = _model("bert", ("a", "dora"), ("b", "dora"))
    model.set_active_adapters(Average("a", "b", weights=[0.3, 0.7]))
    _hidden(model)  # the library's definition; its values are checked by the conformance fixtures
    with pytest.raises(CompositionError, match="finished by its own DoRA magnitude"):
        model.set_active_adapters(Stack(Parallel("a", "b"), "a"))
    with pytest.raises(CompositionError):  # AdapterHub's nesting rules already keep row blocks out of Average
        model.set_active_adapters(Average(Stack("a", BatchSplit("a", "b", batch_sizes=[1, 2])), "b"))
    model.set_active_adapters(Stack("a", Parallel("a", "b")))  # rows finished last: fine


# --- VeRA's shared pair ----------------------------------------------------------------------------------------


def test_vera_pair_is_frozen_saved_seeded_and_deleted(tmp_path):
    base = tiny_base_model("bert")
    model = workbench.init(copy.deepcopy(base))
    model.add_adapter("a", config="vera[init_weights_seed=7]")
    model.add_adapter("b", config="vera[init_weights_seed=7]")
    pair = model.shared_parameters
    assert torch.equal(pair["a"].lora_A, pair["b"].lora_A) and torch.equal(pair["a"].lora_B, pair["b"].lora_B)
    model.train_adapter("a")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loras.a." in k for k in trainable)  # the pair is never trained
    _perturb(model)
    model.eval()
    model.save_adapter(tmp_path, "a")
    keys = workbench.core.files.read_weights(tmp_path / "pytorch_adapter.bin")
    assert {"shared_parameters.a.lora_A", "shared_parameters.a.lora_B"} <= set(keys)
    other = workbench.init(copy.deepcopy(base))
    other.load_adapter(tmp_path, load_as="c", set_active=True)
    model.set_active_adapters("a")
    torch.testing.assert_close(_hidden(other), _hidden(model), atol=0, rtol=0)
    model.delete_adapter("a")
    assert "a" not in model.shared_parameters


def test_averaging_rules():
    model = _model("bert", ("a", "vera"), ("b", "vera"), ("c", "dora"), ("d", "dora"))
    with pytest.raises(AdapterConfigError, match="cannot merge the Vera adapters.*use 'linear'"):
        model.average_adapter("m", ["a", "b"], combine_strategy="lora_linear_only_negate_b")
    with pytest.raises(AdapterConfigError, match="use 'linear'"):
        model.average_adapter("m", ["c", "d"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    assert set(model.adapters) == {"a", "b", "c", "d"}
    model.average_adapter("m", ["a", "b"], weights=[0.25, 0.75])
    state = model.adapter_state_dict
    pair = "shared_parameters.{}.lora_A"
    torch.testing.assert_close(
        state("m")[pair.format("m")], 0.25 * state("a")[pair.format("a")] + 0.75 * state("b")[pair.format("b")]
    )


# --- PEFT ------------------------------------------------------------------------------------------------------

PEFT_CASES = [
    ("bert", lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
                                     use_dora=True)),
    ("llama", lambda: peft.LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                      use_dora=True, use_rslora=True)),
    ("gpt2", lambda: peft.LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "mlp.c_proj"], use_dora=True,
                                     fan_in_fan_out=True)),
    ("bert", lambda: peft.VeraConfig(r=4, target_modules=["query", "value", "intermediate.dense"])),
    ("llama", lambda: peft.VeraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], d_initial=0.5)),
    ("gpt2", lambda: peft.VeraConfig(r=4, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True)),
]  # fmt: skip


@pytest.mark.parametrize("model_type,make_config", PEFT_CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(PEFT_CASES)])
def test_peft_dora_and_vera_load_save_and_merge_with_peft_outputs(model_type, make_config, tmp_path):
    base = _noisy_base(model_type)
    peft_model = peft.get_peft_model(copy.deepcopy(base), make_config())
    _perturb(peft_model, scale=0.3)
    peft_model.eval().save_pretrained(tmp_path / "p")
    ids = _ids()
    expected = _hidden(peft_model, ids)
    assert not torch.allclose(_hidden(base, ids), expected, atol=1e-3)
    model = workbench.init(copy.deepcopy(base))
    model.load_adapter(tmp_path / "p", load_as="x", set_active=True)
    torch.testing.assert_close(_hidden(model, ids), expected, atol=ATOL, rtol=0)
    model.save_adapter(tmp_path / "back", "x")  # PEFT adapters save in PEFT's format
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    torch.testing.assert_close(_hidden(reloaded, ids), expected, atol=ATOL, rtol=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.merge_adapter("x")
    torch.testing.assert_close(_hidden(model, ids), expected, atol=ATOL, rtol=0)
    model.reset_adapter()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_adapterhub_dora_and_vera_are_not_written_for_peft(tmp_path):
    model = workbench.init(tiny_base_model("bert"))
    for name, config in (("d", "dora"), ("v", "vera")):
        model.add_adapter(name, config=config)
        with pytest.raises(AdapterConfigError, match="PEFT cannot describe"):
            model.save_adapter(tmp_path, name, format="peft")


def test_peft_vera_without_saved_projections_is_refused(tmp_path):
    base = tiny_base_model("bert")
    peft_model = peft.get_peft_model(copy.deepcopy(base), peft.VeraConfig(r=4, target_modules=["query"],
                                                                          save_projection=False))  # fmt: skip
    peft_model.save_pretrained(tmp_path)
    model = workbench.init(copy.deepcopy(base))
    with pytest.raises(AdapterConfigError, match="save_projection"):
        model.load_adapter(tmp_path)
    assert model.adapters == {}
