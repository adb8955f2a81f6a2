"""Architectures described as data: everything the engine knows about a model family, in one spec.

Paths are dotted module paths. `layers` and `embeddings` are relative to the base model (e.g. `BertModel`); every
other path is relative to one transformer layer. No modeling code is copied: the methods attach hooks at these
places and check the spec when an adapter is added, so a new architecture is one entry in `ARCHITECTURES` (or,
for a model we do not ship, `workbench.init(model, interface=AdapterModelInterface(...))`).
"""

from dataclasses import dataclass, field, replace

from torch import nn

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Site:
    """One place where bottleneck adapters act: `residual + sublayer(x)`, optionally followed by a norm.

    Attributes:
        sublayer: module whose output (or first output) is the sublayer result `h`.
        residual: module whose first input is the residual stream `r` at this point; None when the site has no
            residual (AdapterHub's plugin interface without `layer_pre_ffn`, e.g. Phi's FFN).
        norm: post-norm module applied to `h + r` (post-LN models); None for pre-LN models. With `hooked`, the
            norm the adapter's pre-processing applies to `h + r` (AdapterHub's `layer_ln_1`/`layer_ln_2`).
        host: module that holds the adapter weights (`<host>.adapters.<name>`); created when missing.
        hooked: AdapterHub's layer-hooked mode (its plugin interface): the adapter's output replaces the
            sublayer's output and the layer itself then adds the residual and applies its own norms (Gemma 2's
            post-norm acts on the adapted output), so adapters never add the residual or norm after themselves.
        residual_plus: module whose (first) output is added to `residual`'s input to give `r`: in parallel blocks
            (GPT-J, GPT-NeoX) attention and FFN read the same input, and the FFN adapter reads the stream after
            attention (its adapted output), as AdapterHub's GPT-J does.
    """

    sublayer: str
    residual: str | None
    norm: str | None
    host: str
    hooked: bool = False
    residual_plus: str | None = None


ALL_METHODS = frozenset({"bottleneck", "invertible", "lora", "prefix_tuning", "prompt_tuning", "reft"})
DECODER_METHODS = ALL_METHODS - {"prompt_tuning"}  # AdapterHub has no prompt tuning for decoders


@dataclass(frozen=True)
class ArchSpec:
    """Where adapters go in one family of transformers models, and the facts the methods need about it.

    Attributes:
        layers: the layer stack (a ModuleList), relative to the base model.
        attention_site, output_site: the residual connections bottleneck adapters rewrite.
        attention: the self-attention module whose attention function prefix tuning extends.
        lora: AdapterHub's LoRA places: "q", "k", "v" (or "qkv" for a fused projection), "intermediate", "output".
        embeddings: module whose output is the token embedding stream (invertible adapters, prompts).
        layer_output: module, relative to a layer, whose output (or first output) is the layer's output hidden
            states, where ReFT intervenes ("": the layer itself). ReFT's weights always sit on the layer
            (`<layer>.reft_layer.refts.<name>`, AdapterHub's keys).
        attention_output: the attention's output projection (a LoRA-able Linear for PEFT targets).
        methods: the adapter methods that apply; adding any other raises UnsupportedModelError.
        pooling: how a classification head reads a sequence: "first" token (encoders), "last" non-pad (decoders).
        prefix_key: the key prefix tuning stores its prefixes under (AdapterHub's file layout).
        text_config: attribute of the model config that holds the text model's config ("" when it is the config).
        qkv_layout: how a fused q|k|v projection (`lora["qkv"]`) orders its outputs: "blocks" (all q, then all k,
            then all v, sized by the query and key/value head counts: GPT-2, Phi-3) or "heads" (q, k, v of head 0,
            then of head 1, ...: GPT-NeoX). LoRA's `attn_matrices` select these parts.
        invertible_unscaled: invertible adapters act on the token embeddings before the embedding module's own
            `embed_scale` (Gemma 2: the `adapters` library ran on transformers 4, which scaled after the embedding
            module; transformers 5 scales inside it), so AdapterHub's files give AdapterHub's outputs.
    """

    layers: str
    attention_site: Site
    output_site: Site
    attention: str
    lora: dict[str, str]
    embeddings: str
    attention_output: str | None = None
    layer_output: str = ""
    methods: frozenset = field(default=ALL_METHODS)
    pooling: str = "first"
    prefix_key: str = "self_prefix"
    text_config: str = ""
    qkv_layout: str = "blocks"
    invertible_unscaled: bool = False

    def model_config(self, config):
        """The config of the text model (itself, unless the spec names a sub-config)."""
        return getattr(config, self.text_config) if self.text_config else config

    def attention_shape(self, config) -> tuple[int, int]:
        """(key/value heads, head dim): grouped-query attention and explicit `head_dim` (Qwen3, Gemma) included."""
        config = self.model_config(config)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return kv_heads, head_dim


_BERT = ArchSpec(
    layers="encoder.layer",
    attention_site=Site("attention.output.dropout", "attention", "attention.output.LayerNorm", "attention.output"),
    output_site=Site("output.dropout", "intermediate", "output.LayerNorm", "output"),
    attention="attention.self",
    lora={
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
    },
    embeddings="embeddings",
    attention_output="attention.output.dense",
    layer_output="",  # BertLayer returns the layer's hidden states
)

_DISTILBERT = ArchSpec(
    layers="transformer.layer",
    attention_site=Site("attention", "attention", "sa_layer_norm", "attention_adapters"),
    output_site=Site("ffn", "ffn", "output_layer_norm", "output_adapters"),
    attention="attention",
    lora={
        "q": "attention.q_lin",
        "k": "attention.k_lin",
        "v": "attention.v_lin",
        "intermediate": "ffn.lin1",
        "output": "ffn.lin2",
    },
    embeddings="embeddings",
    attention_output="attention.out_lin",
    layer_output="",  # the layer returns its hidden states
    prefix_key="self",
)

_GPT2 = ArchSpec(
    layers="h",
    attention_site=Site("attn", "ln_1", None, "attention_adapters"),
    output_site=Site("mlp", "ln_2", None, "output_adapters"),
    attention="attn",
    lora={"qkv": "attn.c_attn", "intermediate": "mlp.c_fc", "output": "mlp.c_proj"},
    embeddings="drop",
    attention_output="attn.c_proj",
    layer_output="",  # the layer returns its hidden states
    methods=DECODER_METHODS,
    pooling="last",
)

_LLAMA = ArchSpec(
    layers="layers",
    attention_site=Site("self_attn", "input_layernorm", None, "attention_adapters"),
    output_site=Site("mlp", "post_attention_layernorm", None, "output_adapters"),
    attention="self_attn",
    lora={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "intermediate": "mlp.down_proj",  # sic: AdapterHub's Llama/Mistral mapping (file compatibility)
        "output": "mlp.up_proj",
    },
    embeddings="embed_tokens",
    attention_output="self_attn.o_proj",
    layer_output="",  # the layer returns its hidden states
    methods=DECODER_METHODS,
    pooling="last",
)

# Qwen2 (AdapterHub's plugin interface) maps the FFN LoRA the natural way round.
_QWEN2 = replace(_LLAMA, lora={**_LLAMA.lora, "intermediate": "mlp.up_proj", "output": "mlp.down_proj"})

# --- current decoders (issue 12, item 4) ----------------------------------------------------------------------
# Llama 3.x (rope scaling "llama3") and SmolLM (tied embeddings) are model type "llama"; Qwen3 (q/k norms, explicit
# head_dim) is Qwen2's layout, with AdapterHub's plugin-interface LoRA places. Key/value heads and head dim come from
# the config (`ArchSpec.attention_shape`), so prefixes have one key/value per key/value head everywhere.

# GPT-J (AdapterHub's GPTJAdapterModel): attention and FFN both read ln_1(x) and the block adds both outputs to x.
# The FFN adapter reads the stream after attention, x + (adapted) attention output, as AdapterHub's GPT-J does.
_GPTJ = ArchSpec(
    layers="h",
    attention_site=Site("attn", "ln_1", None, "attention_adapters"),
    output_site=Site("mlp", "ln_1", None, "output_adapters", residual_plus="attn"),
    attention="attn",
    lora={
        "q": "attn.q_proj",
        "k": "attn.k_proj",
        "v": "attn.v_proj",
        "intermediate": "mlp.fc_in",
        "output": "mlp.fc_out",
    },
    embeddings="drop",
    attention_output="attn.out_proj",
    methods=DECODER_METHODS,
    pooling="last",
)

# GPT-NeoX (no AdapterHub support; GPT-J's placement): with `use_parallel_residual` (the default) attention and FFN
# read the layer input, without it the FFN reads input + attention; either way the FFN adapter's residual is the
# layer input plus the attention output. Sites sit on the dropouts so the adapters see what the layer adds. The fused
# `query_key_value` holds q, k, v per head.
_GPT_NEOX = ArchSpec(
    layers="layers",
    attention_site=Site("post_attention_dropout", "input_layernorm", None, "attention_adapters"),
    output_site=Site(
        "post_mlp_dropout", "input_layernorm", None, "output_adapters", residual_plus="post_attention_dropout"
    ),
    attention="attention",
    lora={"qkv": "attention.query_key_value", "intermediate": "mlp.dense_h_to_4h", "output": "mlp.dense_4h_to_h"},
    embeddings="emb_dropout",
    attention_output="attention.dense",
    methods=DECODER_METHODS,
    pooling="last",
    qkv_layout="heads",
)

# Gemma 2 and Gemma 3 text (AdapterHub's plugin interface, file- and output-compatible): sandwich norms, so the
# adapters are hooked on o_proj/down_proj, before the post-norms; their pre-processing normalises `h + r` with the
# post-norm, as the `adapters` library does (`layer_ln_1`/`layer_ln_2`).
_GEMMA2 = ArchSpec(
    layers="layers",
    attention_site=Site(
        "self_attn.o_proj", "input_layernorm", "post_attention_layernorm", "attention_adapters", hooked=True
    ),
    output_site=Site(
        "mlp.down_proj", "pre_feedforward_layernorm", "post_feedforward_layernorm", "output_adapters", hooked=True
    ),
    attention="self_attn",
    lora=_QWEN2.lora,
    embeddings="embed_tokens",
    attention_output="self_attn.o_proj",
    methods=DECODER_METHODS,
    pooling="last",
)

# Phi (AdapterHub's plugin interface): attention and FFN read input_layernorm(x); the attention adapter is hooked on
# `dense` with residual x, the FFN adapter on `fc2` with no residual (the interface names no `layer_pre_ffn`), so a
# parallel adapter there has nothing to read and is refused.
_PHI = ArchSpec(
    layers="layers",
    attention_site=Site("self_attn.dense", "input_layernorm", None, "attention_adapters", hooked=True),
    output_site=Site("mlp.fc2", None, None, "output_adapters", hooked=True),
    attention="self_attn",
    lora={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "intermediate": "mlp.fc1",
        "output": "mlp.fc2",
    },
    embeddings="embed_tokens",
    attention_output="self_attn.dense",
    methods=DECODER_METHODS,
    pooling="last",
)

# Phi-3 (no AdapterHub support): Llama's layout with fused `qkv_proj` (q, k, v blocks; GQA sizes) and `gate_up_proj`
# (LoRA adapts it whole, as PEFT does). Sites sit on the residual dropouts, which see what the layer adds.
_PHI3 = ArchSpec(
    layers="layers",
    attention_site=Site("resid_attn_dropout", "input_layernorm", None, "attention_adapters"),
    output_site=Site("resid_mlp_dropout", "post_attention_layernorm", None, "output_adapters"),
    attention="self_attn",
    lora={"qkv": "self_attn.qkv_proj", "intermediate": "mlp.gate_up_proj", "output": "mlp.down_proj"},
    embeddings="embed_tokens",
    attention_output="self_attn.o_proj",
    methods=DECODER_METHODS,
    pooling="last",
)

# OLMo 2 (no AdapterHub support): no pre-norms, a post-norm on each sublayer's output (`r + norm(f(r))`). The
# adapters act on what the residual adds, the normalised branch, exactly as on Llama's `r + f(norm(r))`.
_OLMO2 = replace(
    _QWEN2,
    attention_site=Site("post_attention_layernorm", "self_attn", None, "attention_adapters"),
    output_site=Site("post_feedforward_layernorm", "mlp", None, "output_adapters"),
)

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _QWEN2,
    # current decoders
    "gptj": _GPTJ,
    "gpt_neox": _GPT_NEOX,
    "gemma": _QWEN2,  # Llama's layout; no AdapterHub support: LoRA places as Gemma 2's plugin interface
    "gemma2": replace(_GEMMA2, invertible_unscaled=True),
    "gemma3_text": _GEMMA2,
    "phi": _PHI,
    "phi3": _PHI3,
    "qwen3": _QWEN2,
    "olmo2": _OLMO2,
}


def spec_from_interface(interface, pooling: str = "first") -> ArchSpec:
    """An `ArchSpec` from AdapterHub's `AdapterModelInterface` fields (a model family we do not ship).

    Bottleneck adapters are hooked on the attention output projection and the FFN output projection, as in
    AdapterHub's plugin interface: their output replaces the projection's, the residual is the input of
    `layer_pre_self_attn`/`layer_pre_ffn` (none when not given) and `layer_ln_1`/`layer_ln_2` are the norms the
    adapters' pre-processing applies to `h + r`.
    """
    attn = interface.layer_self_attn
    o_proj = f"{attn}.{interface.attn_o_proj}" if interface.attn_o_proj else attn
    if interface.attn_qkv_proj:
        lora = {"qkv": f"{attn}.{interface.attn_qkv_proj}"}
    else:
        lora = {m: f"{attn}.{getattr(interface, f'attn_{m}_proj')}" for m in "qkv"}
    lora.update(intermediate=interface.layer_intermediate_proj, output=interface.layer_output_proj)
    return ArchSpec(
        layers=interface.model_layers,
        attention_site=Site(
            o_proj, interface.layer_pre_self_attn, interface.layer_ln_1, "attention_adapters", hooked=True
        ),
        output_site=Site(
            interface.layer_output_proj, interface.layer_pre_ffn, interface.layer_ln_2, "output_adapters", hooked=True
        ),
        attention=attn,
        lora=lora,
        embeddings=interface.model_embeddings,
        attention_output=o_proj,
        methods=frozenset(interface.adapter_methods) & ALL_METHODS,
        pooling=pooling,
    )


def arch_for(config) -> ArchSpec:
    """Return the spec for a transformers config, or raise a clear error for unsupported model types."""
    model_type = getattr(config, "model_type", None)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by the adapter engine (supported: {supported})"
        ) from None


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Return the submodule at a dotted path ("" is the root)."""
    return root.get_submodule(path) if path else root


def ensure_host(layer: nn.Module, path: str) -> tuple[nn.Module, bool]:
    """The module at `path`, creating an empty container there if needed; and whether it was created."""
    parent_path, _, name = path.rpartition(".")
    parent = get_module(layer, parent_path)
    if hasattr(parent, name):
        return getattr(parent, name), False
    parent.add_module(name, nn.Module())
    return getattr(parent, name), True


def remove_host(layer: nn.Module, path: str) -> None:
    """Remove a container module that `ensure_host` created."""
    parent_path, _, name = path.rpartition(".")
    delattr(get_module(layer, parent_path), name)
