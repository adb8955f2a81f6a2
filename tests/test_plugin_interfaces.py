"""`init()` and AdapterHub's plugin interfaces: the model types AdapterHub's `init()` knows by an interface expose it
as `base_model.adapter_interface`; a model type known only by its interface (EAT) is described by it."""

import pytest
import torch
from tiny import tiny_base_model
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

import workbench
from workbench.core.plugin_interfaces import PLUGIN_INTERFACES


@pytest.mark.parametrize("model_type", ["gemma2", "qwen2", "phi", "modernbert"])
def test_init_exposes_the_plugin_interface_with_the_engines_methods(model_type):
    model = workbench.init(tiny_base_model(model_type))
    interface = model.base_model.adapter_interface
    assert interface.model_layers == PLUGIN_INTERFACES[model_type].model_layers
    assert set(interface.adapter_methods) == model._engine.spec.methods
    for name in ("model_layers", "model_embeddings"):  # the modules it names exist on the model
        assert model.base_model.get_submodule(getattr(interface, name)) is not None


def test_each_model_gets_its_own_interface():
    first = workbench.init(tiny_base_model("qwen2")).base_model.adapter_interface
    first.adapter_methods.append("prompt_tuning")
    second = workbench.init(tiny_base_model("qwen2")).base_model.adapter_interface
    assert "prompt_tuning" not in second.adapter_methods
    assert "prompt_tuning" not in PLUGIN_INTERFACES["qwen2"].adapter_methods


def test_a_family_without_a_plugin_interface_has_none():
    assert workbench.init(tiny_base_model("bert")).base_model.adapter_interface is None


# A tiny audio transformer laid out as EAT's remote code is (model.local_encoder, model.blocks[i].attn.qkv, ...):
# model type "eat" has no spec, and its config names no head counts.


class SpectrogramConfig(PretrainedConfig):
    model_type = "eat"

    def __init__(self, dim=16, depth=2, heads=2, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.depth, self.heads = dim, depth, heads


class Block(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, -1) @ v
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(self.norm2(x))))


class SpectrogramModel(PreTrainedModel):
    config_class = SpectrogramConfig
    base_model_prefix = ""

    def __init__(self, config):
        super().__init__(config)
        self.model = nn.Module()
        self.model.local_encoder = nn.Conv2d(1, config.dim, kernel_size=4, stride=4)
        self.model.blocks = nn.ModuleList(Block(config.dim, config.heads) for _ in range(config.depth))
        self.post_init()

    def forward(self, pixel_values, **kwargs):
        x = self.model.local_encoder(pixel_values).flatten(2).transpose(1, 2)
        for block in self.model.blocks:
            x = block(x)
        return BaseModelOutput(last_hidden_state=x)


def test_a_model_type_known_by_its_interface_is_described_by_it(tmp_path):
    torch.manual_seed(0)
    model = workbench.init(SpectrogramModel(SpectrogramConfig()).eval())
    assert model.base_model.adapter_interface.adapter_methods == ["lora"]
    audio = torch.randn(2, 1, 8, 16)
    plain = model(pixel_values=audio).last_hidden_state
    model.add_adapter("a", config="lora[init_weights=bert]", set_active=True)  # q, k, v: thirds of the fused qkv
    with torch.no_grad():
        for _, param in model._adapter_parameters("a"):
            param.add_(torch.randn_like(param))
    adapted = model(pixel_values=audio).last_hidden_state
    assert (adapted - plain).abs().max() > 1e-3
    with pytest.raises(workbench.UnsupportedModelError):
        model.add_adapter("b", config="seq_bn")  # the interface lists LoRA only
    model.save_adapter(tmp_path, "a")
    again = workbench.init(SpectrogramModel(SpectrogramConfig()).eval())
    again.load_state_dict(model.state_dict(), strict=False)
    again.load_adapter(tmp_path, set_active=True)
    assert torch.equal(again(pixel_values=audio).last_hidden_state, adapted)


def test_lora_o_matrix_is_taken_and_adapts_nothing_as_in_the_library():
    torch.manual_seed(0)
    model = workbench.init(tiny_base_model("llama"))
    with pytest.warns(UserWarning, match="'o' adds no LoRA"):
        model.add_adapter("a", config=workbench.LoRAConfig(attn_matrices=["q", "v", "o"]))
    assert not any("o_proj" in key and ".a." in key for key in model.state_dict())
