"""Vision families: ViT, BEiT and CLIP (the two-tower model and each tower on its own), each an `ArchSpec` (see
`archs.py`). `families.ARCHITECTURES` maps model types to them."""

from dataclasses import replace

from .archs import ALL_METHODS, ArchSpec, LayerStack, Site

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

VIT = ArchSpec(
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
BEIT = replace(
    VIT,
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
CLIP_TEXT = ArchSpec(
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
CLIP_VISION = ArchSpec(
    layers="encoder.layers",
    prefix_key="clip_vision_model_self_prefix",
    embeddings="embeddings",
    methods=VISION_METHODS - {"prompt_tuning"},
    file_keys=(("^encoder.layers", "vision_model.encoder.layers"),),
    **_CLIP_LAYER,
)
CLIP = ArchSpec(
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
