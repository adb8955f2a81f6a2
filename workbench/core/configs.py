"""Adapter and fusion configurations with AdapterHub's names, defaults, JSON layout and string syntax.

A config is a frozen dataclass that also reads like a dict (`config["r"]`). Strings resolve through
`ADAPTER_CONFIG_MAP` and may carry overrides: `"seq_bn[reduction_factor=4,non_linearity='gelu']"`, and
`"a|b"` combines configs into a `ConfigUnion`.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import re
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from . import files
from .errors import AdapterConfigError, AdapterConfigTypeError
from .methods.activations import check_activation


@dataclass(frozen=True, eq=False)
class AdapterConfig(Mapping):
    """Base class: dict-like access, `replace`, `to_dict`/`from_dict`/`load`."""

    architecture: ClassVar[str | None] = None

    def __post_init__(self):
        _check_value_types(self, type(self).__name__)
        _check_values(self, type(self).__name__)

    # Mapping interface over the serialised form.
    def __getitem__(self, key):
        return self.to_dict()[key]

    def __iter__(self):
        return iter(self.to_dict())

    def __len__(self):
        return len(self.to_dict())

    def __eq__(self, other):
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        if self.architecture is not None:
            data["architecture"] = self.architecture
        return data

    def replace(self, **changes) -> AdapterConfig:
        _check_keys(type(self), changes, f"config {type(self).__name__}")
        return dataclasses.replace(self, **changes)  # __post_init__ checks the new values

    @classmethod
    def from_dict(cls, data: Mapping, *, strict: bool = True, source: str = "config") -> AdapterConfig:
        """Build a config from its dict form, choosing the class from its `architecture` key."""
        if isinstance(data, AdapterConfig):
            return data
        if not isinstance(data, Mapping):
            raise AdapterConfigError(f"{source}: config={data!r} must be a JSON object (a mapping of keys to values)")
        data = dict(data)
        architecture = data.pop("architecture", None)
        if architecture == "union":
            parts = data.get("configs")
            if not isinstance(parts, list) or not parts:
                raise AdapterConfigError(f"{source}: configs={parts!r} must be a non-empty list for a config union")
            return ConfigUnion(*[AdapterConfig.from_dict(c, strict=strict, source=source) for c in parts])
        target = ARCHITECTURE_CLASSES.get(architecture) if isinstance(architecture, str | None) else None
        if target is None:
            known = ", ".join(repr(a) for a in ARCHITECTURE_CLASSES)
            raise AdapterConfigError(f"{source}: unknown adapter architecture={architecture!r} (known: {known})")
        if "invertible_adapter" in data:  # adapter-transformers v1 layout
            legacy = data.pop("invertible_adapter") or {}
            if not isinstance(legacy, Mapping):
                raise AdapterConfigError(f"{source}: invertible_adapter={legacy!r} must be a JSON object or null")
            data.setdefault("inv_adapter", legacy.get("block_type"))
            data.setdefault("inv_adapter_reduction_factor", legacy.get("reduction_factor"))
        known = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - known)
        if unknown and strict:
            raise AdapterConfigError(f"{source}: unknown key(s) {unknown} for {target.__name__}")
        if unknown:
            warnings.warn(f"{source}: ignoring unknown key(s) {unknown} for {target.__name__}", stacklevel=3)
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [f.name for f in dataclasses.fields(target) if f.name not in kwargs and _required(f)]
        if missing:
            raise AdapterConfigError(f"{source}: missing key(s) {missing} for {target.__name__}")
        try:
            return target(**kwargs)
        except AdapterConfigError as err:
            raise type(err)(f"{source}: {err}") from None

    @classmethod
    def load(cls, config: str | Mapping | AdapterConfig | None, **overrides) -> AdapterConfig:
        """Resolve a config given as an object, a dict, a preset name, a JSON file or a `name[k=v]` string."""
        if config is None:
            config = DEFAULT_ADAPTER_CONFIG
        if isinstance(config, AdapterConfig):
            resolved = config
        elif isinstance(config, Mapping):
            resolved = AdapterConfig.from_dict(config)
        elif isinstance(config, str) and config in ADAPTER_CONFIG_MAP:
            resolved = ADAPTER_CONFIG_MAP[config]
        elif isinstance(config, str) and Path(config).is_file():
            data = files.read_json(config)
            resolved = AdapterConfig.from_dict(data.get("config", data), source=config)
        elif isinstance(config, str):
            resolved = parse_config_string(config)
        else:
            raise AdapterConfigError(f"cannot use {config!r} as an adapter config")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return resolved.replace(**overrides) if overrides else resolved


def _plain(value):
    if isinstance(value, tuple):
        return list(value)
    return value


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_value_types(config: AdapterConfig, where: str) -> None:
    """Refuse values of the wrong type (`reduction_factor='banana'`, `r=True`) with the key and value named."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        allowed = _runtime_types(hints.get(f.name))
        value = getattr(config, f.name)
        wrong_bool = isinstance(value, bool) and allowed is not None and bool not in allowed
        if allowed and (wrong_bool or not isinstance(value, allowed)):
            names = " or ".join(sorted({t.__name__ for t in allowed if t is not int or float not in allowed}))
            raise AdapterConfigError(f"{where}: {f.name}={value!r} must be {names}")


_AT_LEAST_ONE = ("r", "n_up_projection", "prefix_length", "bottleneck_size", "prompt_length", "phm_dim", "phm_rank")
_PROBABILITIES = ("dropout", "dropout_prob")


def _check_values(config: AdapterConfig, where: str) -> None:
    """Refuse values of the right type that would crash or misbehave later (`reduction_factor=0` divides by
    zero, `dropout=1.5`, `r=0`, an unknown activation), with the key and value named. Runs after the type check."""
    for f in dataclasses.fields(config):
        key, value = f.name, getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(where, key, value, "a finite number")
        if value is None:
            continue
        if key in _AT_LEAST_ONE and value < 1:
            raise _bad(where, key, value, "an integer >= 1")
        if key in _PROBABILITIES and not 0 <= value < 1:
            raise _bad(where, key, value, "a probability in [0, 1)")
        if key in ("reduction_factor", "inv_adapter_reduction_factor"):
            _check_factor(where, key, value)
        if key == "leave_out" and not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
            raise _bad(where, key, value, "a list of layer indices (integers >= 0)")
        if key == "non_linearity":
            check_activation(value, key, where)
        dtype = getattr(torch, value, None) if key == "dtype" else None
        if key == "dtype" and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise _bad(where, key, value, "a floating-point torch dtype name such as 'float32' or 'bfloat16'")


def _check_factor(where: str, key: str, value) -> None:
    """A positive number, or (reduction_factor) a dict from layer index strings or 'default' to one."""
    if not isinstance(value, Mapping):
        if value <= 0:
            raise _bad(where, key, value, "a positive number")
        return
    if not value:
        raise _bad(where, key, value, "a positive number or a non-empty dict")
    for layer, factor in value.items():
        if not (isinstance(layer, str) and (layer == "default" or (layer.isascii() and layer.isdigit()))):
            raise _bad(where, key, value, f"keyed by layer index strings ('0', '1', ...) or 'default', not {layer!r}")
        number = isinstance(factor, int | float) and not isinstance(factor, bool)
        if not (number and math.isfinite(factor) and factor > 0):
            raise _bad(where, key, value, f"a positive number for layer {layer!r}, not {factor!r}")


def _bad(where: str, key: str, value, what: str) -> AdapterConfigError:
    return AdapterConfigError(f"{where}: {key}={value!r} must be {what}")


def _runtime_types(hint) -> tuple[type, ...] | None:
    """The isinstance() types a field annotation admits (None when it cannot be checked simply)."""
    if hint is None or hint is Any:
        return None
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [_runtime_types(arg) for arg in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    origin = typing.get_origin(hint) or hint
    if origin is type(None):
        return (type(None),)
    if origin is float:
        return (float, int)
    if origin in (list, tuple):
        return (list, tuple)
    return (origin,) if isinstance(origin, type) else None


def _check_keys(cls, changes: Mapping, where: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise AdapterConfigTypeError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(known)}")


# --- Bottleneck adapters ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BnConfig(AdapterConfig):
    """Bottleneck adapter (Houlsby et al., 2019, https://arxiv.org/abs/1902.00751; Pfeiffer et al., 2021)."""

    mh_adapter: bool
    output_adapter: bool
    reduction_factor: float | Mapping
    non_linearity: str
    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    init_weights_seed: int | None = None
    is_parallel: bool = False
    scaling: float | str = 1.0
    use_gating: bool = False
    residual_before_ln: bool | str = True
    adapter_residual_before_ln: bool = False
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None
    cross_adapter: bool = False
    leave_out: list[int] = field(default_factory=list)
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool | None = True
    shared_W_phm: bool | None = False
    shared_phm_rule: bool | None = True
    factorized_phm_rule: bool | None = False
    phm_c_init: str | None = "normal"
    phm_init_range: float | None = 0.0001
    learn_phm: bool | None = True
    hypercomplex_nonlinearity: str | None = "glorot-uniform"
    phm_rank: int | None = 1
    phm_bias: bool | None = True
    stochastic_depth: float | None = 0.0

    def __post_init__(self):
        if isinstance(self.reduction_factor, Mapping) and not isinstance(self.reduction_factor, dict):
            object.__setattr__(self, "reduction_factor", dict(self.reduction_factor))
        super().__post_init__()
        if isinstance(self.scaling, str) and self.scaling not in ("learned", "channel"):
            raise AdapterConfigError(f"scaling={self.scaling!r}: use a float, 'learned' or 'channel'")
        if self.init_weights not in ("bert", "mam_adapter", "houlsby"):
            raise AdapterConfigError(
                f"init_weights={self.init_weights!r}: use 'bert', 'mam_adapter' or 'houlsby' for bottleneck adapters"
            )
        if self.inv_adapter not in (None, "nice", "glow"):
            raise AdapterConfigError(f"inv_adapter={self.inv_adapter!r}: use None, 'nice' or 'glow'")
        if self.residual_before_ln not in (True, False, "post_add"):
            raise AdapterConfigError(f"residual_before_ln={self.residual_before_ln!r}: use True, False or 'post_add'")
        if self.stochastic_depth is not None and not 0 <= self.stochastic_depth <= 1:
            raise _bad(type(self).__name__, "stochastic_depth", self.stochastic_depth, "a probability in [0, 1]")


@dataclass(frozen=True, eq=False)
class SeqBnConfig(BnConfig):
    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str = "relu"
    reduction_factor: float | Mapping = 16


@dataclass(frozen=True, eq=False)
class SeqBnInvConfig(SeqBnConfig):
    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclass(frozen=True, eq=False)
class DoubleSeqBnConfig(BnConfig):
    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    mh_adapter: bool = True
    output_adapter: bool = True
    non_linearity: str = "swish"
    reduction_factor: float | Mapping = 16


@dataclass(frozen=True, eq=False)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclass(frozen=True, eq=False)
class ParBnConfig(BnConfig):
    original_ln_before: bool = False
    original_ln_after: bool = True
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str = "relu"
    reduction_factor: float | Mapping = 2
    init_weights: str = "mam_adapter"
    is_parallel: bool = True
    scaling: float | str = 4.0


@dataclass(frozen=True, eq=False)
class CompacterConfig(DoubleSeqBnConfig):
    """Compacter (Karimi Mahabadi et al., 2021, https://arxiv.org/abs/2106.04647)."""

    phm_layer: bool = True
    reduction_factor: float | Mapping = 32
    non_linearity: str = "gelu"


@dataclass(frozen=True, eq=False)
class CompacterPlusPlusConfig(SeqBnConfig):
    phm_layer: bool = True
    reduction_factor: float | Mapping = 32
    non_linearity: str = "gelu"


@dataclass(frozen=True, eq=False)
class AdapterPlusConfig(BnConfig):
    """AdapterPlus (Steitz & Roth, 2024, https://arxiv.org/abs/2406.06820): a sequential adapter after the FFN with
    per-channel scaling, Houlsby init and stochastic depth (the adapter branch of a row is dropped in training)."""

    original_ln_after: bool = False
    original_ln_before: bool = True
    residual_before_ln: bool | str = False
    stochastic_depth: float | None = 0.1
    init_weights: str = "houlsby"
    scaling: float | str = "channel"
    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping = 96
    non_linearity: str = "gelu"


# --- LoRA / IA3 ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoRAConfig(AdapterConfig):
    """LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685); with composition_mode="scale", (IA)^3."""

    architecture: ClassVar[str] = "lora"
    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: list[int] = field(default_factory=list)
    r: int = 8
    alpha: float = 8  # AdapterHub annotates int, but its files may hold any number
    dropout: float = 0.0
    attn_matrices: list[str] = field(default_factory=lambda: ["q", "v"])
    composition_mode: str = "add"
    init_weights: str = "lora"
    init_weights_seed: int | None = None
    use_gating: bool = False
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None
    dtype: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.composition_mode not in ("add", "scale"):
            raise AdapterConfigError(f"composition_mode={self.composition_mode!r}: use 'add' or 'scale'")
        if self.init_weights not in ("lora", "bert", "ia3", "vera"):
            raise AdapterConfigError(f"init_weights={self.init_weights!r}: use 'lora', 'bert', 'ia3' or 'vera'")
        bad = [m for m in self.attn_matrices if m not in ("q", "k", "v", "o")]
        if bad:
            raise AdapterConfigError(
                f"attn_matrices {bad}: use a list of 'q', 'k', 'v' ('o' is taken, adapting nothing)"
            )
        if "o" in self.attn_matrices:  # the adapters library takes "o" and adapts no output projection for it
            warnings.warn(
                f"attn_matrices {list(self.attn_matrices)}: 'o' adds no LoRA (as in the adapters library, LoRA's "
                "attention matrices are q, k and v); it is kept so that the config matches the library's",
                stacklevel=3,
            )
        if self.composition_mode == "scale" and self.r != 1:
            raise AdapterConfigError(f"composition_mode='scale' needs r=1, got r={self.r}")
        if self.is_vera and (self.vera_d is None or self.vera_b is None):
            raise AdapterConfigError(
                f"VeRA needs both vera_d and vera_b (got vera_d={self.vera_d!r}, vera_b={self.vera_b!r})"
            )
        for key in ("vera_d", "vera_b"):  # the library tells VeRA apart by float values: keep 1 and 1.0 alike
            if isinstance(getattr(self, key), int):
                object.__setattr__(self, key, float(getattr(self, key)))
        for key, on in (("use_dora", self.use_dora), ("vera_d", self.is_vera)):
            if on and self.composition_mode != "add":
                raise AdapterConfigError(
                    f"{key}={getattr(self, key)!r} needs composition_mode='add', got {self.composition_mode!r}"
                )

    @property
    def is_vera(self) -> bool:
        """VeRA (Kopiczko et al., 2024, https://arxiv.org/abs/2310.11454): frozen shared random A/B, trained d/b."""
        return self.vera_d is not None or self.vera_b is not None


@dataclass(frozen=True, eq=False)
class IA3Config(LoRAConfig):
    """(IA)^3 (Liu et al., 2022, https://arxiv.org/abs/2205.05638): learned rescaling of keys, values, FFN."""

    selfattn_lora: bool = True
    intermediate_lora: bool = True
    output_lora: bool = False
    r: int = 1
    alpha: float = 1
    attn_matrices: list[str] = field(default_factory=lambda: ["k", "v"])
    composition_mode: str = "scale"
    init_weights: str = "ia3"


@dataclass(frozen=True, eq=False)
class DoRAConfig(LoRAConfig):
    """DoRA (Liu et al., 2024, https://arxiv.org/abs/2402.09353): LoRA on the direction of each weight row, with a
    trained magnitude per output feature."""

    use_dora: bool = True


@dataclass(frozen=True, eq=False)
class VeraConfig(LoRAConfig):
    """VeRA (Kopiczko et al., 2024, https://arxiv.org/abs/2310.11454): one frozen random A/B pair per adapter,
    shared by all its layers; each layer trains the scaling matrices `vera_D` (r x r) and `vera_B` (out x out),
    initialised as `vera_d * I` and `vera_b * I`."""

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"


@dataclass(frozen=True, eq=False)
class DvoRAConfig(LoRAConfig):
    """DvoRA: VeRA's shared random projections with DoRA's magnitude/direction split."""

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"
    use_dora: bool = True


class MultiTaskConfig:
    """Marks the configs of multi-task methods (AdapterHub's `MultiTaskConfig`): adapters with such a config may share
    parameters (`share_parameters`) and are meant to run under a `MultiTask` block."""


@dataclass(frozen=True, eq=False)
class MTLLoRAConfig(LoRAConfig, MultiTaskConfig):
    """MTL-LoRA (Yang et al., 2024, https://arxiv.org/abs/2410.09437): LoRA with a task-specific r x r transform
    between A and B and `n_up_projection` up-projections B_i mixed by learned weights,
    `softmax(weights / weights_sharpness)`. One adapter per task; `share_parameters` ties their A and B."""

    architecture: ClassVar[str] = "mtl_lora"
    n_up_projection: int = 1
    task_specific_matrix_type: str = "singular_values"
    weights_sharpness: float = 0.05

    def __post_init__(self):
        super().__post_init__()
        if self.task_specific_matrix_type not in ("singular_values", "linear"):
            raise _bad(
                "MTLLoRAConfig",
                "task_specific_matrix_type",
                self.task_specific_matrix_type,
                "'singular_values' or 'linear'",
            )
        if self.weights_sharpness <= 0:
            raise _bad("MTLLoRAConfig", "weights_sharpness", self.weights_sharpness, "a positive number")
        # adapters 1.3 would silently build (IA)^3 modules for composition_mode='scale', plain MTL-LoRA modules for
        # vera_d/vera_b, and a DoRA magnitude it cannot apply to the n_up_projection B matrices: refuse all three.
        for key, on in (("composition_mode", self.composition_mode != "add"), ("use_dora", self.use_dora),
                        ("vera_d", self.is_vera)):  # fmt: skip
            if on:
                raise _bad("MTLLoRAConfig", key, getattr(self, key), "left at its LoRA default for MTL-LoRA")


@dataclass(frozen=True, eq=False)
class TargetedLoRAConfig(LoRAConfig):
    """LoRA or (IA)^3 on modules named one by one (a PEFT adapter's targets) instead of AdapterHub's places.

    `targets` maps a module path in the root model to `{"r": int, "alpha": number, "on_input": bool}` (`on_input`:
    (IA)^3 scales the module's input, PEFT's `feedforward_modules`); `modules_to_save` lists root-model modules
    trained as full copies; `peft` keeps the PEFT options that `save_adapter(format="peft")` writes back.
    AdapterHub's file format cannot describe these adapters, so they are saved in PEFT's format only.
    """

    alpha: float = 8
    targets: Mapping = field(default_factory=dict)
    modules_to_save: list[str] = field(default_factory=list)
    use_rslora: bool = False
    peft: Mapping = field(default_factory=dict)


# --- Prefix and prompt tuning -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class PrefixTuningConfig(AdapterConfig):
    """Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190)."""

    architecture: ClassVar[str] = "prefix_tuning"
    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: list[int] = field(default_factory=list)
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    init_weights_seed: int | None = None


@dataclass(frozen=True, eq=False)
class PromptTuningConfig(AdapterConfig):
    """Prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691)."""

    architecture: ClassVar[str] = "prompt_tuning"
    prompt_length: int = 10
    prompt_init: str = "random_uniform"
    prompt_init_text: str | None = None
    combine: str = "prefix"
    init_weights_seed: int | None = None
    random_uniform_scale: ClassVar[float] = 0.5  # not a field: AdapterHub never saves it

    def __post_init__(self):
        super().__post_init__()
        if self.prompt_init not in ("random_uniform", "from_string"):
            raise AdapterConfigError(f"prompt_init={self.prompt_init!r}: use 'random_uniform' or 'from_string'")
        if self.combine not in ("prefix", "prefix_after_bos"):
            raise AdapterConfigError(f"combine={self.combine!r}: use 'prefix' or 'prefix_after_bos'")


# --- ReFT ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReftConfig(AdapterConfig):
    """ReFT interventions on layer outputs (Wu et al., 2024, https://arxiv.org/abs/2404.03592).

    `layers` ("all" or layer indices) carry an intervention on the first `prefix_positions` and the last
    `suffix_positions` tokens of each row; `r` is its rank; `orthogonality` keeps the projection's rows orthonormal
    (LoReFT); `tied_weights` shares one unit between prefix and suffix; `subtract_projection=False` drops the
    `- R h` term (DiReFT).
    """

    architecture: ClassVar[str] = "reft"
    layers: str | list[int]
    prefix_positions: int
    suffix_positions: int
    r: int
    orthogonality: bool
    tied_weights: bool = False
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None
    dtype: str | None = None
    output_reft: bool = True
    init_weights_seed: int | None = None

    def __post_init__(self):
        super().__post_init__()
        where = type(self).__name__
        layers = self.layers
        listed = isinstance(layers, list | tuple) and all(type(i) is int for i in layers)  # bools are not indices
        if layers != "all" and not (listed and layers and min(layers) >= 0):
            raise _bad(where, "layers", layers, "'all' or a non-empty list of layer indices (integers >= 0)")
        for key in ("prefix_positions", "suffix_positions"):
            if getattr(self, key) < 0:
                raise _bad(where, key, getattr(self, key), "an integer >= 0")
        if not self.prefix_positions and not self.suffix_positions:
            raise AdapterConfigError(f"{where}: prefix_positions=0 and suffix_positions=0 leave no position to adapt")
        if not self.output_reft:
            raise AdapterConfigError(f"{where}: output_reft=False adds no intervention (ReFT acts on layer outputs)")

    def to_dict(self) -> dict[str, Any]:
        # adapters 1.3 keeps `subtract_projection` as a class attribute and never writes it, so a DiReFT file reads
        # back as NoReFT, in the library (from its files or ours: it drops the key when it re-loads the config) and
        # here. We write it when False, so workbench reads DiReFT back as DiReFT; LoReFT/NoReFT files are unchanged.
        data = super().to_dict()
        if self.subtract_projection:
            del data["subtract_projection"]
        return data


@dataclass(frozen=True, eq=False)
class LoReftConfig(ReftConfig):
    """LoReFT: a low-rank intervention with an orthonormal projection."""

    layers: str | list[int] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True


@dataclass(frozen=True, eq=False)
class NoReftConfig(LoReftConfig):
    """NoReFT: LoReFT without the orthogonality constraint."""

    orthogonality: bool = False


@dataclass(frozen=True, eq=False)
class DiReftConfig(NoReftConfig):
    """DiReFT: NoReFT without subtracting the projection of the input."""

    subtract_projection: bool = False


class ConfigUnion(AdapterConfig):
    """Several methods in one adapter, e.g. `"prefix_tuning|par_bn"` (MAM adapter)."""

    architecture = "union"

    def __init__(self, *configs: AdapterConfig):
        if not configs or not all(isinstance(c, AdapterConfig) and not isinstance(c, ConfigUnion) for c in configs):
            raise AdapterConfigTypeError(f"a config union needs adapter configs (not unions), got {configs!r}")
        object.__setattr__(self, "configs", list(configs))
        kinds = [c.architecture or "bottleneck" for c in configs]
        for kind in set(kinds):
            same = [c for c, k in zip(configs, kinds, strict=True) if k == kind]
            if len(same) > 1 and not (
                kind == "bottleneck"
                and len(same) == 2
                and same[0].mh_adapter != same[1].mh_adapter
                and same[0].output_adapter != same[1].output_adapter
            ):
                raise AdapterConfigError(f"config union combines {len(same)} {kind} configs that overlap")

    # AdapterHub's union reads like a dict of "<index>.<key>" entries, and its parts by index.
    def __getitem__(self, key):
        if isinstance(key, int):
            return self.configs[key]
        if key in ("architecture", "configs"):
            return getattr(self, key)
        index, _, name = str(key).partition(".")
        if not index.isdigit() or int(index) >= len(self.configs):
            raise KeyError(key)
        return self.configs[int(index)][name]

    def __iter__(self):
        return (f"{i}.{k}" for i, c in enumerate(self.configs) for k in c)

    def __len__(self):
        return sum(len(c) for c in self.configs)

    def __eq__(self, other):
        if isinstance(other, ConfigUnion):
            return self.configs == other.configs
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    def to_dict(self):
        return {"architecture": "union", "configs": [c.to_dict() for c in self.configs]}

    def replace(self, **changes):
        return ConfigUnion(*[c.replace(**{k: v for k, v in changes.items() if k in c.to_dict()}) for c in self.configs])


class MAMConfig(ConfigUnion):
    """Mix-and-Match adapter (He et al., 2021, https://arxiv.org/abs/2110.04366): prefix tuning + parallel
    bottleneck."""

    def __init__(self, prefix_tuning: PrefixTuningConfig | None = None, adapter: BnConfig | None = None):
        super().__init__(prefix_tuning or PrefixTuningConfig(bottleneck_size=800), adapter or ParBnConfig())

    @property
    def prefix_tuning(self) -> PrefixTuningConfig:
        return self.configs[0]

    @property
    def adapter(self) -> BnConfig:
        return self.configs[1]


class UniPELTConfig(ConfigUnion):
    """UniPELT (Mao et al., 2022, https://arxiv.org/abs/2110.07577): gated prefix tuning, bottleneck and LoRA."""

    def __init__(
        self,
        prefix_tuning: PrefixTuningConfig | None = None,
        adapter: BnConfig | None = None,
        lora: LoRAConfig | None = None,
    ):
        parts = (
            prefix_tuning or PrefixTuningConfig(prefix_length=10),
            adapter or SeqBnConfig(reduction_factor=16),
            lora or LoRAConfig(r=8, alpha=2),
        )
        super().__init__(*(part.replace(use_gating=True) for part in parts))


ARCHITECTURE_CLASSES: dict[str | None, type[AdapterConfig]] = {
    None: BnConfig,
    "bottleneck": BnConfig,
    "lora": LoRAConfig,
    "mtl_lora": MTLLoRAConfig,
    "prefix_tuning": PrefixTuningConfig,
    "prompt_tuning": PromptTuningConfig,
    "reft": ReftConfig,
}

ADAPTER_CONFIG_MAP: dict[str, AdapterConfig] = {
    "seq_bn": SeqBnConfig(),
    "pfeiffer": SeqBnConfig(),
    "seq_bn_inv": SeqBnInvConfig(),
    "pfeiffer+inv": SeqBnInvConfig(),
    "double_seq_bn": DoubleSeqBnConfig(),
    "houlsby": DoubleSeqBnConfig(),
    "double_seq_bn_inv": DoubleSeqBnInvConfig(),
    "houlsby+inv": DoubleSeqBnInvConfig(),
    "par_bn": ParBnConfig(),
    "parallel": ParBnConfig(),
    "scaled_par_bn": ParBnConfig(scaling="learned"),
    "scaled_parallel": ParBnConfig(scaling="learned"),
    "compacter": CompacterConfig(),
    "compacter++": CompacterPlusPlusConfig(),
    "adapterplus": AdapterPlusConfig(),  # a workbench name: adapters 1.3 has the class, not the string
    "lora": LoRAConfig(),
    "ia3": IA3Config(),
    "dora": DoRAConfig(),
    "vera": VeraConfig(),
    "dvora": DvoRAConfig(),
    "mtl_lora": MTLLoRAConfig(),
    "prefix_tuning": PrefixTuningConfig(),
    "prefix_tuning_flat": PrefixTuningConfig(flat=True),
    "prompt_tuning": PromptTuningConfig(),
    "loreft": LoReftConfig(),
    "noreft": NoReftConfig(),
    "direft": DiReftConfig(),
    "mam": MAMConfig(),
    "unipelt": UniPELTConfig(),
}
DEFAULT_ADAPTER_CONFIG = "seq_bn"

_CONFIG_STRING = re.compile(r"^(?P<name>[^\[\]|\n]+)(?:\[(?P<kvs>.*)\])?$")


def parse_config_string(text: str) -> AdapterConfig:
    """Parse `"name[key=value,...]"`, or several such joined by `|`, into a config."""
    configs = []
    for chunk in text.split("|"):
        match = _CONFIG_STRING.match(chunk.strip())
        if not match or match["name"].strip() not in ADAPTER_CONFIG_MAP:
            known = ", ".join(sorted(ADAPTER_CONFIG_MAP))
            raise AdapterConfigError(f"unknown adapter config {chunk.strip()!r} (known: {known})")
        overrides = _parse_overrides(match["kvs"], chunk) if match["kvs"] else {}
        configs.append(ADAPTER_CONFIG_MAP[match["name"].strip()].replace(**overrides))
    return configs[0] if len(configs) == 1 else ConfigUnion(*configs)


def _parse_overrides(kvs: str, chunk: str) -> dict:
    """`a=1,b='x'` -> {"a": 1, "b": "x"}; bare words other than True/False/None count as strings."""
    as_dict = "{" + re.sub(r"(\w+)=", r"'\1':", kvs) + "}"
    # be kind to `non_linearity=gelu`: quote bare words
    quoted = re.sub(r":\s*([A-Za-z_][\w\-]*)\s*(?=,|$)", lambda m: f":'{m[1]}'", re.sub(r"(\w+)=", r"'\1':", kvs))
    bare_words = "{" + quoted.replace("'True'", "True").replace("'False'", "False").replace("'None'", "None") + "}"
    for text in (as_dict, bare_words):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(parsed, dict) and all(isinstance(k, str) for k in parsed):
            return parsed
    raise AdapterConfigError(f"cannot parse the options in adapter config {chunk.strip()!r} (use key=value,...)")


# --- AdapterFusion ------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AdapterFusionConfig(AdapterConfig):
    """AdapterFusion (Pfeiffer et al., 2021, https://arxiv.org/abs/2005.00247)."""

    key: bool
    query: bool
    value: bool
    query_before_ln: bool
    regularization: bool
    residual_before: bool
    temperature: bool
    value_before_softmax: bool
    value_initialized: str | bool
    dropout_prob: float | None = None

    @classmethod
    def load(cls, config=None, **overrides) -> AdapterFusionConfig:
        if config is None:
            config = "dynamic"
        if isinstance(config, AdapterFusionConfig):
            resolved = config
        elif isinstance(config, str) and config in ADAPTERFUSION_CONFIG_MAP:
            resolved = ADAPTERFUSION_CONFIG_MAP[config]
        elif isinstance(config, str) and Path(config).is_file():
            data = files.read_json(config)
            resolved = cls._from_mapping(data.get("config", data), config)
        elif isinstance(config, Mapping):
            resolved = cls._from_mapping(config, "fusion config")
        else:
            known = ", ".join(ADAPTERFUSION_CONFIG_MAP)
            raise AdapterConfigError(f"unknown fusion config {config!r} (known: {known})")
        overrides = {k: v for k, v in overrides.items() if v is not None}
        return resolved.replace(**overrides) if overrides else resolved

    @classmethod
    def _from_mapping(cls, data: Mapping, source: str) -> AdapterFusionConfig:
        if not isinstance(data, Mapping):
            raise AdapterConfigError(f"{source}: config={data!r} must be a JSON object (a mapping of keys to values)")
        _check_keys(cls, data, source)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data and _required(f)]
        if missing:
            raise AdapterConfigError(f"{source}: missing fusion key(s) {missing}")
        try:
            return cls(**data)
        except AdapterConfigError as err:
            raise type(err)(f"{source}: {err}") from None


ADAPTERFUSION_CONFIG_MAP = {
    "dynamic": AdapterFusionConfig(
        key=True,
        query=True,
        value=True,
        query_before_ln=False,
        regularization=True,
        residual_before=False,
        temperature=False,
        value_before_softmax=True,
        value_initialized=True,
    ),
    "static": AdapterFusionConfig(
        key=True,
        query=True,
        value=False,
        query_before_ln=False,
        regularization=False,
        residual_before=False,
        temperature=False,
        value_before_softmax=True,
        value_initialized=False,
    ),
}
