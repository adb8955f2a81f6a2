"""The adapter API that every workbench model has (AdapterHub's `ModelAdaptersMixin` names and semantics).

Methods are thin: they validate, then delegate to the method layers in `methods/` and to `keys`/`files`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from . import files, peft_format, quantized, static_heads
from .composition import Block, Fuse, parse_composition
from .configs import (
    ADAPTER_CONFIG_MAP,
    AdapterConfig,
    AdapterFusionConfig,
    BnConfig,
    ConfigUnion,
    LoRAConfig,
    TargetedLoRAConfig,
)
from .context import keep_call_context
from .embeddings import EmbeddingsMixin, store_of
from .engine import EngineState
from .errors import AdapterConfigError, AdapterLoadError, CompositionError, HeadError, UnsupportedMethodError
from .keys import (
    align_base_prefix,
    file_keys_of,
    from_file_keys,
    is_engine_key,
    rename_adapter_keys,
    rename_prefixed,
    to_file_keys,
)
from .locations import adapter_locations
from .methods import method_parts
from .model_adapters_config import ModelAdaptersConfig
from .names import check_fusion_name, check_name
from .runtime import check_setup
from .setups import AdapterSetupMixin

ADAPTERS_API_VERSION = "1.3.0"  # the `adapters` release whose API and file format workbench implements
FORMAT_VERSION = f"adapters.{ADAPTERS_API_VERSION}"
DRY_RUN = "workbench-dry-run"  # the scratch adapter name of `_dry_run` (never a valid user name: it is checked)
ALLOW_NON_FINITE_ENV = "WORKBENCH_ALLOW_NON_FINITE"  # "1": load weights holding NaN or inf (see _load_weights)
_LEGACY = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # activation names of unversioned (pre-3.0) adapter files
_SCRATCH_KEY = re.compile(rf"(^|\.){re.escape(DRY_RUN)}\.")
# The class names AdapterHub's `adapters.init` gives models it swaps to a class of its own (`model_class` in files).
_INIT_CLASS_NAMES = {"EncoderDecoderModel": "EncoderDecoderModelWithAdapters"}

# Turns a Hub id (or AdapterHub name) into a local folder; `workbench.hub` registers one, the engine never imports it.
_ADAPTER_RESOLVER = None


def register_adapter_resolver(resolver) -> None:
    """Set the function `load_adapter` calls for names that are not local folders:
    `resolver(name_or_id, model=..., source=..., version=..., config=..., model_name=..., **kwargs) -> Path`."""
    global _ADAPTER_RESOLVER
    _ADAPTER_RESOLVER = resolver


class ModelAdaptersMixin(EmbeddingsMixin, AdapterSetupMixin):
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

    # --- adding, deleting, activating --------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, AdapterConfig]:
        """Name -> config of every adapter on the model."""
        return dict(self._engine.configs)

    @property
    def adapter_fusions(self) -> dict[str, list[str]]:
        """Fusion name -> the names of the adapters it fuses."""
        return {name: list(names) for name, (names, _) in self._engine.fusions.items()}

    def has_adapters(self) -> bool:
        return bool(self._engine.configs)

    def add_adapter(self, adapter_name: str, config=None, overwrite_ok: bool = False, set_active: bool = False):
        """Add a new, freshly initialised adapter; `config` is a config object, dict, preset name or string."""
        check_name(adapter_name)
        config = AdapterConfig.load(config)
        engine = self._engine
        if adapter_name in engine.configs:
            if not overwrite_ok:
                raise AdapterConfigError(f"an adapter named {adapter_name!r} already exists")
            self._dry_run(config)  # a config that cannot be added must not cost the adapter it would replace
        with engine.transaction(self):
            if adapter_name in engine.configs:
                self.delete_adapter(adapter_name)
            self._add_parts(adapter_name, config)
            self._adapter_to_model(adapter_name)
            if set_active:
                self.set_active_adapters(adapter_name)

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
            for kind in engine.method_kinds(adapter_name):
                engine.method(kind).delete(adapter_name)
            del engine.configs[adapter_name]
            engine.unregister(adapter_name)
            setup = engine.active_setup
            if setup is not None and adapter_name in setup.names():
                engine.active_setup = None

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

    # --- training ----------------------------------------------------------------------------------------

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

    def train_adapter_fusion(self, adapter_setup, unfreeze_adapters: bool = False) -> None:
        """Freeze the model except the fusion layers of the setup (and optionally its adapters)."""
        setup = parse_composition(adapter_setup)
        if not _fuse_blocks(setup):
            raise CompositionError(f"train_adapter_fusion needs a setup with a Fuse block, got {adapter_setup!r}")
        check_setup(setup, self._engine)  # unknown adapters or fusions: nothing changes
        self.train()
        self.freeze_model(True)
        for fusion in _fuse_blocks(setup):
            for _, param in self._fusion_parameters(fusion.name):
                param.requires_grad = True
        if unfreeze_adapters:
            for name in setup.names():
                for _, param in self._adapter_parameters(name):
                    param.requires_grad = True
        self.set_active_adapters(setup)
        self._unfreeze_heads(setup)

    def _unfreeze_heads(self, setup) -> None:
        """Overridden by models with flex heads."""

    # --- fusion ------------------------------------------------------------------------------------------

    def add_adapter_fusion(
        self, adapter_names, config=None, name: str | None = None, overwrite_ok: bool = False, set_active: bool = False
    ) -> None:
        """Add an AdapterFusion layer over existing bottleneck adapters."""
        names = _fusion_names(adapter_names)
        fusion_name = name or ",".join(names)
        check_fusion_name(fusion_name)
        for adapter in names:
            if not isinstance(self._require(adapter), BnConfig):
                raise CompositionError(f"AdapterFusion needs bottleneck adapters; {adapter!r} is not one")
        configs = [self._engine.configs[n] for n in names]
        for location in ("mh_adapter", "output_adapter"):
            if len({getattr(c, location) for c in configs}) > 1:
                raise CompositionError(f"adapters {names} disagree on {location}; they cannot be fused")
        config = AdapterFusionConfig.load(config)
        engine = self._engine
        with engine.transaction(self):
            if fusion_name in engine.fusions:
                if not overwrite_ok:
                    raise AdapterConfigError(f"an AdapterFusion named {fusion_name!r} already exists")
                self.delete_adapter_fusion(fusion_name)
            engine.fusions[fusion_name] = (names, config)
            engine.method("bottleneck").add_fusion(fusion_name, names, config)
            reference = engine.reference_weight()
            for module in engine.owned.get("fusion:" + fusion_name, {}).values():
                module.to(reference.device).train(self.training)
            if set_active:
                self.set_active_adapters(Fuse(*names, name=fusion_name if fusion_name != ",".join(names) else None))

    def get_fusion_regularization_loss(self, fusion_name: str | None = None) -> torch.Tensor | None:
        """0.01 * sum ||I - V||^2 over fusion layers (keeps value matrices near identity while training): of one
        fusion, or (AdapterHub's call without a name) of every fusion whose value matrices are being trained, None
        if there is none."""
        if fusion_name is not None and fusion_name not in self._engine.fusions:
            raise AdapterConfigError(f"no AdapterFusion named {fusion_name!r}")
        names = [fusion_name] if fusion_name is not None else list(self._engine.fusions)
        losses = [
            layer.regularization_loss()
            for name in names
            for layer in self._method("bottleneck").fusion_layers(name)
            if fusion_name is not None or any(p.requires_grad for p in layer.parameters())
        ]
        if not losses:
            return torch.zeros(()) if fusion_name is not None else None
        return sum(losses[1:], losses[0])

    def delete_adapter_fusion(self, adapter_names) -> None:
        fusion_name = _fusion_key(adapter_names)
        engine = self._engine
        if fusion_name not in engine.fusions:
            raise AdapterConfigError(f"no AdapterFusion named {fusion_name!r}")
        engine.method("bottleneck").delete_fusion(fusion_name)
        del engine.fusions[fusion_name]
        setup = engine.active_setup
        if setup is not None and any(isinstance(b, Fuse) and b.name == fusion_name for b in _blocks(setup)):
            engine.active_setup = None

    # --- parameters and summary --------------------------------------------------------------------------

    def _adapter_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        return list(self._engine.named_parameters_of(name))

    def _fusion_parameters(self, fusion_name: str) -> list[tuple[str, nn.Parameter]]:
        return list(self._engine.named_parameters_of("fusion:" + fusion_name))

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

    # --- AdapterHub's introspection API -------------------------------------------------------------------

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

    def adapter_fusion_to(self, adapter_names, device=None, dtype: torch.dtype | None = None) -> None:
        """Move the fusion layers of `adapter_names` (a Fuse, list or fusion name) to `device`/`dtype`."""
        fusion_name = _fusion_key(adapter_names)
        if fusion_name not in self._engine.fusions:
            raise AdapterConfigError(f"no AdapterFusion named {fusion_name!r}")
        for module in self._engine.owned.get("fusion:" + fusion_name, {}).values():
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

    # --- saving and loading ------------------------------------------------------------------------------

    def _file_meta(self, name: str) -> dict:
        config = self._engine.base.config
        return {
            "hidden_size": getattr(config, "hidden_size", None),
            "model_class": self._model_class_name(),
            "model_name": getattr(config, "name_or_path", "") or "",
            "model_type": config.model_type,
            "name": name,
            "version": FORMAT_VERSION,
        }

    def _model_class_name(self) -> str:
        name = type(self).__name__
        return _INIT_CLASS_NAMES.get(name, name)

    def save_adapter(
        self,
        save_directory,
        adapter_name: str,
        with_head: bool = True,
        meta_dict: dict | None = None,
        use_safetensors: bool = False,
        format: str | None = None,
        **_,
    ) -> None:
        """Write adapter_config.json and the adapter weights to `save_directory` (format "adapterhub" or "peft").

        By default an adapter is saved in the format that can describe it: PEFT adapters that adapt modules by
        name in PEFT's, every other one in AdapterHub's (so `save_pretrained` and training checkpoints keep both).
        """
        config = self._require(adapter_name)
        if format is None:
            format = "peft" if isinstance(config, TargetedLoRAConfig) else "adapterhub"
        if format == "peft":
            return peft_format.save_peft(self, save_directory, adapter_name)
        if format != "adapterhub":
            raise AdapterConfigError(f"format={format!r}: use 'adapterhub' or 'peft'")
        if isinstance(config, TargetedLoRAConfig):
            raise AdapterConfigError(
                f"adapter {adapter_name!r} adapts modules by name (a PEFT adapter), which the AdapterHub format "
                "cannot describe: save it with format='peft'"
            )
        folder = Path(save_directory)
        data = {"config": config.to_dict(), **self._file_meta(adapter_name)}
        for key, value in (meta_dict or {}).items():
            data.setdefault(key, value)
        weights = to_file_keys(self.adapter_state_dict(adapter_name), file_keys_of(self._engine))
        files.write_json(folder / files.CONFIG_NAME, data)
        name = files.SAFE_WEIGHTS_NAME if use_safetensors else files.WEIGHTS_NAME
        files.write_weights(folder / name, weights)
        if with_head:
            self._save_matching_head(folder, adapter_name, use_safetensors)

    def save_all_adapters(self, save_directory, with_head: bool = True, meta_dict=None, use_safetensors=False):
        """Save every adapter into `save_directory/<name>`."""
        for name in self._engine.configs:
            self.save_adapter(Path(save_directory) / name, name, with_head, meta_dict, use_safetensors)

    def save_all_adapter_fusions(self, save_directory, meta_dict=None, use_safetensors: bool = False):
        """Save every AdapterFusion into `save_directory/<fusion name>`."""
        for fusion_name in self._engine.fusions:
            self.save_adapter_fusion(Path(save_directory) / fusion_name, fusion_name, use_safetensors=use_safetensors)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """The model in transformers' format (its own weights, without adapters), plus every adapter and fusion in
        `adapters/<name>` and `fusions/<name>` beside it; `load_model` (or `from_pretrained` of an
        AdapterModel) restores them."""
        folder = Path(save_directory)
        kwargs.pop("state_dict", None)
        super().save_pretrained(folder, state_dict=self._base_weights(self.state_dict()), **kwargs)
        self._save_parts(folder)
        self._save_interface(folder)

    def _save_interface(self, folder: Path) -> None:
        """A model described by an AdapterModelInterface (given or found by `interface="auto"`) saves it beside its
        weights (AdapterHub's adapter_interface.json); `load_model`/`from_pretrained` rebuild the model with it."""
        interface = getattr(self._engine, "interface", None)
        if interface is not None:
            data = {"model_type": self.config.model_type, "interface": interface.to_dict(), "version": FORMAT_VERSION}
            files.write_json(folder / files.INTERFACE_CONFIG_NAME, data)

    def _base_weights(self, state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """`state` without the engine's weights, and with merged LoRA projections as they were before merging."""
        weights = {k: v for k, v in state.items() if not is_engine_key(k)}
        lora = self._engine.methods.get("lora")
        if lora is not None:
            weights.update({k.removeprefix(prefix): v for k, v in lora.unmerged_weights().items()})
        return weights

    def _save_parts(self, folder: Path) -> None:
        for name in self._engine.configs:
            self.save_adapter(folder / "adapters" / name, name, with_head=False)
        for fusion_name in self._engine.fusions:
            self.save_adapter_fusion(folder / "fusions" / fusion_name, fusion_name)

    def _load_saved_parts(self, name_or_path) -> None:
        """Restore what `save_pretrained` wrote beside the weights of a local model folder."""
        folder = Path(str(name_or_path))
        for sub in _subfolders(folder / "adapters"):
            self.load_adapter(sub, with_head=False)
        for sub in _subfolders(folder / "fusions"):
            self.load_adapter_fusion(sub, with_head=False)

    def save_head(self, save_directory, head_name: str | None = None, use_safetensors: bool = False) -> None:
        """Save the task layers of an init()-ed `...For<Task>` model as AdapterHub's static head (`head_name` is
        ignored: such a model has one unnamed head); a flex-head model converts it when loading it."""
        static_heads.save_static(self, save_directory, use_safetensors)

    def load_head(self, save_directory, load_as=None, id2label=None, loading_info: dict | None = None, **_) -> None:
        """Load a static head saved from a model of this class (or a flex head equal to it) into the task layers;
        `load_as` is ignored (the head has no name). Labels come from the file unless `id2label` is given."""
        static_heads.load_static(self, save_directory, id2label, loading_info)

    def _save_matching_head(self, folder: Path, name: str, use_safetensors: bool) -> None:
        """An init()-ed model with task layers saves them beside the adapter (as AdapterHub does)."""
        if static_heads.has_static_head(self):
            static_heads.save_static(self, folder, use_safetensors)

    def load_adapter(
        self,
        adapter_name_or_path,
        config=None,
        version=None,
        model_name=None,
        load_as: str | None = None,
        source: str | None = None,
        with_head: bool = True,
        leave_out: list[int] | None = None,
        id2label=None,
        set_active: bool = False,
        use_safetensors: bool = False,
        loading_info: dict | None = None,
        **kwargs,
    ) -> str:
        """Load an adapter (AdapterHub or PEFT format; a local folder or a Hub repo) and return its name.

        An adapter already loaded under the same name is replaced (with a warning), as AdapterHub does.
        `loading_info`, if given, receives AdapterHub's `missing_keys`/`unexpected_keys` (always empty: files
        whose keys do not match are refused with an error that lists them). A corrupt or hostile weights file, a
        weights file linking outside its folder, integer weights and NaN/inf values are refused with an
        AdapterLoadError naming the file (and key); WORKBENCH_ALLOW_NON_FINITE=1 in the environment lets NaN/inf in.
        """
        if load_as is not None:
            check_name(load_as)
        folder = self._resolve_adapter_folder(
            adapter_name_or_path, source=source, version=version, config=config, model_name=model_name, **kwargs
        )
        if peft_format.is_peft_folder(folder):
            name = load_as or peft_format.default_name(adapter_name_or_path, folder)
            with self._engine.transaction(self):
                return peft_format.load_peft(self, folder, name, leave_out=leave_out, set_active=set_active)
        config_path = folder / files.CONFIG_NAME
        data = files.read_saved_meta(config_path, "adapter")
        self._check_compatible(data, config_path)
        config_data = data["config"]
        if "version" not in data and isinstance(config_data, dict) and config_data.get("non_linearity") in _LEGACY:
            # files from adapter-transformers v1/v2 (no "version") used the activation names of their time
            config_data = {**config_data, "non_linearity": _LEGACY[config_data["non_linearity"]]}
        adapter_config = AdapterConfig.from_dict(config_data, strict=False, source=str(config_path))
        if leave_out:
            if not hasattr(adapter_config, "leave_out"):
                raise AdapterConfigError(f"leave_out= does not apply to {type(adapter_config).__name__} adapters")
            adapter_config = adapter_config.replace(leave_out=sorted(set(leave_out) | set(adapter_config.leave_out)))
        weights_path = files.find_weights(folder, files.WEIGHTS_NAME, files.SAFE_WEIGHTS_NAME)
        if weights_path is None:
            raise AdapterLoadError(
                f"no adapter weights ({files.WEIGHTS_NAME} or {files.SAFE_WEIGHTS_NAME}) in {folder}"
            )
        saved_name = data.get("name")
        name = load_as or saved_name
        if name is None:
            name = check_name(folder.name, "adapter", f"{folder} (its folder name; pass load_as=)")
        replacing = name in self._engine.configs
        state = from_file_keys(files.read_weights(weights_path), file_keys_of(self._engine))
        state = rename_adapter_keys(state, saved_name or name, name)
        state = align_base_prefix(state, self._engine.saved_prefix, self._engine.base is self._engine.root)
        try:  # keys and shapes checked against a meta-device build first: a hostile config allocates nothing
            expected = self._dry_run(adapter_config, name)
        except AdapterConfigError as err:
            raise type(err)(f"{config_path}: {err}") from None
        state = _fill_pool_copies(state, expected)
        _check_weights(state, expected, weights_path, warn=False)
        with self._engine.transaction(self):
            if replacing:  # as AdapterHub does; the old adapter comes back if this load fails
                warnings.warn(f"load_adapter: replacing the existing adapter {name!r} with {folder}", stacklevel=2)
            try:
                self.add_adapter(name, config=adapter_config, overwrite_ok=replacing)
            except AdapterConfigError as err:  # a value the model cannot take (e.g. PHM sizes): name the file
                raise type(err)(f"{config_path}: {err}") from None
            self._load_weights(state, self._engine.state_dict_of(name, keep_vars=True), weights_path)
            if with_head:
                self._load_matching_head(folder, name, id2label)
            if set_active:
                self.set_active_adapters(name)
        if loading_info is not None:  # every key was checked above: a mismatch raises instead of being listed
            loading_info.update(missing_keys=[], unexpected_keys=[])
        return name

    def _resolve_adapter_folder(self, name_or_path, **kwargs) -> Path:
        path = Path(str(name_or_path)).expanduser()
        if path.is_dir():
            return path
        if _ADAPTER_RESOLVER is None:
            raise AdapterLoadError(f"{name_or_path!r} is not a folder, and no Hub resolver is registered")
        return _ADAPTER_RESOLVER(str(name_or_path), model=self, **kwargs)

    def _check_compatible(self, data: dict, path: Path) -> None:
        config = self._engine.base.config
        model_type = data.get("model_type")
        if model_type and model_type.replace("_", "-") != config.model_type.replace("_", "-"):
            raise AdapterLoadError(
                f"{path} was saved for model type {model_type!r}; this model is {config.model_type!r}"
            )
        hidden = data.get("hidden_size")
        if hidden and hidden != getattr(config, "hidden_size", hidden):
            raise AdapterLoadError(f"{path} was saved for hidden size {hidden}; this model has {config.hidden_size}")

    def _load_matching_head(self, folder: Path, name: str, id2label) -> None:
        """A head saved beside the adapter goes into this model's task layers if it is this class's head (or a flex
        head equal to it); any other head is skipped with a warning, as AdapterHub does."""
        config_path = folder / files.HEAD_CONFIG_NAME
        if not static_heads.has_static_head(self) or not config_path.is_file():
            return
        data = files.read_saved_meta(config_path, "head")
        own = type(self).__name__
        if data["config"] is None and data.get("model_class") != own:
            warnings.warn(
                f"{config_path}: a head of {data.get('model_class')} does not fit {own}; not loaded", stacklevel=3
            )
            return
        if data["config"] is not None:
            try:
                expected, _ = static_heads.flex_config(own, self.config)
            except HeadError:
                expected = None
            if expected is None or data["config"].get("head_type") != expected["head_type"]:
                warnings.warn(
                    f"{config_path}: a {data['config'].get('head_type')} head does not fit {own}; not loaded",
                    stacklevel=3,
                )
                return
        static_heads.load_static(self, folder, id2label)

    def _load_weights(self, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: Path) -> None:
        """Copy `state` into the tensors `own` (key -> tensor) after checking keys, shapes and values.

        Weights with NaN or infinite values are refused (naming the key) unless the environment variable
        WORKBENCH_ALLOW_NON_FINITE=1 is set, for files that hold such values on purpose (e.g. masks of -inf).
        Integer or bool weights where the model has floats are refused rather than cast.
        """
        _check_weights(state, {k: tuple(v.shape) for k, v in own.items()}, source)
        allow_non_finite = os.environ.get(ALLOW_NON_FINITE_ENV, "") == "1"
        for key, tensor in state.items():
            if own[key].is_floating_point() and not tensor.is_floating_point():
                raise AdapterLoadError(
                    f"{source}: weight {key!r} has dtype {tensor.dtype}, not floating point ({own[key].dtype} expected)"
                )
            if not allow_non_finite and tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise AdapterLoadError(
                    f"{source}: weight {key!r} holds NaN or infinite values (set {ALLOW_NON_FINITE_ENV}=1 to allow)"
                )
        with torch.no_grad():
            for key, tensor in state.items():
                own[key].copy_(tensor.to(own[key].dtype))

    def save_adapter_fusion(
        self, save_directory, adapter_names, with_head: bool | str = False, use_safetensors: bool = False, **_
    ) -> None:
        """Write adapter_fusion_config.json and the fusion weights; `with_head` (a head name, or True for the head
        named like the fusion) saves that head beside them."""
        fusion_name = _fusion_key(adapter_names)
        if fusion_name not in self._engine.fusions:
            raise AdapterConfigError(f"no AdapterFusion named {fusion_name!r}")
        names, config = self._engine.fusions[fusion_name]
        folder = Path(save_directory)
        data = {"adapter_names": list(names), "config": config.to_dict(), **self._file_meta(fusion_name)}
        files.write_json(folder / files.ADAPTERFUSION_CONFIG_NAME, data)
        weights = to_file_keys(self._engine.state_dict_of("fusion:" + fusion_name), file_keys_of(self._engine))
        name = files.SAFE_ADAPTERFUSION_WEIGHTS_NAME if use_safetensors else files.ADAPTERFUSION_WEIGHTS_NAME
        files.write_weights(folder / name, weights)
        if with_head:
            self._save_fusion_head(folder, fusion_name if with_head is True else with_head, use_safetensors)

    def _save_fusion_head(self, folder: Path, head_name: str, use_safetensors: bool) -> None:
        """Overridden by models with flex heads."""

    def load_adapter_fusion(
        self,
        adapter_fusion_name_or_path,
        load_as: str | None = None,
        set_active: bool = False,
        with_head: bool = True,
        **_,
    ) -> str:
        """Load a fusion saved in the AdapterHub format (the fused adapters must be loaded already), and the head
        saved beside it under its saved name (`with_head`)."""
        folder = Path(adapter_fusion_name_or_path)
        config_path = folder / files.ADAPTERFUSION_CONFIG_NAME
        data = files.read_saved_meta(config_path, "fusion")
        self._check_compatible(data, config_path)
        saved_name = data.get("name")
        names = data.get("adapter_names") or (saved_name.split(",") if saved_name else None)
        if not names:
            raise AdapterLoadError(f"{config_path} names no adapters ('adapter_names')")
        if saved_name and "," in saved_name and saved_name.split(",") != list(names):
            raise AdapterLoadError(
                f"{config_path}: name={saved_name!r} and adapter_names={names!r} disagree on the fused adapters"
            )
        missing = [n for n in names if n not in self._engine.configs]
        if missing:
            raise AdapterLoadError(f"{config_path} fuses adapter(s) {missing} that are not loaded")
        fusion_name = load_as or saved_name or ",".join(names)
        check_fusion_name(fusion_name, str(config_path))
        weights_path = files.find_weights(
            folder, files.ADAPTERFUSION_WEIGHTS_NAME, files.SAFE_ADAPTERFUSION_WEIGHTS_NAME
        )
        if weights_path is None:
            raise AdapterLoadError(f"no fusion weights ({files.ADAPTERFUSION_WEIGHTS_NAME}) in {folder}")
        state = from_file_keys(files.read_weights(weights_path), file_keys_of(self._engine))
        state = rename_prefixed(state, "adapter_fusion_layer", saved_name or fusion_name, fusion_name)
        state = align_base_prefix(state, self._engine.saved_prefix, self._engine.base is self._engine.root)
        try:
            config = AdapterFusionConfig.load(dict(data["config"]))
        except (AdapterConfigError, KeyError, TypeError) as err:
            raise AdapterLoadError(f"{config_path}: bad fusion config ({err})") from None
        with self._engine.transaction(self):
            self.add_adapter_fusion(names, config, name=fusion_name if fusion_name != ",".join(names) else None)
            own = self._engine.state_dict_of("fusion:" + fusion_name, keep_vars=True)
            self._load_weights(state, own, weights_path)
            if with_head:
                self._load_fusion_head(folder)
            if set_active:
                self.set_active_adapters(Fuse(*names, name=fusion_name if fusion_name != ",".join(names) else None))
        return fusion_name

    def _load_fusion_head(self, folder: Path) -> None:
        """Overridden by models with flex heads."""

    # --- MTL-LoRA parameter sharing ----------------------------------------------------------------------

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

    # --- merging and averaging ----------------------------------------------------------------------------

    def merge_adapter(self, name: str) -> None:
        """Merge a LoRA/(IA)^3 adapter into the base weights (no extra cost at inference), all or nothing.

        `reset_adapter()` restores the weights bit for bit; no copy of them is kept (see `LoRATarget.merge`).
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
        """Undo `merge_adapter`: the base weights are again exactly what they were."""
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


_POOL_COPY = re.compile(r"\.prefix_tuning\.pool\.(prefix_tunings\..+)$")  # a copy under an attention module
_POOL_TENSOR = re.compile(r"(?:^|\.)prefix_tuning\.(?:pool\.)?(prefix_tunings\..+)$")  # the pool or a copy


def _fill_pool_copies(state: dict[str, torch.Tensor], shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Prefix tuning's pool is one module that files repeat under every attention module (AdapterHub's layout);
    files written by workbench before it repeated them everywhere (with `leave_out`) lack some copies: they are the
    pool's own tensors, so they are taken from a copy the file has."""
    present: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _POOL_TENSOR.search(key)
        if match:
            present.setdefault(match.group(1), tensor)
    filled = dict(state)
    for key in shapes:
        match = _POOL_COPY.search(key)
        if key not in state and match and match.group(1) in present:
            filled[key] = present[match.group(1)]
    return filled


def _check_weights(state: dict[str, torch.Tensor], shapes: dict[str, tuple], source, warn: bool = True) -> None:
    """The file's weights are exactly the expected keys with the expected shapes."""
    missing = sorted(set(shapes) - set(state))
    # The adapters library does not save a bare base model's shared PHM parameters (no leading dot).
    unsaved = [k for k in missing if k.startswith("shared_parameters.")]
    if unsaved and warn:
        warnings.warn(f"{source} has no {_few(unsaved)}; they keep their initial values", stacklevel=4)
    missing = [k for k in missing if k not in unsaved]
    unexpected = sorted(set(state) - set(shapes))
    if missing:
        raise AdapterLoadError(f"{source} lacks weight(s) {_few(missing)}")
    if unexpected:
        raise AdapterLoadError(f"{source} has unexpected weight(s) {_few(unexpected)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != shapes[key]:
            raise AdapterLoadError(
                f"{source}: weight {key!r} has shape {tuple(tensor.shape)}, the model expects {shapes[key]}"
            )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _fusion_key(adapter_names) -> str:
    """A fusion's name from a Fuse block, a list of adapter names or the name itself."""
    if isinstance(adapter_names, Fuse):
        return adapter_names.name
    return adapter_names if isinstance(adapter_names, str) else ",".join(_fusion_names(adapter_names))


def _fusion_names(adapter_names) -> list[str]:
    if isinstance(adapter_names, Fuse):
        return adapter_names.names()
    if isinstance(adapter_names, str):
        return adapter_names.split(",")
    return list(adapter_names)


def _blocks(setup) -> list[Block]:
    if not isinstance(setup, Block):
        return []
    return [setup] + [b for child in setup for b in _blocks(child)]


def _fuse_blocks(setup) -> list[Fuse]:
    if isinstance(setup, Fuse):
        return [setup]
    if isinstance(setup, Block):
        return [f for child in setup for f in _fuse_blocks(child)]
    return []


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


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
