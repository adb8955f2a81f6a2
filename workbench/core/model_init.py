"""`init()`: adapter support for an already loaded transformers model, and how a model's spec is found.

The spec comes from the family's entry in `families.ARCHITECTURES`, an `AdapterModelInterface` the caller gives (or
AdapterHub's plugin interface for the model type, or the one saved beside the model), or, with `interface="auto"`,
from `autodescribe`. `AdapterModel` finds its spec the same way (`spec_of`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn
from transformers import GenerationMixin

from . import files
from .archs import spec_from_interface
from .autodescribe import describe_model
from .errors import AdapterConfigError, AdapterLoadError, UnsupportedModelError
from .families import ARCHITECTURES
from .interface import AdapterModelInterface
from .model_mixin import ModelAdaptersMixin
from .plugin_interfaces import plugin_interface
from .rows import rows_scope

_ADAPTER_CLASSES: dict[type, type] = {}


class _GenerateByRows:
    """`generate(..., adapter_names=[...])` for a transformers model given adapters by `init()`."""

    def generate(self, *args, adapter_names=None, **kwargs):
        self._engine.drop_stale_state()  # its encoder may run before any call of the whole model
        with rows_scope(adapter_names, widen=True):
            return super().generate(*args, **kwargs)


def init(model: nn.Module, interface: AdapterModelInterface | str | None = None) -> nn.Module:
    """Add adapter support to an already loaded transformers model, in place, and return it.

    `interface` describes a model family the engine does not ship (AdapterHub's `AdapterModelInterface`); every
    module it names is checked on the model first. `interface="auto"` uses the shipped spec when there is one and
    otherwise describes a pre-LN decoder automatically (`autodescribe.describe_model`), refusing what it cannot
    verify.
    """
    if isinstance(model, ModelAdaptersMixin):
        return model
    base, spec, interface = spec_of(model, model.base_model, interface)
    original = type(model)
    model.__class__ = _adapter_class(original)
    try:
        model._init_adapters(base, spec)
    except Exception:  # an unsupported model type or configuration: the model stays as it was
        model.__class__ = original
        raise
    model._engine.interface = interface  # saved beside the model by save_pretrained (adapter_interface.json)
    # as AdapterHub's init(): the interface the model was described with, or its plugin interface for the model type
    model_type = getattr(base.config, "model_type", None)
    base.adapter_interface = interface or plugin_interface(model_type, model._engine.spec.methods)
    if base is not model:
        share_adapter_api(base, model._engine)
    return model


def spec_of(model: nn.Module, base: nn.Module, interface):
    """(base model, spec or None for the shipped one, the AdapterModelInterface used or None) for `init()` and
    `AdapterModel`; `interface="auto"` describes a model type without a shipped spec."""
    if isinstance(interface, str):
        if interface != "auto":
            raise AdapterConfigError(f"interface must be an AdapterModelInterface or 'auto', not {interface!r}")
        if getattr(base.config, "model_type", None) in ARCHITECTURES:
            return base, None, None
        interface = describe_model(model)
    model_type = getattr(base.config, "model_type", None)
    if interface is None and model_type not in ARCHITECTURES:
        interface = plugin_interface(model_type)  # AdapterHub's init() knows these model types by an interface
    if interface is None:
        return base, None, None
    if not isinstance(interface, AdapterModelInterface):
        kind = type(interface).__name__
        raise AdapterConfigError(f"interface must be an AdapterModelInterface or 'auto', not a {kind}")
    if interface.base_model:
        try:
            base = model.get_submodule(interface.base_model)
        except AttributeError:
            raise UnsupportedModelError(
                f"AdapterModelInterface: base_model={interface.base_model!r} is not a module of {type(model).__name__}"
            ) from None
    spec = spec_from_interface(interface)
    _check_interface_paths(base, spec, interface)
    return base, replace(spec, pooling=_pooling_of(base, interface)), interface


def _adapter_class(cls: type) -> type:
    """`cls` with the adapter API (one class per model class, so isinstance and pickling keep working); models that
    generate also take `adapter_names=` in `generate`."""
    if cls not in _ADAPTER_CLASSES:
        mixins = (_GenerateByRows, ModelAdaptersMixin) if issubclass(cls, GenerationMixin) else (ModelAdaptersMixin,)
        _ADAPTER_CLASSES[cls] = type(cls.__name__, (*mixins, cls), {"__module__": cls.__module__})
    return _ADAPTER_CLASSES[cls]


def share_adapter_api(base: nn.Module, engine) -> None:
    """AdapterHub code also calls the adapter API on `model.base_model` (`model.base_model.add_adapter(...)`): the
    wrapped base model gets the same API over the same engine, instead of transformers' own PEFT methods."""
    if isinstance(base, ModelAdaptersMixin):
        return
    base.__class__ = _adapter_class(type(base))
    base._engine = engine


def saved_interface(model_name_or_path) -> AdapterModelInterface | None:
    """The interface `save_pretrained` wrote beside a model described by one (adapter_interface.json), if any."""
    interface_file = Path(str(model_name_or_path)) / files.INTERFACE_CONFIG_NAME
    if not interface_file.is_file():
        return None
    data = files.read_json(interface_file)
    try:
        return AdapterModelInterface(**data["interface"])
    except (KeyError, TypeError, ValueError) as err:
        raise AdapterLoadError(f"{interface_file}: not an AdapterModelInterface ({err})") from None


def _pooling_of(base: nn.Module, interface: AdapterModelInterface) -> str:
    layers = base.get_submodule(interface.model_layers)
    attention = layers[0].get_submodule(interface.layer_self_attn) if len(layers) else None
    causal = getattr(attention, "is_causal", False) or getattr(base.config, "is_decoder", False)
    return "last" if causal else "first"


def _check_interface_paths(base: nn.Module, spec, interface: AdapterModelInterface) -> None:
    """Every module the interface names must exist (host modules are created by the engine)."""
    try:
        layers = base.get_submodule(spec.layers)
        base.get_submodule(spec.embeddings)
    except AttributeError as err:
        raise UnsupportedModelError(f"AdapterModelInterface: {err}") from None
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise UnsupportedModelError(f"AdapterModelInterface: model_layers={spec.layers!r} is not a non-empty list")
    site_paths = [p for s in (spec.attention_site, spec.output_site) for p in (s.sublayer, s.residual, s.norm) if p]
    for path in [spec.attention, *spec.lora.values(), *site_paths]:
        try:
            layers[0].get_submodule(path)
        except AttributeError:
            raise UnsupportedModelError(
                f"AdapterModelInterface names {path!r}, which layer 0 ({type(layers[0]).__name__}) does not have"
            ) from None
