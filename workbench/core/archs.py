"""Architectures described as data: where each adapter method hooks into an unmodified transformers model.

Paths are dotted module paths. `layers` is relative to the base model (e.g. `BertModel`); every other path is
relative to one transformer layer. No modeling code is copied: the methods attach hooks at these places, so a
new architecture is one entry in `ARCHITECTURES`.
"""

from dataclasses import dataclass, replace

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


@dataclass(frozen=True)
class ArchSpec:
    """Where adapters go in one family of transformers models."""

    layers: str
    attention_site: Site
    output_site: Site
    attention: str  # the self-attention module whose attention function prefix tuning extends
    lora: dict[str, str]  # "q", "k", "v" (or "qkv" for a fused projection), "intermediate", "output"
    embeddings: str  # module whose output is the token embedding stream (invertible adapters, prompts)


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
)

_GPT2 = ArchSpec(
    layers="h",
    attention_site=Site("attn", "ln_1", None, "attention_adapters"),
    output_site=Site("mlp", "ln_2", None, "output_adapters"),
    attention="attn",
    lora={"qkv": "attn.c_attn", "intermediate": "mlp.c_fc", "output": "mlp.c_proj"},
    embeddings="drop",
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
)

# Qwen2 (AdapterHub's plugin interface) maps the FFN LoRA the natural way round.
_QWEN2 = replace(_LLAMA, lora={**_LLAMA.lora, "intermediate": "mlp.up_proj", "output": "mlp.down_proj"})

ARCHITECTURES: dict[str, ArchSpec] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "distilbert": _DISTILBERT,
    "gpt2": _GPT2,
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _QWEN2,
}


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
