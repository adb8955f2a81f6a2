"""Saving and loading adapters (AdapterHub's files; PEFT's through `peft_format`), a model with its adapters
(`save_pretrained`) and static heads. A part of `ModelAdaptersMixin`: it works on the model's `_engine`; loading
checks every file against a meta-device build first (`_dry_run`) and its weights with `weight_checks`.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

from . import files, peft_format, static_heads
from .configs import AdapterConfig, TargetedLoRAConfig
from .errors import AdapterConfigError, AdapterLoadError, HeadError
from .keys import align_base_prefix, file_keys_of, from_file_keys, is_engine_key, rename_adapter_keys, to_file_keys
from .names import check_name
from .weight_checks import check_weights, copy_into, fill_pool_copies

ADAPTERS_API_VERSION = "1.3.0"  # the `adapters` release whose API and file format workbench implements
FORMAT_VERSION = f"adapters.{ADAPTERS_API_VERSION}"
ALLOW_NON_FINITE_ENV = "WORKBENCH_ALLOW_NON_FINITE"  # "1": load weights holding NaN or inf (see _load_weights)
_LEGACY = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # activation names of unversioned (pre-3.0) adapter files
# The class names AdapterHub's `adapters.init` gives models it swaps to a class of its own (`model_class` in files).
_INIT_CLASS_NAMES = {"EncoderDecoderModel": "EncoderDecoderModelWithAdapters"}

# Turns a Hub id (or AdapterHub name) into a local folder; `workbench.hub` registers one, the engine never imports it.
_ADAPTER_RESOLVER = None


def register_adapter_resolver(resolver) -> None:
    """Set the function `load_adapter` calls for names that are not local folders:
    `resolver(name_or_id, model=..., source=..., version=..., config=..., model_name=..., **kwargs) -> Path`."""
    global _ADAPTER_RESOLVER
    _ADAPTER_RESOLVER = resolver


class AdapterFilesMixin:
    """The saving and loading methods of `ModelAdaptersMixin`."""

    # --- saving ----------------------------------------------------------------------------------------------

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

    # --- loading ---------------------------------------------------------------------------------------------

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

        An adapter already on the model under the same name with the same config takes the file's weights in place,
        as in AdapterHub: its parameter objects (an optimizer's), requires_grad flags, fusions and the active setup
        stay. One with another config is replaced (with a warning) as `add_adapter(overwrite_ok=True)` replaces it
        (AdapterHub would keep the old config and load what fits of the weights, silently).
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
        saved_config = adapter_config
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
        state = from_file_keys(files.read_weights(weights_path), file_keys_of(self._engine))
        state = rename_adapter_keys(state, saved_name or name, name)
        state = align_base_prefix(state, self._engine.saved_prefix, self._engine.base is self._engine.root)
        try:  # keys and shapes checked against a meta-device build first: a hostile config allocates nothing
            expected = self._dry_run(adapter_config, name)
        except AdapterConfigError as err:
            raise type(err)(f"{config_path}: {err}") from None
        left_out = self._drop_left_out_layers(state, expected, saved_config, adapter_config, name, config_path)
        state = fill_pool_copies({k: v for k, v in state.items() if k not in left_out}, expected)
        check_weights(state, expected, weights_path, warn=False)
        _check_finite(state, weights_path)  # before anything changes
        replacing = name in self._engine.configs
        in_place = replacing and self._fits(name, adapter_config, expected)
        with self._engine.transaction(self):  # all or nothing: a failed load leaves the old adapter as it was
            if not in_place:
                if replacing:
                    warnings.warn(f"load_adapter: replacing the existing adapter {name!r} with {folder}", stacklevel=2)
                try:
                    self.add_adapter(name, config=adapter_config, overwrite_ok=replacing)
                except AdapterConfigError as err:  # a value the model cannot take (e.g. PHM sizes): name the file
                    raise type(err)(f"{config_path}: {err}") from None
            if with_head:  # before the weights: a head that does not load leaves them untouched
                self._load_matching_head(folder, name, id2label, set_active)
            own = self._engine.state_dict_of(name, keep_vars=True)
            self._check_loaded(state, own, weights_path)
            if in_place:  # a later failure, here or in an enclosing load (load_adapter_setup), writes them back
                old = {key: own[key].detach().clone() for key in state}
                self._engine.on_undo(functools.partial(self._write_weights, name, old, own))
            self._write_weights(name, state, own)
            if set_active:
                self.set_active_adapters(name)
        if loading_info is not None:  # every key was checked above: a mismatch raises instead of being listed
            loading_info.update(missing_keys=[], unexpected_keys=left_out)
        return name

    def _drop_left_out_layers(self, state, expected, saved_config, config, name, config_path) -> list[str]:
        """The file's weights of the layers `load_adapter(leave_out=...)` leaves out (not loaded, as AdapterHub
        reports them: unexpected keys). A method whose weights span all layers in one tensor cannot leave one out."""
        if config is saved_config:
            return []
        saved = self._dry_run(saved_config, name)
        reshaped = sorted(k for k in expected if k in saved and saved[k] != expected[k])
        if reshaped:
            raise AdapterConfigError(
                f"{config_path}: leave_out= cannot apply when loading this {type(config).__name__} adapter: its "
                f"weight {reshaped[0]} holds every layer in one tensor; add it with leave_out= and train it instead"
            )
        return sorted(k for k in state if k in saved and k not in expected)

    def _fits(self, name: str, config: AdapterConfig, expected: dict[str, tuple]) -> bool:
        """Adapter `name` has `config` and the weights a new one would have: a load can write into it."""
        current = {key: tuple(value.shape) for key, value in self._engine.state_dict_of(name).items()}
        return self._engine.configs[name] == config and current == expected

    def _write_weights(self, name: str, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
        """Copy checked `state` into adapter `name`'s tensors `own`. A merged LoRA adapter is unmerged for it and
        merged again after: its merged projections would otherwise keep computing with the old values."""
        lora = self._engine.methods.get("lora")
        merged = lora is not None and lora.unmerge(name)
        try:
            copy_into(state, own)
        finally:
            if merged:
                lora.merge(name)

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

    def _load_matching_head(self, folder: Path, name: str, id2label, set_active: bool) -> None:
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
        """Copy `state` into the tensors `own` (key -> tensor) after checking them (`_check_loaded`)."""
        self._check_loaded(state, own, source)
        copy_into(state, own)

    def _check_loaded(self, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], source: Path) -> None:
        """Check the keys, shapes and values of `state` against the tensors `own` (key -> tensor) it will go into.

        Weights with NaN or infinite values are refused (naming the key) unless the environment variable
        WORKBENCH_ALLOW_NON_FINITE=1 is set, for files that hold such values on purpose (e.g. masks of -inf).
        Integer or bool weights where the model has floats are refused rather than cast.
        """
        check_weights(state, {k: tuple(v.shape) for k, v in own.items()}, source)
        for key, tensor in state.items():
            if own[key].is_floating_point() and not tensor.is_floating_point():
                raise AdapterLoadError(
                    f"{source}: weight {key!r} has dtype {tensor.dtype}, not floating point ({own[key].dtype} expected)"
                )
        _check_finite(state, source)


def _check_finite(state: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse NaN/inf weights (naming the key) unless WORKBENCH_ALLOW_NON_FINITE=1."""
    if os.environ.get(ALLOW_NON_FINITE_ENV, "") == "1":
        return
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise AdapterLoadError(
                f"{source}: weight {key!r} holds NaN or infinite values (set {ALLOW_NON_FINITE_ENV}=1 to allow)"
            )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
