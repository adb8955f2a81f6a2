"""`workbench.init(model, interface=...)`: AdapterHub's AdapterModelInterface for model families we do not ship."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_base_model
from transformers import AutoConfig, AutoModel

import workbench
from workbench import AdapterModelInterface, UnsupportedModelError

LLAMA_LIKE = dict(
    adapter_methods=["bottleneck", "lora", "prefix_tuning", "invertible"],
    model_embeddings="embed_tokens",
    model_layers="layers",
    layer_self_attn="self_attn",
    layer_cross_attn=None,
    attn_k_proj="k_proj",
    attn_q_proj="q_proj",
    attn_v_proj="v_proj",
    attn_o_proj="o_proj",
    layer_intermediate_proj="mlp.up_proj",
    layer_output_proj="mlp.down_proj",
    layer_pre_self_attn="input_layernorm",
    layer_pre_ffn="post_attention_layernorm",
)
IDS = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
MASK = (IDS != 0).long()


def qwen3():
    """A family the engine does not ship, with an explicit head_dim (not hidden / heads)."""
    config = AutoConfig.for_model(
        "qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        intermediate_size=64, vocab_size=100, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModel.from_config(config).eval()


def hidden(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def perturb(model, name):
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * 0.2)


@pytest.mark.parametrize("config", ["seq_bn", "double_seq_bn", "lora", "prefix_tuning", "seq_bn_inv"])
def test_an_interface_places_adapters_like_the_shipped_spec(config, tmp_path):
    """The same Llama through the shipped spec and through an interface gives the same adapter outputs."""
    shipped = workbench.init(tiny_base_model("llama"))
    described = tiny_base_model("llama")
    described.load_state_dict(shipped.state_dict())
    described = workbench.init(described, interface=AdapterModelInterface(**LLAMA_LIKE))
    shipped.add_adapter("a", config=config)
    perturb(shipped, "a")
    shipped.save_adapter(tmp_path, "a")
    described.load_adapter(str(tmp_path), set_active=True)
    shipped.set_active_adapters("a")
    assert set(described.adapter_state_dict("a")) == set(shipped.adapter_state_dict("a"))
    torch.testing.assert_close(hidden(described), hidden(shipped), atol=1e-5, rtol=1e-4)


def test_a_family_we_do_not_ship_runs_every_listed_method():
    model = workbench.init(qwen3(), interface=AdapterModelInterface(**LLAMA_LIKE))
    plain = hidden(model)
    for name, config in (("b", "seq_bn"), ("l", "lora"), ("p", "prefix_tuning[prefix_length=3]")):
        model.add_adapter(name, config=config)
        perturb(model, name)
        model.set_active_adapters(name)
        out = hidden(model)
        assert not torch.allclose(out, plain), name
        # padding is respected: the short row alone gives the same output on its real tokens
        torch.testing.assert_close(hidden(model, IDS[1:, :3], MASK[1:, :3]), out[1:, :3], atol=1e-5, rtol=1e-4)
    model.set_active_adapters(None)
    torch.testing.assert_close(hidden(model), plain, atol=0, rtol=0)


def test_methods_outside_the_interface_and_bad_paths_are_clear_errors():
    model = workbench.init(qwen3(), interface=AdapterModelInterface(**{**LLAMA_LIKE, "adapter_methods": ["lora"]}))
    with pytest.raises(UnsupportedModelError, match="bottleneck adapters are not available"):
        model.add_adapter("a", config="seq_bn")
    assert model.adapters == {}
    with pytest.raises(UnsupportedModelError, match="'mlp.nope'"):
        workbench.init(qwen3(), interface=AdapterModelInterface(**{**LLAMA_LIKE, "layer_output_proj": "mlp.nope"}))
    with pytest.raises(workbench.AdapterConfigError, match="attn_qkv_proj"):
        AdapterModelInterface(**{**LLAMA_LIKE, "attn_qkv_proj": "qkv"})


def test_prompt_tuning_on_a_decoder_is_refused_when_added():
    model = workbench.init(tiny_base_model("llama"))
    with pytest.raises(UnsupportedModelError, match="prompt_tuning adapters are not available for model type 'llama'"):
        model.add_adapter("p", config="prompt_tuning")
    assert model.adapters == {}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"base_model": "nope"}, "base_model='nope'"),
        ({"model_layers": "nope"}, "nope"),
        ({"model_layers": "embed_tokens"}, "not a non-empty list"),
        ({"layer_self_attn": "nope"}, "'nope'"),
    ],
)
def test_an_interface_naming_modules_the_model_lacks_is_refused_and_changes_nothing(change, message):
    model = qwen3()
    cls = type(model)
    with pytest.raises(UnsupportedModelError, match=message):
        workbench.init(model, interface=AdapterModelInterface(**{**LLAMA_LIKE, **change}))
    assert type(model) is cls
