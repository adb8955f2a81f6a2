"""Architectures described as data: everything the engine knows about a model family, in one spec.

Paths are dotted module paths. `layers` and `embeddings` are relative to the base model (e.g. `BertModel`); every
other path is relative to one transformer layer. No modeling code is copied: the methods attach hooks at these
places and check the spec when an adapter is added, so a new architecture is one entry in `ARCHITECTURES` (or,
for a model we do not ship, `workbench.init(model, interface=AdapterModelInterface(...))`).
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace

from torch import nn

from .errors import UnsupportedModelError
from .family_setup import check_albert, prepare_xmod
from .methods.prefix_deberta import deberta_prefix, deberta_v2_prefix


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
        norm_layer: read `norm` in this layer of the model instead of the site's own: AdapterHub's plugin-interface
            hooks look the norm up late (a lambda over the loop's `layer`), so every layer uses the LAST layer's
            (-1); adapters trained there expect it.
        swapped: the adapters get the residual stream as their input and the sublayer output as the residual
            (AdapterHub's ALBERT calls its attention adapters with the arguments in that order).
    """

    sublayer: str
    residual: str | None
    norm: str | None
    host: str
    hooked: bool = False
    residual_plus: str | None = None
    norm_layer: int | None = None
    swapped: bool = False


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
        whole_rows: the stack's sequence is not the token sequence of the call (CLIP's vision tower in a call with
            text and images): ReFT takes every row whole instead of reading its positions from the attention mask.
        qkv_layout: how a fused q|k|v projection (`lora["qkv"]`) orders its outputs: "blocks" (all q, then all k,
            then all v, sized by the query and key/value head counts: GPT-2, Phi-3) or "heads" (q, k, v of head 0,
            then of head 1, ...: GPT-NeoX). LoRA's `attn_matrices` select these parts.
        position_bias: the self-attention, relative to the stack's FIRST layer, whose `compute_bias` makes the
            relative position bias that every self-attention of the stack shares (T5). Prefix tuning recomputes it
            over the prefixed keys, as AdapterHub does ("": no such bias).
        submodel: for a model made of separately adapted models (transformers' `EncoderDecoderModel`), the path of
            the sub-model this stack belongs to. AdapterHub adapts each sub-model on its own, so the stack's layer
            ids start at 0 (`leave_out=[0]` means the first layer of each sub-model) and prefix tuning keeps a pool
            per sub-model (`<submodel>.prefix_tuning`). None: layers are numbered across the stacks.
        prefix_glue: for a self-attention that computes its scores itself instead of through transformers'
            attention functions (DeBERTa), a callable `(shim, attention) -> hooks` that carries the prefix tuning
            shim's prefixes into it with hooks (`methods/prefix_deberta.py`); the returned object's `remove()` takes
            them off. None: prefix tuning extends the attention function.
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
    whole_rows: bool = False
    qkv_layout: str = "blocks"
    position_bias: str = ""
    submodel: str | None = None
    prefix_glue: Callable | None = None

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
            "eos" (the last `<eos>` of encoder-decoder models), "pooler": the base model's pooler output (BEiT).
        more_stacks: the layer stacks after the first one.
        encoder: the encoder module of an encoder-decoder model ("" for others). `generate()` calls it on its own,
            so a call into it starts a forward pass of the engine just as a call into the whole model does.
        entries: further modules a caller may run on their own (CLIP's `get_image_features` runs the vision tower
            alone): like a call into `encoder`, a call into one outside a whole-model call starts a forward pass.
        file_keys: (our module path, AdapterHub's) pairs for families whose transformers 5 modules are named
            differently from the transformers 4 ones AdapterHub's files were written with (ViT's `layers` were
            `encoder.layer`): adapter files are written and read with AdapterHub's names (`keys.to_file_keys`). A
            path starting with "^" is the root model's own, renamed only when the base model is used on its own.
        refuse_if: (method, config attribute, reason) triples: the method is refused on a model whose config sets
            that attribute (e.g. BEiT's relative position bias has no entries for prompt tokens).
        parallel: whether `Parallel` setups apply. CLIPModel says no: its contrastive logits would pair every
            channel's images with every channel's texts (AdapterHub refuses Parallel on CLIP too).
        invertible_unscaled: invertible adapters act on the token embeddings before the embedding module's own
            `embed_scale` (Gemma 2: the `adapters` library ran on transformers 4, which scaled after the embedding
            module; transformers 5 scales inside it), so AdapterHub's files give AdapterHub's outputs.
        embeddings_input: the embedding stream is the first *input* of `embeddings`, not its output (T5: the
            encoder's first block; its embedding module is shared with the decoder, and its dropout module also
            runs after the last block).
        variant: the spec for one config, when a family's layout depends on its config (T5's gated FFN has
            `wi_0`/`wi_1` instead of `wi`); `arch_for` applies it.
        lm_tying: whether an LM head shares the input embeddings: "config" (`config.tie_word_embeddings`); "t5"
            (T5 checkpoints' own flag, which transformers 5 keeps as `config.scale_decoder_outputs` while forcing
            `tie_word_embeddings`; a tied T5 also scales the decoder output by d_model**-0.5 before its heads, as
            AdapterHub's T5AdapterModel does); "never" (mT5, whose checkpoints have their own `lm_head`).
        decoder_start: the config attribute holding the token decoder inputs start with (T5: "pad_token_id").
        prepare: called with the base model when the engine attaches to it: refuses configurations the spec cannot
            describe (UnsupportedModelError) before changing anything, then makes AdapterHub's own changes to the
            model (X-MOD's language adapters; `family_setup.py`).
        prompt_mask: module (relative to the base model) whose 2-D `attention_mask` argument prompt tuning widens
            into the attention matrix itself, instead of widening the model's input mask ("": the input mask).
            DeBERTa's embeddings read the input mask too (so it must keep the token count) and its encoder builds a
            `(T, T)` matrix from it: prompt rows and columns attend everywhere there, as in AdapterHub.
    """

    embeddings: str
    methods: frozenset = field(default=ALL_METHODS)
    pooling: str = "first"
    more_stacks: tuple[LayerStack, ...] = ()
    encoder: str = ""
    entries: tuple[str, ...] = ()
    file_keys: tuple[tuple[str, str], ...] = ()
    refuse_if: tuple[tuple[str, str, str], ...] = ()
    invertible_unscaled: bool = False
    parallel: bool = True
    embeddings_input: bool = False
    variant: Callable[[object], "ArchSpec"] | None = None
    lm_tying: str = "config"
    decoder_start: str = "decoder_start_token_id"
    prepare: Callable[[nn.Module], None] | None = None
    prompt_mask: str = ""

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

# A BERT-style layer built with `add_cross_attention` (the decoder of an `EncoderDecoderModel`): AdapterHub adapts its
# `crossattention` like the self-attention: "mh_adapter" bottlenecks on its output, "selfattn" LoRA on its
# query/key/value, a "cross_prefix". The BERT-shaped families get this spec for such configs (their `variant`).
_BERT_CROSS = replace(
    _BERT,
    cross_site=Site(
        "crossattention.output.dropout", "crossattention", "crossattention.output.LayerNorm", "crossattention.output"
    ),
    cross_attention="crossattention.self",
    cross_lora={"q": "crossattention.self.query", "k": "crossattention.self.key", "v": "crossattention.self.value"},
    cross_site_flag="mh_adapter",
)
_BERT_FAMILY = replace(
    _BERT, variant=lambda config: _BERT_CROSS if getattr(config, "add_cross_attention", False) else _BERT
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

# --- vision transformers (inputs: pixel_values) -------------------------------------------------------------------
# transformers 5 renamed ViT's modules (`encoder.layer.N.attention.attention.query` is now `layers.N.attention.q_proj`,
# `intermediate.dense`/`output.dense` are `mlp.fc1`/`mlp.fc2`); AdapterHub's files keep the old names. The layer
# applies one `dropout` (ViT) or `drop_path` (BEiT, after the layer scale) to both sublayer outputs, so both
# sites hook that module: each site acts only between its own residual capture and that module's next call.
# Invertible adapters transform token embeddings (and invert before an LM head): no place in a vision model, and
# AdapterHub refuses them on ViT and BEiT too.
VISION_METHODS = ALL_METHODS - {"invertible"}
_VIT_FILE_KEYS = (
    ("layers", "encoder.layer"),
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.prefix_tuning", "attention.attention.prefix_tuning"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
)

_VIT = ArchSpec(
    layers="layers",
    attention_site=Site("dropout", "layernorm_before", None, "attention_adapters"),
    output_site=Site("dropout", "layernorm_after", None, "output_adapters"),
    attention="attention",
    lora={
        "q": "attention.q_proj",
        "k": "attention.k_proj",
        "v": "attention.v_proj",
        "intermediate": "mlp.fc1",
        "output": "mlp.fc2",
    },
    embeddings="embeddings",
    attention_output="attention.o_proj",
    layer_output="",  # the layer returns its hidden states
    methods=VISION_METHODS,
    file_keys=(*_VIT_FILE_KEYS, ("output_adapters", "output.output_adapters")),  # AdapterHub: in ViTOutput
)

_NO_PROMPT_WITH_BIAS = (
    "BEiT's relative position bias covers the patch grid and [CLS] only; prompt tokens in front of [CLS] have no "
    "entry in it (the adapters library fails on this too)"
)
_BEIT = replace(
    _VIT,
    attention_site=Site("drop_path", "layernorm_before", None, "attention_adapters"),
    output_site=Site("drop_path", "layernorm_after", None, "output_adapters"),
    file_keys=_VIT_FILE_KEYS,
    pooling="pooler",  # AdapterHub's BEiT heads read the pooler output (mean of the patch tokens, normed)
    refuse_if=(
        ("prompt_tuning", "use_relative_position_bias", _NO_PROMPT_WITH_BIAS),
        ("prompt_tuning", "use_shared_relative_position_bias", _NO_PROMPT_WITH_BIAS),
    ),
)

# --- CLIP: a text tower and a vision tower ------------------------------------------------------------------------
# CLIPModel numbers the text layers first, then the vision layers (AdapterHub's ids); each tower's prefixes have their
# own location key, named after its config's model type. AdapterHub's transformers 4 towers had a
# `text_model`/`vision_model` transformer inside CLIPTextModel/CLIPVisionModel; transformers 5's towers are those
# transformers, so a tower used on its own writes its keys under that name. Invertible adapters act on the text
# embeddings and live on the text tower (`text_model.invertible_adapters`); AdapterHub has no prompt tuning for CLIP.
_CLIP_LAYER = dict(
    attention_site=Site("self_attn", "layer_norm1", None, "attention_adapters"),
    output_site=Site("mlp", "layer_norm2", None, "output_adapters"),
    attention="self_attn",
    lora={
        "q": "self_attn.q_proj",
        "k": "self_attn.k_proj",
        "v": "self_attn.v_proj",
        "intermediate": "mlp.fc1",
        "output": "mlp.fc2",
    },
    attention_output="self_attn.out_proj",
    layer_output="",  # the layer returns its hidden states
)
CLIP_METHODS = ALL_METHODS - {"prompt_tuning"}
_CLIP_TEXT = ArchSpec(
    layers="encoder.layers",
    prefix_key="clip_text_model_self_prefix",
    embeddings="embeddings",
    methods=CLIP_METHODS,
    file_keys=(
        ("^encoder.layers", "text_model.encoder.layers"),
        ("^invertible_adapters", "text_model.invertible_adapters"),
    ),
    **_CLIP_LAYER,
)
_CLIP_VISION = ArchSpec(
    layers="encoder.layers",
    prefix_key="clip_vision_model_self_prefix",
    embeddings="embeddings",
    methods=VISION_METHODS - {"prompt_tuning"},
    file_keys=(("^encoder.layers", "vision_model.encoder.layers"),),
    **_CLIP_LAYER,
)
_CLIP = ArchSpec(
    layers="text_model.encoder.layers",
    config="text_config",
    prefix_key="clip_text_model_self_prefix",
    embeddings="text_model.embeddings",
    methods=CLIP_METHODS,
    more_stacks=(
        LayerStack(
            layers="vision_model.encoder.layers",
            config="vision_config",
            prefix_key="clip_vision_model_self_prefix",
            whole_rows=True,  # the text's mask says nothing about the patches (AdapterHub applies it to them)
            **_CLIP_LAYER,
        ),
    ),
    encoder="text_model",  # holds the invertible adapters; get_text_features runs it alone
    entries=("vision_model",),  # get_image_features runs it alone
    parallel=False,
    **_CLIP_LAYER,
)

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
# post-norm, as the `adapters` library does (`layer_ln_1`/`layer_ln_2`), and, as there, the LAST layer's post-norm.
_GEMMA2 = ArchSpec(
    layers="layers",
    attention_site=Site(
        "self_attn.o_proj",
        "input_layernorm",
        "post_attention_layernorm",
        "attention_adapters",
        hooked=True,
        norm_layer=-1,  # the library's hooks read the norm late: the last layer's for every layer
    ),
    output_site=Site(
        "mlp.down_proj",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
        "output_adapters",
        hooked=True,
        norm_layer=-1,
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


# --- T5 and mT5 (FLAN-T5 is T5) -------------------------------------------------------------------------------
# A T5 block is a list of pre-LN (RMS norm) sublayers `layer.N`: self-attention, cross-attention (decoder only) and
# the FFN, each `x + dropout(f(layer_norm(x)))`. AdapterHub hosts a sublayer's bottleneck adapters on the sublayer
# itself (`layer.N.adapters.<name>`), wraps q/k/v of every attention (EncDecAttention too) with its "selfattn"
# LoRA, and the FFN's `wi` (gated: `wi_1`) and `wo` with its "intermediate" and "output" LoRA. Invertible adapters
# act on the encoder's embedding stream after its dropout, i.e. on the input of the first encoder block.


def _t5_site(sublayer: int) -> Site:
    """Sublayer `layer.N`: `h` is its dropout's output, the residual stream the input of its norm."""
    return Site(f"layer.{sublayer}.dropout", f"layer.{sublayer}.layer_norm", None, f"layer.{sublayer}")


def _t5_like(gated: bool, lm_tying: str) -> ArchSpec:
    attention, cross = "layer.0.SelfAttention", "layer.1.EncDecAttention"
    wi = "wi_1" if gated else "wi"

    def lora(ffn: int) -> dict[str, str]:
        return {
            **{m: f"{attention}.{m}" for m in "qkv"},
            "intermediate": f"layer.{ffn}.DenseReluDense.{wi}",
            "output": f"layer.{ffn}.DenseReluDense.wo",
        }

    layer = dict(
        attention_site=_t5_site(0),
        attention=attention,
        attention_output=f"{attention}.o",
        position_bias=attention,  # the first block's self-attention computes the bias the others reuse
    )
    decoder = LayerStack(
        layers="decoder.block",
        output_site=_t5_site(2),
        lora=lora(2),
        cross_site=_t5_site(1),
        cross_attention=cross,
        cross_lora={m: f"{cross}.{m}" for m in "qkv"},
        **layer,
    )
    return ArchSpec(
        layers="encoder.block",
        output_site=_t5_site(1),
        lora=lora(1),
        prefix_key="encoder_prefix",
        embeddings="encoder.block.0",
        embeddings_input=True,
        methods=_ENCODER_DECODER_METHODS,
        pooling="eos",
        more_stacks=(decoder,),
        encoder="encoder",
        variant=_t5_variant,
        lm_tying=lm_tying,
        decoder_start="pad_token_id",  # T5 starts decoding from padding (transformers 5's T5Config has no start id)
        **layer,
    )


def _t5_variant(config) -> ArchSpec:
    specs = _MT5_SPECS if getattr(config, "model_type", None) == "mt5" else _T5_SPECS
    return specs[bool(getattr(config, "is_gated_act", False))]


_T5_SPECS = {gated: _t5_like(gated, lm_tying="t5") for gated in (False, True)}
_MT5_SPECS = {gated: _t5_like(gated, lm_tying="never") for gated in (False, True)}

# --- more encoders (issue 12, item 2): ALBERT, DeBERTa, DeBERTa-v2/v3, X-MOD, ModernBERT; ELECTRA and BERT-Generation
# are BERT-shaped. Each reproduces AdapterHub's placement and key layout (tests/conformance).

# ALBERT's layers share weights across depth: each layer group (`albert_layer_groups.<g>.albert_layers`) runs again
# and again, and adapters sit on its layers and act on every pass, as in AdapterHub. AdapterHub numbers the layers
# of all groups in one sequence (group 0's first, ...): each group is one layer stack here, so the ids match.
# AdapterHub's ALBERT hands its attention adapters the layer input as their input (`swapped`).
_ALBERT_LAYER = dict(
    attention_site=Site(
        "attention.output_dropout", "attention", "attention.LayerNorm", "attention.attention_adapters", swapped=True
    ),
    output_site=Site("ffn_output", "ffn", "full_layer_layer_norm", "output_adapters"),
    attention="attention",
    lora={
        "q": "attention.query",
        "k": "attention.key",
        "v": "attention.value",
        "intermediate": "ffn",
        "output": "ffn_output",
    },
    attention_output="attention.dense",
)


@functools.cache
def _albert_groups(groups: int) -> ArchSpec:
    group = "encoder.albert_layer_groups.{}.albert_layers".format
    return ArchSpec(
        layers=group(0),
        embeddings="embeddings",
        prepare=check_albert,
        more_stacks=tuple(LayerStack(layers=group(g), **_ALBERT_LAYER) for g in range(1, groups)),
        variant=_albert_variant,
        **_ALBERT_LAYER,
    )


def _albert_variant(config) -> ArchSpec:
    return _albert_groups(max(1, int(getattr(config, "num_hidden_groups", 1))))


_ALBERT = _albert_groups(1)

# DeBERTa's disentangled attention computes its scores itself (no transformers attention function to extend), so
# prefix tuning reaches it through hooks on its projections (`prefix_glue`, as AdapterHub places the prefixes); the
# BERT-shaped sites, LoRA, prompts (with AdapterHub's attention matrix), ReFT and invertible adapters apply as for
# BERT. DeBERTa-v2's convolution (conv_kernel_size) reads the input mask: no prompts there.
_DEBERTA_V2 = replace(
    _BERT,
    lora={
        **_BERT.lora,
        "q": "attention.self.query_proj",
        "k": "attention.self.key_proj",
        "v": "attention.self.value_proj",
    },
    prefix_glue=deberta_v2_prefix,
    prompt_mask="encoder",
    refuse_if=(
        ("prompt_tuning", "conv_kernel_size", "its convolution reads the input mask, which has no prompt positions"),
    ),
)
# DeBERTa (v1) has one fused `in_proj` whose q, k, v parts are interleaved per head (AdapterHub's LoRAMergedLinear
# splits it in thirds all the same: "blocks"), so no DoRA/VeRA on attention there.
_DEBERTA = replace(
    _DEBERTA_V2,
    lora={"qkv": "attention.self.in_proj", "intermediate": "intermediate.dense", "output": "output.dense"},
    prefix_glue=deberta_prefix,
    refuse_if=(),
)

# X-MOD: AdapterHub removes the built-in language adapters and puts its own after the FFN, before the norm the
# language adapter used (`prepare_xmod`); the attention output has no norm of its own (the layer applies it after).
_XMOD = replace(
    _BERT,
    attention_site=Site("attention.output.dropout", "attention", None, "attention.output"),
    prepare=prepare_xmod,
)

# ModernBERT: AdapterHub's plugin interface (`wrappers/interfaces.py`) with its hooked sites: adapters replace
# `attn.Wo`/`mlp.Wo`'s output, read the residual at the input of `attn`/`mlp` (after the pre-norms), and the
# attention adapters pre-normalise with the LAST layer's `mlp_norm` (the interface's `layer_ln_1`, bound late).
# Prefix tuning goes through transformers' attention functions (local and global layers alike); prompts would
# shift the rotary positions and are refused, as in AdapterHub.
_MODERNBERT = ArchSpec(
    layers="layers",
    attention_site=Site("attn.Wo", "attn", "mlp_norm", "attention_adapters", hooked=True, norm_layer=-1),
    output_site=Site("mlp.Wo", "mlp", None, "output_adapters", hooked=True),
    attention="attn",
    lora={"qkv": "attn.Wqkv", "intermediate": "mlp.Wi", "output": "mlp.Wo"},
    embeddings="embeddings",
    attention_output="attn.Wo",
    methods=ALL_METHODS - {"prompt_tuning"},
)

# --- transformers' EncoderDecoderModel: two separately adapted models ------------------------------------------
# The encoder family's spec and the decoder family's (with its cross-attention), each under its sub-model's path;
# AdapterHub's keys follow (`encoder.encoder.layer.0...`, `decoder.bert.encoder.layer.0.crossattention...`). Any
# pair of one-stack families with specs works; the spec is composed per config (`variant`).


def _stack_of(spec: ArchSpec) -> LayerStack:
    """The spec's own (first) layer stack, without the model-wide fields."""
    return LayerStack(**{f.name: getattr(spec, f.name) for f in fields(LayerStack)})


def _decoder_path(config) -> str:
    """Where `EncoderDecoderModel` holds the decoder's base model: `decoder.<prefix>` of the causal-LM class
    transformers builds for the decoder config (`decoder.bert` for a `BertLMHeadModel`)."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    return f"decoder.{cls.base_model_prefix}" if cls is not None else "decoder"


def _compose(encoder: ArchSpec, decoder: ArchSpec, decoder_path: str) -> ArchSpec:
    decoder_stack = replace(
        _stack_of(decoder), layers=f"{decoder_path}.{decoder.layers}", config="decoder", submodel=decoder_path
    )

    def prepare(base: nn.Module) -> None:  # the sub-models' own checks and changes, on the sub-models
        _check_submodel(base, "encoder", "encoder")
        _check_submodel(base, "decoder", decoder_path)
        for spec, path in ((encoder, "encoder"), (decoder, decoder_path)):
            if spec.prepare is not None:
                spec.prepare(get_module(base, path))

    return replace(
        encoder,
        layers=f"encoder.{encoder.layers}",
        config="encoder",
        submodel="encoder",
        embeddings=f"encoder.{encoder.embeddings}",
        methods=(encoder.methods & decoder.methods) - {"prompt_tuning"},  # AdapterHub: no prompt tuning here
        pooling="eos",
        more_stacks=(decoder_stack,),
        encoder="encoder",
        variant=None,
        prepare=prepare,
    )


def _check_submodel(base: nn.Module, role: str, path: str) -> None:
    """Refuse an `EncoderDecoderModel` whose sub-model is not the class transformers builds for its config."""
    try:
        sub = get_module(base, path)
    except AttributeError:
        sub = None
    if sub is None or getattr(sub, "base_model", sub) is not sub:
        found = type(get_module(base, role)).__name__
        raise UnsupportedModelError(
            f"EncoderDecoderModel: expected the {role}'s base model at {path!r}, found a {found} at {role!r} (use "
            "the model classes transformers builds from the configs: AutoModel, AutoModelForCausalLM)"
        )


def _encoder_decoder(config) -> ArchSpec:
    encoder, decoder = arch_for(config.encoder), arch_for(config.decoder)
    for role, spec, sub in (("encoder", encoder, config.encoder), ("decoder", decoder, config.decoder)):
        if spec.more_stacks:
            raise UnsupportedModelError(
                f"EncoderDecoderModel: a {sub.model_type!r} {role} has several layer stacks; use one-stack models"
            )
    if getattr(config.decoder, "add_cross_attention", False) and decoder.cross_attention is None:
        raise UnsupportedModelError(
            f"EncoderDecoderModel: the cross-attention of a {config.decoder.model_type!r} decoder is not described "
            "in its spec (BERT-shaped families have one)"
        )
    return _compose(encoder, decoder, _decoder_path(config.decoder))


_ENCODER_DECODER = replace(_compose(_BERT, _BERT_CROSS, "decoder.bert"), variant=_encoder_decoder)  # e.g. BERT2BERT

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT_FAMILY,
    "roberta": _BERT_FAMILY,
    "xlm-roberta": _BERT_FAMILY,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _QWEN2,
    "bart": _BART,
    "plbart": _BART,
    "mbart": _MBART,
    "whisper": _WHISPER,
    "encoder-decoder": _ENCODER_DECODER,
    # vision
    "vit": _VIT,
    "beit": _BEIT,
    "clip": _CLIP,
    "clip_text_model": _CLIP_TEXT,
    "clip_vision_model": _CLIP_VISION,
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
    "t5": _T5_SPECS[False],
    "mt5": _MT5_SPECS[True],  # mT5 configs default to the gated-gelu FFN
    # more encoders
    "albert": _ALBERT,
    "bert-generation": _BERT_FAMILY,
    "deberta": _DEBERTA,
    "deberta-v2": _DEBERTA_V2,
    "electra": _BERT_FAMILY,
    "modernbert": _MODERNBERT,
    "xmod": _XMOD,
}


def spec_from_interface(interface, pooling: str = "first") -> ArchSpec:
    """An `ArchSpec` from AdapterHub's `AdapterModelInterface` fields (a model family we do not ship).

    Bottleneck adapters are hooked on the attention output projection and the FFN output projection, as in
    AdapterHub's plugin interface: their output replaces the projection's, the residual is the input of
    `layer_pre_self_attn`/`layer_pre_ffn` (none when not given) and `layer_ln_1`/`layer_ln_2` are the norms the
    adapters' pre-processing applies to `h + r`, read from the last layer as the library's late-bound hooks do.
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
            o_proj,
            interface.layer_pre_self_attn,
            interface.layer_ln_1,
            "attention_adapters",
            hooked=True,
            norm_layer=-1 if interface.layer_ln_1 else None,
        ),
        output_site=Site(
            interface.layer_output_proj,
            interface.layer_pre_ffn,
            interface.layer_ln_2,
            "output_adapters",
            hooked=True,
            norm_layer=-1 if interface.layer_ln_2 else None,
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
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by the adapter engine (supported: {supported}); "
            "describe it with init(model, interface=AdapterModelInterface(...)), or try interface='auto' (pre-LN "
            "decoders)"
        ) from None
    return spec.variant(config) if spec.variant is not None else spec


def spec_for(base: nn.Module) -> ArchSpec:
    """The spec of a base model: its family's; for the decoder of an encoder-decoder family on its own (the base
    model of transformers' `BartForCausalLM` is a decoder wrapper whose `decoder` the task model calls), the decoder
    stack alone, its layers numbered from 0 as AdapterHub does, without invertible adapters (they live on the
    encoder)."""
    spec = arch_for(base.config)
    decoder = spec.more_stacks[0] if spec.encoder and spec.more_stacks else None
    prefix = decoder.layers.rsplit(".", 1)[0] if decoder is not None else ""  # "decoder"
    if decoder is None or hasattr(base, spec.encoder) or not hasattr(base, prefix):
        return spec
    return replace(
        spec,
        **{f.name: getattr(decoder, f.name) for f in fields(LayerStack)},
        embeddings=prefix + spec.embeddings.removeprefix(spec.encoder),
        methods=spec.methods - {"invertible"},
        pooling="last",
        more_stacks=(),
        encoder="",
        entries=(prefix,),
        variant=None,
    )


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
