"""Linear layers computed by oneDNN on a CPU, for inference and for training adapters on a frozen model.

    with onednn_linears(model):      # predict(), inference_speed(), and train() around the whole run
        model(**inputs)

Why: torch's default fp32 matmul on a CPU goes through MKL, which on AMD processors takes a narrower code path
than the hardware has; oneDNN (shipped inside torch, the library behind torch.compile's CPU kernels) runs the
same products about twice as fast there.

Inside the block, and only in a thread that is inside such a block, each plain fp32 `nn.Linear` of `model` on the
CPU multiplies through oneDNN: with autograd off, or with autograd on when its weight and bias are frozen (the
backward then needs only the input's gradient, also through oneDNN). Anything else runs the layer's own forward:
another thread, a trainable weight under autograd, CPU autocast, torch.compile, another dtype or device. Weights
are read at each call, so nothing is ever stale. Results equal `F.linear`'s up to float rounding (about 1e-7
relative), checked once per process on a small layer; if the operators are missing or disagree, blocks do nothing.
`WORKBENCH_ONEDNN=0` in the environment turns blocks off. (A copy of the model made inside a block, by
`copy.deepcopy` say, keeps the patched forwards, pointing at the copy's own layers; they act only inside blocks.)
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

_thread = threading.local()  # .depth: how many blocks the current thread is inside
_lock = threading.Lock()
_installs: dict[int, _Install] = {}  # id(model) -> its patched layers, while any thread is inside a block
_works: bool | None = None  # the self-check's verdict, once per process


def enabled() -> bool:
    """Whether blocks change anything in this process (the environment switch and the one-time self-check)."""
    return os.environ.get("WORKBENCH_ONEDNN", "1") != "0" and _self_check()


@contextlib.contextmanager
def onednn_linears(model: nn.Module):
    """Within the block, this thread's forwards of `model` multiply its fp32 CPU linears through oneDNN where safe."""
    if not enabled():
        yield
        return
    _enter(model)
    _thread.depth = getattr(_thread, "depth", 0) + 1
    try:
        yield
    finally:
        _thread.depth -= 1
        _leave(model)


class _OneDNNForward:
    """Installed as one `nn.Linear`'s `forward`: oneDNN where safe (see the module docstring), else the original.

    It reads the layer's weight and bias at every call (oneDNN takes them as they are, no reordered copy), so a
    weight updated in place, even by an optimizer that bumps no version counter (fused AdamW), is never stale."""

    def __init__(self, module: nn.Linear):
        self.module = module

    def __call__(self, input: torch.Tensor) -> torch.Tensor:
        module = self.module
        weight, bias = module.weight, module.bias
        if _fits(input, weight, bias) and not torch.compiler.is_compiling():  # inductor can't lower it unfrozen
            if not torch.is_grad_enabled():
                return _product(input, weight, bias)
            if not weight.requires_grad and (bias is None or not bias.requires_grad):
                return _FrozenLinearProduct.apply(input, weight.detach(), None if bias is None else bias.detach())
        return type(module).forward(module, input)


def _fits(input, weight, bias) -> bool:
    """In a thread inside a block, fp32 CPU input and parameters, no autocast (it would lower this layer's dtype)."""
    return (
        getattr(_thread, "depth", 0) > 0
        and not torch.is_autocast_enabled("cpu")
        and isinstance(input, torch.Tensor)
        and input.device.type == "cpu"
        and input.dtype == torch.float32
        and input.dim() >= 2
        and input.numel() > 0
        and weight.device.type == "cpu"
        and weight.dtype == torch.float32
        and (bias is None or bias.dtype == torch.float32)
    )


def _product(input, weight, bias):
    # oneDNN reads the bias as dense memory, whatever its strides (a strided or expanded bias gives wrong sums)
    bias = None if bias is None else bias.detach().contiguous()
    return torch.ops.mkldnn._linear_pointwise(input, weight.detach(), bias, "none", [], "")


class _FrozenLinearProduct(torch.autograd.Function):
    """x W^T + b through oneDNN for a frozen W and b: the backward needs only dL/dx = dL/dy W (a product with W^T's
    transpose, through oneDNN too). W is saved like `F.linear` saves it: changed in place before the backward, it
    makes autograd raise."""

    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(weight)
        return _product(input, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        return _product(grad_output, weight.t(), None), None, None


class _Install:
    def __init__(self, model: nn.Module):
        self.model = model  # held so that id(model) stays this model's while installed
        self.users = 0
        self.layers = [(m, _OneDNNForward(m)) for m in model.modules() if _eligible(m)]
        for module, forward in self.layers:
            module.forward = forward

    def remove(self) -> None:
        for module, forward in self.layers:
            if module.__dict__.get("forward") is forward:
                del module.forward


def _eligible(module: nn.Module) -> bool:
    """Plain `nn.Linear`s on the CPU whose forward nobody else replaced (accelerate's offload hooks, for one)."""
    return type(module) is nn.Linear and "forward" not in module.__dict__ and module.weight.device.type == "cpu"


def _enter(model: nn.Module) -> None:
    with _lock:
        install = _installs.get(id(model))
        if install is None:
            install = _installs[id(model)] = _Install(model)
        install.users += 1


def _leave(model: nn.Module) -> None:
    with _lock:
        install = _installs[id(model)]
        install.users -= 1
        if install.users == 0:
            install.remove()
            del _installs[id(model)]


def _self_check() -> bool:
    """Whether this torch has the oneDNN operators and they agree with `F.linear` on a small layer."""
    global _works
    if _works is None:
        _works = False
        try:
            if torch.backends.mkldnn.is_available():
                # fp32 on the CPU, without autocast, whatever the caller's defaults: the verdict holds for the process
                generator = torch.Generator().manual_seed(0)
                weight, bias, x, grad = (
                    torch.randn(*shape, generator=generator, dtype=torch.float32, device="cpu")
                    for shape in ((24, 16), (24,), (3, 5, 16), (3, 5, 24))
                )
                with torch.no_grad(), torch.autocast("cpu", enabled=False):
                    if not torch.allclose(_product(x, weight, bias), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5):
                        return False
                    if not torch.allclose(_product(grad, weight.t(), None), grad @ weight, rtol=1e-5, atol=1e-5):
                        return False
                _works = True
        except Exception:  # a torch without these operators: blocks do nothing
            _works = False
    return _works
