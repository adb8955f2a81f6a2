"""Architectures described as data: everything the engine knows about a model family, in one spec.

Paths are dotted module paths. `layers` and `embeddings` are relative to the base model (e.g. `BertModel`); every
other path is relative to one transformer layer. No modeling code is copied: the methods attach hooks at these
places and check the spec when an adapter is added, so a new architecture is one entry in `ARCHITECTURES` (or,
for a model we do not ship, `workbench.init(model, interface=AdapterModelInterface(...))`).
"""

from dataclasses import dataclass, field, fields, replace

from torch import nn

from .errors import UnsupportedModelError


@dataclass(frozen=True)
class Site:
    """One place where bottleneck adapters act: `residual + sublayer(x)`, optionally followed by a norm.

    Attributes:
        sublayer: module whose output (or first output) is the sublayer result `h`.
        residual: module whose first input is the residual stream `r` at this point.
        norm: post-norm module applied to `h + r` (post-LN models); None for pre-LN models.
        host: module that holds the adapter weights (`<host>.adapters.<name>`); created when missing.
    """

    sublayer: str
    residual: str
    norm: str | None
    host: str


ALL_METHODS = frozenset({"bottleneck", "invertible", "lora", "prefix_tuning", "prompt_tuning", "reft"})
DECODER_METHODS = ALL_METHODS - {"prompt_tuning"}  # AdapterHub has no prompt tuning for decoders


@dataclass(frozen=True, kw_only=True)
class LayerStack:
    """One stack of identical layers, and where adapters go inside each of its layers.

    Attributes:
        layers: the layer list (a ModuleList), relative to the base model.
        attention_site, output_site: the residual connections bottleneck adapters rewrite ("mh_adapter",
            "output_adapter").
        attention: the self-attention module whose attention function prefix tuning extends.
        lora: AdapterHub's LoRA places: "q", "k", "v" (or "qkv" for a fused projection), "intermediate", "output".
        attention_output: the attention's output projection (a LoRA-able Linear for PEFT targets).
        layer_output: module, relative to a layer, whose output (or first output) is the layer's output hidden
            states, where ReFT intervenes ("": the layer itself). ReFT's weights always sit on the layer
            (`<layer>.reft_layer.refts.<name>`, AdapterHub's keys).
        prefix_key: the key prefix tuning stores this stack's self-attention prefixes under (AdapterHub's layout:
            "self_prefix", or "encoder_prefix" for the encoder of an encoder-decoder model).
        cross_site: the residual connection after cross-attention ("cross_adapter"; decoder layers only).
        cross_attention: the cross-attention module (prefix tuning's "cross_prefix").
        cross_lora: LoRA places "q", "k", "v" of the cross-attention (AdapterHub's "selfattn" LoRA covers them).
        cross_site_flag: the bottleneck config flag that puts adapters at `cross_site`: "cross_adapter" (BART-like
            layers), or "mh_adapter" where AdapterHub treats the cross-attention output like the self-attention's
            (BERT-style decoder layers).
        config: attribute of the model config that holds this stack's config ("" when it is the config itself).
        submodel: for a model made of separately adapted models (transformers' `EncoderDecoderModel`), the path of
            the sub-model this stack belongs to. AdapterHub adapts each sub-model on its own, so the stack's layer
            ids start at 0 (`leave_out=[0]` means the first layer of each sub-model) and prefix tuning keeps a pool
            per sub-model (`<submodel>.prefix_tuning`). None: layers are numbered across the stacks.
    """

    layers: str
    attention_site: Site
    output_site: Site
    attention: str
    lora: dict[str, str]
    attention_output: str | None = None
    layer_output: str = ""
    prefix_key: str = "self_prefix"
    cross_site: Site | None = None
    cross_attention: str | None = None
    cross_lora: dict[str, str] = field(default_factory=dict)
    cross_site_flag: str = "cross_adapter"
    config: str = ""
    submodel: str | None = None

    def stack_config(self, config):
        """This stack's config: the model config itself, unless the stack names a sub-config."""
        return getattr(config, self.config) if self.config else config

    def attention_shape(self, config) -> tuple[int, int]:
        """(key/value heads, head dim): grouped-query attention and explicit `head_dim` (Qwen3, Gemma) included."""
        config = self.stack_config(config)
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or config.hidden_size // heads
        return kv_heads, head_dim


@dataclass(frozen=True, kw_only=True)
class ArchSpec(LayerStack):
    """Where adapters go in one family of transformers models, and the facts the methods need about it.

    The spec describes its first (usually only) layer stack itself; models with more stacks (the decoder of an
    encoder-decoder model, CLIP's second tower) list them in `more_stacks`. Layers are numbered across the stacks
    in order, as AdapterHub does (a BART decoder's first layer is layer `encoder_layers`), so `leave_out` and the
    per-layer keys match its files.

    Attributes:
        embeddings: module whose output is the token embedding stream (invertible adapters, prompts).
        methods: the adapter methods that apply; adding any other raises UnsupportedModelError.
        pooling: how a classification head reads a sequence: "first" token (encoders), "last" non-pad (decoders),
            "eos" (the last `<eos>` of encoder-decoder models).
        more_stacks: the layer stacks after the first one.
        encoder: the encoder module of an encoder-decoder model ("" for others). `generate()` calls it on its own,
            so a call into it starts a forward pass of the engine just as a call into the whole model does.
    """

    embeddings: str
    methods: frozenset = field(default=ALL_METHODS)
    pooling: str = "first"
    more_stacks: tuple[LayerStack, ...] = ()
    encoder: str = ""

    @property
    def stacks(self) -> tuple[LayerStack, ...]:
        return (self, *self.more_stacks)

    def model_config(self, config):
        """The config of the (first stack's) text model."""
        return self.stack_config(config)


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

# A BERT-style layer built with `add_cross_attention` (the decoder of an `EncoderDecoderModel`): AdapterHub adapts its
# `crossattention` like the self-attention: "mh_adapter" bottlenecks on its output, "selfattn" LoRA on its
# query/key/value, a "cross_prefix".
_BERT_CROSS = dict(
    cross_site=Site(
        "crossattention.output.dropout", "crossattention", "crossattention.output.LayerNorm", "crossattention.output"
    ),
    cross_attention="crossattention.self",
    cross_lora={"q": "crossattention.self.query", "k": "crossattention.self.key", "v": "crossattention.self.value"},
    cross_site_flag="mh_adapter",
)

# Qwen2 (AdapterHub's plugin interface) maps the FFN LoRA the natural way round.
_QWEN2 = replace(_LLAMA, lora={**_LLAMA.lora, "intermediate": "mlp.up_proj", "output": "mlp.down_proj"})

# --- encoder-decoder models ----------------------------------------------------------------------------------
# Layers are numbered encoder first, then decoder (AdapterHub's ids). Decoder layers add a "cross_adapter" site
# after cross-attention (used when a bottleneck config sets `cross_adapter=True`), a "cross_prefix" on the
# cross-attention and LoRA on its q/k/v (AdapterHub's "selfattn" LoRA wraps every attention's q/k/v).

_BART_ATTENTION_LORA = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj"}
_BART_CROSS_LORA = {"q": "encoder_attn.q_proj", "k": "encoder_attn.k_proj", "v": "encoder_attn.v_proj"}
_ENCODER_DECODER_METHODS = ALL_METHODS - {"prompt_tuning"}  # AdapterHub: no prompt tuning for these models


def _bart_like(pre_norm: bool, embeddings: str = "encoder.layernorm_embedding") -> ArchSpec:
    """BART, PLBart (post-LN) and mBART (pre-LN): the same module names in encoder and decoder layers."""

    def site(sublayer: str, norm: str, host: str, before: str) -> Site:
        # pre-LN: the residual stream is the input of the norm before the sublayer; post-LN: of the sublayer
        return Site(sublayer, norm if pre_norm else before, None if pre_norm else norm, host)

    layer = dict(
        attention_site=site("self_attn", "self_attn_layer_norm", "attention_adapters", "self_attn"),
        output_site=site("fc2", "final_layer_norm", "output_adapters", "fc1"),
        attention="self_attn",
        attention_output="self_attn.out_proj",
        lora={**_BART_ATTENTION_LORA, "intermediate": "fc1", "output": "fc2"},
    )
    decoder = LayerStack(
        layers="decoder.layers",
        cross_site=site("encoder_attn", "encoder_attn_layer_norm", "cross_attention_adapters", "encoder_attn"),
        cross_attention="encoder_attn",
        cross_lora=_BART_CROSS_LORA,
        **layer,
    )
    return ArchSpec(
        layers="encoder.layers",
        prefix_key="encoder_prefix",
        embeddings=embeddings,
        methods=_ENCODER_DECODER_METHODS,
        pooling="eos",
        more_stacks=(decoder,),
        encoder="encoder",
        **layer,
    )


_BART = _bart_like(pre_norm=False)
_MBART = _bart_like(pre_norm=True)
# Whisper: mBART's layer layout behind a convolutional audio front end. It has no token embeddings in the encoder:
# AdapterHub hooks invertible adapters on the encoder's final `layer_norm` (after its layers) and has no prompts.
_WHISPER = _bart_like(pre_norm=True, embeddings="encoder.layer_norm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _QWEN2,
    "bart": _BART,
    "plbart": _BART,
    "mbart": _MBART,
    "whisper": _WHISPER,
}

# The cross-attention of a family's layers when its config sets `add_cross_attention` (model type -> LayerStack
# fields); `arch_for` adds them to the family's spec.
CROSS_ATTENTION: dict[str, dict] = {"bert": _BERT_CROSS, "roberta": _BERT_CROSS, "xlm-roberta": _BERT_CROSS}


def spec_from_interface(interface, pooling: str = "first") -> ArchSpec:
    """An `ArchSpec` from AdapterHub's `AdapterModelInterface` fields (a model family we do not ship).

    Bottleneck adapters rewrite the attention output projection and the FFN output projection; the residual is
    read at `layer_pre_self_attn`/`layer_pre_ffn` (pre-LN models) or at the block's input, and `layer_ln_1`/
    `layer_ln_2` are the post-norms of post-LN models.
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
        attention_site=Site(o_proj, interface.layer_pre_self_attn or attn, interface.layer_ln_1, "attention_adapters"),
        output_site=Site(
            interface.layer_output_proj,
            interface.layer_pre_ffn or interface.layer_intermediate_proj,
            interface.layer_ln_2,
            "output_adapters",
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
        spec = ARCHITECTURES[model_type]
    except KeyError:
        supported = ", ".join(sorted([*ARCHITECTURES, *COMPOSED]))
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by the adapter engine (supported: {supported})"
        ) from None
    if getattr(config, "add_cross_attention", False) and model_type in CROSS_ATTENTION:
        spec = replace(spec, **CROSS_ATTENTION[model_type])
    return spec


def spec_for(model: nn.Module) -> ArchSpec:
    """The spec of a model instance: its family's, or one composed from its sub-models' specs (`COMPOSED`)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in COMPOSED:
        return COMPOSED[model_type](model)
    return arch_for(model.config)


def _stack_of(spec: ArchSpec) -> LayerStack:
    """The spec's own (first) layer stack, without the model-wide fields."""
    return LayerStack(**{f.name: getattr(spec, f.name) for f in fields(LayerStack)})


def _base_path(model: nn.Module, path: str) -> str:
    """The path of the base model inside the sub-model at `path` (`decoder.bert` for a `BertLMHeadModel`)."""
    sub = get_module(model, path)
    base = getattr(sub, "base_model", sub)
    return path if base is sub else f"{path}.{sub.base_model_prefix}"


def _encoder_decoder(model: nn.Module) -> ArchSpec:
    """transformers' `EncoderDecoderModel`: the encoder family's spec and the decoder family's (with its
    cross-attention), each under its sub-model's path; AdapterHub's keys follow (`encoder.encoder.layer.0...`,
    `decoder.bert.encoder.layer.0.crossattention...`). Any pair of families with specs works."""
    config = model.config
    encoder, decoder = arch_for(config.encoder), arch_for(config.decoder)
    for role, spec, sub in (("encoder", encoder, config.encoder), ("decoder", decoder, config.decoder)):
        if spec.more_stacks:
            raise UnsupportedModelError(
                f"EncoderDecoderModel: a {sub.model_type!r} {role} has several layer stacks; use one-stack models"
            )
    if getattr(config.decoder, "add_cross_attention", False) and decoder.cross_attention is None:
        raise UnsupportedModelError(
            f"EncoderDecoderModel: the cross-attention of a {config.decoder.model_type!r} decoder is not described "
            f"(archs.CROSS_ATTENTION has: {', '.join(sorted(CROSS_ATTENTION))})"
        )
    enc_path, dec_path = _base_path(model, "encoder"), _base_path(model, "decoder")
    decoder_stack = replace(
        _stack_of(decoder), layers=f"{dec_path}.{decoder.layers}", config="decoder", submodel=dec_path
    )
    return replace(
        encoder,
        layers=f"{enc_path}.{encoder.layers}",
        config="encoder",
        submodel=enc_path,
        embeddings=f"{enc_path}.{encoder.embeddings}",
        methods=(encoder.methods & decoder.methods) - {"prompt_tuning"},  # AdapterHub: no prompt tuning here
        pooling="eos",
        more_stacks=(decoder_stack,),
        encoder="encoder",
    )


# Model types whose spec is composed per instance from the specs of their sub-models.
COMPOSED = {"encoder-decoder": _encoder_decoder}


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
