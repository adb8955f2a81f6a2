"""Decoder-only families: GPT-2, Llama/Mistral, Qwen2/Qwen3/Gemma, GPT-J, GPT-NeoX, Gemma 2/3, Phi, Phi-3 and OLMo 2,
each an `ArchSpec` (see `archs.py`). `families.ARCHITECTURES` maps model types to them."""

from dataclasses import replace

from .archs import DECODER_METHODS, ArchSpec, Site

GPT2 = ArchSpec(
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

LLAMA = ArchSpec(
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
QWEN2 = replace(LLAMA, lora={**LLAMA.lora, "intermediate": "mlp.up_proj", "output": "mlp.down_proj"})

# --- current decoders (issue 12, item 4) ----------------------------------------------------------------------
# Llama 3.x (rope scaling "llama3") and SmolLM (tied embeddings) are model type "llama"; Qwen3 (q/k norms, explicit
# head_dim) is Qwen2's layout, with AdapterHub's plugin-interface LoRA places. Key/value heads and head dim come from
# the config (`ArchSpec.attention_shape`), so prefixes have one key/value per key/value head everywhere.

# GPT-J (AdapterHub's GPTJAdapterModel): attention and FFN both read ln_1(x) and the block adds both outputs to x.
# The FFN adapter reads the stream after attention, x + (adapted) attention output, as AdapterHub's GPT-J does.
GPTJ = ArchSpec(
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
GPT_NEOX = ArchSpec(
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
GEMMA2 = ArchSpec(
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
    lora=QWEN2.lora,
    embeddings="embed_tokens",
    attention_output="self_attn.o_proj",
    methods=DECODER_METHODS,
    pooling="last",
)

# Phi (AdapterHub's plugin interface): attention and FFN read input_layernorm(x); the attention adapter is hooked on
# `dense` with residual x, the FFN adapter on `fc2` with no residual (the interface names no `layer_pre_ffn`), so a
# parallel adapter there has nothing to read and is refused.
PHI = ArchSpec(
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
PHI3 = ArchSpec(
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
OLMO2 = replace(
    QWEN2,
    attention_site=Site("post_attention_layernorm", "self_attn", None, "attention_adapters"),
    output_site=Site("post_feedforward_layernorm", "mlp", None, "output_adapters"),
)
