"""Hooks that let adapters rewrite one residual connection of an unmodified transformers layer.

A layer computes `norm(h + r)` (post-LN: BERT, DistilBERT) or `h + r` (pre-LN: GPT-2, Llama), where `h` is a
sublayer's output and `r` the residual stream. A `ResidualSite` captures `h` and `r` with forward hooks and asks
its `combine(h, r, norm)` callback for the result, which replaces the layer's own. `combine` returns None when
no adapter acts here, and the model runs exactly as it would without us.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .archs import Site, ensure_host, get_module

Combine = Callable[[torch.Tensor, torch.Tensor, nn.Module | None], torch.Tensor | None]


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

    def __init__(self, layer: nn.Module, site: Site, combine: Combine):
        self.sublayer = get_module(layer, site.sublayer)
        self.residual_module = get_module(layer, site.residual)
        self.norm = get_module(layer, site.norm) if site.norm else None
        self.host = ensure_host(layer, site.host)
        self.combine = combine
        self._h = self._r = None
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

    def _capture_residual(self, module, args, kwargs):
        self._r = first_input(args, kwargs)

    def _on_sublayer(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if self.norm is not None:
            self._h = h
            return None
        residual, self._r = self._r, None
        combined = self.combine(h, residual, None)
        if combined is None:
            return None
        # The layer adds the residual itself after this hook, so hand back the difference.
        delta = combined - residual
        return (delta, *output[1:]) if isinstance(output, tuple) else delta

    def _on_norm(self, module, args, output):
        h, residual = self._h, self._r
        self._h = self._r = None
        if h is None or residual is None:
            return None
        return self.combine(h, residual, SiteNorm(module, h, residual, output))


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
