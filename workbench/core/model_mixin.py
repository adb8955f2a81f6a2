"""The adapter API that every workbench model has (AdapterHub's `ModelAdaptersMixin` names and semantics).

Methods are thin: they validate, then delegate to the method layers in `methods/` and to `keys`/`files`. This class
adds, deletes and activates adapters and prepares training; each other concern is a mixin of its own module that
works on the same `self._engine`: `model_fusion` (AdapterFusion), `model_files` (saving and loading), `model_info`
(summary and introspection), `model_merging` (merging, averaging, sharing weights); `embeddings` and `setups` hold
the embedding and setup APIs.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from . import quantized
from .composition import Block, parse_composition
from .configs import AdapterConfig
from .context import keep_call_context
from .embeddings import EmbeddingsMixin, store_of
from .engine import EngineState
from .errors import AdapterConfigError, CompositionError
from .methods import method_parts
from .model_files import AdapterFilesMixin
from .model_fusion import AdapterFusionMixin
from .model_info import AdapterInfoMixin
from .model_merging import AdapterMergingMixin
from .names import check_name
from .runtime import check_setup
from .setups import AdapterSetupMixin

DRY_RUN = "workbench-dry-run"  # the scratch adapter name of `_dry_run` (never a valid user name: it is checked)
_SCRATCH_KEY = re.compile(rf"(^|\.){re.escape(DRY_RUN)}\.")


class ModelAdaptersMixin(
    AdapterFusionMixin, AdapterFilesMixin, AdapterInfoMixin, AdapterMergingMixin, EmbeddingsMixin, AdapterSetupMixin
):
    """Adds adapters to a transformers model without changing its modeling code."""

    _engine: EngineState

    def _init_adapters(self, base: nn.Module, spec=None) -> None:
        self._engine = EngineState(self, base, spec)
        store_of(self._engine)  # `loaded_embeddings` exists from the start, as in AdapterHub

    def _method(self, kind: str):
        return self._engine.method(kind)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=None, **kwargs):
        """transformers' switch, with a checkpoint function that replays layers in their forward's context."""
        if gradient_checkpointing_func is None:
            from torch.utils.checkpoint import checkpoint as gradient_checkpointing_func
        super()._set_gradient_checkpointing(enable, keep_call_context(gradient_checkpointing_func), **kwargs)

    # --- adding, deleting, activating ------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, AdapterConfig]:
        """Name -> config of every adapter on the model."""
        return dict(self._engine.configs)

    def has_adapters(self) -> bool:
        return bool(self._engine.configs)

    def add_adapter(self, adapter_name: str, config=None, overwrite_ok: bool = False, set_active: bool = False):
        """Add a new, freshly initialised adapter; `config` is a config object, dict, preset name or string.

        `overwrite_ok` replaces an adapter of that name by a fresh one (AdapterHub's overwrite): the fusions over it
        and the active setup stay, as in AdapterHub, if they still fit the new adapter; if not, CompositionError
        names what no longer fits, and the old adapter stays."""
        check_name(adapter_name)
        config = AdapterConfig.load(config)
        engine = self._engine
        if adapter_name in engine.configs:
            if not overwrite_ok:
                raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists")
            self._dry_run(config)  # a config that cannot be added must not cost the adapter it would replace
        with engine.transaction(self):
            replacing = adapter_name in engine.configs
            if replacing:
                self._remove_parts(adapter_name)
            self._add_parts(adapter_name, config)
            self._adapter_to_model(adapter_name)
            if replacing:
                self._check_replaced(adapter_name)
            if set_active:
                self.set_active_adapters(adapter_name)

    def _check_replaced(self, name: str) -> None:
        """The fusions over adapter `name` and the active setup must still run with its new config."""
        engine = self._engine
        for fusion_name, (names, _) in engine.fusions.items():
            if name in names:
                try:
                    self._check_fusion_fits(fusion_name)
                except CompositionError as err:
                    raise CompositionError(
                        f"the new adapter {name!r} does not fit AdapterFusion {fusion_name!r} ({err}): delete the "
                        "fusion first, or use another name"
                    ) from None
        if engine.active_setup is not None and name in engine.active_setup.names():
            try:
                check_setup(engine.active_setup, engine)
            except CompositionError as err:
                raise CompositionError(
                    f"the active setup {engine.active_setup} cannot run with the new adapter {name!r} ({err}): "
                    "activate another setup first, or use another name"
                ) from None

    def _add_parts(self, name: str, config: AdapterConfig) -> None:
        quantized.check_runtime(self._engine.base)  # a quantized base whose kernels cannot run here is refused
        self._engine.configs[name] = config
        for kind, part in method_parts(config):
            self._engine.method(kind).add(name, part)

    def _dry_run(self, config: AdapterConfig, name: str = DRY_RUN) -> dict[str, tuple]:
        """Add `config` on the meta device (no memory) and take it away again: raises what a real add would raise,
        and returns the weight shapes it would have, keyed as for adapter `name`."""

        class _Done(Exception):
            pass

        shapes = {}
        try:
            with torch.device("meta"), self._engine.transaction(self):  # the roll-back removes it either way
                self._add_parts(DRY_RUN, config)
                shapes = {k: tuple(v.shape) for k, v in self._engine.state_dict_of(DRY_RUN).items()}
                raise _Done
        except _Done:
            pass
        return {_SCRATCH_KEY.sub(rf"\g<1>{name}.", key): shape for key, shape in shapes.items()}

    def _adapter_to_model(self, name: str) -> None:
        """Give a new adapter the model's device, float dtype (unless its config names one) and train/eval mode."""
        engine = self._engine
        for module in engine.owned.get(name, {}).values():
            module.train(self.training)
        reference = engine.reference_weight()
        if reference is None:
            return
        keep_dtype = bool(getattr(engine.configs.get(name), "dtype", None))
        for _, param in engine.named_parameters_of(name):
            dtype = reference.dtype if param.is_floating_point() and not keep_dtype else param.dtype
            if param.device != reference.device or param.dtype != dtype:
                param.data = param.data.to(reference.device, dtype=dtype)

    def delete_adapter(self, adapter_name: str) -> None:
        self._require(adapter_name)
        engine = self._engine
        with engine.transaction(self):
            for fusion_name, (names, _) in list(engine.fusions.items()):
                if adapter_name in names:
                    self.delete_adapter_fusion(fusion_name)
            self._remove_parts(adapter_name)
            setup = engine.active_setup
            if setup is not None and adapter_name in setup.names():
                engine.active_setup = None

    def _remove_parts(self, name: str) -> None:
        """Take adapter `name`'s modules and config away (its fusions and the active setup are the caller's)."""
        engine = self._engine
        for kind in engine.method_kinds(name):
            engine.method(kind).delete(name)
        del engine.configs[name]
        engine.unregister(name)

    def _require(self, name: str) -> AdapterConfig:
        if name not in self._engine.configs:
            known = ", ".join(sorted(self._engine.configs)) or "none"
            raise AdapterConfigError(f"no adapter named {name!r} (adapters on this model: {known})")
        return self._engine.configs[name]

    @property
    def active_adapters(self) -> Block | None:
        return self._engine.active_setup

    @active_adapters.setter
    def active_adapters(self, adapter_setup) -> None:
        self.set_active_adapters(adapter_setup)

    def set_active_adapters(self, adapter_setup, skip_layers: list[int] | None = None) -> None:
        """Activate an adapter, a list (Stack) or a composition block; None deactivates all.

        The whole setup is checked first (names, fusions, sizes, what each method takes part in): a setup the
        engine cannot run raises `CompositionError` and the previous one stays active.
        """
        setup = parse_composition(adapter_setup)
        check_setup(setup, self._engine)
        if skip_layers is not None and not all(isinstance(i, int) and not isinstance(i, bool) for i in skip_layers):
            raise CompositionError(f"skip_layers={skip_layers!r}: use a list of layer indices")
        if "lora" in self._engine.methods:
            self._engine.methods["lora"].reset()
        self._engine.active_setup = setup
        self._engine.skip_layers = set(skip_layers or [])

    # --- training --------------------------------------------------------------------------------------------

    def freeze_model(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) every weight of the base model."""
        for param in self._engine.base.parameters():
            param.requires_grad = not freeze
        self._engine.base.model_frozen = freeze

    def train_adapter(self, adapter_setup, train_embeddings: bool = False) -> None:
        """Freeze the model except the given adapters (and heads), and activate them; `train_embeddings` also
        trains the active input embedding (e.g. one added with `add_embeddings`)."""
        setup = parse_composition(adapter_setup)
        if setup is None:
            raise CompositionError(f"train_adapter needs the adapters to train, got {adapter_setup!r}")
        check_setup(setup, self._engine)  # before anything changes
        self.train()
        self.freeze_model(True)
        if "lora" in self._engine.methods:  # modules a PEFT adapter replaces by its trained copy (modules_to_save)
            for module in self._engine.methods["lora"].originals(setup.names()):
                module.requires_grad_(False)
        for name in setup.names():
            self._require(name)
            for _, param in self._adapter_parameters(name):
                param.requires_grad = True
        if train_embeddings:
            for param in self._engine.base.get_input_embeddings().parameters():
                param.requires_grad = True
        self.set_active_adapters(setup)
        self._unfreeze_heads(setup)

    def _unfreeze_heads(self, setup) -> None:
        """Overridden by models with flex heads."""
