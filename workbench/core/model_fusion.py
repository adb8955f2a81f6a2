"""AdapterFusion on a workbench model: adding, deleting, training, moving, saving and loading fusion layers
(AdapterHub's names, semantics and files). A part of `ModelAdaptersMixin`: it works on the model's `_engine` and
uses the adapter API the other parts provide (`_require`, `set_active_adapters`, `_file_meta`, `_load_weights`).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import nn

from . import files
from .composition import Block, Fuse, parse_composition
from .configs import AdapterFusionConfig, BnConfig
from .errors import AdapterConfigError, AdapterLoadError, CompositionError
from .keys import align_base_prefix, file_keys_of, from_file_keys, rename_prefixed, to_file_keys
from .names import check_fusion_name
from .runtime import check_setup
from .weight_checks import copy_into


class AdapterFusionMixin:
    """The AdapterFusion methods of `ModelAdaptersMixin`."""

    @property
    def adapter_fusions(self) -> dict[str, list[str]]:
        """Fusion name -> the names of the adapters it fuses."""
        return {name: list(names) for name, (names, _) in self._engine.fusions.items()}

    def add_adapter_fusion(
        self, adapter_names, config=None, name: str | None = None, overwrite_ok: bool = False, set_active: bool = False
    ) -> None:
        """Add an AdapterFusion layer over existing bottleneck adapters."""
        names = _fusion_names(adapter_names)
        fusion_name = name or ",".join(names)
        check_fusion_name(fusion_name)
        self._check_fusable(names)
        config = AdapterFusionConfig.load(config)
        engine = self._engine
        with engine.transaction(self):
            if fusion_name in engine.fusions:
                if not overwrite_ok:
                    raise AdapterConfigError(f"an AdapterFusion named {fusion_name!r} already exists")
                self.delete_adapter_fusion(fusion_name)
            engine.fusions[fusion_name] = (names, config)
            engine.method("bottleneck").add_fusion(fusion_name, names, config)
            reference = engine.reference_weight()  # the model's device and float dtype, as adapters take them
            for module in engine.owned.get("fusion:" + fusion_name, {}).values():
                module.to(reference.device, dtype=reference.dtype).train(self.training)
            if set_active:
                self.set_active_adapters(Fuse(*names, name=fusion_name if fusion_name != ",".join(names) else None))

    def _check_fusable(self, names: list[str]) -> None:
        for adapter in names:
            if not isinstance(self._require(adapter), BnConfig):
                raise CompositionError(f"AdapterFusion needs bottleneck adapters; {adapter!r} is not one")
        configs = [self._engine.configs[n] for n in names]
        for location in ("mh_adapter", "output_adapter", "cross_adapter"):
            if len({getattr(c, location) for c in configs}) > 1:
                raise CompositionError(f"adapters {names} disagree on {location}; they cannot be fused")

    def _check_fusion_fits(self, fusion_name: str) -> None:
        """Fusion `fusion_name` still runs after one of its adapters was replaced: its adapters can be fused, and
        its layers are still exactly those that hold all of them."""
        names, _ = self._engine.fusions[fusion_name]
        self._check_fusable(names)
        if not self._method("bottleneck").fusion_fits(fusion_name, names):
            raise CompositionError(f"adapters {names} are no longer all in the layers of the fusion")

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

    def _fusion_parameters(self, fusion_name: str) -> list[tuple[str, nn.Parameter]]:
        return list(self._engine.named_parameters_of("fusion:" + fusion_name))

    def adapter_fusion_to(self, adapter_names, device=None, dtype: torch.dtype | None = None) -> None:
        """Move the fusion layers of `adapter_names` (a Fuse, list or fusion name) to `device`/`dtype`."""
        fusion_name = _fusion_key(adapter_names)
        if fusion_name not in self._engine.fusions:
            raise AdapterConfigError(f"no AdapterFusion named {fusion_name!r}")
        for module in self._engine.owned.get("fusion:" + fusion_name, {}).values():
            module.to(device=device, dtype=dtype)

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

    def save_all_adapter_fusions(self, save_directory, meta_dict=None, use_safetensors: bool = False):
        """Save every AdapterFusion into `save_directory/<fusion name>`."""
        for fusion_name in self._engine.fusions:
            self.save_adapter_fusion(Path(save_directory) / fusion_name, fusion_name, use_safetensors=use_safetensors)

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
        existing = self._engine.fusions.get(fusion_name)
        in_place = existing is not None and list(existing[0]) == list(names) and existing[1] == config
        with self._engine.transaction(self):
            if in_place:  # as AdapterHub: the file's weights go into the fusion already there (identity kept)
                warnings.warn(f"load_adapter_fusion: {folder} into the existing fusion {fusion_name!r}", stacklevel=2)
            else:
                self.add_adapter_fusion(names, config, name=fusion_name if fusion_name != ",".join(names) else None)
            own = self._engine.state_dict_of("fusion:" + fusion_name, keep_vars=True)
            idle = self._engine.method("bottleneck").idle_fusion_paths(fusion_name, names)
            own = {k: v for k, v in own.items() if k in state or not k.startswith(idle)}  # older files lack them
            if in_place:  # a later failure, here or in an enclosing load, writes the old values back
                old = {key: value.detach().clone() for key, value in own.items()}
                self._engine.on_undo(functools.partial(copy_into, old, own))
            self._load_weights(state, own, weights_path)
            if with_head:
                self._load_fusion_head(folder, set_active)
            if set_active:
                self.set_active_adapters(Fuse(*names, name=fusion_name if fusion_name != ",".join(names) else None))
        return fusion_name

    def _load_fusion_head(self, folder: Path, set_active: bool) -> None:
        """Overridden by models with flex heads."""


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
