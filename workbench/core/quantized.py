"""Quantized base models (QLoRA-style): projections that transformers' bitsandbytes integration
(`BitsAndBytesConfig(load_in_4bit=True)` / `load_in_8bit=True`) replaced with `bnb.nn.Linear4bit`/`Linear8bitLt`.

Adapters never touch the quantized weights: LoRA and (IA)^3 add their delta to (or scale) the quantized layer's
output, bottleneck adapters, prefixes and ReFT act on hidden states. What needs the dense weight is refused with a
clear error: merging (it would dequantize and requantize the weight, which loses precision: PEFT warns about the
same rounding) and DoRA (its norm is of the dense weight). Layers are recognised by their class and weight class
names, so the engine never imports bitsandbytes unless a model has such layers.

bitsandbytes runs its kernels on a CUDA GPU, and on CPU from its CPU backend (bitsandbytes >= 0.46); before adapters
are added to a quantized model, one tiny layer of each kind runs on the model's device, and a machine that cannot
run them gets an `UnsupportedModelError` saying so instead of a failure in the middle of a forward pass.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .errors import UnsupportedModelError

# class name -> what it stores; subclasses (bnb's LinearNF4/LinearFP4) are found through the MRO
_LINEAR_CLASSES = {"Linear4bit": "4-bit", "Linear8bitLt": "8-bit"}
_WEIGHT_CLASSES = {"Params4bit": "4-bit", "Int8Params": "8-bit"}


def quantization_of(module: nn.Module) -> str | None:
    """'4-bit' or '8-bit' for a bitsandbytes quantized linear layer, else None."""
    for cls in type(module).__mro__:
        if cls.__name__ in _LINEAR_CLASSES:
            return _LINEAR_CLASSES[cls.__name__]
    return _WEIGHT_CLASSES.get(type(getattr(module, "weight", None)).__name__)


def quantized_kinds(model: nn.Module) -> dict[str, torch.device]:
    """The quantization kinds among `model`'s layers, with the device of one layer of each kind."""
    kinds: dict[str, torch.device] = {}
    for module in model.modules():
        kind = quantization_of(module)
        if kind is not None and kind not in kinds:
            kinds[kind] = module.weight.device
    return kinds


def is_quantized(model: nn.Module) -> bool:
    """Whether transformers loaded `model` quantized (read from its flags, in O(1): no walk over the modules)."""
    return bool(getattr(model, "is_quantized", False) or getattr(model.config, "quantization_config", None))


def check_runtime(model: nn.Module) -> None:
    """Refuse a quantized model whose bitsandbytes kernels cannot run on this machine (nothing to do otherwise)."""
    if torch.get_default_device().type == "meta" or not is_quantized(model):  # a dry run computes nothing
        return
    for kind, device in quantized_kinds(model).items():
        check_kernels(kind, device)


def check_kernels(kind: str, device: torch.device) -> None:
    """Refuse `kind` layers on `device` if bitsandbytes cannot run them here."""
    if torch.get_default_device().type != "meta":
        problem = _kernel_problem(kind, str(device))
        if problem:
            raise UnsupportedModelError(
                f"this model has {kind} bitsandbytes layers on {device}, whose kernels do not run here: {problem}. "
                "bitsandbytes needs a CUDA GPU (or, on CPU, bitsandbytes >= 0.46 with its CPU backend): move the "
                "model to a GPU, or load it without quantization_config"
            )


@functools.cache
def _kernel_problem(kind: str, device: str) -> str | None:
    """Why a tiny layer of `kind` cannot run on `device` (None: it can). Checked once per process."""
    try:
        import bitsandbytes as bnb
    except Exception as err:  # noqa: BLE001 - an unusable install shows in many ways
        return f"bitsandbytes cannot be imported ({type(err).__name__}: {err})"
    try:
        dense = nn.Linear(64, 64)
        if kind == "4-bit":
            layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False, threshold=0.0)
        layer.load_state_dict(dense.state_dict())
        layer = layer.to(device)
        with torch.no_grad():
            out = layer(torch.ones(1, 64, device=device))
        if not torch.isfinite(out).all():
            return "its output is not finite"
    except Exception as err:  # noqa: BLE001 - any failure means the kernels are unusable here
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


def refuse_dense(path: str, kind: str, what: str) -> UnsupportedModelError:
    """The error for an operation that needs the dense weight of a quantized layer."""
    return UnsupportedModelError(
        f"{what} needs the dense weight of {path}, a bitsandbytes {kind} layer; it is refused rather than done by "
        "dequantizing and requantizing the weight (which loses precision). Adapters on quantized layers run "
        "unmerged: their output is added to the quantized layer's. Load the base model without quantization_config "
        "(or call model.dequantize()) to merge"
    )
