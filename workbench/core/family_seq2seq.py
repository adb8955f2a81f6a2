"""Encoder-decoder families: BART/PLBart, mBART, Whisper, T5/FLAN-T5 and mT5, each an `ArchSpec` (see `archs.py`)
with the decoder as its second layer stack. `families.ARCHITECTURES` maps model types to them; transformers'
`EncoderDecoderModel`, composed from two other families, is in `families.py`."""

from .archs import ALL_METHODS, ArchSpec, LayerStack, Site

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


BART = _bart_like(pre_norm=False)
MBART = _bart_like(pre_norm=True)
# Whisper: mBART's layer layout behind a convolutional audio front end. It has no token embeddings in the encoder:
# AdapterHub hooks invertible adapters on the encoder's final `layer_norm` (after its layers) and has no prompts.
WHISPER = _bart_like(pre_norm=True, embeddings="encoder.layer_norm")


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
    specs = MT5_SPECS if getattr(config, "model_type", None) == "mt5" else T5_SPECS
    return specs[bool(getattr(config, "is_gated_act", False))]


T5_SPECS = {gated: _t5_like(gated, lm_tying="t5") for gated in (False, True)}
MT5_SPECS = {gated: _t5_like(gated, lm_tying="never") for gated in (False, True)}
