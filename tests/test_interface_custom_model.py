"""A model class the workbench does not ship, described with `AdapterModelInterface`: every listed method acts,
trains and saves/loads bit-exactly, through `init()` and through `AdapterModel(..., interface=...)`."""

import pytest
import torch
from custom_decoder import block_decoder, interface

import workbench
from workbench import AdapterModel, AutoAdapterModel, UnsupportedModelError

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
MASK = (IDS != 0).long()
CONFIGS = ["seq_bn", "lora", "loreft", "prefix_tuning[prefix_length=3]"]


def hidden(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def perturb(model, name, seed=1):
    """Move an adapter away from its initialisation (an identity for LoRA/bottleneck up-projections). LoReFT's
    orthogonal parametrization is left alone: a random step in its Householder factors can zero the projection."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for key, param in model._adapter_parameters(name):
            if "parametrizations" not in key:
                param.add_(torch.randn_like(param) * 0.2)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("config", CONFIGS)
def test_each_listed_method_changes_the_output_and_respects_padding(config, attn):
    model = block_decoder()
    model.set_attn_implementation(attn)
    model = workbench.init(model, interface=interface())
    plain = hidden(model)
    model.add_adapter("a", config=config, set_active=True)
    perturb(model, "a")
    out = hidden(model)
    assert (out - plain).abs().max() > 1e-2
    # the padded row gives what it gives alone, unpadded
    torch.testing.assert_close(hidden(model, IDS[1:, :4], MASK[1:, :4]), out[1:, :4], atol=1e-5, rtol=1e-4)
    model.set_active_adapters(None)
    torch.testing.assert_close(hidden(model), plain, atol=0, rtol=0)


@pytest.mark.parametrize("config", CONFIGS)
def test_training_the_adapter_alone_lowers_the_loss_and_leaves_the_model_alone(config):
    model = AdapterModel(block_decoder(), interface=interface())
    model.add_adapter("a", config=config)
    model.add_causal_lm_head("a")
    model.train_adapter("a")
    trained = list({id(p): p for _, p in model._adapter_parameters("a")}.values())  # prefix: one pool, many keys
    others = [(p, p.detach().clone()) for p in model.parameters() if not any(p is t for t in trained)]
    optimizer = torch.optim.Adam(trained, lr=1e-2)  # no weight decay: it would move LoReFT's Householder diagonal
    labels = IDS.masked_fill(MASK == 0, -100)
    losses = []
    for _ in range(8):
        loss = model(input_ids=IDS, attention_mask=MASK, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    assert all(torch.equal(p, before) for p, before in others)  # base model and head untouched


@pytest.mark.parametrize("config", CONFIGS)
def test_adapters_save_and_load_bit_exactly(config, tmp_path):
    model = workbench.init(block_decoder(), interface=interface())
    model.add_adapter("a", config=config, set_active=True)
    perturb(model, "a")
    expected = hidden(model)
    model.save_adapter(tmp_path / "a", "a")
    other = workbench.init(block_decoder(), interface=interface())
    other.load_adapter(str(tmp_path / "a"), set_active=True)
    torch.testing.assert_close(hidden(other), expected, atol=0, rtol=0)

    model.save_pretrained(tmp_path / "model")  # the interface travels in adapter_interface.json
    restored = workbench.load_model(tmp_path / "model", type(block_decoder()))
    restored.set_active_adapters("a")
    assert restored._engine.interface == interface()
    torch.testing.assert_close(hidden(restored), expected, atol=0, rtol=0)


def test_an_adapter_model_with_an_interface_saves_and_loads_with_its_heads(tmp_path):
    model = AdapterModel(block_decoder(), interface=interface())
    model.add_adapter("a", config="seq_bn")
    model.add_causal_lm_head("a")
    perturb(model, "a")
    model.set_active_adapters("a")
    with torch.no_grad():
        expected = model(input_ids=IDS, attention_mask=MASK).logits
    model.save_pretrained(tmp_path)
    restored = AutoAdapterModel.from_pretrained(tmp_path).eval()
    restored.set_active_adapters("a")
    assert restored._engine.interface == interface() and restored.active_head == "a"
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=IDS, attention_mask=MASK).logits, expected, atol=0, rtol=0)


def test_methods_the_interface_leaves_out_are_refused_and_nothing_is_added():
    model = workbench.init(block_decoder(), interface=interface(adapter_methods=["lora"]))
    for config in ("seq_bn", "loreft", "prefix_tuning", "prompt_tuning", "seq_bn_inv"):
        with pytest.raises(UnsupportedModelError, match="not available"):
            model.add_adapter("x", config=config)
    assert model.adapters == {}
    with pytest.raises(workbench.AdapterConfigError, match="'autom'"):
        workbench.init(block_decoder(), interface="autom")
