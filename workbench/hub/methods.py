"""Method names for display: which AdapterHub preset ("seq_bn", "lora", ...) a saved config corresponds to.

Listings, cards and panels show these names; the engine itself never needs them.
"""

from __future__ import annotations

from ..core.configs import ADAPTER_CONFIG_MAP, AdapterConfig, ConfigUnion
from ..core.errors import AdapterConfigError

# Keys that tell the presets apart (reduction factor, activation and the like are options of one method).
_DISTINGUISHING = (
    "architecture",
    "mh_adapter",
    "output_adapter",
    "original_ln_before",
    "residual_before_ln",
    "is_parallel",
    "phm_layer",
    "inv_adapter",
    "composition_mode",
    "flat",
)
_PREFERRED = (
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "seq_bn_inv",
    "double_seq_bn_inv",
    "compacter++",
    "compacter",
    "lora",
    "ia3",
    "prefix_tuning",
    "prompt_tuning",
    "dora",
    "vera",
    "dvora",
    "mtl_lora",
    "loreft",
    "noreft",
    "direft",
    "adapterplus",
)


def method_name(config: dict | None) -> str | None:
    """The preset name a config corresponds to ("seq_bn", "lora", ...), else its architecture, else None."""
    if not config:
        return None
    if "peft_type" in config:
        return str(config["peft_type"]).lower()
    if config.get("architecture") == "union":
        return "union"
    legacy_inv = config.get("invertible_adapter")  # adapter-transformers v1 layout
    if legacy_inv and "inv_adapter" not in config:
        config = {**config, "inv_adapter": legacy_inv.get("block_type")}
    for name in _PREFERRED:
        preset = ADAPTER_CONFIG_MAP[name]
        reference = preset.to_dict()
        if (reference.get("architecture") or None) != (config.get("architecture") or None):
            continue
        if all(config[k] == reference.get(k) for k in _DISTINGUISHING if k in config and k in reference):
            return name
    try:
        parsed = AdapterConfig.from_dict(config, strict=False)
    except (AdapterConfigError, TypeError, KeyError):
        return config.get("architecture") or "bottleneck"
    return "union" if isinstance(parsed, ConfigUnion) else (parsed.architecture or "bottleneck")
