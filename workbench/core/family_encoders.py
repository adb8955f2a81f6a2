"""Text encoder families: BERT and the BERT-shaped (RoBERTa, XLM-R, ELECTRA, BERT-Generation), DistilBERT, ALBERT,
DeBERTa (v1, v2/v3), X-MOD and ModernBERT, each an `ArchSpec` (see `archs.py`) that reproduces AdapterHub's placement
and key layout (tests/conformance). `families.ARCHITECTURES` maps model types to them."""

import functools
from dataclasses import replace

from .archs import ALL_METHODS, ArchSpec, LayerStack, Site
from .family_setup import check_albert, prepare_xmod
from .methods.prefix_deberta import deberta_prefix, deberta_v2_prefix

BERT = ArchSpec(
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
BERT_CROSS = replace(
    BERT,
    cross_site=Site(
        "crossattention.output.dropout", "crossattention", "crossattention.output.LayerNorm", "crossattention.output"
    ),
    cross_attention="crossattention.self",
    cross_lora={"q": "crossattention.self.query", "k": "crossattention.self.key", "v": "crossattention.self.value"},
    cross_site_flag="mh_adapter",
)
BERT_FAMILY = replace(
    BERT, variant=lambda config: BERT_CROSS if getattr(config, "add_cross_attention", False) else BERT
)

DISTILBERT = ArchSpec(
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


ALBERT = _albert_groups(1)

# DeBERTa's disentangled attention computes its scores itself (no transformers attention function to extend), so
# prefix tuning reaches it through hooks on its projections (`prefix_glue`, as AdapterHub places the prefixes); the
# BERT-shaped sites, LoRA, prompts (with AdapterHub's attention matrix), ReFT and invertible adapters apply as for
# BERT. DeBERTa-v2's convolution (conv_kernel_size) reads the input mask: no prompts there.
DEBERTA_V2 = replace(
    BERT,
    lora={
        **BERT.lora,
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
DEBERTA = replace(
    DEBERTA_V2,
    lora={"qkv": "attention.self.in_proj", "intermediate": "intermediate.dense", "output": "output.dense"},
    prefix_glue=deberta_prefix,
    refuse_if=(),
)

# X-MOD: AdapterHub removes the built-in language adapters and puts its own after the FFN, before the norm the
# language adapter used (`prepare_xmod`); the attention output has no norm of its own (the layer applies it after).
XMOD = replace(
    BERT,
    attention_site=Site("attention.output.dropout", "attention", None, "attention.output"),
    prepare=prepare_xmod,
)

# ModernBERT: AdapterHub's plugin interface (`wrappers/interfaces.py`) with its hooked sites: adapters replace
# `attn.Wo`/`mlp.Wo`'s output, read the residual at the input of `attn`/`mlp` (after the pre-norms), and the
# attention adapters pre-normalise with the LAST layer's `mlp_norm` (the interface's `layer_ln_1`, bound late).
# Prefix tuning goes through transformers' attention functions (local and global layers alike); prompts would
# shift the rotary positions and are refused, as in AdapterHub.
MODERNBERT = ArchSpec(
    layers="layers",
    attention_site=Site("attn.Wo", "attn", "mlp_norm", "attention_adapters", hooked=True, norm_layer=-1),
    output_site=Site("mlp.Wo", "mlp", None, "output_adapters", hooked=True),
    attention="attn",
    lora={"qkv": "attn.Wqkv", "intermediate": "mlp.Wi", "output": "mlp.Wo"},
    embeddings="embeddings",
    attention_output="attn.Wo",
    methods=ALL_METHODS - {"prompt_tuning"},
)
