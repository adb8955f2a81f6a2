"""Architectures described as data: the spec language, in which everything the engine knows about a model family is
one `ArchSpec`.

Paths are dotted module paths. `layers` and `embeddings` are relative to the base model (e.g. `BertModel`); every
other path is relative to one transformer layer. No modeling code is copied: the methods attach hooks at these
places and check the spec when an adapter is added, so a new architecture is one spec in a `family_*.py` module and
its entry in `families.ARCHITECTURES` (or, for a model we do not ship, `workbench.init(model,
interface=AdapterModelInterface(...))`, which `spec_from_interface` turns into a spec).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


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
