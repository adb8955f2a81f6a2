"""Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190) on unmodified attention modules.

Trainable key/value prefixes are prepended inside a registered transformers attention function that wraps the
model's own eager or sdpa implementation: after RoPE and the cache update, before `repeat_kv` (so prefixes
have the key/value head count). Every query attends to all prefix slots plus its usual causal/padding mask.
The module layout (pool on the base model, a `prefix_tuning` shim holding the pool on every attention module)
reproduces AdapterHub's state-dict keys, including the per-layer duplicates of the pool.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

from ..archs import get_module
from ..composition import Average, BatchSplit, Block, Fuse, Parallel, Split, Stack
from ..configs import PrefixTuningConfig
from ..context import EngineState, ForwardContext
from ..errors import CompositionError, UnsupportedModelError
from ..fast_dropout import BASE_IMPL
from ..fast_dropout import attention as sdpa_attention
from .activations import activation

LOCATION_KEYS = {"distilbert": "self"}  # every other architecture: "self_prefix"
IMPL_NAME = "workbench_prefix_{}"


class PrefixTuning(nn.Module):
    """Reparametrised prefix: an embedding of P positions fed through a two-layer MLP."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, hidden: int, config: PrefixTuningConfig):
        super().__init__()
        self.shape = (config.prefix_length, n_layers * 2, n_heads, head_dim)
        self.wte = nn.Embedding(config.prefix_length, hidden)
        self.control_trans = nn.Sequential(
            nn.Linear(hidden, config.bottleneck_size),
            activation(config.non_linearity.lower()),
            nn.Linear(config.bottleneck_size, n_layers * 2 * n_heads * head_dim),
        )
        self.dropout = nn.Dropout(config.dropout)

    def flat_states(self) -> torch.Tensor:
        return self.control_trans(self.wte.weight)

    def forward(self, batch: int) -> tuple[torch.Tensor, ...]:
        """One `(2, B, Hkv, P, D)` key/value pair per layer."""
        states = self.flat_states().view(1, *self.shape).expand(batch, *self.shape)
        return self.dropout(states).permute(2, 0, 3, 1, 4).split(2)


class FlatPrefixTuning(PrefixTuning):
    """Prefix stored directly as one flat parameter `control_trans` of P*L*2*Hkv*D values."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, hidden: int, config: PrefixTuningConfig):
        nn.Module.__init__(self)
        self.shape = (config.prefix_length, n_layers * 2, n_heads, head_dim)
        self.control_trans = nn.Parameter(torch.randn(math.prod(self.shape)))
        self.dropout = nn.Dropout(config.dropout)

    def flat_states(self) -> torch.Tensor:
        return self.control_trans


class PrefixTuningPool(nn.Module):
    """`prefix_tunings.<name>.<location_key>`: every prefix of the model, shared by all layers."""

    def __init__(self):
        super().__init__()
        self.prefix_tunings = nn.ModuleDict()


@dataclass
class _State:
    key: torch.Tensor
    value: torch.Tensor
    mask: torch.Tensor | None
    residual: torch.Tensor | None
    offset: int = 0  # index of the first row in the (replicated) batch

    def rows(self, a: int, b: int) -> _State:
        cut = lambda t: t[a:b] if t is not None else None  # noqa: E731
        return _State(self.key[a:b], self.value[a:b], cut(self.mask), cut(self.residual), self.offset + a)


class PrefixTuningShim(nn.Module):
    """`prefix_tuning` on one attention module: the layer's prefix ids, optional gates and the pool."""

    def __init__(self, method: PrefixTuningMethod, layer_idx: int, attention: nn.Module):
        super().__init__()
        object.__setattr__(self, "method", method)  # a plain reference, not a submodule
        self.layer_idx = layer_idx
        self.prefixes: dict[str, int] = {}
        self.prefix_gates = nn.ModuleDict()
        self.pool = method.pool
        self.residual: torch.Tensor | None = None
        attention.register_forward_pre_hook(self._capture, with_kwargs=True)
        attention.register_forward_hook(self._release)

    def _capture(self, module, args, kwargs):
        if len(self.prefix_gates):
            self.residual = kwargs.get("hidden_states", args[0] if args else None)

    def _release(self, module, args, output):
        self.residual = None

    def extend(self, module, query, key, value, mask):
        """Prepend the active prefixes to key/value and widen the mask accordingly."""
        state = self.method.state
        ctx = state.context
        if ctx is None or ctx.setup is None or self.layer_idx in state.skip_layers:
            return key, value, mask
        if not any(name in self.prefixes for name in ctx.names):
            return key, value, mask
        rows, queries = key.shape[0], query.shape[2]
        if mask is None and getattr(module, "is_causal", False) and queries > 1:
            mask = _causal_mask(rows, queries, key.shape[2], self.method.attention_dtype(query), key.device)
        elif mask is not None and mask.shape[0] != rows:
            mask = mask.expand(rows, *mask.shape[1:])
        out = self._compose(ctx, ctx.setup, _State(key, value, mask, self.residual))
        return out.key, out.value, out.mask

    def _compose(self, ctx: ForwardContext, setup, st: _State) -> _State:
        if isinstance(setup, str):
            return self._single(ctx, setup, st) if setup in self.prefixes else st
        if isinstance(setup, Stack):
            for child in setup:
                st = self._compose(ctx, child, st)
            return st
        if isinstance(setup, (Parallel, BatchSplit)):
            n = st.key.shape[0]
            sizes = [n // len(setup)] * len(setup) if isinstance(setup, Parallel) else setup.batch_sizes
            if sum(sizes) != n:
                raise CompositionError(f"{setup}: a batch of {n} rows cannot be split into {sizes}")
            edges = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
            bounds = zip(setup, edges[:-1], edges[1:], strict=True)
            parts = [self._compose(ctx, child, st.rows(a, b)) for child, a, b in bounds]
            return _concat(parts, st)
        return st  # Average/Fuse/Split without prefixes (with prefixes they are refused up front)

    def _single(self, ctx: ForwardContext, name: str, st: _State) -> _State:
        pk, pv = ctx.prefix_states[name][self.method.location_key][self.prefixes[name]]
        n, batch = st.key.shape[0], pk.shape[0]
        if n != batch or st.offset % batch:
            index = torch.arange(st.offset, st.offset + n, device=pk.device) % batch
            pk, pv = pk[index], pv[index]
        pk, pv = pk.to(st.key.dtype), pv.to(st.value.dtype)
        if name in self.prefix_gates:
            gate = torch.sigmoid(self.prefix_gates[name](st.residual)).mean(dim=1)
            _store_gate(ctx, name, self.layer_idx, self.method.location_key, gate)
            pk = pk * gate[:, 0].view(-1, 1, 1, 1)
            pv = pv * gate[:, -1].view(-1, 1, 1, 1)
        mask = st.mask
        if mask is not None:
            mask = torch.cat([_fill(mask, pk.shape[2], attend=True), mask], dim=-1)
        key, value = torch.cat([pk, st.key], dim=2), torch.cat([pv, st.value], dim=2)
        return replace(st, key=key, value=value, mask=mask)


def _fill(mask: torch.Tensor, width: int, attend: bool) -> torch.Tensor:
    """A `(N, 1, Q, width)` block in the mask's convention (bool: True attends; float: additive)."""
    shape = (*mask.shape[:-1], width)
    if mask.dtype == torch.bool:
        return torch.full(shape, attend, dtype=torch.bool, device=mask.device)
    value = 0.0 if attend else torch.finfo(mask.dtype).min
    return torch.full(shape, value, dtype=mask.dtype, device=mask.device)


def _causal_mask(rows: int, queries: int, keys: int, dtype, device) -> torch.Tensor:
    """Bottom-right aligned causal mask `(rows, 1, Q, K)`: query i sees keys up to i + K - Q."""
    q = torch.arange(queries, device=device)[:, None] + (keys - queries)
    allowed = (torch.arange(keys, device=device)[None, :] <= q).expand(rows, 1, queries, keys)
    if dtype == torch.bool:
        return allowed
    blocked = torch.finfo(dtype).min
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, blocked)


def _concat(parts: list[_State], st: _State) -> _State:
    """Join batch slices; shorter prefixes are left-padded with zero slots that are masked out."""
    width = max(p.key.shape[2] for p in parts)
    if any(p.key.shape[2] != width for p in parts):
        for p in parts:
            if p.mask is None:  # then no part has one: attend everywhere
                p.mask = p.key.new_zeros(p.key.shape[0], 1, 1, p.key.shape[2])
            pad = width - p.key.shape[2]
            p.key, p.value = (nn.functional.pad(t, (0, 0, pad, 0)) for t in (p.key, p.value))
            p.mask = torch.cat([_fill(p.mask, pad, attend=False), p.mask], dim=-1)
    cat = lambda name: torch.cat([getattr(p, name) for p in parts], dim=0)  # noqa: E731
    mask = cat("mask") if parts[0].mask is not None else None
    return replace(st, key=cat("key"), value=cat("value"), mask=mask)


def _store_gate(ctx: ForwardContext, name: str, layer: int, location: str, gate: torch.Tensor) -> None:
    """Keep per-example gates if the forward asked for `output_adapter_gating_scores` (AdapterHub layout)."""
    if not getattr(ctx, "output_gating_scores", False):
        return
    score = gate.detach().squeeze().cpu()
    score = score.unsqueeze(0) if score.dim() == 0 else score
    per_layer = ctx.gating_scores.setdefault(name, {}).setdefault(layer, {})
    previous = per_layer.get(location)
    per_layer[location] = score if previous is None else torch.column_stack((previous, score))


def _make_attention(base_impl: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        shim = module._modules.get("prefix_tuning")
        if shim is not None:
            key, value, attention_mask = shim.extend(module, query, key, value, attention_mask)
        if base_impl == "sdpa":
            return sdpa_attention(module, query, key, value, attention_mask, **kwargs)  # sdpa, or fast dropout
        if getattr(module, "reorder_and_upcast_attn", False):  # GPT-2's own eager variant
            return module._upcast_and_reordered_attn(query, key, value, attention_mask)
        eager = sys.modules[type(module).__module__].eager_attention_forward
        return eager(module, query, key, value, attention_mask, **kwargs)

    return attention


for _impl, _mask in (("eager", eager_mask), ("sdpa", sdpa_mask)):
    AttentionInterface.register(IMPL_NAME.format(_impl), _make_attention(_impl))
    AttentionMaskInterface.register(IMPL_NAME.format(_impl), _mask)


class PrefixTuningMethod:
    """Adds and removes prefixes; computes them once per forward and switches the attention function."""

    kind = "prefix_tuning"

    def __init__(self, state: EngineState):
        self.state = state
        config = state.base.config
        self.location_key = LOCATION_KEYS.get(config.model_type, "self_prefix")
        self.n_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self.head_dim = getattr(config, "d_kv", None) or config.hidden_size // config.num_attention_heads
        if not hasattr(state.base, "prefix_tuning"):
            state.base.prefix_tuning = PrefixTuningPool()
        self.pool: PrefixTuningPool = state.base.prefix_tuning
        self.shims: dict[int, PrefixTuningShim] = {}
        self.original_impl: str | None = None
        state.forward_begin_hooks.append(self._begin)

    def _shim(self, idx: int) -> PrefixTuningShim:
        if idx not in self.shims:
            attention = get_module(self.state.layers[idx], self.state.spec.attention)
            self.shims[idx] = PrefixTuningShim(self, idx, attention)
            attention.prefix_tuning = self.shims[idx]
        return self.shims[idx]

    def attention_dtype(self, query: torch.Tensor):
        return torch.bool if self.original_impl == "sdpa" else query.dtype

    def add(self, name: str, config: PrefixTuningConfig) -> None:
        if not self.pool.prefix_tunings:
            self._switch_attention()
        hidden = self.state.hidden_size
        layers = [i for i in range(len(self.state.layers)) if i not in config.leave_out]
        for prefix_id, idx in enumerate(layers):
            shim = self._shim(idx)
            shim.prefixes[name] = prefix_id
            if config.use_gating:
                gate = nn.Linear(hidden, 1 if config.shared_gating else 2)
                nn.init.normal_(gate.weight, mean=0.0, std=0.02)
                shim.prefix_gates[name] = gate
        if config.init_weights_seed:
            torch.manual_seed(config.init_weights_seed)
        cls = FlatPrefixTuning if config.flat else PrefixTuning
        prefix = cls(len(layers), self.n_heads, self.head_dim, hidden, config)
        self.pool.prefix_tunings[name] = nn.ModuleDict({self.location_key: prefix}).train(self.pool.training)

    def delete(self, name: str) -> None:
        for shim in self.shims.values():
            shim.prefixes.pop(name, None)
            if name in shim.prefix_gates:
                del shim.prefix_gates[name]
        if name in self.pool.prefix_tunings:
            del self.pool.prefix_tunings[name]
            if not self.pool.prefix_tunings:
                self._restore_attention()

    # --- attention implementation ------------------------------------------------------------------------

    def _switch_attention(self) -> None:
        base = self.state.base
        impl = base.config._attn_implementation or "eager"
        impl = BASE_IMPL.get(impl, impl)  # fast_dropout's sdpa stands for sdpa
        if impl not in ("eager", "sdpa"):
            raise UnsupportedModelError(
                f"prefix tuning needs attn_implementation 'eager' or 'sdpa'; this model uses {impl!r}"
            )
        self.original_impl = impl
        base.set_attn_implementation(IMPL_NAME.format(impl))

    def _restore_attention(self) -> None:
        if self.original_impl is not None:
            self.state.base.set_attn_implementation(self.original_impl)
            self.original_impl = None

    # --- per forward -------------------------------------------------------------------------------------

    def _begin(self, ctx: ForwardContext, args, kwargs):
        if ctx.setup is None:
            return None
        names = [n for n in ctx.setup.flatten() if n in self.pool.prefix_tunings]
        if not names:
            return None
        _refuse_unsupported(ctx.setup, set(names))
        if not str(self.state.base.config._attn_implementation).startswith(IMPL_NAME.format("")):
            self._switch_attention()  # the user switched implementations after adding the prefix
        if ctx.batch_size is None:
            raise UnsupportedModelError("prefix tuning could not infer the batch size from the model inputs")
        for name in names:
            group = self.pool.prefix_tunings[name]
            ctx.prefix_states[name] = {loc: module(ctx.batch_size) for loc, module in group.items()}
        return None


def _refuse_unsupported(setup, prefixes: set[str]) -> None:
    if isinstance(setup, (Average, Fuse, Split)) and prefixes & set(setup.flatten()):
        kind = type(setup).__name__
        raise CompositionError(f"prefix tuning supports Stack, Parallel and BatchSplit, not {kind}: {setup}")
    if isinstance(setup, Block):
        for child in setup:
            _refuse_unsupported(child, prefixes)
