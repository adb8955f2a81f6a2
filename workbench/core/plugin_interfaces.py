"""The model types AdapterHub's `init()` describes with a plugin interface of its own, and those interfaces.

AdapterHub's `adapters.init(model)` looks the model type up in a table of `AdapterModelInterface`s before its own
modeling classes; code written for it reads the one it used as `model.base_model.adapter_interface` (its
`adapter_methods` say which methods apply). `workbench.init` does the same: a model type with a shipped spec keeps
the spec (it places adapters as the interface does, tests/conformance) and gets the interface as that attribute,
with the methods the spec allows; a model type without one (EAT, a remote-code audio model) is described by it.
"""

from __future__ import annotations

from dataclasses import replace

from .interface import AdapterModelInterface

_PLUGIN_METHODS = ("bottleneck", "lora", "reft", "invertible")


def _decoder(o_proj: str, up: str, down: str, pre_ffn: str | None, ln_1=None, ln_2=None, **extra):
    """The interface of a Llama-shaped decoder (`layers.N.self_attn.{q,k,v}_proj`, `embed_tokens`)."""
    return AdapterModelInterface(
        adapter_methods=list(_PLUGIN_METHODS),
        model_embeddings="embed_tokens",
        model_layers="layers",
        layer_self_attn="self_attn",
        layer_cross_attn=None,
        attn_q_proj="q_proj",
        attn_k_proj="k_proj",
        attn_v_proj="v_proj",
        attn_o_proj=o_proj,
        layer_intermediate_proj=up,
        layer_output_proj=down,
        layer_pre_self_attn="input_layernorm",
        layer_pre_ffn=pre_ffn,
        layer_ln_1=ln_1,
        layer_ln_2=ln_2,
        **extra,
    )


_GEMMA_NORMS = dict(ln_1="post_attention_layernorm", ln_2="post_feedforward_layernorm")

PLUGIN_INTERFACES: dict[str, AdapterModelInterface] = {
    "modernbert": AdapterModelInterface(
        adapter_methods=list(_PLUGIN_METHODS),
        model_embeddings="embeddings",
        model_layers="layers",
        layer_self_attn="attn",
        layer_cross_attn=None,
        attn_qkv_proj="Wqkv",
        attn_o_proj="Wo",
        layer_intermediate_proj="mlp.Wi",
        layer_output_proj="mlp.Wo",
        layer_pre_self_attn="attn",
        layer_pre_ffn="mlp",
        layer_ln_1="mlp_norm",
    ),
    "gemma2": _decoder("o_proj", "mlp.up_proj", "mlp.down_proj", "pre_feedforward_layernorm", **_GEMMA_NORMS),
    "gemma3_text": _decoder(
        "o_proj", "mlp.up_proj", "mlp.down_proj", "pre_feedforward_layernorm", base_model="model", **_GEMMA_NORMS
    ),
    "qwen2": _decoder("o_proj", "mlp.up_proj", "mlp.down_proj", "post_attention_layernorm"),
    "qwen3": _decoder("o_proj", "mlp.up_proj", "mlp.down_proj", "post_attention_layernorm"),
    # Phi's one norm feeds attention and MLP alike: nothing before the FFN
    "phi": _decoder("dense", "mlp.fc1", "mlp.fc2", None),
    # EAT (an audio transformer published as remote code): LoRA on its fused qkv, projection and MLP only
    "eat": AdapterModelInterface(
        adapter_methods=["lora"],
        model_embeddings="model.local_encoder",
        model_layers="model.blocks",
        layer_self_attn="attn",
        layer_cross_attn=None,
        attn_qkv_proj="qkv",
        attn_o_proj="proj",
        layer_intermediate_proj="mlp.fc1",
        layer_output_proj="mlp.fc2",
        layer_pre_self_attn="norm1",
        layer_pre_ffn="norm2",
    ),
}


def plugin_interface(model_type: str | None, methods=None) -> AdapterModelInterface | None:
    """AdapterHub's plugin interface for the model type (None if it has none); `methods`: the methods the engine
    applies to the model, which replace the interface's list."""
    interface = PLUGIN_INTERFACES.get(model_type)
    if interface is None:
        return None
    # a copy: the model's interface is its own, so changing it changes no other model's
    return replace(
        interface, adapter_methods=sorted(methods) if methods is not None else list(interface.adapter_methods)
    )
