"""CLIP: a text tower and a vision tower in one model (CLIPModel), or one tower on its own (CLIPTextModel,
CLIPVisionModel), through `init()`. Layers are numbered text first, then vision, as AdapterHub does; files keep the
key names of AdapterHub's transformers 4 models. Conformance with the library is in tests/test_conformance.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModel,
)

import workbench
from workbench.core.errors import CompositionError, UnsupportedMethodError

TEXT = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=128,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip
VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37
)
GEN = torch.Generator().manual_seed(0)
IDS = torch.randint(3, 128, (4, 8), generator=GEN)
MASK = torch.tensor([[1] * 8, [1] * 6 + [0] * 2, [1] * 4 + [0] * 4, [1] * 8])
PIXELS = torch.randn(4, 3, 32, 32, generator=GEN)
INPUTS = dict(input_ids=IDS, attention_mask=MASK, pixel_values=PIXELS)


def clip(attn: str = "eager") -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(text_config=TEXT, vision_config=VISION)
    config._attn_implementation = attn
    return workbench.init(CLIPModel(config).eval())


def perturb(model, name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, param in model._engine.named_parameters_of(name):
            if "parametrizations" not in key:  # LoReFT's orthogonal projection stays as it is
                param.add_(torch.randn(param.shape, generator=gen) * 0.3)


METHODS = [
    "seq_bn",
    "lora[intermediate_lora=True,output_lora=True]",
    "prefix_tuning[prefix_length=3,bottleneck_size=8]",
    "loreft[prefix_positions=1,suffix_positions=1]",
    "seq_bn_inv",
]


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.split("[")[0])
def test_method_acts_on_both_towers_trains_and_reloads_bit_exactly(tmp_path, method):
    model = clip()
    base_weights = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        base = model(**INPUTS)
    model.add_adapter("a", config=method)
    perturb(model, "a")
    model.set_active_adapters("a")
    with torch.no_grad():
        out = model(**INPUTS)
    assert not torch.allclose(out.text_embeds, base.text_embeds, atol=1e-4)
    assert not torch.allclose(out.image_embeds, base.image_embeds, atol=1e-4)  # seq_bn_inv: its bottleneck part

    model.train_adapter("a")
    trained = [p for _, p in model._engine.named_parameters_of("a") if p.requires_grad]
    optimizer = torch.optim.Adam(trained, lr=2e-2)
    losses = []
    model.eval()
    for _ in range(5):
        loss = model(**INPUTS, return_loss=True).loss  # CLIP's contrastive loss over the 4 (text, image) pairs
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses

    model.save_adapter(tmp_path / "a", "a")
    with torch.no_grad():
        want = model(**INPUTS)
    fresh = clip()
    fresh.load_state_dict(base_weights)
    fresh.load_adapter(tmp_path / "a", set_active=True)
    with torch.no_grad():
        got = fresh(**INPUTS)
    assert torch.equal(got.text_embeds, want.text_embeds) and torch.equal(got.image_embeds, want.image_embeds)


def test_layers_are_numbered_text_first_then_vision(tmp_path):
    """leave_out=[0, 1] leaves out the text tower: only the vision layers (2 and 3) get the adapter."""
    model = clip()
    with torch.no_grad():
        base = model(**INPUTS)
    model.add_adapter("v", config="seq_bn[leave_out=[0,1]]")
    perturb(model, "v")
    model.set_active_adapters("v")
    with torch.no_grad():
        out = model(**INPUTS)
    assert torch.equal(out.text_embeds, base.text_embeds)
    assert not torch.allclose(out.image_embeds, base.image_embeds, atol=1e-4)
    assert sorted(model.get_adapter("v")) == [2, 3]
    model.save_adapter(tmp_path / "v", "v")
    keys = torch.load(tmp_path / "v" / "pytorch_adapter.bin", weights_only=True)
    assert {k.split(".adapters.")[0] for k in keys} == {
        "vision_model.encoder.layers.0.output_adapters",
        "vision_model.encoder.layers.1.output_adapters",
    }


def test_tower_calls_alone_run_the_adapters():
    """get_text_features / get_image_features run one tower on its own; the adapters act there as in forward,
    ReFT's suffix included (the vision tower takes its rows whole, whatever the text's mask)."""
    model = clip()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("r", config="loreft[prefix_positions=1,suffix_positions=2]")
    for name in ("a", "r"):
        perturb(model, name)
    model.set_active_adapters(workbench.Stack("a", "r"))
    with torch.no_grad():
        out = model(**INPUTS)
        image = model.get_image_features(pixel_values=PIXELS)
        text = model.get_text_features(input_ids=IDS, attention_mask=MASK)
    features = lambda x: getattr(x, "pooler_output", x)  # noqa: E731  (transformers 5.24: an output, then a tensor)
    normed = lambda x: features(x) / features(x).norm(dim=-1, keepdim=True)  # noqa: E731
    assert torch.allclose(normed(image), out.image_embeds, atol=1e-5)
    assert torch.allclose(normed(text), out.text_embeds, atol=1e-5)


def test_prefix_tuning_on_the_causal_text_tower_under_sdpa_and_eager():
    """CLIP's text tower passes `is_causal` to the attention function instead of a mask when nothing is padded; the
    prefix keys are visible to every query and the text keys stay causal, under sdpa as under eager."""
    outputs = []
    for attn in ("eager", "sdpa"):
        model = clip(attn)
        model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=8]")
        perturb(model, "p")
        model.set_active_adapters("p")
        with torch.no_grad():
            outputs.append(model.text_model(input_ids=IDS).last_hidden_state)  # no mask: sdpa's is_causal path
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    model = clip("eager")
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=8]")
    perturb(model, "p")
    model.set_active_adapters("p")
    changed = IDS.clone()
    changed[:, -1] = 5  # the last token cannot change what earlier positions see
    with torch.no_grad():
        a = model.text_model(input_ids=IDS).last_hidden_state
        b = model.text_model(input_ids=changed).last_hidden_state
    assert torch.allclose(a[:, :-1], b[:, :-1], atol=1e-6)


def test_refusals_leave_the_model_unchanged():
    model = clip()
    keys = set(model.state_dict())
    with pytest.raises(UnsupportedMethodError, match="prompt_tuning adapters are not available for model type 'clip'"):
        model.add_adapter("p", config="prompt_tuning")
    assert set(model.state_dict()) == keys and not model.adapters_config.adapters
    model.add_adapter("a")
    model.add_adapter("b")
    with pytest.raises(CompositionError, match="does not take Parallel"):
        model.set_active_adapters(workbench.Parallel("a", "b"))
    assert model.active_adapters is None
    model.set_active_adapters(workbench.BatchSplit("a", "b", batch_sizes=[2, 2]))  # rows split, not replicated
    torch.manual_seed(0)
    vision = workbench.init(CLIPVisionModel(CLIPVisionConfig(**VISION)).eval())
    with pytest.raises(UnsupportedMethodError, match="pixel_values, and invertible adapters transform token"):
        vision.add_adapter("inv", config="seq_bn_inv")
    assert not vision.adapters_config.adapters


def test_a_tower_alone_keeps_adapterhub_keys_and_loads_into_the_projection_model(tmp_path):
    """CLIPTextModel writes its layers under `text_model.` (AdapterHub's transformers 4 layout), so its file loads
    into CLIPTextModelWithProjection (whose tower is `text_model`) with the same hidden states."""
    config = CLIPTextConfig(**TEXT)
    torch.manual_seed(0)
    tower = workbench.init(CLIPTextModel(config).eval())
    tower.add_adapter("a", config="seq_bn_inv")
    tower.add_adapter("b", config="prefix_tuning[prefix_length=2,bottleneck_size=8]")
    perturb(tower, "a")
    perturb(tower, "b")
    tower.set_active_adapters(workbench.Stack("a", "b"))
    for name in ("a", "b"):
        tower.save_adapter(tmp_path / name, name)
    keys = set(torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True))
    keys |= set(torch.load(tmp_path / "b" / "pytorch_adapter.bin", weights_only=True))
    assert "text_model.invertible_adapters.a.F.0.weight" in keys
    assert "text_model.encoder.layers.1.output_adapters.adapters.a.adapter_up.weight" in keys
    assert (
        "text_model.encoder.layers.0.self_attn.prefix_tuning.pool.prefix_tunings.b.clip_text_model_self_prefix.wte.weight"
        in keys
    )  # noqa: E501
    assert not any(k.startswith("encoder.") for k in keys)

    projected = workbench.init(CLIPTextModelWithProjection(config).eval())
    projected.text_model.load_state_dict(tower.state_dict(), strict=False)
    for name in ("a", "b"):
        projected.load_adapter(tmp_path / name)
    projected.set_active_adapters(workbench.Stack("a", "b"))
    with torch.no_grad():
        want = tower(input_ids=IDS, attention_mask=MASK).last_hidden_state
        got = projected(input_ids=IDS, attention_mask=MASK).last_hidden_state
    assert torch.equal(got, want)
    projected.save_adapter(tmp_path / "again", "a")
    assert set(torch.load(tmp_path / "again" / "pytorch_adapter.bin", weights_only=True)) == {
        k for k in keys if ".a." in k
    }
