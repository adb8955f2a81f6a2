"""Bottleneck adapters and AdapterFusion wired into a model: one `BottleneckLayer` per residual site.

Each site runs the active composition (Stack, Parallel, Fuse, Split, BatchSplit, Average) the way AdapterHub
does, so outputs match the `adapters` library: Stack re-applies the layer's residual/LayerNorm handling before
every adapter, the other blocks once with their first (Fuse: last) adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from ..composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from ..configs import AdapterFusionConfig, BnConfig
from ..engine import record_gating
from ..errors import CompositionError, UnsupportedMethodError
from ..runtime import (
    ComposableLayer,
    blocks_with_names,
    cat_rows,
    check_averages,
    compose,
    row_bounds,
    takes_part,
)
from ..sites import ResidualSite
from .base import AdapterMethod
from .bottleneck import bottleneck_size, make_adapter
from .fusion import FusionLayer
from .phm import shared_phm_parameters

LOCATIONS = {"mh_adapter": "attention_site", "output_adapter": "output_site", "cross_adapter": "cross_site"}


@dataclass
class BnState:
    hidden: torch.Tensor
    input_tensor: torch.Tensor
    residual: torch.Tensor
    norm: object
    up: torch.Tensor | None = None
    # The adapter whose post-processing finishes the rows: a name, None (no adapter here: the layer's own output),
    # or, when row groups of a Parallel/BatchSplit end differently, ((rows, name or None), ...) in row order.
    last: str | None | tuple = None
    fusing: bool = False  # inside a Fuse: adapters keep their up-projections intact for the fusion layer


def _runs(last, rows: int) -> tuple:
    return last if isinstance(last, tuple) else ((rows, last),)


class BottleneckLayer(ComposableLayer):
    """The adapters and fusions at one site (attention or FFN output) of one layer."""

    def __init__(self, engine, layer_idx: int, location: str):
        self.engine, self.layer_idx, self.location = engine, layer_idx, location
        ref = engine.layer_refs[layer_idx]
        self.layer_id = ref.layer_id  # AdapterHub's id: `skip_layers`, gating scores, fusion attentions
        self.site_spec = getattr(ref.stack, LOCATIONS[location])
        self.path = f"{ref.path}.{self.site_spec.host}"
        self.hidden_size = engine.hidden_size_of(ref.stack)
        self.site = ResidualSite(engine, ref.module, self.site_spec, self.combine, self._acts)
        host = self.site.host
        host.adapters = nn.ModuleDict()
        host.adapter_fusion_layer = nn.ModuleDict()
        self.adapters: nn.ModuleDict = host.adapters
        self.fusions: nn.ModuleDict = host.adapter_fusion_layer

    def remove(self) -> None:
        """Take the hooks and containers out again (the layer has no adapters left)."""
        self.site.remove()
        host = self.site.host
        del host.adapters, host.adapter_fusion_layer
        if self.site.created_host:
            from ..archs import remove_host

            remove_host(self.engine.layer_refs[self.layer_idx].module, self.site_spec.host)

    def _acts(self, ctx) -> bool:
        return self.layer_id not in self.engine.skip_layers and any(n in self.adapters for n in ctx.names)

    def combine(self, h, r, norm, ctx):
        r = _match_batch(r, h) if r is not None else None
        out = compose(self, ctx.setup, BnState(h, r, r, norm), ctx)
        if out.last is None:
            return None
        adds_r = self.site.layer_adds_residual  # hooked or pre-LN: the layer adds r (and its norms) to our result
        last = self._finished_alike(out.last)
        if not isinstance(last, tuple):
            return self.adapters[last].post_forward(out.hidden, h, out.input_tensor, norm, adds_r)
        pieces, start = [], 0  # row groups finished by different adapters (or by none: the layer's own output)
        for rows, name in last:
            cut = slice(start, start + rows)
            if name is None:
                pieces.append(h[cut] if adds_r else norm(h[cut] + r[cut]) if norm is not None else h[cut] + r[cut])
            else:
                inputs = _cut(out.input_tensor, cut)
                pieces.append(self.adapters[name].post_forward(out.hidden[cut], h[cut], inputs, norm, adds_r))
            start += rows
        return torch.cat(pieces)

    def _finished_alike(self, last):
        """`last`, or one adapter name for row groups that all finish alike (a Parallel of alike adapters): an
        adapter's `post_forward` uses no weights of its own, so one call over all rows gives the same output."""
        if not isinstance(last, tuple):
            return last
        kinds = {None if name is None else self._post_kind(self.adapters[name]) for _, name in last}
        return last[0][1] if len(kinds) == 1 and None not in kinds else last

    @staticmethod
    def _post_kind(adapter) -> tuple:
        return type(adapter), adapter.config.original_ln_after

    # --- the composition contract --------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.adapters

    def enter(self, setup, st: BnState) -> BnState:
        """The layer's own residual/LayerNorm handling, done by the first adapter present (AdapterHub's pre_forward).

        A Parallel or BatchSplit whose children start with adapters that handle it differently (or are absent
        here) enters each child's rows with that child's own first adapter.
        """
        first = self._first(setup)
        if first is None:
            return st
        if isinstance(setup, (Parallel, BatchSplit)):
            firsts = [self._first(child) for child in setup]
            if len({_pre_kind(self.adapters[f]) if f else None for f in firsts}) > 1:
                bounds = row_bounds(setup, st.hidden.shape[0])
                parts = [self.enter(c, self.rows(st, a, b)) for c, (a, b) in zip(setup, bounds, strict=True)]
                cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
                return replace(st, hidden=cat("hidden"), residual=cat("residual"))
        x, _, residual = self.adapters[first].pre_forward(st.hidden, st.input_tensor, st.norm)
        return replace(st, hidden=x, residual=residual)

    def _first(self, setup) -> str | None:
        names = [setup] if isinstance(setup, str) else setup.names()
        return next((n for n in names if n in self.adapters), None)

    def single(self, name: str, st: BnState, ctx) -> BnState:
        out, up, gate = self.adapters[name](st.hidden, st.residual, keep_up=st.fusing)
        if gate is not None:
            record_gating(ctx, name, self.layer_id, self.location, gate.reshape(gate.shape[0]), columns=False)
        return replace(st, hidden=out, up=up, last=name)

    def batch_rows(self, st: BnState) -> int:
        return st.hidden.shape[0]

    def rows(self, st: BnState, a: int, b: int) -> BnState:
        cut = slice(a, b)
        inputs, residual = _cut(st.input_tensor, cut), _cut(st.residual, cut)  # None at a site without a residual
        return BnState(st.hidden[cut], inputs, residual, st.norm, _cut(st.up, cut), st.last, st.fusing)

    def concat(self, parts: list[BnState]) -> BnState:
        cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
        lasts = [p.last for p in parts]
        if all(last == lasts[0] and not isinstance(last, tuple) for last in lasts):
            last = lasts[0]
        else:  # each row group keeps the adapter that finishes it
            last = tuple(run for p in parts for run in _runs(p.last, p.hidden.shape[0]))
        # inputs and residuals are mostly the slices the children got: `cat_rows` joins those without a copy
        inputs, residual = (cat_rows([getattr(p, name) for p in parts]) for name in ("input_tensor", "residual"))
        return BnState(cat("hidden"), inputs, residual, parts[0].norm, None, last, parts[0].fusing)

    def average(self, parts: list[BnState], weights: list[float]) -> BnState:
        """AdapterHub's mean of the weighted outputs (every child is present here; see `ComposableLayer.alone`)."""
        w = torch.tensor(weights, dtype=parts[0].hidden.dtype, device=parts[0].hidden.device)
        stacked = torch.stack([p.hidden for p in parts]) * w[:, None, None, None]
        return replace(parts[0], hidden=stacked.mean(dim=0), last=parts[-1].last)

    def split(self, block: Split, st: BnState, ctx, run_child) -> BnState:
        length = st.hidden.shape[1]
        if sum(block.splits) != length:
            raise CompositionError(f"{block}: splits {block.splits} do not add up to the sequence length {length}")
        st = self.enter(block, st)
        parts, start = [], 0
        for child, size in zip(block, block.splits, strict=True):
            cut = slice(start, start + size)
            part = replace(
                st,
                hidden=st.hidden[:, cut],
                input_tensor=_cut(st.input_tensor, (slice(None), cut)),
                residual=_cut(st.residual, (slice(None), cut)),
                up=None,
                last=None,
            )
            parts.append(run_child(child, part))
            start += size
        return replace(st, hidden=torch.cat([p.hidden for p in parts], dim=1), last=parts[-1].last)

    def fuse(self, block: Fuse, st: BnState, ctx, run_child) -> BnState:
        """AdapterHub's fusion: attention over the up-projections of the fused adapters present in this layer
        (one left out here by `leave_out` is not fused here). `BottleneckMethod.check_setup` refused a setup whose
        last adapter is absent where others are present, which AdapterHub cannot run either."""
        present = [child for child in block if takes_part(self, child)]
        if not present:
            return st
        fusion: FusionLayer = self.fusions[block.name]
        last = block.last()
        x, query, residual = self.adapters[last].pre_forward(
            st.hidden, st.input_tensor, st.norm, query_before_ln=bool(fusion.config.query_before_ln)
        )
        inner = replace(st, hidden=x, residual=residual, fusing=True)
        ups = [run_child(child, inner).up for child in present]
        out, probs = fusion(query, torch.stack(ups, dim=2), residual, advance=ctx.recording)
        if ctx.output_fusion_attentions and ctx.recording:
            per_layer = ctx.fusion_attentions.setdefault(block.name, {}).setdefault(self.layer_id, {})
            per_layer[self.location] = probs.detach().cpu()
        return replace(st, hidden=out, last=last)


def _pre_kind(adapter) -> tuple:
    """What decides how an adapter pre-processes its input (two adapters alike here enter rows alike)."""
    config = adapter.config
    return type(adapter), config.original_ln_before, config.residual_before_ln


def _cut(t: torch.Tensor | None, index) -> torch.Tensor | None:
    """`t[index]`, or None for a site without a residual (Phi's FFN under AdapterHub's plugin interface)."""
    return t[index] if t is not None else None


def _match_batch(r: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if r.shape[0] < h.shape[0]:
        return r.repeat(h.shape[0] // r.shape[0], *([1] * (r.dim() - 1)))
    return r


def check_sites(spec, config: BnConfig, model_config) -> None:
    """Raise UnsupportedMethodError if a site the config uses cannot compute it (checked before anything is added)."""
    for location, site in LOCATIONS.items():
        for stack in spec.stacks:
            if uses_site(config, stack, location):
                _check_site(getattr(stack, site), config, location, model_config)


def uses_site(config: BnConfig, stack, location: str) -> bool:
    """Whether the config puts adapters at the stack's site for `location`. The cross-attention site follows the
    stack's `cross_site_flag` ("mh_adapter" in BERT-style decoder layers, as in AdapterHub)."""
    flag = stack.cross_site_flag if location == "cross_adapter" else location
    return bool(getattr(config, flag, False)) and getattr(stack, LOCATIONS[location]) is not None


def _check_site(site, config: BnConfig, location: str, model_config) -> None:
    where = f"the {location} site of model type {getattr(model_config, 'model_type', '?')!r}"
    if site.hooked and not config.original_ln_after:
        raise UnsupportedMethodError(
            f"original_ln_after=False cannot act at {where}: the layer itself adds the residual and applies its "
            "norms after the adapter (AdapterHub's plugin interface refuses this config too)"
        )
    if site.residual is None and config.is_parallel:
        raise UnsupportedMethodError(
            f"a parallel bottleneck adapter (is_parallel=True) reads the residual stream, which {where} does not "
            f"have (its sublayer reads the attention's input); use a sequential adapter or {location}=False"
        )


class BottleneckMethod(AdapterMethod):
    """Adds and removes bottleneck adapters and fusions across all layers of a model."""

    kind = "bottleneck"
    supports = frozenset({Stack, Parallel, Fuse, Split, BatchSplit, Average, MultiTask})

    def __init__(self, engine):
        super().__init__(engine)
        self.layers: dict[tuple[int, str], BottleneckLayer] = {}

    def _layer(self, idx: int, location: str) -> BottleneckLayer:
        key = (idx, location)
        if key not in self.layers:
            self.layers[key] = BottleneckLayer(self.engine, idx, location)
        return self.layers[key]

    def add(self, name: str, config: BnConfig) -> None:
        engine, hidden = self.engine, self.engine.hidden_size
        refs = engine.layer_refs
        check_sites(engine.spec, config, engine.base.config)
        sizes = {ref.index: bottleneck_size(config, engine.hidden_size_of(ref.stack), ref.layer_id) for ref in refs}
        shared = None
        try:
            if config.phm_layer and (config.shared_phm_rule or config.shared_W_phm):
                if config.init_weights_seed:  # the shared PHM weights are drawn first: seeded like the adapters
                    torch.manual_seed(config.init_weights_seed)
                shared = shared_phm_parameters(config, hidden, sizes[0])
                if not hasattr(engine.base, "shared_parameters"):
                    engine.base.shared_parameters = nn.ModuleDict()
                engine.base.shared_parameters[name] = shared
                engine.register(name, f"shared_parameters.{name}", shared)
            for ref in refs:
                if ref.layer_id in config.leave_out:
                    continue
                for location in LOCATIONS:
                    if uses_site(config, ref.stack, location):
                        layer = self._layer(ref.index, location)
                        layer.adapters[name] = make_adapter(layer.hidden_size, config, ref.layer_id, shared)
                        engine.register(name, f"{layer.path}.adapters.{name}", layer.adapters[name])
        except Exception:
            self.delete(name)
            raise

    def delete(self, name: str) -> None:
        for key, layer in list(self.layers.items()):
            if name in layer.adapters:
                del layer.adapters[name]
            if not len(layer.adapters) and not len(layer.fusions):
                layer.remove()
                del self.layers[key]
        shared = getattr(self.engine.base, "shared_parameters", None)
        if shared is not None and name in shared:
            del shared[name]
        self.engine.unregister(name)

    def add_fusion(self, fusion_name: str, names: list[str], config: AdapterFusionConfig) -> None:
        """A fusion layer at every site the fused adapters' configs use, in every layer: `leave_out` is ignored, as
        in AdapterHub, so its files (which hold every layer) load, and a layer where only some of the adapters are
        present fuses those."""
        dropout = config.dropout_prob
        if dropout is None:
            dropout = getattr(self.engine.base.config, "attention_probs_dropout_prob", None) or 0.0
        configs = [self.engine.configs[n] for n in names]
        try:
            for ref in self.engine.layer_refs:
                for location in LOCATIONS:
                    if all(uses_site(c, ref.stack, location) for c in configs):
                        layer = self._layer(ref.index, location)
                        layer.fusions[fusion_name] = FusionLayer(config, layer.hidden_size, dropout)
                        path = f"{layer.path}.adapter_fusion_layer.{fusion_name}"
                        self.engine.register("fusion:" + fusion_name, path, layer.fusions[fusion_name])
        except Exception:
            self.delete_fusion(fusion_name)
            raise

    def delete_fusion(self, fusion_name: str) -> None:
        for key, layer in list(self.layers.items()):
            if fusion_name in layer.fusions:
                del layer.fusions[fusion_name]
            if not len(layer.adapters) and not len(layer.fusions):
                layer.remove()
                del self.layers[key]
        self.engine.unregister("fusion:" + fusion_name)

    def fusion_fits(self, fusion_name: str, names: list[str]) -> bool:
        """The fusion's layers are exactly the sites all its adapters' configs use (as `add_fusion` placed them)."""
        configs = [self.engine.configs[n] for n in names]
        wanted = {
            (ref.index, location)
            for ref in self.engine.layer_refs
            for location in LOCATIONS
            if all(uses_site(c, ref.stack, location) for c in configs)
        }
        return wanted == {key for key, layer in self.layers.items() if fusion_name in layer.fusions}

    def fused_children(self, block: Fuse) -> dict[tuple, list[int]]:
        """(layer id, location) -> the indices of `block`'s children present there: the columns of the fusion
        attentions recorded at that site (a child left out of a layer is not fused there)."""
        return {
            (layer.layer_id, layer.location): [i for i, child in enumerate(block) if takes_part(layer, child)]
            for layer in self.layers.values()
            if block.name in layer.fusions
        }

    def idle_fusion_paths(self, fusion_name: str, names: list[str]) -> tuple[str, ...]:
        """The module paths (with a final dot) of the fusion's layers that hold none of its adapters: they never
        run, and fusion files saved before workbench placed them (as AdapterHub does) lack their weights."""
        return tuple(
            f"{self.engine.base_prefix}{layer.path}.adapter_fusion_layer.{fusion_name}."
            for layer in self.layers.values()
            if fusion_name in layer.fusions and not any(n in layer.adapters for n in names)
        )

    def check_setup(self, setup) -> None:
        """Refuse Averages with some children absent from a layer (`check_averages`), and a Fuse whose last
        adapter is absent from a layer where other fused adapters are present: the fusion's query and residual
        come from that adapter (AdapterHub fails there with a KeyError)."""
        check_averages(setup, self.layers.values())
        for block, _ in blocks_with_names(setup):
            if not isinstance(block, Fuse):
                continue
            for layer in self.layers.values():
                present = [n for n in block.names() if n in layer]
                if present and block.last() not in layer:
                    raise CompositionError(
                        f"{block}: its last adapter {block.last()!r} is not in layer {layer.layer_id} "
                        f"({layer.location}), where {present} are (leave_out differs); a fusion takes its query "
                        "from the last adapter, so put an adapter present in every layer last"
                    )

    def fusion_layers(self, fusion_name: str) -> list[FusionLayer]:
        return [layer.fusions[fusion_name] for layer in self.layers.values() if fusion_name in layer.fusions]
