"""Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190) on unmodified attention modules.

Trainable key/value prefixes are prepended inside a registered transformers attention function that wraps the
model's own eager or sdpa implementation: after RoPE and the cache update, before `repeat_kv` (so prefixes
have the key/value head count). Every query attends to all prefix slots plus its usual causal/padding mask.
The module layout (pool on the base model, or one per sub-model of an `EncoderDecoderModel`; a `prefix_tuning`
shim holding its pool on every prefixed attention module) reproduces AdapterHub's state-dict keys, including the
per-layer duplicates of the pool. Each attention call computes its own layer's slice of the prefix from the
parameters, so nothing is shared between layers within a call (gradient checkpointing can replay one layer on its
own) and nothing is kept between calls. An attention that computes its scores itself (DeBERTa) gets the same
prefixes, compositions and gates through hooks instead (`LayerStack.prefix_glue`, `prefix_deberta.py`); the model's
attention function is then left as it is.

Attentions that take a `position_bias` (T5) get it widened to the prefixed keys as AdapterHub computes it: where
the stack has a relative position bias, it is recomputed over prefix slots and keys as one sequence (the prefix at
positions 0..P-1, the keys after it, queries at their own positions), so a file trained with the `adapters`
library gives its outputs; elsewhere (T5's cross-attention, whose bias is zero) the prefix columns get bias 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..archs import get_module
from ..composition import BatchSplit, MultiTask, Parallel, Stack
from ..configs import PrefixTuningConfig
from ..context import current_call
from ..engine import LayerRef, record_gating
from ..errors import UnsupportedModelError
from ..runtime import ComposableLayer, cat_rows, compose
from ..transformers_api import (
    ALL_ATTENTION_FUNCTIONS,
    ALL_MASK_ATTENTION_FUNCTIONS,
    AttentionInterface,
    AttentionMaskInterface,
    eager_attention_of,
    eager_mask,
    gpt2_upcast_attention,
    relative_position_bias,
    sdpa_mask,
)
from .activations import activation
from .base import AdapterMethod

IMPL_PREFIX = "workbench_prefix:"


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

    def layer_values(self, position: int) -> torch.Tensor:
        """`(P, 2 * Hkv * D)`: the key and value prefix of the `position`-th prefixed layer."""
        width = 2 * self.shape[2] * self.shape[3]
        rows = slice(position * width, (position + 1) * width)
        last = self.control_trans[-1]
        hidden = self.control_trans[:-1](self.wte.weight)
        bias = last.bias[rows] if last.bias is not None else None
        return nn.functional.linear(hidden, last.weight[rows], bias)

    def layer_states(self, position: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Key and value prefix `(B, Hkv, P, D)` of one layer, with dropout."""
        length, _, heads, dim = self.shape
        states = self.layer_values(position).view(1, length, 2, heads, dim).expand(batch, -1, -1, -1, -1)
        key, value = self.dropout(states).permute(2, 0, 3, 1, 4)
        return key, value


class FlatPrefixTuning(PrefixTuning):
    """Prefix stored directly as one flat parameter `control_trans` of P*L*2*Hkv*D values."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, hidden: int, config: PrefixTuningConfig):
        nn.Module.__init__(self)
        self.shape = (config.prefix_length, n_layers * 2, n_heads, head_dim)
        self.control_trans = nn.Parameter(torch.randn(math.prod(self.shape)))
        self.dropout = nn.Dropout(config.dropout)

    def layer_values(self, position: int) -> torch.Tensor:
        length, _, heads, dim = self.shape
        per_layer = self.control_trans.view(length, -1, 2 * heads * dim)
        return per_layer[:, position]


def flatten(prefix: PrefixTuning, config: PrefixTuningConfig) -> FlatPrefixTuning:
    """The flat prefix whose values are what the reparametrised `prefix` computes (AdapterHub's `eject`)."""
    length, layers, heads, dim = prefix.shape
    with torch.device("meta"):  # sized without allocating the random init that is overwritten next
        flat = FlatPrefixTuning(layers // 2, heads, dim, 0, config.replace(flat=True))
    weight = prefix.wte.weight
    with torch.no_grad():
        values = prefix.control_trans(weight).reshape(-1).detach().clone()
    flat.control_trans = nn.Parameter(values, requires_grad=weight.requires_grad)
    flat.dropout = prefix.dropout
    return flat.train(prefix.training)


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


class PrefixTuningShim(nn.Module, ComposableLayer):
    """`prefix_tuning` on one attention module: the layer's prefix ids, optional gates and the pool."""

    def __init__(
        self,
        method: PrefixTuningMethod,
        layer_idx: int,
        attention: nn.Module,
        location_key: str,
        pool: PrefixTuningPool,
        bias_source: nn.Module | None = None,
        glue=None,
    ):
        super().__init__()
        object.__setattr__(self, "method", method)  # a plain reference, not a submodule
        object.__setattr__(self, "attention", attention)
        object.__setattr__(self, "bias_source", bias_source)  # the attention computing the stack's relative bias
        self.layer_idx = layer_idx  # AdapterHub's layer id (`skip_layers`, gating scores)
        self.location_key = location_key
        self.prefixes: dict[str, int] = {}
        self.prefix_gates = nn.ModuleDict()
        self.pool = pool
        self._key = ("prefix-residual", id(self))
        self._handle = attention.register_forward_pre_hook(self._capture, with_kwargs=True)
        try:  # an attention computing its scores itself: hooks carry `extend`'s prefixes in (LayerStack.prefix_glue)
            self._glue = glue(self, attention) if glue is not None else None
        except Exception:
            self._handle.remove()
            raise

    def remove(self) -> None:
        self._handle.remove()
        if self._glue is not None:
            self._glue.remove()
        del self.attention.prefix_tuning

    def _capture(self, module, args, kwargs):
        if not len(self.prefix_gates):
            return
        ctx = current_call(self.method.engine)
        if ctx is not None and ctx.setup is not None:
            ctx.scratch[self._key] = kwargs.get("hidden_states", args[0] if args else None)

    def extend(self, module, query, key, value, mask, is_causal: bool | None = None):
        """Prepend the active prefixes to key/value and widen the mask accordingly. `is_causal`: the caller's flag
        (CLIP's text tower passes it to the attention function; its modules say False), else the module's."""
        engine = self.method.engine
        ctx = current_call(engine)
        if ctx is None or ctx.setup is None or self.layer_idx in engine.skip_layers:
            return key, value, mask
        if not any(name in self.prefixes for name in ctx.names):
            return key, value, mask
        rows, queries = key.shape[0], query.shape[2]
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
        if mask is None and causal and queries > 1:
            mask = _causal_mask(rows, queries, key.shape[2], self.method.attention_dtype(query), key.device)
        elif mask is not None and mask.shape[0] != rows:
            mask = mask.expand(rows, *mask.shape[1:])
        residual = ctx.scratch.get(self._key)
        out = compose(self, ctx.setup, _State(key, value, mask, residual), ctx)
        return out.key, out.value, out.mask

    def position_bias(self, bias: torch.Tensor, queries: int, keys: int, added: int) -> torch.Tensor:
        """`bias` (.., Q, keys) widened to the `added` prefix slots in front of the keys (see the module docstring):
        the stack's relative bias over slots and keys as one sequence, or zero columns without one."""
        if self.bias_source is None:
            return torch.cat([bias.new_zeros(*bias.shape[:-1], added), bias], dim=-1)
        # the keys include the cache: queries sit at the last `queries` of the `keys` positions
        full = relative_position_bias(self.bias_source, queries, added + keys, keys - queries, device=bias.device)
        return full.to(bias.dtype)

    # --- the composition contract --------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.prefixes

    def single(self, name: str, st: _State, ctx) -> _State:
        prefix = self.pool.prefix_tunings[name][self.location_key]
        pk, pv = prefix.layer_states(self.prefixes[name], st.key.shape[0])
        pk, pv = pk.to(st.key.dtype), pv.to(st.value.dtype)
        if name in self.prefix_gates:
            gate_layer = self.prefix_gates[name]  # `adapter_to` may have cast it: computes in its own dtype
            gate = torch.sigmoid(gate_layer(st.residual.to(gate_layer.weight.dtype))).mean(dim=1).to(pk.dtype)
            record_gating(ctx, name, self.layer_idx, self.location_key, gate)
            pk = pk * gate[:, 0].view(-1, 1, 1, 1)
            pv = pv * gate[:, -1].view(-1, 1, 1, 1)
        mask = st.mask
        if mask is not None:
            mask = torch.cat([_fill(mask, pk.shape[2], attend=True), mask], dim=-1)
        key, value = torch.cat([pk, st.key], dim=2), torch.cat([pv, st.value], dim=2)
        return replace(st, key=key, value=value, mask=mask)

    def batch_rows(self, st: _State) -> int:
        return st.key.shape[0]

    def rows(self, st: _State, a: int, b: int) -> _State:
        cut = lambda t: t[a:b] if t is not None else None  # noqa: E731
        return _State(st.key[a:b], st.value[a:b], cut(st.mask), cut(st.residual))

    def concat(self, parts: list[_State]) -> _State:
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
        kept = lambda name: cat_rows([getattr(p, name) for p in parts])  # noqa: E731 (slices left alone: no copy)
        return _State(cat("key"), cat("value"), kept("mask"), kept("residual"))


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


# --- the attention functions that carry the prefixes ------------------------------------------------------------


def prefix_implementation(base_impl: str) -> str:
    """The name of an attention implementation that adds prefixes, then runs `base_impl` (registered on demand)."""
    name = IMPL_PREFIX + base_impl
    if name not in ALL_ATTENTION_FUNCTIONS:
        if base_impl != "eager" and base_impl not in ALL_ATTENTION_FUNCTIONS:
            raise UnsupportedModelError(f"prefix tuning cannot wrap attention implementation {base_impl!r}")
        AttentionInterface.register(name, _make_attention(base_impl))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS.get(base_impl, eager_mask))
    return name


def wrapped_implementation(impl: str | None) -> str | None:
    """The implementation a prefix implementation runs (None if `impl` is not one of ours)."""
    return impl[len(IMPL_PREFIX) :] if impl and impl.startswith(IMPL_PREFIX) else None


def _make_attention(base_impl: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        shim = module._modules.get("prefix_tuning")
        if shim is not None:
            keys = key.shape[2]
            key, value, attention_mask = shim.extend(module, query, key, value, attention_mask, kwargs.get("is_causal"))
            if key.shape[2] != keys and kwargs.get("position_bias") is not None:  # T5
                added = key.shape[2] - keys
                kwargs["position_bias"] = shim.position_bias(kwargs["position_bias"], query.shape[2], keys, added)
        if base_impl != "eager":
            return ALL_ATTENTION_FUNCTIONS[base_impl](module, query, key, value, attention_mask, **kwargs)
        upcast = gpt2_upcast_attention(module)  # GPT-2's own eager variant, when its config asks for it
        if upcast is not None:
            return upcast(query, key, value, attention_mask)
        return eager_attention_of(module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def _warn_partial_relative_bias(engine, places) -> None:
    """AdapterHub computes T5's relative position bias once, at a stack's first block, over that block's keys, and
    drops it (zero bias) in every later block whose key count differs: with a prefix on only some self-attentions of
    a stack (`leave_out`), those blocks lose their position information there. Workbench keeps the bias in every
    block, so such adapters give other outputs than in the library: say so."""
    for stack in engine.spec.stacks:
        if not stack.position_bias:
            continue
        layers = [ref.index for ref in engine.layer_refs if ref.stack is stack]
        prefixed = {ref.index for _, ref, path in places if ref.stack is stack and path == stack.attention}
        if prefixed and len(prefixed) < len(layers):
            warnings.warn(
                f"prefix tuning on only some self-attentions of {stack.layers} (layers {sorted(prefixed)} of "
                f"{layers}): the adapters library drops the relative position bias in the blocks whose prefix "
                "differs from the first block's, workbench keeps it; outputs differ from the library's",
                stacklevel=4,
            )


class PrefixTuningMethod(AdapterMethod):
    """Adds and removes prefixes and switches the model to an attention function that prepends them."""

    kind = "prefix_tuning"
    supports = frozenset({Stack, Parallel, BatchSplit, MultiTask})

    def __init__(self, engine):
        super().__init__(engine)
        self.shims: dict[tuple[int, str], PrefixTuningShim] = {}
        self.original_impl: str | None = None

    def pool_at(self, path: str) -> PrefixTuningPool:
        """The pool at `<path>.prefix_tuning` (created on first use): the base model's, or a sub-model's."""
        owner = get_module(self.engine.base, path)
        if not hasattr(owner, "prefix_tuning"):
            owner.prefix_tuning = PrefixTuningPool()
        return owner.prefix_tuning

    def pool_paths(self) -> list[str]:
        """Where the model's pools live: the base model (""), or each sub-model (`LayerStack.submodel`)."""
        return list(dict.fromkeys(stack.submodel or "" for stack in self.engine.spec.stacks))

    def existing_pools(self) -> list[PrefixTuningPool]:
        owners = [get_module(self.engine.base, path) for path in self.pool_paths()]
        return [owner.prefix_tuning for owner in owners if hasattr(owner, "prefix_tuning")]

    @staticmethod
    def attentions(ref: LayerRef) -> list[tuple[str, str]]:
        """(location key, attention path) of each attention of a layer: its self-attention, its cross-attention."""
        stack = ref.stack
        found = [(stack.prefix_key, stack.attention)]
        return found + [("cross_prefix", stack.cross_attention)] if stack.cross_attention else found

    def places(self, config: PrefixTuningConfig) -> list[tuple[str, LayerRef, str]]:
        """(location key, layer, attention path) of every attention that gets a prefix, in AdapterHub's order.

        Each location key ("self_prefix"; "encoder_prefix" and "cross_prefix" in encoder-decoder models) has its
        own prefix module per pool, whose layers are the prefixed attentions of that key in layer order."""
        places = []
        for ref in self.engine.layer_refs:
            if ref.layer_id in config.leave_out:
                continue
            for location_key, attention_path in self.attentions(ref):
                if location_key == "encoder_prefix" and not config.encoder_prefix:
                    continue
                if location_key == "cross_prefix" and not config.cross_prefix:
                    continue
                places.append((location_key, ref, attention_path))
        return places

    def _shim(self, location_key: str, ref: LayerRef, attention_path: str) -> PrefixTuningShim:
        key = (ref.index, attention_path)
        if key not in self.shims:
            attention = get_module(ref.module, attention_path)
            source = None
            if ref.stack.position_bias and attention_path == ref.stack.attention:  # self-attention of a T5 stack
                source = get_module(get_module(self.engine.base, ref.stack.layers)[0], ref.stack.position_bias)
            pool = self.pool_at(ref.stack.submodel or "")
            glue = ref.stack.prefix_glue if attention_path == ref.stack.attention else None
            self.shims[key] = PrefixTuningShim(self, ref.layer_id, attention, location_key, pool, source, glue)
            attention.prefix_tuning = self.shims[key]
        return self.shims[key]

    def attention_dtype(self, query: torch.Tensor):
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS.get(self.original_impl or "eager", eager_mask)
        return torch.bool if mask_fn is sdpa_mask else query.dtype

    def add(self, name: str, config: PrefixTuningConfig) -> None:
        engine = self.engine
        try:
            if not any(len(pool.prefix_tunings) for pool in self.existing_pools()) and self._uses_attention_functions():
                self._switch_attention()
            places = self.places(config)
            _warn_partial_relative_bias(engine, places)
            if config.init_weights_seed:
                torch.manual_seed(config.init_weights_seed)
            cls = FlatPrefixTuning if config.flat else PrefixTuning
            entries = {}
            for path in self.pool_paths():  # each pool: a prefix module per location key, over its prefixed layers
                pool, entry = self.pool_at(path), nn.ModuleDict()
                mine = [(key, ref) for key, ref, _ in places if (ref.stack.submodel or "") == path]
                for location_key in dict.fromkeys(key for key, _ in mine):
                    refs = [ref for key, ref in mine if key == location_key]
                    n_heads, head_dim = refs[0].stack.attention_shape(engine.base.config)
                    hidden = engine.hidden_size_of(refs[0].stack)
                    entry[location_key] = cls(len(refs), n_heads, head_dim, hidden, config)
                pool.prefix_tunings[name] = entries[path] = entry.train(pool.training)
                engine.register(name, f"{path}.prefix_tuning.prefix_tunings.{name}".lstrip("."), entry)
            counts: dict[tuple, int] = {}
            for location_key, ref, attention_path in places:
                shim = self._shim(location_key, ref, attention_path)
                count = (ref.stack.submodel, location_key)
                shim.prefixes[name] = counts[count] = counts.get(count, -1) + 1
                shim_path = f"{ref.path}.{attention_path}.prefix_tuning"
                if config.use_gating:
                    hidden = engine.hidden_size_of(ref.stack)
                    gate = nn.Linear(hidden, 1 if config.shared_gating else 2)
                    nn.init.normal_(gate.weight, mean=0.0, std=0.02)
                    shim.prefix_gates[name] = gate.train(shim.pool.training)
                    engine.register(name, f"{shim_path}.prefix_gates.{name}", gate)
            # AdapterHub gives every attention module a `prefix_tuning` layer that refers to the pool, so its files
            # repeat the pool under each of them, whether or not that attention gets a prefix (leave_out,
            # encoder_prefix/cross_prefix=False): the same keys here.
            for ref in engine.layer_refs:
                for _, attention_path in self.attentions(ref):
                    pool_path = f"{ref.path}.{attention_path}.prefix_tuning.pool.prefix_tunings.{name}"
                    engine.register(name, pool_path, entries[ref.stack.submodel or ""])
        except Exception:
            self.delete(name)
            raise

    def eject(self, name: str, config: PrefixTuningConfig) -> PrefixTuningConfig:
        """Replace prefix `name`'s embedding and MLP by the prefix values they compute; returns its new config."""
        for pool in self.existing_pools():
            entry = pool.prefix_tunings[name]
            for location_key, prefix in list(entry.items()):
                if not isinstance(prefix, FlatPrefixTuning):
                    entry[location_key] = flatten(prefix, config)
        return config.replace(flat=True)

    def delete(self, name: str) -> None:
        for idx, shim in list(self.shims.items()):
            shim.prefixes.pop(name, None)
            if name in shim.prefix_gates:
                del shim.prefix_gates[name]
            if not shim.prefixes:
                shim.remove()
                del self.shims[idx]
        for path in self.pool_paths():
            owner = get_module(self.engine.base, path)
            pool = getattr(owner, "prefix_tuning", None)
            if pool is not None and name in pool.prefix_tunings:
                del pool.prefix_tunings[name]
            if pool is not None and not len(pool.prefix_tunings):
                del owner.prefix_tuning
        if not self.existing_pools():  # no prefix adapter left: restore the attention function
            self._restore_attention()
        self.engine.unregister(name)

    # --- attention implementation ------------------------------------------------------------------------

    def _uses_attention_functions(self) -> bool:
        """Whether some prefixed attention runs through transformers' attention functions (DeBERTa's do not)."""
        return any(stack.prefix_glue is None or stack.cross_attention for stack in self.engine.spec.stacks)

    def _switch_attention(self) -> None:
        base = self.engine.base
        impl = base.config._attn_implementation or "eager"
        if impl != "eager" and ALL_MASK_ATTENTION_FUNCTIONS.get(impl) not in (sdpa_mask, eager_mask):
            raise UnsupportedModelError(
                f"prefix tuning needs an eager- or sdpa-style attention implementation; this model uses {impl!r}"
            )
        base.set_attn_implementation(prefix_implementation(impl))
        self.original_impl = impl

    def _restore_attention(self) -> None:
        if self.original_impl is not None:
            current = self.engine.base.config._attn_implementation
            self.engine.base.set_attn_implementation(wrapped_implementation(current) or self.original_impl)
            self.original_impl = None

    # --- per forward -------------------------------------------------------------------------------------

    def begin(self, ctx, args, kwargs):
        pools = self.existing_pools()
        if ctx.setup is None or not any(name in pool.prefix_tunings for pool in pools for name in ctx.names):
            return None
        current = self.engine.base.config._attn_implementation
        if wrapped_implementation(current) is None and self._uses_attention_functions():
            self._switch_attention()  # the user switched implementations after adding the prefix
        return None
