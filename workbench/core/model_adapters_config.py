"""`model.adapters_config`: AdapterHub's view of a model's adapters and fusions, read from the engine's state.

AdapterHub keeps adapter configs in a `ModelAdaptersConfig` (adapter name -> config hash, hash -> config). The
engine keeps name -> config; this class presents the same layout without a second copy that could go stale.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping

from .configs import ADAPTERFUSION_CONFIG_MAP, AdapterConfig, ConfigUnion
from .errors import AdapterConfigError

# Keys added after adapter-transformers v2, left out of the hash at these defaults so old hashes stay valid.
_HASH_NEUTRAL_DEFAULTS = {
    "phm_layer": True,
    "phm_dim": 4,
    "factorized_phm_W": True,
    "shared_W_phm": False,
    "shared_phm_rule": True,
    "factorized_phm_rule": False,
    "phm_c_init": "normal",
    "phm_init_range": 0.0001,
    "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform",
    "phm_rank": 1,
    "phm_bias": True,
    "init_weights": "bert",
    "scaling": 1.0,
}


def get_adapter_config_hash(config: Mapping, length: int = 16, ignore_params: list | None = None) -> str:
    """AdapterHub's identifier of a config: sha1 of its sorted JSON without empty values (the Hub index uses it)."""

    def without_empty(value):
        if isinstance(value, Mapping):
            return {k: without_empty(v) for k, v in value.items() if v}
        return value

    ignored = set(ignore_params or [])
    data = without_empty({k: v for k, v in dict(config).items() if k not in ignored})
    for key, default in _HASH_NEUTRAL_DEFAULTS.items():
        if key in data and data[key] == default:
            del data[key]
    return hashlib.sha1(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()[:length]


def _config_key(config) -> str:
    """A fusion config's preset name ("dynamic", "static") when it equals one, else its hash."""
    preset = next((k for k, v in ADAPTERFUSION_CONFIG_MAP.items() if v == config), None)
    return preset or get_adapter_config_hash(config)


class ModelAdaptersConfig(Collection):
    """Which adapters and fusions a model has, and their configs (read-only: change them through the model)."""

    def __init__(self, engine):
        self._engine = engine

    def __contains__(self, name) -> bool:
        return name in self._engine.configs

    def __iter__(self):
        return iter(self._engine.configs)

    def __len__(self) -> int:
        return len(self._engine.configs)

    @property
    def adapters(self) -> dict[str, str]:
        """Adapter name -> config key (its hash), as AdapterHub stores it."""
        return {name: get_adapter_config_hash(config) for name, config in self._engine.configs.items()}

    @property
    def config_map(self) -> dict[str, AdapterConfig]:
        return {get_adapter_config_hash(config): config for config in self._engine.configs.values()}

    @property
    def fusions(self) -> dict[str, str]:
        """Fusion name -> fusion config key (a preset name such as "dynamic", or the config's hash)."""
        return {name: _config_key(config) for name, (_, config) in self._engine.fusions.items()}

    @property
    def fusion_config_map(self) -> dict[str, AdapterConfig]:
        return {_config_key(config): config for _, config in self._engine.fusions.values()}

    @property
    def fusion_name_map(self) -> dict[str, list[str]]:
        """Fusions with a custom name -> the adapters they fuse."""
        return {name: list(names) for name, (names, _) in self._engine.fusions.items() if name != ",".join(names)}

    @property
    def active_setup(self):
        return self._engine.active_setup

    @property
    def skip_layers(self):
        return sorted(self._engine.skip_layers) or None

    def get(self, adapter_name: str) -> AdapterConfig | None:
        return self._engine.configs.get(adapter_name)

    def get_fusion(self, fusion_name) -> tuple[AdapterConfig | None, list[str] | None]:
        """(config, fused adapter names) of a fusion given by name or by its adapters' names."""
        if isinstance(fusion_name, list | tuple):
            fusion_name = ",".join(fusion_name)
        if fusion_name not in self._engine.fusions:
            return None, None
        names, config = self._engine.fusions[fusion_name]
        return config, list(names)

    def match(self, adapter_name: str, config_type: type, layer_idx: int | None = None, location_key=None):
        """The adapter's config (or its part in a union) of `config_type` that applies at `layer_idx` and has
        `location_key` set; None if none does."""
        config = self.get(adapter_name)
        parts = config.configs if isinstance(config, ConfigUnion) else [config] if config is not None else []
        found = [
            c
            for c in parts
            if isinstance(c, config_type)
            and (layer_idx is None or layer_idx not in (c.get("leave_out") or []))
            and (location_key is None or c.get(location_key, False))
        ]
        if len(found) > 1:
            raise AdapterConfigError(
                f"adapter {adapter_name!r} has {len(found)} {config_type.__name__} parts in layer {layer_idx}: "
                "one adaptation block per location and adapter"
            )
        return found[0] if found else None

    def common_config_value(self, adapter_names: list[str], attribute: str):
        """The value of `attribute` that all the adapters share; raises if they differ."""
        values = []
        for name in adapter_names:
            config = self.get(name)
            if config is None:
                raise AdapterConfigError(f"no adapter named {name!r}")
            values.append(config.get(attribute))
        if any(v != values[0] for v in values[1:]):
            raise AdapterConfigError(f"adapters {adapter_names} differ in {attribute!r}: {values}")
        return values[0] if values else None

    def to_dict(self) -> dict:
        return {
            "adapters": self.adapters,
            "config_map": {k: v.to_dict() for k, v in self.config_map.items()},
            "fusions": self.fusions,
            "fusion_config_map": {k: v.to_dict() for k, v in self.fusion_config_map.items()},
            "fusion_name_map": self.fusion_name_map,
        }

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelAdaptersConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ModelAdaptersConfig(adapters={list(self)}, fusions={list(self._engine.fusions)})"
