"""`AdapterInfo`: what a listing says about one adapter, from either source, in AdapterHub's field names."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

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
)


@dataclass
class AdapterInfo:
    """One adapter in a listing. The first eight fields are AdapterHub's; the rest help a person browsing."""

    source: str  # "ah" (the archived AdapterHub index) or "hf" (the Hugging Face Hub)
    adapter_id: str
    model_name: str | None = None
    task: str | None = None
    subtask: str | None = None
    username: str | None = None
    adapter_config: dict | None = None
    sha1_checksum: str | None = None
    method: str | None = None  # e.g. "seq_bn", "lora", derived from the config
    library: str = "adapters"  # "adapters" (AdapterHub format) or "peft"
    downloads: int | None = None
    likes: int | None = None
    last_modified: datetime | None = None
    tags: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    hf_repo: str | None = None  # where the files are downloaded from

    def to_dict(self) -> dict:
        data = asdict(self)
        data["last_modified"] = self.last_modified.isoformat() if self.last_modified else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AdapterInfo:
        data = dict(data)
        if data.get("last_modified"):
            data["last_modified"] = datetime.fromisoformat(data["last_modified"])
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


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
