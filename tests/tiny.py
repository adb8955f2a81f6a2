"""Tiny models built from configs, for fast tests that need no downloads."""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM, EncoderDecoderConfig

import workbench

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
# the same sizes under the names of encoder-decoder configs (BART family, T5), where the config has them
ENCODER_DECODER_SIZES = dict(
    decoder_attention_heads=4, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, d_ff=64,
    d_kv=8, num_decoder_layers=2,
)  # fmt: skip


# Current decoders: grouped-query attention (2 key/value heads), explicit head dims (Qwen3's differs from
# hidden/heads), rotary dims that fit the tiny heads.
FAMILY_SIZES = {
    "gptj": dict(rotary_dim=4),
    "gpt_neox": dict(rotary_pct=0.5),
    "gemma": dict(num_key_value_heads=2, head_dim=8),
    "gemma2": dict(num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8),
    "phi": dict(num_key_value_heads=2),
    "phi3": dict(num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "qwen3": dict(num_key_value_heads=2, head_dim=16),
    "olmo2": dict(num_key_value_heads=2),
    # Whisper's audio front end (8 mel bins, 32 frames) and no suppressed ids of its real vocabulary
    "whisper": dict(
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=32,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    ),
}


def tiny_config(model_type: str = "bert", **overrides):
    if model_type == "encoder-decoder":  # transformers' EncoderDecoderModel: two tiny BERTs (BERT2BERT)
        decoder = tiny_config("bert", is_decoder=True, add_cross_attention=True)
        return EncoderDecoderConfig.from_encoder_decoder_configs(tiny_config("bert"), decoder, **overrides)
    extra = {"num_key_value_heads": 2} if model_type in ("llama", "mistral", "qwen2") else {}
    extra.update(FAMILY_SIZES.get(model_type, {}))
    config = AutoConfig.for_model(model_type, **{**SIZES, **extra, **overrides})
    for key, value in ENCODER_DECODER_SIZES.items():
        if hasattr(config, key) and key not in overrides:
            setattr(config, key, value)
    if model_type == "gpt2":
        config.bos_token_id = config.eos_token_id = 1
    config.pad_token_id = 0
    return config


def tiny_adapter_model(model_type: str = "bert", **overrides) -> workbench.AdapterModel:
    return workbench.AutoAdapterModel.from_config(tiny_config(model_type, **overrides)).eval()


def tiny_base_model(model_type: str = "bert", **overrides):
    auto = AutoModelForSeq2SeqLM if model_type == "encoder-decoder" else AutoModel  # (no AutoModel mapping)
    return auto.from_config(tiny_config(model_type, **overrides)).eval()
