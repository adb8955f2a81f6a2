"""ReFT (LoReFT / NoReFT / DiReFT) and AdapterPlus on tiny models: names, errors, positions, composition,
generation, files and training. Outputs against the `adapters` library are in tests/test_conformance.py."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_adapter_model, tiny_base_model

import workbench
from workbench import (
    ADAPTER_CONFIG_MAP,
    AdapterConfigError,
    AdapterPlusConfig,
    AdapterSetup,
    Average,
    BatchSplit,
    CompositionError,
    DiReftConfig,
    Fuse,
    LoReftConfig,
    NoReftConfig,
    Parallel,
    ReftConfig,
    Split,
    Stack,
)
from workbench.core.methods.bottleneck import DropPath

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0], [0, 0, 15, 16, 17, 18]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])  # full, right and left padded


def model_for(model_type: str = "bert", **overrides):
    """A bare base model without dropout (so training-mode outputs are comparable); the same weights every call."""
    torch.manual_seed(0)
    drop = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0} if model_type == "bert" else {}
    return workbench.init(tiny_base_model(model_type, **drop, **overrides))


def perturb(model, name: str, std: float = 0.3) -> None:
    """Move an adapter away from its init (LoReFT starts close to the identity)."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn(param.shape, generator=generator) * std)


def hidden(model, ids=IDS, mask=MASK) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


# --- configs: AdapterHub's names, defaults and file layout ------------------------------------------------------

LOREFT_FILE = {  # adapters 1.3.0: save_adapter(..., "loreft") -> adapter_config.json "config" (None values dropped)
    "architecture": "reft",
    "dropout": 0.05,
    "layers": "all",
    "orthogonality": True,
    "output_reft": True,
    "prefix_positions": 3,
    "r": 1,
    "suffix_positions": 0,
    "tied_weights": False,
}


def test_reft_names_and_defaults_are_adapterhubs():
    assert isinstance(ADAPTER_CONFIG_MAP["loreft"], LoReftConfig)
    assert isinstance(ADAPTER_CONFIG_MAP["noreft"], NoReftConfig)
    assert isinstance(ADAPTER_CONFIG_MAP["direft"], DiReftConfig)
    written = {k: v for k, v in LoReftConfig().to_dict().items() if v is not None}
    assert written == LOREFT_FILE
    assert {k: v for k, v in NoReftConfig().to_dict().items() if v is not None} == {
        **LOREFT_FILE,
        "orthogonality": False,
    }
    # DiReFT alone says `subtract_projection` (the library drops it, see ReftConfig.to_dict)
    assert DiReftConfig().to_dict()["subtract_projection"] is False
    assert DiReftConfig() != NoReftConfig()
    assert workbench.AdapterConfig.from_dict(DiReftConfig().to_dict()) == DiReftConfig()
    config = workbench.AdapterConfig.load("loreft[prefix_positions=2,suffix_positions=2,layers=[1],tied_weights=True]")
    assert (config.prefix_positions, config.suffix_positions, config.layers, config.tied_weights) == (2, 2, [1], True)
    with pytest.raises(TypeError):
        ReftConfig()  # the base class has AdapterHub's required keys


def test_adapterplus_defaults_are_adapterhubs():
    config = ADAPTER_CONFIG_MAP["adapterplus"]
    assert isinstance(config, AdapterPlusConfig) and config == AdapterPlusConfig()
    expected = dict(original_ln_after=False, original_ln_before=True, residual_before_ln=False, stochastic_depth=0.1,
                    init_weights="houlsby", scaling="channel", mh_adapter=False, output_adapter=True,
                    reduction_factor=96, non_linearity="gelu")  # fmt: skip
    assert {k: config[k] for k in expected} == expected
    assert "architecture" not in config.to_dict()  # a bottleneck config, as in AdapterHub


@pytest.mark.parametrize(
    "config, key",
    [
        ({"layers": "some"}, "layers"),
        ({"layers": []}, "layers"),
        ({"layers": [-1]}, "layers"),
        ({"layers": [True]}, "layers"),
        ({"prefix_positions": -1}, "prefix_positions"),
        ({"prefix_positions": 0, "suffix_positions": 0}, "prefix_positions=0"),
        ({"r": 0}, "r"),
        ({"dropout": 1.5}, "dropout"),
        ({"non_linearity": "nope"}, "non_linearity"),
        ({"dtype": "int8"}, "dtype"),
        ({"output_reft": False}, "output_reft"),
        ({"tied_weights": "yes"}, "tied_weights"),
    ],
)
def test_bad_reft_values_name_the_key(config, key):
    with pytest.raises(AdapterConfigError, match=key):
        LoReftConfig(**config)


def test_bad_stochastic_depth_names_the_key():
    with pytest.raises(AdapterConfigError, match="stochastic_depth"):
        AdapterPlusConfig(stochastic_depth=1.5)
    with pytest.raises(AdapterConfigError, match="stochastic_depth"):
        workbench.AdapterConfig.load("seq_bn[stochastic_depth=-0.1]")


@pytest.mark.parametrize(
    "config, match",
    [
        ("loreft[layers=[5]]", r"layers=\[5\]: the model has 2 layers"),
        ("noreft[r=33]", "r=33 is larger than the hidden size 32"),
    ],
)
def test_configs_the_model_cannot_take_are_refused_and_leave_it_unchanged(config, match):
    model = model_for()
    keys = set(model.state_dict())
    with pytest.raises(AdapterConfigError, match=match):
        model.add_adapter("a", config=config)
    assert set(model.state_dict()) == keys and not model.adapters
    assert not hasattr(model.encoder.layer[0], "reft_layer")


def test_half_precision_loreft_needs_a_float32_projection():
    model = model_for("llama").to(torch.bfloat16)
    with pytest.raises(AdapterConfigError, match="dtype='float32'"):
        model.add_adapter("a", config="loreft")
    model.add_adapter("a", config="loreft[dtype='float32']", set_active=True)
    out = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# --- positions ----------------------------------------------------------------------------------------------------


def changed_positions(model_type: str, config: str) -> list[list[int]]:
    """Token positions whose output changes when the adapter (on the last layer only) is active."""
    model = model_for(model_type)
    base = hidden(model)
    model.add_adapter("a", config=config, set_active=True)
    perturb(model, "a")
    diff = (hidden(model) - base).abs().amax(dim=-1) > 1e-6
    return [row.nonzero().flatten().tolist() for row in diff]


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_prefix_and_suffix_positions_follow_each_rows_real_tokens(model_type):
    # rows: 6 tokens; 4 then 2 pads (right); 2 pads then 4 (left). Layer 1 is the last: nothing after it mixes tokens.
    assert changed_positions(model_type, "noreft[layers=[1],prefix_positions=2,suffix_positions=1]") == [
        [0, 1, 5],
        [0, 1, 3],
        [2, 3, 5],
    ]
    assert changed_positions(model_type, "direft[layers=[1],prefix_positions=0,suffix_positions=2]") == [
        [4, 5],
        [2, 3],
        [4, 5],
    ]


def test_rows_too_short_for_the_positions_are_refused():
    model = model_for()
    model.add_adapter("a", config="loreft[prefix_positions=0,suffix_positions=5]", set_active=True)
    with pytest.raises(CompositionError, match=r"'a': row 1 has 4 tokens .* suffix_positions=5"):
        model(input_ids=IDS, attention_mask=MASK)
    model.add_adapter("b", config="loreft[prefix_positions=5]", set_active=True)
    with pytest.raises(CompositionError, match=r"'b': row 2 has 4 tokens starting at position 2 .* prefix_positions=5"):
        model(input_ids=IDS, attention_mask=MASK)


def test_without_a_mask_every_token_is_real():
    model = model_for()
    model.add_adapter("a", config="noreft[prefix_positions=1,suffix_positions=1]", set_active=True)
    perturb(model, "a")
    full = torch.ones_like(IDS)
    assert torch.equal(hidden(model, IDS, None), hidden(model, IDS, full))


def test_a_non_2d_mask_is_refused():
    model = model_for()
    model.add_adapter("a", config="loreft", set_active=True)
    with pytest.raises(workbench.UnsupportedModelError, match="2-D attention_mask"):
        model(input_ids=IDS, attention_mask=MASK[:, None, None, :])


# --- composition ------------------------------------------------------------------------------------------------


def intervene(model, layer: int, name: str, h: torch.Tensor, mask=MASK) -> torch.Tensor:
    real = (mask == 1).long()
    starts = real.argmax(dim=1)
    with torch.no_grad():
        return model.encoder.layer[layer].reft_layer.refts[name](h, starts, starts + real.sum(dim=1), name)


def two_refts(model_type="bert"):
    model = model_for(model_type)
    model.add_adapter("a", config="noreft[layers=[1],prefix_positions=2,suffix_positions=1]")
    model.add_adapter("b", config="direft[layers=[1],prefix_positions=1,suffix_positions=2]")
    perturb(model, "a")
    perturb(model, "b", 0.5)
    return model


def test_stack_applies_each_reft_adapter_in_turn():
    model = two_refts()
    base = hidden(model)
    model.set_active_adapters(Stack("a", "b"))
    expected = intervene(model, 1, "b", intervene(model, 1, "a", base))
    torch.testing.assert_close(hidden(model), expected)


@pytest.mark.parametrize("block", [Parallel("a", "b"), BatchSplit("a", "b", batch_sizes=[2, 4])])
def test_parallel_and_batchsplit_give_each_row_group_its_own_adapter(block):
    model = two_refts()
    ids, mask = (IDS, MASK) if isinstance(block, Parallel) else (IDS.repeat(2, 1), MASK.repeat(2, 1))
    base = hidden(model, ids, mask)
    model.set_active_adapters(block)
    out = hidden(model, ids, mask)
    rows = (3, 3) if isinstance(block, Parallel) else (2, 4)
    pieces = (base.repeat(2, 1, 1) if isinstance(block, Parallel) else base).split(rows)
    masks = (mask.repeat(2, 1) if isinstance(block, Parallel) else mask).split(rows)
    expected = torch.cat([intervene(model, 1, n, p, m) for n, p, m in zip("ab", pieces, masks, strict=True)])
    torch.testing.assert_close(out, expected)


def test_reft_with_a_bottleneck_adapter_in_a_parallel_block():
    model = model_for()
    model.add_adapter("r", config="noreft")
    model.add_adapter("s", config="seq_bn")
    perturb(model, "r")
    perturb(model, "s")
    model.set_active_adapters(Parallel("r", "s"))
    out = hidden(model)
    for i, name in enumerate("rs"):
        model.set_active_adapters(name)
        torch.testing.assert_close(out[3 * i : 3 * i + 3], hidden(model))


@pytest.mark.parametrize("setup", [Average("a", "b"), Split("a", "b", splits=[3, 3])], ids=["average", "split"])
def test_blocks_reft_cannot_compute_are_refused(setup):
    model = two_refts()
    model.set_active_adapters("a")
    block = type(setup).__name__
    with pytest.raises(
        CompositionError, match=f"'a' is a reft adapter, which takes part in BatchSplit, .* not in {block}"
    ):
        model.set_active_adapters(setup)
    assert model.active_adapters == Stack("a")


def test_reft_adapters_cannot_be_fused():
    model = two_refts()
    with pytest.raises(CompositionError, match="AdapterFusion needs bottleneck adapters; 'a' is not one"):
        model.add_adapter_fusion(Fuse("a", "b"))
    with pytest.raises(CompositionError, match="needs an AdapterFusion"):
        model.set_active_adapters(Fuse("a", "b"))


def test_reft_and_prompt_tuning_are_not_combined():
    model = model_for()
    model.add_adapter("p", config="prompt_tuning")
    model.add_adapter("r", config="loreft")
    with pytest.raises(CompositionError, match="prompt tuning"):
        model.set_active_adapters(Stack("p", "r"))
    with pytest.raises(CompositionError, match="prompt tuning"), AdapterSetup(Stack("r", "p")):
        model(input_ids=IDS, attention_mask=MASK)


# --- generation -------------------------------------------------------------------------------------------------


def lm(model_type: str, config: str):
    model = tiny_adapter_model(model_type)
    model.add_causal_lm_head("a")
    model.add_adapter("a", config=config, set_active=True)
    perturb(model, "a", 0.5)
    return model.eval()


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_cached_generation_equals_rerunning_the_text_for_prefix_positions(model_type):
    model = lm(model_type, "noreft[prefix_positions=3]")
    prompt, mask = torch.tensor([[1, 5, 6, 7, 8], [1, 1, 9, 10, 11]]), torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    kwargs = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=1, output_scores=True,
                  return_dict_in_generate=True)  # fmt: skip
    cached = model.generate(input_ids=prompt, use_cache=True, **kwargs)
    rerun = model.generate(input_ids=prompt, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, rerun.sequences)
    for a, b in zip(cached.scores, rerun.scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    model.set_active_adapters(None)
    plain = model.generate(input_ids=prompt, use_cache=True, **kwargs)
    assert not torch.allclose(plain.scores[0], cached.scores[0])  # the adapter does act on the prompt


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_decoding_steps_that_extend_a_cache_are_not_intervened(model_type):
    model = lm(model_type, "loreft[prefix_positions=1,suffix_positions=2]")
    prompt = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        first = model(input_ids=prompt, use_cache=True)
        step = torch.tensor([[9]])
        adapted = model(input_ids=step, cache=first.past_key_values, use_cache=True).logits
        first = model(input_ids=prompt, use_cache=True)
        with AdapterSetup(None):
            plain = model(input_ids=step, cache=first.past_key_values, use_cache=True).logits
    torch.testing.assert_close(adapted, plain)


# --- files ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, config",
    [
        ("bert", "loreft"),
        ("gpt2", "noreft[prefix_positions=2,suffix_positions=2,tied_weights=True]"),
        ("llama", "direft[suffix_positions=2,r=2,non_linearity='relu']"),
        ("bert", "adapterplus[reduction_factor=8]"),
        ("llama", "adapterplus"),
    ],
)
def test_save_and_load_round_trip(tmp_path, model_type, config):
    model = model_for(model_type)
    model.add_adapter("a", config=config, set_active=True)
    perturb(model, "a")
    want = hidden(model)
    model.save_adapter(tmp_path / "a", "a")
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())["config"]
    assert saved == model.adapters["a"].to_dict()
    other = model_for(model_type)
    other.load_adapter(str(tmp_path / "a"), set_active=True)
    assert other.adapters["a"] == model.adapters["a"]
    torch.testing.assert_close(hidden(other), want)
    weights = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True)
    if "reft" in config:
        assert all(".reft_layer.refts.a.units." in k for k in weights)
        orthogonal = [k for k in weights if "parametrizations" in k]
        assert bool(orthogonal) == config.startswith("loreft")


def test_loreft_keys_are_adapterhubs():
    model = model_for("gpt2")
    model.add_adapter("a", config="loreft")
    keys = set(model.adapter_state_dict("a"))
    unit = "h.0.reft_layer.refts.a.units.0."
    assert {unit + "learned_source.weight", unit + "learned_source.bias",
            unit + "projection.parametrizations.weight.original",
            unit + "projection.parametrizations.weight.0.base"} <= keys  # fmt: skip
    assert len(keys) == 2 * 2 * 4  # 2 layers x 2 units (prefix, suffix) x 4 tensors
    model.delete_adapter("a")
    assert not hasattr(model.h[0], "reft_layer") and not model.state_dict().keys() - set(model_for("gpt2").state_dict())


def test_init_weights_seed_gives_every_unit_the_same_weights():
    model = model_for()
    model.add_adapter("a", config="noreft[init_weights_seed=42]")
    state = model.adapter_state_dict("a")
    first = {k.split("units.")[1][2:]: v for k, v in state.items() if "layer.0." in k and "units.0." in k}
    for key, value in state.items():
        assert torch.equal(value, first[key.split("units.")[1][2:]]), key


# --- training ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, config",
    [("bert", "loreft[suffix_positions=1]"), ("llama", "direft"), ("gpt2", "adapterplus[reduction_factor=8]")],
)
def test_training_changes_only_the_adapter(model_type, config):
    model = model_for(model_type)
    model.add_adapter("a", config=config)
    model.add_adapter("other", config=config)
    model.train_adapter("a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        out = model(input_ids=IDS, attention_mask=MASK).last_hidden_state
        out.pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".a." in k for k in changed), sorted(changed)[:5]
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable == {k for k, _ in model._adapter_parameters("a")}
    if "loreft" in config:  # the projection stays orthonormal
        unit = model.encoder.layer[0].reft_layer.refts["a"].units[0]
        weight = unit.projection.weight
        torch.testing.assert_close(weight @ weight.T, torch.eye(weight.shape[0]), atol=1e-5, rtol=0)


# --- AdapterPlus stochastic depth -------------------------------------------------------------------------------


def test_drop_path_drops_whole_rows_at_its_rate_and_rescales_the_rest():
    torch.manual_seed(0)
    drop = DropPath(0.3).train()
    x = torch.ones(20000, 4, 8)
    out = drop(x)
    per_row = out.reshape(len(x), -1)
    dropped = (per_row == 0).all(dim=1)
    kept = (per_row == 1 / 0.7).all(dim=1)
    assert bool((dropped | kept).all()), "a row was partly dropped"
    assert abs(dropped.float().mean().item() - 0.3) < 0.015
    assert abs(out.mean().item() - 1.0) < 0.03  # the expectation is kept
    assert drop.eval()(x) is x
    assert DropPath(0.0).train()(x) is x
    assert (DropPath(1.0).train()(x) == 0).all()


def test_adapterplus_drops_the_adapter_branch_in_training_and_is_deterministic_in_eval():
    model = model_for()
    model.add_adapter("a", config="adapterplus[reduction_factor=8,stochastic_depth=0.5]", set_active=True)
    perturb(model, "a")
    adapter = model.encoder.layer[0].output.adapters["a"]
    assert adapter.drop_path.p == 0.5
    x = torch.randn(4000, 3, 32)
    with torch.no_grad():
        full = adapter.bottleneck(x)  # eval: no drop
        model.train()
        trained = adapter.bottleneck(x)
    rows_dropped = (trained == 0).flatten(1).all(dim=1)
    assert abs(rows_dropped.float().mean().item() - 0.5) < 0.04
    torch.testing.assert_close(trained[~rows_dropped], full[~rows_dropped] * 2)
    model.eval()
    torch.testing.assert_close(hidden(model), hidden(model))
    same_weights = model_for()
    same_weights.add_adapter("a", config="adapterplus[reduction_factor=8,stochastic_depth=0.0]", set_active=True)
    same_weights.load_state_dict(model.state_dict())
    torch.testing.assert_close(hidden(same_weights), hidden(model))  # eval ignores stochastic depth
