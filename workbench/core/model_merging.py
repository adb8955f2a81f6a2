"""What combines or rewrites adapter weights on a workbench model: merging LoRA into the base weights and undoing
it, ejecting prefix tuning's plain prefixes, averaging adapters (the formulas are in `merging.py`) and MTL-LoRA's
parameter sharing. A part of `ModelAdaptersMixin`: it works on the model's `_engine`.
"""

from __future__ import annotations

from .configs import AdapterConfig, ConfigUnion, LoRAConfig
from .errors import AdapterConfigError
from .methods import method_parts


class AdapterMergingMixin:
    """The merging, averaging and sharing methods of `ModelAdaptersMixin`."""

    # --- MTL-LoRA parameter sharing --------------------------------------------------------------------------

    def share_parameters(self, adapter_names, name: str | None = None, reference_adapter_name: str | None = None):
        """Tie the shared part (A and B) of multi-task adapters: `share_parameters(MultiTask("a", "b"))`, a list or
        `"a,b"`. Each projection carrying all of them gets `shared_parameters.<name>` (default: the names joined
        by commas), a copy of the reference adapter's (default: the first) A and B, which every adapter then uses;
        each keeps its own task-specific parts. Adapters without a multi-task config raise TypeError."""
        from .methods import mtl_lora

        names = mtl_lora.task_names(adapter_names)
        name = ",".join(names) if name is None else name
        reference = reference_adapter_name or names[0]
        mtl_lora.check_sharable(self._engine, names, reference)
        if "lora" in self._engine.methods:
            self._engine.methods["lora"].share_parameters(name, names, reference)

    def unshare_parameters(self, adapter_names, name: str | None = None) -> None:
        """Undo `share_parameters`: the tie `name` (default: the names joined by commas) is dropped and every
        adapter it tied keeps its own copy of the values it had."""
        from .methods import mtl_lora

        names = mtl_lora.task_names(adapter_names)
        if "lora" in self._engine.methods:
            self._engine.methods["lora"].unshare_parameters(",".join(names) if name is None else name)

    def apply_to_adapter_layers(self, fn) -> None:
        """AdapterHub's hook over adapter layers, for the LoRA family (the layers that share parameters): calls
        `fn(layer_index, layer)` for every projection carrying LoRA adapters; `layer.adapter_modules` are its
        adapters by name, `layer.shared_parameters` its MTL-LoRA ties and `layer.module` the projection."""
        from types import SimpleNamespace

        lora = self._engine.methods.get("lora")
        for target in list(lora.targets.values()) if lora is not None else []:
            shared = getattr(target.module, "shared_parameters", None)
            view = SimpleNamespace(adapter_modules=target.loras, shared_parameters=shared or {}, module=target.module)
            fn(target.layer_idx, view)

    # --- merging and averaging -------------------------------------------------------------------------------

    def merge_adapter(self, name: str) -> None:
        """Merge a LoRA/(IA)^3 adapter into the base weights (no extra cost at inference), all or nothing.

        `reset_adapter()` restores the weights bit for bit; no copy of them is kept (see `LoRATarget.merge`). After a
        cast that rounds the merged weights (fp32 -> bf16) it can only restore them up to that rounding, and warns.
        """
        config = self._require(name)
        if not isinstance(config, LoRAConfig):
            raise AdapterConfigError(
                f"only LoRA/IA3 adapters can be merged; {name!r} is {config.architecture or 'bottleneck'}"
            )
        self._method("lora").merge(name)

    def eject_prefix_tuning(self, name: str) -> None:
        """Turn prefix-tuning adapter `name` from its reparametrised form (embedding + MLP) into the plain prefixes
        it computes (`flat=True`): the outputs stay the same, and only the prefixes are kept, saved and trained."""
        config = self._require(name)
        parts = dict(method_parts(config))
        if "prefix_tuning" not in parts:
            raise AdapterConfigError(f"adapter {name!r} has no prefix tuning to eject")
        flat = self._method("prefix_tuning").eject(name, parts["prefix_tuning"])
        if flat is not parts["prefix_tuning"]:
            self._engine.configs[name] = flat if config is parts["prefix_tuning"] else _replace_part(config, flat)

    def reset_adapter(self) -> None:
        """Undo `merge_adapter`: the base weights are again exactly what they were (in the current dtype), unless
        a cast rounded the merged weights: then up to that rounding, with a warning (`methods/exact_undo.py`)."""
        if "lora" in self._engine.methods:
            self._engine.methods["lora"].reset()

    def average_adapter(
        self,
        adapter_name: str,
        adapter_list: list[str] | dict[str, float],
        weights: list[float] | None = None,
        combine_strategy: str = "linear",
        normalize_weights: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
        svd_rank: int | None = None,
        **kwargs,
    ) -> None:
        """Add adapter `adapter_name` whose weights merge those of `adapter_list` (AdapterHub's signature).

        Args:
            adapter_list: names, or a dict of name -> weight.
            weights: one per adapter; `1/n` each if None; divided by their sum when `normalize_weights`.
            combine_strategy: "linear" (any method); for LoRA (and (IA)^3 where noted) "lora_linear_only_negate_b",
                "lora_delta_w_svd" (with `svd_rank`), and PEFT's "ties", "dare_ties", "dare_linear",
                "magnitude_prune" (factors; also (IA)^3) and "ties_svd", "dare_ties_svd", "dare_linear_svd",
                "magnitude_prune_svd" (weight deltas, re-factored with a rank-`svd_rank` SVD).
            svd_rank: the new LoRA's rank for the SVD strategies.
            **kwargs: `density` (0 < d <= 1, the pruning strategies), `majority_sign_method` ("total" |
                "frequency", TIES), `seed` (DARE's random masks; else torch's global RNG), `negate` (names whose
                weights change sign after normalising).

        Raises `AdapterConfigError` (a ValueError, as AdapterHub raises) for an unknown strategy, adapters with
        different configs, a strategy the method does not support, or bad options; the model is then unchanged.
        The formulas are in `workbench/core/merging.py`.
        """
        from . import merging  # imported on use, as the method modules are

        merging.average_adapter(
            self,
            adapter_name,
            adapter_list,
            weights,
            combine_strategy,
            normalize_weights,
            overwrite_ok,
            set_active,
            svd_rank,
            **kwargs,
        )


def _replace_part(union: ConfigUnion, part: AdapterConfig) -> ConfigUnion:
    """`union` with its config of `part`'s method replaced by `part`."""
    return ConfigUnion(*[part if type(c) is type(part) else c for c in union.configs])
