"""Bottleneck adapters and AdapterFusion wired into a model: one `BottleneckLayer` per residual site.

Each site runs the active composition (Stack, Parallel, Fuse, Split, BatchSplit, Average) the way AdapterHub
does, so outputs match the `adapters` library: Stack re-applies the layer's residual/LayerNorm handling before
every adapter, the other blocks once with their first (Fuse: last) adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..composition import Average, BatchSplit, Block, Fuse, Parallel, Split, Stack
from ..configs import AdapterFusionConfig, BnConfig
from ..context import EngineState
from ..errors import CompositionError
from ..sites import ResidualSite
from .bottleneck import bottleneck_size, make_adapter
from .fusion import FusionLayer
from .phm import shared_phm_parameters

LOCATIONS = {"mh_adapter": "attention_site", "output_adapter": "output_site"}


@dataclass
class BnState:
    hidden: torch.Tensor
    input_tensor: torch.Tensor
    residual: torch.Tensor
    norm: object
    up: torch.Tensor | None = None
    last: str | None = None


class BottleneckLayer:
    """The adapters and fusions at one site (attention or FFN output) of one layer."""

    def __init__(self, state: EngineState, layer_idx: int, location: str):
        self.state, self.layer_idx, self.location = state, layer_idx, location
        site_spec = getattr(state.spec, LOCATIONS[location])
        self.site = ResidualSite(state.layers[layer_idx], site_spec, self.combine)
        host = self.site.host
        if not hasattr(host, "adapters"):
            host.adapters = nn.ModuleDict()
            host.adapter_fusion_layer = nn.ModuleDict()
        self._fusing = False  # while True, adapters keep their up-projections intact for the fusion layer
        self.adapters: nn.ModuleDict = host.adapters
        self.fusions: nn.ModuleDict = host.adapter_fusion_layer

    def combine(self, h, r, norm):
        ctx = self.state.context
        if ctx is None or ctx.setup is None or self.layer_idx in self.state.skip_layers:
            return None
        if not any(name in self.adapters for name in ctx.names):
            return None
        r = _match_batch(r, h)
        out = self.compose(ctx.setup, BnState(h, r, r, norm), 0)
        if out.last is None:
            return None
        return self.adapters[out.last].post_forward(out.hidden, h, out.input_tensor, norm)

    # --- composition ---------------------------------------------------------------------------------------

    def compose(self, setup, st: BnState, level: int) -> BnState:
        if isinstance(setup, str):
            return self._single(setup, st) if setup in self.adapters else st
        handler = {
            Stack: self._stack,
            Parallel: self._parallel,
            Fuse: self._fuse,
            Split: self._split,
            BatchSplit: self._batch_split,
            Average: self._average,
        }[type(setup)]
        return handler(setup, st, level)

    def _first_present(self, setup) -> str | None:
        names = [setup] if isinstance(setup, str) else setup.flatten()
        return next((n for n in names if n in self.adapters), None)

    def _pre_block(self, setup, st: BnState) -> BnState:
        first = self._first_present(setup)
        if first is None:
            return st
        x, _, residual = self.adapters[first].pre_forward(st.hidden, st.input_tensor, st.norm)
        return replace(st, hidden=x, residual=residual)

    def _single(self, name: str, st: BnState) -> BnState:
        out, up, gate = self.adapters[name](st.hidden, st.residual, keep_up=self._fusing)
        if gate is not None:
            self.state.record_gating(name, self.layer_idx, self.location, gate.reshape(gate.shape[0]))
        return replace(st, hidden=out, up=up, last=name)

    def _child(self, child, st: BnState, level: int) -> BnState:
        """A child of a non-Stack block: names run without their own pre-processing, blocks recurse."""
        if isinstance(child, str):
            return self._single(child, st) if child in self.adapters else st
        return self.compose(child, st, level + 1)

    def _stack(self, block: Stack, st: BnState, level: int) -> BnState:
        for child in block:
            if isinstance(child, Block):
                if level >= 1:
                    raise CompositionError(f"{child} may not be nested in a Stack below the top level")
                st = self.compose(child, st, level + 1)
            elif child in self.adapters:
                st = self._single(child, self._pre_block(child, st))
        return st

    def _parallel(self, block: Parallel, st: BnState, level: int) -> BnState:
        channels = len(block)
        if st.hidden.shape[0] % channels:
            raise CompositionError(f"batch of {st.hidden.shape[0]} rows cannot be split into {channels} channels")
        st = self._pre_block(block, st)
        rows = st.hidden.shape[0] // channels
        parts = [self._child(c, _rows(st, i * rows, (i + 1) * rows), level) for i, c in enumerate(block)]
        return _concat(parts, dim=0)

    def _batch_split(self, block: BatchSplit, st: BnState, level: int) -> BnState:
        if sum(block.batch_sizes) != st.hidden.shape[0]:
            raise CompositionError(
                f"BatchSplit sizes {block.batch_sizes} do not add up to the batch size {st.hidden.shape[0]}"
            )
        st = self._pre_block(block, st)
        bounds = _bounds(block.batch_sizes)
        parts = [self._child(c, _rows(st, a, b), level) for c, (a, b) in zip(block, bounds, strict=True)]
        return _concat(parts, dim=0)

    def _split(self, block: Split, st: BnState, level: int) -> BnState:
        if sum(block.splits) != st.hidden.shape[1]:
            raise CompositionError(
                f"Split positions {block.splits} do not add up to the sequence length {st.hidden.shape[1]}"
            )
        st = self._pre_block(block, st)
        parts = []
        for child, (a, b) in zip(block, _bounds(block.splits), strict=True):
            part = BnState(st.hidden[:, a:b], st.input_tensor[:, a:b], st.residual[:, a:b], st.norm)
            parts.append(self._child(child, part, level))
        hidden = torch.cat([p.hidden for p in parts], dim=1)
        return replace(st, hidden=hidden, last=parts[-1].last)

    def _average(self, block: Average, st: BnState, level: int) -> BnState:
        st = self._pre_block(block, st)
        parts = [self._child(c, st, level) for c in block]
        weights = torch.tensor(block.weights, dtype=st.hidden.dtype, device=st.hidden.device)
        stacked = torch.stack([p.hidden for p in parts]) * weights[:, None, None, None]
        return replace(parts[0], hidden=stacked.mean(dim=0), last=parts[-1].last)

    def _fuse(self, block: Fuse, st: BnState, level: int) -> BnState:
        name = block.name
        if name not in self.fusions:  # the fused adapters are not all in this layer
            return st
        fusion: FusionLayer = self.fusions[name]
        last = block.last()
        x, query, residual = self.adapters[last].pre_forward(
            st.hidden, st.input_tensor, st.norm, query_before_ln=bool(fusion.config.query_before_ln)
        )
        inner = replace(st, hidden=x, residual=residual)
        self._fusing = True
        try:
            ups = [self._child(child, inner, level).up for child in block]
        finally:
            self._fusing = False
        out, probs = fusion(query, torch.stack(ups, dim=2), residual)
        ctx = self.state.context
        if ctx is not None and ctx.output_fusion_attentions:
            per_layer = ctx.fusion_attentions.setdefault(name, {}).setdefault(self.layer_idx, {})
            per_layer[self.location] = probs.detach().cpu()
        return replace(st, hidden=out, last=last)


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    edges = [0]
    for size in sizes:
        edges.append(edges[-1] + size)
    return list(zip(edges[:-1], edges[1:], strict=True))


def _rows(st: BnState, a: int, b: int) -> BnState:
    up = st.up[a:b] if st.up is not None else None
    return BnState(st.hidden[a:b], st.input_tensor[a:b], st.residual[a:b], st.norm, up, st.last)


def _concat(parts: list[BnState], dim: int) -> BnState:
    cat = lambda name: torch.cat([getattr(p, name) for p in parts], dim=dim)  # noqa: E731
    return BnState(cat("hidden"), cat("input_tensor"), cat("residual"), parts[0].norm, None, parts[-1].last)


def _match_batch(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if r.shape[0] < h.shape[0]:
        return r.repeat(h.shape[0] // r.shape[0], *([1] * (r.dim() - 1)))
    return r


class BottleneckMethod:
    """Adds and removes bottleneck adapters and fusions across all layers of a model."""

    kind = "bottleneck"

    def __init__(self, state: EngineState):
        self.state = state
        self.layers: dict[tuple[int, str], BottleneckLayer] = {}
        if not hasattr(state.base, "shared_parameters"):
            state.base.shared_parameters = nn.ModuleDict()

    def _layer(self, idx: int, location: str) -> BottleneckLayer:
        key = (idx, location)
        if key not in self.layers:
            self.layers[key] = BottleneckLayer(self.state, idx, location)
        return self.layers[key]

    def add(self, name: str, config: BnConfig) -> None:
        hidden = self.state.hidden_size
        shared = None
        if config.phm_layer and (config.shared_phm_rule or config.shared_W_phm):
            shared = shared_phm_parameters(config, hidden, bottleneck_size(config, hidden, 0))
            self.state.base.shared_parameters[name] = shared
        for idx in range(len(self.state.layers)):
            if idx in config.leave_out:
                continue
            for location in LOCATIONS:
                if getattr(config, location):
                    self._layer(idx, location).adapters[name] = make_adapter(hidden, config, idx, shared)

    def delete(self, name: str) -> None:
        for layer in self.layers.values():
            if name in layer.adapters:
                del layer.adapters[name]
        if name in self.state.base.shared_parameters:
            del self.state.base.shared_parameters[name]

    def add_fusion(self, fusion_name: str, names: list[str], config: AdapterFusionConfig) -> None:
        hidden = self.state.hidden_size
        dropout = config.dropout_prob
        if dropout is None:
            dropout = getattr(self.state.base.config, "attention_probs_dropout_prob", None) or 0.0
        for layer in self.layers.values():
            if all(n in layer.adapters for n in names):
                layer.fusions[fusion_name] = FusionLayer(config, hidden, dropout)

    def delete_fusion(self, fusion_name: str) -> None:
        for layer in self.layers.values():
            if fusion_name in layer.fusions:
                del layer.fusions[fusion_name]

    def fusion_layers(self, fusion_name: str) -> list[FusionLayer]:
        return [layer.fusions[fusion_name] for layer in self.layers.values() if fusion_name in layer.fusions]
