"""Hooks that let adapters rewrite one residual connection of an unmodified transformers layer.

A layer computes `norm(h + r)` (post-LN: BERT, DistilBERT) or `h + r` (pre-LN: GPT-2, Llama), where `h` is a
sublayer's output and `r` the residual stream. A `ResidualSite` captures `h` and `r` with forward hooks and asks
its `combine(h, r, norm, ctx)` callback for the result, which replaces the layer's own. `combine` returns None
when no adapter acts here, and the model runs exactly as it would without us. The captured tensors live in the
call's `ForwardContext`, so concurrent calls never see each other's.

A `hooked` site (AdapterHub's plugin interface) hands `combine`'s result back as the sublayer's output: the layer
adds the residual and applies its own norms afterwards, and `norm` is only what the adapter may apply to `h + r`.
A site with `residual_plus` (parallel blocks: GPT-J, GPT-NeoX) reads `r` as the residual module's input plus that
module's final output; a site whose sublayer is such a module publishes its replacement under the same key.
A `swapped` site hands `combine` the residual stream as the adapter input and the sublayer output as the residual
(AdapterHub's ALBERT), and a `norm_layer` reads the norm from another layer (AdapterHub's late-bound hooks).
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
        self.residual_module = get_module(layer, site.residual) if site.residual else None
        self.plus_module = get_module(layer, site.residual_plus) if site.residual_plus else None
        norm_layer = layer if site.norm_layer is None else engine.layers[site.norm_layer]
        self.norm = get_module(norm_layer, site.norm) if site.norm else None
        self.hooked, self.swapped = site.hooked, site.swapped
        # A hooked site, or one without a norm of its own (pre-LN), hands its result to a layer that adds `r` (and
        # its norms) itself: `combine` returns the result less `r` (see `Adapter.post_forward`).
        self.layer_adds_residual = self.hooked or self.norm is None
        if self.swapped and not self.hooked and self.norm is None:
            raise ValueError(f"a swapped site needs the layer's norm or a hook ({site}): its residual is `h`")
        self.host, self.created_host = ensure_host(layer, site.host)
        self.combine = combine
        self.active = active  # active(ctx) -> bool: does any adapter of the call act here?
        self._key = ("site", id(self))
        self._plus_key = ("output", id(self.plus_module))
        self._own_key = ("output", id(self.sublayer))  # read by a parallel block's other site, if it captures it
        self._handles = [self.sublayer.register_forward_hook(self._on_sublayer)]
        if self.residual_module is not None:
            hook = self.residual_module.register_forward_pre_hook(self._capture_residual, with_kwargs=True)
            self._handles.append(hook)
        if self.plus_module is not None:
            self._handles.append(self.plus_module.register_forward_hook(self._capture_plus))
        if self.norm is not None and not self.hooked:
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

    def _capture_plus(self, module, args, output):
        ctx = self._call()
        if ctx is not None:  # hooks run in registration order: a later replacement overwrites this (`_publish`)
            ctx.scratch[self._plus_key] = output[0] if isinstance(output, tuple) else output

    def _publish(self, ctx: ForwardContext, value: torch.Tensor) -> None:
        if self._own_key in ctx.scratch:
            ctx.scratch[self._own_key] = value

    def _residual(self, ctx: ForwardContext, captured: list | None) -> torch.Tensor | None:
        """The residual stream `r` from the captured residual input (None for a site without a residual)."""
        if captured is None:
            return None
        residual = captured[0]
        if self.plus_module is not None:
            residual = residual + ctx.scratch.pop(self._plus_key)
        return residual

    def _on_sublayer(self, module, args, output):
        ctx = self._call()
        if ctx is None:
            return None
        h = output[0] if isinstance(output, tuple) else output
        if self.norm is not None and not self.hooked:
            captured = ctx.scratch.get(self._key)
            if captured is not None:
                captured[1] = h  # combined when the norm runs
            return None
        captured = ctx.scratch.pop(self._key, None)
        if captured is None and self.residual_module is not None:
            return None  # the residual was captured outside this call (or not at all): leave the layer alone
        residual = self._residual(ctx, captured)
        if self.hooked:  # the layer adds the residual and applies its norms to what we return
            norm = SiteNorm(self.norm, None, None, None) if self.norm is not None else None
            new = self.combine(*self._order(h, residual), norm, ctx)
        else:  # a pre-LN layer: it adds the residual itself after this hook, and `combine` leaves it out
            new = self.combine(*self._order(h, residual), None, ctx)
        if new is None:
            return None
        self._publish(ctx, new)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _on_norm(self, module, args, output):
        ctx = self._call()
        captured = ctx.scratch.pop(self._key, None) if ctx is not None else None
        if captured is None or captured[1] is None:
            return None
        h, residual = self._order(captured[1], self._residual(ctx, captured))
        return self.combine(h, residual, SiteNorm(module, h, residual, output), ctx)

    def _order(self, h: torch.Tensor, residual: torch.Tensor | None) -> tuple:
        """(adapter input, residual): the sublayer output and the residual stream, or the other way round."""
        return (residual, h) if self.swapped else (h, residual)


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
