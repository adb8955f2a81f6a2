"""Behaviour of LoRA / (IA)^3 adapters on tiny models built from configs (no downloads)."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_base_model

import workbench
from workbench import AdapterConfigError, BatchSplit, CompositionError, Fuse, LoRAConfig, Parallel, Split, Stack

FULL_LORA = LoRAConfig(attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True, init_weights="bert")
IA3_ZERO = "ia3[init_weights=lora]"  # lora_B = 0: an unmerge by division would give NaN


def model_for(model_type: str = "bert"):
    return workbench.init(tiny_base_model(model_type))


def inputs(batch: int = 3, length: int = 6) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {
        "input_ids": torch.randint(1, 100, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
    }


def run(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(**kwargs)).last_hidden_state


def base_weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".loras." not in k}


@pytest.mark.filterwarnings("ignore:.*zero init")
@pytest.mark.parametrize("model_type", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("config", [FULL_LORA, IA3_ZERO], ids=["lora", "ia3-zero"])
def test_merge_then_reset_restores_exact_weights(model_type, config):
    model = model_for(model_type)
    model.add_adapter("a", config=config, set_active=True)
    before = base_weights(model)
    model.merge_adapter("a")
    changed = [k for k, v in base_weights(model).items() if not torch.equal(v, before[k])]
    assert changed, "merging changed no base weight"
    model.reset_adapter()
    after = base_weights(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    "model_type,config",
    [
        ("bert", FULL_LORA),
        ("gpt2", FULL_LORA),  # fused c_attn plus Conv1D c_fc/c_proj
        ("llama", FULL_LORA),
        ("llama", "ia3[init_weights=bert]"),  # no biases, so merged IA3 is exact too
    ],
)
def test_merged_output_equals_unmerged(model_type, config):
    model = model_for(model_type)
    model.add_adapter("a", config=config)
    plain = run(model)
    model.set_active_adapters("a")
    unmerged = run(model)
    assert not torch.allclose(plain, unmerged, atol=1e-4)
    model.merge_adapter("a")
    torch.testing.assert_close(run(model), unmerged, atol=1e-5, rtol=1e-5)


def test_merged_adapter_is_not_applied_twice():
    model = model_for()
    model.add_adapter("a", config=FULL_LORA, set_active=True)
    expected = run(model)
    model.merge_adapter("a")
    model.merge_adapter("a")  # merging again is a no-op
    torch.testing.assert_close(run(model), expected, atol=1e-5, rtol=1e-5)


def test_training_changes_only_lora_parameters():
    model = model_for()
    model.add_adapter("a", config="lora[init_weights=bert]")
    model.train_adapter("a")
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loras.a." in k for k in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    direction = torch.randn(32)
    for _ in range(2):
        loss = (model(**inputs()).last_hidden_state @ direction).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == trainable


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
def test_save_and_load_round_trip(tmp_path, model_type):
    base = tiny_base_model(model_type)
    source, target = workbench.init(base), workbench.init(copy.deepcopy(base))
    source.add_adapter("a", config=FULL_LORA, set_active=True)
    source.save_adapter(tmp_path, "a", use_safetensors=True)
    saved = load_file(str(tmp_path / "adapter.safetensors"))
    first = "encoder.layer.0.attention.self.query" if model_type == "bert" else "h.0.attn.c_attn"
    assert f"{first}.loras.a.lora_A" in saved
    assert target.load_adapter(str(tmp_path), load_as="b", set_active=True) == "b"
    torch.testing.assert_close(run(target), run(source), atol=0, rtol=0)


def test_llama_and_qwen2_place_ffn_lora_like_adapterhub():
    llama, qwen2 = model_for("llama"), model_for("qwen2")
    for model in (llama, qwen2):
        model.add_adapter("a", config="ia3")
    llama_keys, qwen2_keys = llama.adapter_state_dict("a"), qwen2.adapter_state_dict("a")
    assert llama_keys["layers.0.mlp.down_proj.loras.a.lora_B"].shape == (32, 1)  # "intermediate" (sic)
    assert qwen2_keys["layers.0.mlp.up_proj.loras.a.lora_B"].shape == (64, 1)
    assert "layers.0.self_attn.k_proj.loras.a.lora_B" in llama_keys


def test_parallel_and_batch_split_match_single_adapters():
    model = model_for()
    for name in ("a", "b"):
        model.add_adapter(name, config=FULL_LORA)
    outputs = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        outputs[name] = run(model)
    model.set_active_adapters(Parallel("a", "b"))
    parallel = run(model)
    torch.testing.assert_close(parallel[:3], outputs["a"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel[3:], outputs["b"], atol=1e-5, rtol=1e-5)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    split = run(model)
    torch.testing.assert_close(split[:1], outputs["a"][:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split[1:], outputs["b"][1:], atol=1e-5, rtol=1e-5)


def test_unsupported_compositions_raise():
    model = model_for()
    model.add_adapter("a", config="lora")
    model.add_adapter("b", config="lora")
    model.set_active_adapters("a")
    with pytest.raises(CompositionError):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(CompositionError, match="lora adapter, which takes part in .* not in Split"):
        model.set_active_adapters(Split("a", "b", splits=3))
    assert model.active_adapters == Stack("a")  # refused setups leave the active one in place


def test_fused_qkv_projection_composes_like_separate_ones():
    """GPT-2's fused c_attn: Parallel and BatchSplit give each row its own adapter's output."""
    gpt2 = model_for("gpt2")
    for name in ("a", "b"):
        gpt2.add_adapter(name, config="lora[init_weights=bert,attn_matrices=['q','v'],intermediate_lora=True]")
    singles = {}
    for name in ("a", "b"):
        gpt2.set_active_adapters(name)
        singles[name] = run(gpt2)
    gpt2.set_active_adapters(Parallel("a", "b"))
    both = run(gpt2)
    rows = singles["a"].shape[0]
    torch.testing.assert_close(both[:rows], singles["a"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[rows:], singles["b"], atol=1e-5, rtol=1e-5)
    with pytest.raises(CompositionError, match="c_attn"):
        gpt2.set_active_adapters(Stack("a", "b"))  # stacking feeds 3x-wide deltas into the next adapter


def test_gated_lora_cannot_be_merged_and_dora_needs_add_mode():
    model = model_for()
    model.add_adapter("g", config="lora[use_gating=True]")
    with pytest.raises(AdapterConfigError, match="gating"):
        model.merge_adapter("g")
    with pytest.raises(AdapterConfigError, match="use_dora=True needs composition_mode='add'"):
        model.add_adapter("d", config="ia3[use_dora=True]")


def test_average_negate_b_weights_a_by_magnitude():
    model = model_for()
    model.add_adapter("a", config="lora[init_weights=bert]")
    model.add_adapter("b", config="lora[init_weights=bert]")
    model.average_adapter(
        "m", ["a", "b"], weights=[2.0, -1.0], normalize_weights=False, combine_strategy="lora_linear_only_negate_b"
    )
    state = model.adapter_state_dict
    key = "encoder.layer.0.attention.self.query.loras.{}.lora_{}"
    a, b, m = state("a"), state("b"), state("m")
    torch.testing.assert_close(m[key.format("m", "A")], 2 * a[key.format("a", "A")] + b[key.format("b", "A")])
    torch.testing.assert_close(m[key.format("m", "B")], 2 * a[key.format("a", "B")] - b[key.format("b", "B")])


def test_stacking_loras_on_unequal_projections_is_a_clear_error():
    model = model_for("llama")  # k_proj/v_proj map 32 -> 16 features (grouped-query attention)
    for name in ("a", "b"):
        model.add_adapter(name, config=LoRAConfig(attn_matrices=["k"], init_weights="bert"))
    with pytest.raises(CompositionError, match="16 features"):
        model.set_active_adapters(workbench.Stack("a", "b"))


@pytest.mark.parametrize("config", ["lora", "ia3"])
def test_a_fractional_alpha_from_a_file_or_string_is_taken(config):
    """AdapterHub annotates alpha as int but runs (and saves) any number: alpha=2.5 scales by 2.5 / r."""
    model = workbench.init(tiny_base_model())
    model.add_adapter("a", config=f"{config}[alpha=2.5]")
    assert model.adapters_config.get("a")["alpha"] == 2.5
    scales = {m.scaling for m in model.modules() if hasattr(m, "scaling") and hasattr(m, "r")}
    assert scales == ({2.5 / 8} if config == "lora" else {2.5})
    with pytest.raises(AdapterConfigError, match="alpha='x'"):
        model.add_adapter("b", config=LoRAConfig(alpha="x"))
