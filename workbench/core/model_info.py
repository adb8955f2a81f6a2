"""What a workbench model can say about its adapters: the summary table, AdapterHub's introspection API (its
`adapters_config`, layers, modules, supported methods, invertible adapters) and moving an adapter to a device or
dtype. A part of `ModelAdaptersMixin`: it works on the model's `_engine`.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import ADAPTER_CONFIG_MAP, AdapterConfig
from .errors import AdapterConfigError, UnsupportedMethodError
from .locations import adapter_locations
from .methods import method_parts
from .model_adapters_config import ModelAdaptersConfig


class AdapterInfoMixin:
    """The summary and introspection methods of `ModelAdaptersMixin`."""

    def _adapter_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        return list(self._engine.named_parameters_of(name))

    def adapter_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        return self._engine.state_dict_of(name)

    def adapter_summary(self, as_dict: bool = False):
        """A table of adapters: name, method, parameters, % of the base model, active, trainable."""
        engine = self._engine
        setup = engine.active_setup
        active = set(setup.names()) if setup is not None else set()
        rows, owned_ids = [], set()
        for name, config in engine.configs.items():
            params = {id(p): p for _, p in engine.named_parameters_of(name)}
            owned_ids.update(params)
            rows.append(
                {
                    "name": name,
                    "architecture": config.architecture or "bottleneck",
                    "#param": sum(p.numel() for p in params.values()),
                    "active": name in active,
                    "train": bool(params) and all(p.requires_grad for p in params.values()),
                }
            )
        base_params = sum(p.numel() for p in engine.base.parameters() if id(p) not in owned_ids)
        for row in rows:
            row["%param"] = row["#param"] / base_params * 100
        full = {
            "name": "Full model",
            "#param": base_params,
            "%param": 100.0,
            "train": not getattr(engine.base, "model_frozen", False),
        }
        rows.append(full)
        if as_dict:
            return rows
        return _format_summary(rows)

    @property
    def adapters_config(self) -> ModelAdaptersConfig:
        """AdapterHub's `ModelAdaptersConfig` of this model (a read-only view of its adapters and fusions)."""
        return ModelAdaptersConfig(self._engine)

    def iter_layers(self):
        """(index, module) of every transformer layer of the base model."""
        return enumerate(self._engine.layers)

    def get_adapter(self, name: str) -> dict[int, dict[str, nn.Module]]:
        """The modules of adapter `name`: {layer index (-1: shared): {location key: module}}; {} if unknown."""
        return adapter_locations(self._engine, name)

    def supports_adapter(self, type_or_config) -> bool:
        """Whether this model can take adapters of a method ("lora", "bottleneck", ...) or a config."""
        if isinstance(type_or_config, str) and type_or_config not in ADAPTER_CONFIG_MAP:
            return type_or_config in self._engine.spec.methods
        parts = method_parts(AdapterConfig.load(type_or_config))
        if not all(kind in self._engine.spec.methods for kind, _ in parts):
            return False
        from .methods.bottleneck_layers import check_sites

        try:  # a config the architecture's sites refuse (e.g. AdapterPlus where the layer adds residual and norms)
            for kind, part in parts:
                if kind == "bottleneck":
                    check_sites(self._engine.spec, part, self._engine.base.config)
        except UnsupportedMethodError:
            return False
        fused = "qkv" in self._engine.spec.lora  # DoRA and VeRA cannot adapt a fused q|k|v projection (GPT-2, DeBERTa)
        return not any(
            kind == "lora" and fused and getattr(part, "selfattn_lora", False)
            and (getattr(part, "use_dora", False) or getattr(part, "is_vera", False))
            for kind, part in parts
        )  # fmt: skip

    @property
    def support_lora_delta_w_svd(self) -> bool:
        """Whether `average_adapter(..., combine_strategy="lora_delta_w_svd")` applies (not to fused q|k|v)."""
        return "qkv" not in self._engine.spec.lora

    def adapter_to(self, name: str, device=None, dtype: torch.dtype | None = None) -> None:
        """Move adapter `name` (all its modules) to `device` and/or cast its float weights to `dtype`."""
        self._require(name)
        modules = list(self._engine.owned.get(name, {}).values())
        if dtype in (torch.float16, torch.bfloat16) and any(
            nn.utils.parametrize.is_parametrized(m) for module in modules for m in module.modules()
        ):
            raise AdapterConfigError(
                f"adapter_to({name!r}, dtype={dtype}): the adapter has an orthogonal projection (LoReFT), which torch "
                "computes only in float32 or float64"
            )
        for module in modules:
            module.to(device=device, dtype=dtype)

    @property
    def invertible_adapters(self) -> nn.ModuleDict:
        """AdapterHub's `model.invertible_adapters`: adapter name -> invertible adapter (empty when there is none)."""
        owner = self._engine.base.get_submodule(self._engine.spec.encoder)  # the encoder of encoder-decoder models
        modules = owner._modules.get("invertible_adapters")
        return modules if modules is not None else nn.ModuleDict()

    def get_invertible_adapter(self) -> nn.Module | None:
        """The invertible adapter of the first active adapter that has one (None if none does)."""
        setup = self._engine.active_setup
        modules = self.invertible_adapters
        return next((modules[n] for n in (setup.names() if setup is not None else []) if n in modules), None)


def _format_summary(rows: list[dict]) -> str:
    header = "{:<25}{:<15}{:>12}{:>12}{:>8}{:>8}".format("Name", "Architecture", "#Param", "%Param", "Active", "Train")
    lines = ["=" * 80, header, "-" * 80]
    for i, row in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * 80)
        lines.append(
            "{:<25}{:<15}{:>12,}{:>12.3f}{:>8}{:>8}".format(
                row["name"],
                row.get("architecture", ""),
                row["#param"],
                row["%param"],
                _flag(row.get("active", "")),
                _flag(row.get("train", "")),
            )
        )
    lines.append("=" * 80)
    return "\n".join(lines)


def _flag(value) -> str:
    return str(int(value)) if isinstance(value, bool) else str(value)
