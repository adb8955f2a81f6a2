"""A decoder the workbench knows nothing about, written as a transformers model is (registered config and
`PreTrainedModel`), with its own module names: `blocks`, `mixer.{to_q,to_k,to_v,to_out}`, `ffn.{proj_in,proj_out}`,
`norm_mixer`, `norm_ffn`, `tok_emb`. Attention goes through transformers' attention function registry and its masks
through `create_causal_mask`, as in current transformers models; grouped-query attention (2 key/value heads of 4).
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.masking_utils import create_causal_mask
from transformers.modeling_outputs import BaseModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from workbench import AdapterModelInterface

MODEL_TYPE = "wb_block_decoder"

INTERFACE = dict(
    adapter_methods=["bottleneck", "lora", "reft", "prefix_tuning"],
    model_embeddings="tok_emb",
    model_layers="blocks",
    layer_self_attn="mixer",
    layer_cross_attn=None,
    attn_q_proj="to_q",
    attn_k_proj="to_k",
    attn_v_proj="to_v",
    attn_o_proj="to_out",
    layer_intermediate_proj="ffn.proj_in",
    layer_output_proj="ffn.proj_out",
    layer_pre_self_attn="norm_mixer",
    layer_pre_ffn="norm_ffn",
)


def interface(**changes) -> AdapterModelInterface:
    return AdapterModelInterface(**{**INTERFACE, **changes})


class BlockDecoderConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        initializer_range=0.1,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


def eager_attention_forward(module, query, key, value, attention_mask, scaling, **kwargs):
    """Grouped-query attention written out (the eager implementation prefix tuning falls back to)."""
    key = key.repeat_interleave(module.num_key_value_groups, dim=1)
    value = value.repeat_interleave(module.num_key_value_groups, dim=1)
    scores = query @ key.transpose(-1, -2) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = scores.softmax(-1)
    return (weights @ value).transpose(1, 2).contiguous(), weights


class Mixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = True
        kv = config.num_key_value_heads * self.head_dim
        self.to_q = nn.Linear(config.hidden_size, config.hidden_size)
        self.to_k = nn.Linear(config.hidden_size, kv)
        self.to_v = nn.Linear(config.hidden_size, kv)
        self.to_out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, attention_mask=None):
        shape = (*x.shape[:-1], -1, self.head_dim)
        query, key, value = (p(x).view(shape).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attention(self, query, key, value, attention_mask, scaling=self.scaling, dropout=0.0)
        return self.to_out(out.reshape(*x.shape[:-1], -1))


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.proj_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.proj_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        return self.proj_out(nn.functional.gelu(self.proj_in(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm_mixer = nn.LayerNorm(config.hidden_size)
        self.mixer = Mixer(config)
        self.norm_ffn = nn.LayerNorm(config.hidden_size)
        self.ffn = FeedForward(config)

    def forward(self, x, attention_mask=None):
        x = x + self.mixer(self.norm_mixer(x), attention_mask)
        return x + self.ffn(self.norm_ffn(x))


class BlockDecoderModel(PreTrainedModel):
    config_class = BlockDecoderConfig
    base_model_prefix = "backbone"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config):
        super().__init__(config)
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def get_input_embeddings(self):
        return self.tok_emb

    def set_input_embeddings(self, value):
        self.tok_emb = value

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, **kwargs):
        x = self.tok_emb(input_ids) if inputs_embeds is None else inputs_embeds
        mask = create_causal_mask(self.config, x, attention_mask, None)
        for block in self.blocks:
            x = block(x, mask)
        return BaseModelOutput(last_hidden_state=self.norm(x))


AutoConfig.register(MODEL_TYPE, BlockDecoderConfig, exist_ok=True)
AutoModel.register(BlockDecoderConfig, BlockDecoderModel, exist_ok=True)


def block_decoder(seed: int = 0) -> BlockDecoderModel:
    torch.manual_seed(seed)
    return BlockDecoderModel(BlockDecoderConfig(pad_token_id=0)).eval()
