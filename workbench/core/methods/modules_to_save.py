"""PEFT's `modules_to_save`: full trainable copies of a module that replace its output while their adapter runs.

PEFT (https://github.com/huggingface/peft) trains such modules (typically a task head) as a whole next to the
LoRA weights; the copies take part in compositions like every adapter layer (see `runtime`).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..runtime import ComposableLayer, cat_rows, compose
from .targets import call_setup, locate


@dataclass
class _Saved:
    args: tuple  # the module's positional and keyword inputs
    kwargs: dict
    y: object  # its output, replaced by the last copy that ran
    last: str | None = None


def _rows(value, a: int, b: int):
    return value[a:b] if isinstance(value, torch.Tensor) and value.dim() > 0 else value


def _cat(values: list):
    """The rows of a call argument joined back (the children only read their arguments: mostly without a copy)."""
    return cat_rows(values) if isinstance(values[0], torch.Tensor) and values[0].dim() > 0 else values[0]


class SavedModule(ComposableLayer):
    """A module that PEFT adapters train as full copies (`modules_to_save`): while such an adapter runs, its copy
    computes the output instead of the original (which keeps its weights and stays frozen in `train_adapter`).

    The copies live in a `modules_to_save` ModuleDict child of the original, so they move and train with the model.
    """

    def __init__(self, engine, path: str, module: nn.Module):
        if isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            raise UnsupportedModelError(f"modules_to_save cannot hold copies of {path} ({type(module).__name__})")
        if hasattr(module, "modules_to_save"):
            raise UnsupportedModelError(f"{path} already has an attribute 'modules_to_save'")
        self.engine, self.path, self.module = engine, path, module
        self.layer_idx, _, self.inside = locate(engine, path)
        self.copies = nn.ModuleDict()
        module.modules_to_save = self.copies
        self.handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def make(self) -> nn.Module:
        """A trainable copy of the original without the engine's hooks and adapter children."""
        hooks = [(m, m._forward_hooks, m._forward_pre_hooks) for m in self.module.modules()]
        children = {k: self.module._modules.pop(k) for k in ("loras", "modules_to_save") if k in self.module._modules}
        try:
            for m, _, _ in hooks:
                m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
            clone = copy.deepcopy(self.module)
        finally:
            for m, forward, pre in hooks:
                m._forward_hooks, m._forward_pre_hooks = forward, pre
            self.module._modules.update(children)
        for m in clone.modules():
            for key in ("loras", "modules_to_save"):
                m._modules.pop(key, None)
        for param in clone.parameters():
            param.requires_grad = True
        return clone

    def remove(self) -> None:
        self.handle.remove()
        del self.module.modules_to_save

    def _hook(self, module, args, kwargs, output):
        if self.layer_idx in self.engine.skip_layers:
            return None
        setup, names, ctx = call_setup(self.engine, self.inside)
        if setup is None or not any(name in self.copies for name in names):
            return None
        st = compose(self, setup, _Saved(args, kwargs, output), ctx)
        return None if st.last is None else st.y

    def __contains__(self, name: str) -> bool:
        return name in self.copies

    def single(self, name: str, st: _Saved, ctx) -> _Saved:
        return replace(st, y=self.copies[name](*st.args, **st.kwargs), last=name)

    def batch_rows(self, st: _Saved) -> int:
        return st.y.shape[0]

    def rows(self, st: _Saved, a: int, b: int) -> _Saved:
        args = tuple(_rows(v, a, b) for v in st.args)
        return _Saved(args, {k: _rows(v, a, b) for k, v in st.kwargs.items()}, st.y[a:b], st.last)

    def concat(self, parts: list[_Saved]) -> _Saved:
        last = next((p.last for p in reversed(parts) if p.last is not None), None)
        args = tuple(_cat(vs) for vs in zip(*(p.args for p in parts), strict=True))
        kwargs = {k: _cat([p.kwargs[k] for p in parts]) for k in parts[0].kwargs}
        return _Saved(args, kwargs, torch.cat([p.y for p in parts]), last)

    def average(self, parts: list[_Saved], weights: list[float]) -> _Saved:
        # whole outputs: their weighted sum
        y = torch.stack([p.y * w for p, w in zip(parts, weights, strict=True)]).sum(dim=0)
        return replace(parts[0], y=y, last=parts[-1].last)

    def alone(self, state: _Saved, weights: list[float], index: int) -> _Saved:
        """A module only one child trains a copy of: that copy's output with its own weight (the weighted sum of the
        outputs present; AdapterHub has no modules_to_save)."""
        return replace(state, y=state.y * weights[index])
