"""Hooks that let adapters rewrite one residual connection of an unmodified transformers layer.

A layer computes `norm(h + r)` (post-LN: BERT, DistilBERT) or `h + r` (pre-LN: GPT-2, Llama), where `h` is a
sublayer's output and `r` the residual stream. A `ResidualSite` captures `h` and `r` with forward hooks and asks
its `combine(h, r, norm, ctx)` callback for the result, which replaces the layer's own. `combine` returns None
when no adapter acts here, and the model runs exactly as it would without us. The captured tensors live in the
call's `ForwardContext`, so concurrent calls never see each other's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .archs import Site, ensure_host, get_module
from .context import ForwardContext, current_call

Combine = Callable[[torch.Tensor, torch.Tensor, nn.Module | None, ForwardContext], torch.Tensor | None]


def first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The first tensor a module was called with, positionally or by keyword."""
    if args:
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError("module was called without a tensor input")


class ResidualSite:
    """One residual connection of one layer, with hooks that route it through `combine`."""

    def __init__(self, engine, layer: nn.Module, site: Site, combine: Combine, active):
        self.engine = engine
        self.sublayer = get_module(layer, site.sublayer)
        self.residual_module = get_module(layer, site.residual)
        self.norm = get_module(layer, site.norm) if site.norm else None
        self.host, self.created_host = ensure_host(layer, site.host)
        self.combine = combine
        self.active = active  # active(ctx) -> bool: does any adapter of the call act here?
        self._key = ("site", id(self))
        self._handles = [
            self.residual_module.register_forward_pre_hook(self._capture_residual, with_kwargs=True),
            self.sublayer.register_forward_hook(self._on_sublayer),
        ]
        if self.norm is not None:
            self._handles.append(self.norm.register_forward_hook(self._on_norm))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _call(self) -> ForwardContext | None:
        ctx = current_call(self.engine)
        return ctx if ctx is not None and ctx.setup is not None and self.active(ctx) else None

    def _capture_residual(self, module, args, kwargs):
        ctx = self._call()
        if ctx is not None:
            ctx.scratch[self._key] = [first_input(args, kwargs), None]

    def _on_sublayer(self, module, args, output):
        ctx = self._call()
        captured = ctx.scratch.get(self._key) if ctx is not None else None
        if captured is None:
            return None
        h = output[0] if isinstance(output, tuple) else output
        if self.norm is not None:
            captured[1] = h
            return None
        residual = ctx.scratch.pop(self._key)[0]
        combined = self.combine(h, residual, None, ctx)
        if combined is None:
            return None
        # The layer adds the residual itself after this hook, so hand back the difference.
        delta = combined - residual
        return (delta, *output[1:]) if isinstance(output, tuple) else delta

    def _on_norm(self, module, args, output):
        ctx = self._call()
        captured = ctx.scratch.pop(self._key, None) if ctx is not None else None
        if captured is None or captured[1] is None:
            return None
        residual, h = captured
        return self.combine(h, residual, SiteNorm(module, h, residual, output), ctx)


class SiteNorm:
    """The site's norm, called without its hooks (its own hook must not fire again).

    `of_sum(h, r)` returns `norm(h + r)`; for the site's own `h` and `r` that is the output the model already
    computed, so the adapter does not pay for the same LayerNorm twice.
    """

    def __init__(self, module: nn.Module, h: torch.Tensor, r: torch.Tensor, output: torch.Tensor):
        self.module, self._h, self._r, self._output = module, h, r, output

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module.forward(x)

    def of_sum(self, h: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if h is self._h and r is self._r:
            return self._output
        return self.module.forward(h + r)
