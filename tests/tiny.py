"""Tiny models built from configs, for fast tests that need no downloads."""

from transformers import AutoConfig, AutoModel

import workbench

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)


# Sizes SIZES' names do not reach: the decoder heads of PLBart and Whisper (their defaults do not divide 32), Whisper's
# decoder layers, its audio front end (8 mel bins, 32 frames), and no suppressed ids of its real vocabulary.
FAMILY_SIZES = {
    "plbart": dict(decoder_attention_heads=4),
    "whisper": dict(
        decoder_attention_heads=4,
        decoder_layers=2,
        decoder_ffn_dim=64,
        encoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=32,
        suppress_tokens=None,
        begin_suppress_tokens=None,
    ),
}


def tiny_config(model_type: str = "bert", **overrides):
    extra = {"num_key_value_heads": 2} if model_type in ("llama", "mistral", "qwen2") else {}
    extra.update(FAMILY_SIZES.get(model_type, {}))
    config = AutoConfig.for_model(model_type, **{**SIZES, **extra, **overrides})
    if model_type == "gpt2":
        config.bos_token_id = config.eos_token_id = 1
    config.pad_token_id = 0
    return config


def tiny_adapter_model(model_type: str = "bert", **overrides) -> workbench.AdapterModel:
    return workbench.AutoAdapterModel.from_config(tiny_config(model_type, **overrides)).eval()


def tiny_base_model(model_type: str = "bert", **overrides):
    return AutoModel.from_config(tiny_config(model_type, **overrides)).eval()
