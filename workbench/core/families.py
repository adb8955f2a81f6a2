"""The shipped architectures: `ARCHITECTURES` maps each transformers model type to its family's `ArchSpec`, and
`arch_for`/`spec_for` look a model's spec up in it. A new architecture is one spec in a `family_*.py` module and one
entry here (or, for a model we do not ship, `workbench.init(model, interface=AdapterModelInterface(...))`).
transformers' `EncoderDecoderModel` is composed here, per config, from the specs of its two sub-models' families."""

from dataclasses import fields, replace

from torch import nn

from .archs import ArchSpec, LayerStack, get_module
from .errors import UnsupportedModelError
from .family_decoders import GEMMA2, GPT2, GPT_NEOX, GPTJ, LLAMA, OLMO2, PHI, PHI3, QWEN2
from .family_encoders import ALBERT, BERT, BERT_CROSS, BERT_FAMILY, DEBERTA, DEBERTA_V2, DISTILBERT, MODERNBERT, XMOD
from .family_seq2seq import BART, MBART, MT5_SPECS, T5_SPECS, WHISPER
from .family_vision import BEIT, CLIP, CLIP_TEXT, CLIP_VISION, VIT

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


_ENCODER_DECODER = replace(_compose(BERT, BERT_CROSS, "decoder.bert"), variant=_encoder_decoder)  # e.g. BERT2BERT

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": BERT_FAMILY,
    "roberta": BERT_FAMILY,
    "xlm-roberta": BERT_FAMILY,
    "distilbert": DISTILBERT,
    "gpt2": GPT2,
    "llama": LLAMA,
    "mistral": LLAMA,
    "qwen2": QWEN2,
    "bart": BART,
    "plbart": BART,
    "mbart": MBART,
    "whisper": WHISPER,
    "encoder-decoder": _ENCODER_DECODER,
    # vision
    "vit": VIT,
    "beit": BEIT,
    "clip": CLIP,
    "clip_text_model": CLIP_TEXT,
    "clip_vision_model": CLIP_VISION,
    # current decoders
    "gptj": GPTJ,
    "gpt_neox": GPT_NEOX,
    "gemma": QWEN2,  # Llama's layout; no AdapterHub support: LoRA places as Gemma 2's plugin interface
    "gemma2": replace(GEMMA2, invertible_unscaled=True),
    "gemma3_text": GEMMA2,
    "phi": PHI,
    "phi3": PHI3,
    "qwen3": QWEN2,
    "olmo2": OLMO2,
    "t5": T5_SPECS[False],
    "mt5": MT5_SPECS[True],  # mT5 configs default to the gated-gelu FFN
    # more encoders
    "albert": ALBERT,
    "bert-generation": BERT_FAMILY,
    "deberta": DEBERTA,
    "deberta-v2": DEBERTA_V2,
    "electra": BERT_FAMILY,
    "modernbert": MODERNBERT,
    "xmod": XMOD,
}


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
