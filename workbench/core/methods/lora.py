"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) and (IA)^3 (Liu et al., 2022,
https://arxiv.org/abs/2205.05638) on unmodified transformers `nn.Linear`/`Conv1D` projections.

Every wrapped projection gets a child `loras` ModuleDict, so weights are keyed like AdapterHub's
(`...attention.self.query.loras.<name>.lora_A`), and one forward hook that adds (LoRA, "add") or multiplies
(IA3, "scale") the active adapters' output. A fused q|k|v projection (GPT-2's `c_attn`, Phi-3's `qkv_proj`,
GPT-NeoX's per-head `query_key_value`) takes one adapter whose q, k and v parts are enabled by `attn_matrices`; the
parts' output features come from `spec.qkv_layout` and the head counts (grouped-query attention: smaller k and v).
`merge`/`reset` fold an adapter into the base weight and back.

AdapterHub's `LoRAConfig` names places (`spec.lora`); a `TargetedLoRAConfig` (PEFT adapters) names any
nn.Linear/Conv1D module by its path, each with its own rank and scaling, (IA)^3 optionally on the module's input,
plus `modules_to_save`: full trainable copies whose output replaces the original module's while the adapter runs.
The LoRA family builds on the same targets: DoRA (`use_dora`, a magnitude per output feature, `dora.py`) and VeRA
(`vera_d`/`vera_b`, shared frozen projections, `vera.py`); DvoRA is both. MTL-LoRA (`MTLLoRAConfig`, `mtl_lora.py`) is a
LoRA module with task-specific parts, run per row under a `MultiTask` block.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..composition import Average, BatchSplit, Block, MultiTask, Parallel, Stack
from ..configs import LoRAConfig, MTLLoRAConfig, TargetedLoRAConfig
from ..engine import record_gating
from ..errors import AdapterConfigError, CompositionError, UnsupportedModelError
from ..quantized import check_kernels, quantization_of, refuse_dense
from ..runtime import ComposableLayer, blocks_with_names, cat_rows, check_averages, compose
from ..transformers_api import Conv1D
from . import dora
from .base import AdapterMethod
from .exact_undo import ExactUndo
from .modules_to_save import SavedModule
from .targets import call_setup, locate, lora_places

LOCATIONS = {
    "q": "selfattn",
    "k": "selfattn",
    "v": "selfattn",
    "qkv": "selfattn",
    "intermediate": "intermediate",
    "output": "output",
}


def _dtype(config: LoRAConfig) -> torch.dtype | None:
    """The config's `dtype` (None: the model's float dtype, given when the adapter is added)."""
    return getattr(torch, config.dtype) if config.dtype else None


def _seed(config: LoRAConfig) -> None:
    if config.init_weights_seed:  # AdapterHub ignores seed 0 as well
        torch.manual_seed(config.init_weights_seed)
        if torch.cuda.is_available():
            torch.cuda.manual_seed_all(config.init_weights_seed)


class _LoRABase(nn.Module):
    """Shared gating: `sigmoid(gate(x))` averaged over tokens replaces the fixed scaling."""

    def _add_gate(self, config: LoRAConfig, in_features: int, heads: int) -> None:
        self.use_gating = config.use_gating
        if config.use_gating:
            self.gate = nn.Linear(in_features, heads, dtype=_dtype(config))
            nn.init.normal_(self.gate.weight, std=0.02)

    def _scale(self, h, x):
        if not self.use_gating:
            return h * self.scaling, None
        gate = torch.sigmoid(self.gate(x.to(self.gate.weight.dtype))).mean(dim=1).unsqueeze(-1)
        return h * gate, gate


class LoRA(_LoRABase):
    """`h = dropout(x) A^T B^T * alpha/r`; the layer output becomes `Wx + b + h`."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, heads: int = 1, r=None, scaling=None):
        super().__init__()
        dtype = _dtype(config)
        self.r = config.r if r is None else r  # a targeted module's own rank and scaling (PEFT's rank_pattern)
        self.scaling = config.alpha / config.r if scaling is None else scaling
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.zeros(self.r * heads, in_features, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.r, dtype=dtype))
        _seed(config)
        if config.init_weights == "lora":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        elif config.init_weights == "bert":
            nn.init.normal_(self.lora_A, std=0.02)
            nn.init.normal_(self.lora_B, std=0.02)
        elif config.init_weights == "ia3":
            nn.init.ones_(self.lora_A)
            nn.init.ones_(self.lora_B)
        else:  # "vera"
            nn.init.kaiming_uniform_(self.lora_A)
            nn.init.kaiming_uniform_(self.lora_B)
        self._add_gate(config, in_features, heads)

    @property
    def delta_w(self) -> torch.Tensor:
        return self.lora_B @ self.lora_A

    def forward(self, h, x):
        """Returns (scaled delta, gate or None); `h` is the previous Stack member's delta, else None."""
        down, gate = self._scale(self._down(h, x), x)  # scaling the r-wide intermediate is cheaper than the output
        return F.linear(down, self.lora_B), gate

    def _down(self, h, x) -> torch.Tensor:
        """`dropout(h) A^T`, with `h` the input `x` unless a stacked LoRA's delta comes first."""
        h = x if h is None else h
        if h.shape[-1] != self.lora_A.shape[1]:
            raise CompositionError(
                f"cannot Stack LoRA adapters here: the previous adapter's output has {h.shape[-1]} features, "
                f"this one expects {self.lora_A.shape[1]} (stacked LoRAs need projections with equal in/out sizes)"
            )
        return F.linear(self.lora_dropout(h.to(self.lora_A.dtype)), self.lora_A)

    @staticmethod
    def com(base, added, scaling=1.0):
        if not (isinstance(scaling, float) and scaling == 1.0):
            added = added * scaling
        added = added.to(base.dtype)
        if not torch.is_grad_enabled():
            return base.add_(added)  # the wrapped layer's fresh output: no allocation needed
        return base + added


class IA3(_LoRABase):
    """`h = lora_B * alpha`; the layer output becomes `(Wx + b) * h`, or with `on_input` `W(x * h) + b`."""

    on_input = False  # PEFT's feedforward_modules: lora_B has in_features rows and scales the input

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, heads: int = 1, r=None, scaling=None):
        super().__init__()
        if config.dropout > 0:
            raise AdapterConfigError("(IA)^3 (composition_mode='scale') does not support dropout > 0")
        self.r, self.scaling = config.r, config.alpha if scaling is None else scaling
        self.lora_B = nn.Parameter(torch.zeros(out_features, 1, dtype=_dtype(config)))
        _seed(config)
        if config.init_weights == "lora":
            warnings.warn("(IA)^3 adapter initialised with LoRA's zero init", stacklevel=4)
        elif config.init_weights == "bert":
            nn.init.normal_(self.lora_B, std=0.02)
        elif config.init_weights == "ia3":
            nn.init.ones_(self.lora_B)
        else:
            raise AdapterConfigError(f"init_weights={config.init_weights!r} is not valid for (IA)^3")
        self._add_gate(config, in_features, heads)

    @property
    def delta_w(self) -> torch.Tensor:
        return self.lora_B

    def forward(self, h, x):
        vector = self.lora_B.view(1, 1, -1).expand(x.shape[0], 1, -1)
        return self._scale(vector if h is None else h * vector, x)

    @staticmethod
    def com(base, added, scaling=1.0):
        return base * (added * scaling).to(base.dtype)


@dataclass
class _State:
    x: torch.Tensor  # the projection's input
    h: torch.Tensor | None  # the composed adapter delta (None until an adapter ran)
    y: torch.Tensor  # the projection's own output
    last: str | None = None
    out: torch.Tensor | None = None  # the finished output, when rows were finished by different DoRA adapters


def _fused(lora) -> bool:
    """An AdapterHub adapter on a fused q|k|v projection (GPT-2's c_attn), with only some thirds enabled."""
    return hasattr(lora, "enabled")


def _on_input(lora) -> bool:
    return getattr(lora, "on_input", False)


def _adds(lora) -> bool:
    """LoRA, DoRA and VeRA add a delta to the output; (IA)^3 scales it."""
    return not isinstance(lora, IA3)


def _tensors(lora) -> dict[str, torch.Tensor]:
    """Everything an adapter module computes with, its VeRA pair included (kept by merge, for an exact reset)."""
    tensors = dict(lora.state_dict(keep_vars=True))
    shared = getattr(lora, "_shared", None)
    if shared:
        tensors.update({f"shared.{k}": v for k, v in shared[0].state_dict(keep_vars=True).items()})
    return tensors


@contextmanager
def _computing_with(lora, snapshot: dict[str, torch.Tensor]):
    """Run the block with `lora`'s tensors replaced by `snapshot` (their values, dtype and device at merge time,
    whatever the model was cast or moved to since), then put the current ones back."""
    live = _tensors(lora)
    current = {k: v.data for k, v in live.items()}
    for key, value in live.items():
        value.data = snapshot[key]
    try:
        yield
    finally:
        for key, value in current.items():
            live[key].data = value


def qkv_parts(spec, config, out_features: int, path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output-feature indices of the q, k and v parts of a fused projection (`spec.qkv_layout`)."""
    if not hasattr(spec.model_config(config), "num_attention_heads"):
        # a model described by an interface whose config names no head counts (EAT): q, k and v of equal width, as
        # the adapters library splits every fused projection
        if spec.qkv_layout != "blocks" or out_features % 3:
            raise UnsupportedModelError(
                f"{path}: the config has no num_attention_heads, and {out_features} outputs are not three equal "
                "q, k, v blocks"
            )
        return tuple(torch.arange(out_features).split(out_features // 3))
    heads = spec.model_config(config).num_attention_heads
    kv_heads, dim = spec.attention_shape(config)
    if spec.qkv_layout == "heads":  # [q k v] per head (GPT-NeoX): head h's q is features 3hD .. 3hD + D
        if kv_heads != heads or 3 * heads * dim != out_features:
            raise UnsupportedModelError(f"{path}: {out_features} outputs are not {heads} heads of q, k, v ({dim} wide)")
        per_head = torch.arange(heads * dim).view(heads, dim)
        return tuple((per_head + (torch.arange(heads) * 2 * dim)[:, None] + i * dim).flatten() for i in range(3))
    widths = [heads * dim, kv_heads * dim, kv_heads * dim]
    if sum(widths) != out_features:
        raise UnsupportedModelError(
            f"{path}: {out_features} outputs are not q, k, v of widths {widths} ({heads} query and {kv_heads} "
            f"key/value heads of {dim})"
        )
    return tuple(torch.arange(out_features).split(widths))


class LoRATarget(ComposableLayer):
    """One wrapped projection (`path` in the root model): its `loras` ModuleDict, forward hook and merge state."""

    def __init__(self, engine, path: str, module: nn.Module):
        self.engine, self.path, self.module = engine, path, module
        self.layer_idx, key, self.inside = locate(engine, path)
        self.location = LOCATIONS[key] + "_lora" if key else "lora"
        self.fused = key == "qkv"  # the place is a fused q|k|v projection (AdapterHub adapters split it)
        self.quantized = quantization_of(module)  # "4-bit"/"8-bit" bitsandbytes layer: adapters stay unmerged
        if self.quantized:
            check_kernels(self.quantized, module.weight.device)
        self.conv1d = isinstance(module, Conv1D)
        if self.conv1d:
            self.in_features, self.out_features = module.weight.shape
        elif isinstance(module, nn.Linear):
            self.in_features, self.out_features = module.in_features, module.out_features
        else:
            kind = type(module).__name__
            raise UnsupportedModelError(f"LoRA cannot wrap {path} ({kind}): it needs an nn.Linear or Conv1D")
        if hasattr(module, "loras"):
            raise UnsupportedModelError(f"{path} already has an attribute 'loras'; LoRA cannot wrap it")
        self.parts = qkv_parts(engine.spec, engine.base.config, self.out_features, path) if self.fused else None
        module.loras = nn.ModuleDict()
        self.loras: nn.ModuleDict = module.loras
        self.merged: str | None = None
        self.restore: dict | None = None  # what reset needs to give back the exact weights (see merge)
        # First among the module's hooks: a bottleneck site hooked on the same projection (AdapterHub's plugin
        # interface, e.g. Gemma 2's o_proj/down_proj) must see the adapted output, as with AdapterHub's LoRALinear.
        self.handle = module.register_forward_hook(self._hook, prepend=True)

    def remove(self) -> None:
        self.reset()
        self.handle.remove()
        del self.module.loras
        if hasattr(self.module, "shared_parameters"):  # MTL-LoRA ties (mtl_lora.share)
            del self.module.shared_parameters

    @property
    def square(self) -> bool:
        return self.in_features == self.out_features and not self.fused

    def make(self, config: LoRAConfig, r=None, alpha=None, on_input: bool = False, shared=None) -> nn.Module:
        """A new adapter module here; `r`/`alpha`/`on_input` for a targeted (PEFT) module, which is never split;
        `shared` is a VeRA adapter's projection pair."""
        if config.use_dora and self.quantized:
            raise refuse_dense(self.path, self.quantized, "DoRA (its magnitude is normalised by the weight's rows)")
        module = self._make(config, r, alpha, on_input, shared)
        if config.use_dora:
            dtype = getattr(torch, config.dtype) if config.dtype else None
            style = "peft" if isinstance(config, TargetedLoRAConfig) else "adapters"
            dora.add_magnitude(module, self.dense(self.module.weight), style, dtype)
        return module

    def _make(self, config: LoRAConfig, r, alpha, on_input: bool, shared) -> nn.Module:
        cls = IA3 if config.composition_mode == "scale" else LoRA
        if isinstance(config, MTLLoRAConfig):
            cls = _mtl().MTLLoRA
        if isinstance(config, TargetedLoRAConfig):
            r = config.r if r is None else r
            alpha = config.alpha if alpha is None else alpha
            scaling = alpha if cls is IA3 else alpha / (math.sqrt(r) if config.use_rslora else r)
            size = self.in_features if on_input else self.out_features
            if config.is_vera:  # PEFT's VeRA: vectors, no alpha/r scaling
                return _vera().Vera(self.in_features, size, config, shared, r=r, scaling=1.0, diagonal=True)
            module = cls(self.in_features, size, config, r=r, scaling=scaling)
            if on_input:
                module.on_input = True
            return module
        if self.fused and (config.is_vera or config.use_dora):
            raise UnsupportedModelError(
                f"{'VeRA' if config.is_vera else 'DoRA'} cannot adapt {self.path}, a fused q|k|v projection "
                "(neither can the adapters library): use selfattn_lora=False with intermediate_lora/output_lora"
            )
        if config.is_vera:
            return _vera().Vera(self.in_features, self.out_features, config, shared)
        if not self.fused:
            return cls(self.in_features, self.out_features, config)
        enabled = [m in config.attn_matrices for m in "qkv"]
        module = cls(self.in_features, sum(self.widths(enabled)), config, heads=sum(enabled))
        module.enabled = enabled
        return module

    def widths(self, enabled: list[bool]) -> list[int]:
        """The output widths of the enabled q|k|v parts of the fused projection, in q, k, v order."""
        return [len(part) for part, on in zip(self.parts, enabled, strict=True) if on]

    # --- forward -----------------------------------------------------------------------------------------

    def _hook(self, module, args, output):
        if self.merged is not None or self.layer_idx in self.engine.skip_layers:
            return None
        setup, names, ctx = call_setup(self.engine, self.inside)
        if setup is None or not any(name in self.loras for name in names):
            return None
        st = compose(self, setup, _State(args[0], None, output), ctx)
        if st.out is not None:
            return st.out
        if st.last is None or st.h is None:
            return None
        if _on_input(self.loras[st.last]):  # (IA)^3 on the input: run the projection again on the scaled input
            x = args[0]
            return module.forward((x.to(st.h.dtype) * st.h).to(x.dtype))
        return self._finish(self.loras[st.last], output, st.h)

    def _finish(self, lora, y, h):
        """The adapted output: the last adapter of the composition combines the layer's output `y` and delta `h`."""
        if not dora.is_dora(lora):
            return lora.com(y, h)
        scale = dora.row_scale(lora, self.dense(self.module.weight), lora.delta_w)
        return dora.finish(lora, y, h, scale, self.module.bias)

    def dense(self, weight: torch.Tensor) -> torch.Tensor:
        """A weight-shaped tensor in (out, in) layout (Conv1D stores (in, out)); the map is its own inverse."""
        return weight.t() if self.conv1d else weight

    # --- the composition contract --------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.loras

    def single(self, name: str, st: _State, ctx) -> _State:
        lora = self.loras[name]
        if _fused(lora) and _mtl().is_mtl(lora):  # refused by check_setup; never computed as plain LoRA
            raise CompositionError(_fused_mtl_message(name, self.path))
        if _fused(lora):
            h, gate = self._fused_delta(lora, st)
        else:
            h, gate = lora(st.h, st.x)
        if gate is not None:
            record_gating(ctx, name, self.layer_idx, self.location, gate)
        return replace(st, h=h, last=name)

    def batch_rows(self, st: _State) -> int:
        return st.x.shape[0]

    def take(self, st: _State, index: torch.Tensor) -> _State:
        pick = lambda t: t.index_select(0, index.to(t.device)) if t is not None else None  # noqa: E731
        h = st.h if st.h is None else pick(st.h.expand(st.x.shape[0], *st.h.shape[1:]))  # (IA)^3: (1, 1, out)
        return _State(pick(st.x), h, pick(st.y), st.last, pick(st.out))

    def rows(self, st: _State, a: int, b: int) -> _State:
        cut = lambda t: t[a:b] if t is not None else None  # noqa: E731
        return _State(st.x[a:b], cut(st.h), st.y[a:b], st.last, cut(st.out))

    def concat(self, parts: list[_State]) -> _State:
        last = next((p.last for p in reversed(parts) if p.last is not None), None)
        x, y = cat_rows([p.x for p in parts]), cat_rows([p.y for p in parts])  # slices left as they were
        if any(p.out is not None or (p.last is not None and dora.is_dora(self.loras[p.last])) for p in parts):
            # a DoRA magnitude belongs to its own rows: finish each slice with its own last adapter
            done = [p.out if p.out is not None else p.y if p.h is None else self._finish(self.loras[p.last], p.y, p.h)
                    for p in parts]  # fmt: skip
            return _State(x, None, y, None, torch.cat(done))
        if last is None:
            return _State(x, None, y)
        identity = 0.0 if _adds(self.loras[last]) else 1.0  # rows without an adapter here: no change
        side = "x" if _on_input(self.loras[last]) else "y"  # the input-scaling vector has the input's width
        shape = lambda p: getattr(p, side).shape  # noqa: E731
        hs = [p.h.expand(shape(p)) if p.h is not None else torch.full(shape(p), identity).to(p.y) for p in parts]
        return _State(x, torch.cat(hs), y, last)

    def average(self, parts: list[_State], weights: list[float]) -> _State:
        """AdapterHub's mean of the weighted deltas (every child is present here; see `ComposableLayer.alone`)."""
        first = parts[0]
        w = torch.tensor(weights, dtype=first.h.dtype, device=first.h.device)
        stacked = torch.stack([p.h.expand_as(first.h) for p in parts])
        h = (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).mean(dim=0)
        return replace(first, h=h, last=parts[-1].last)

    def _fused_delta(self, lora, st: _State):
        """A fused q|k|v projection: the enabled parts' scaled delta over the full width (others: no change)."""
        n = sum(lora.enabled)
        widths = self.widths(lora.enabled)
        x = st.x
        if isinstance(lora, LoRA):
            a = F.linear(lora.lora_dropout(x.to(lora.lora_A.dtype)), lora.lora_A).unflatten(-1, (n, lora.r))
            blocks = lora.lora_B.split(widths)
            delta = torch.cat([F.linear(a[..., j, :], b) for j, b in enumerate(blocks)], dim=-1)
            delta = self._pad(delta, lora.enabled, 0.0)
        else:
            delta = self._pad(lora.lora_B.view(1, 1, -1), lora.enabled, 1.0)
        gate = None
        if lora.use_gating:
            gate = torch.sigmoid(lora.gate(x.to(lora.gate.weight.dtype))).mean(dim=1)
            repeats = torch.tensor(widths, device=gate.device)
            scaling = self._pad(gate.repeat_interleave(repeats, dim=-1), lora.enabled, 1.0).unsqueeze(1)
        else:
            scaling = lora.scaling
        delta = delta * scaling
        if isinstance(lora, IA3) and st.h is not None:
            delta = st.h * delta
        return delta, gate

    def _pad(self, t, enabled, fill):
        """Spread the enabled q|k|v parts (concatenated in the last dim) over the projection's output features,
        filling the others."""
        index = torch.cat([part for part, on in zip(self.parts, enabled, strict=True) if on]).to(t.device)
        full = t.new_full((*t.shape[:-1], self.out_features), fill)
        return full.index_copy(-1, index, t.expand(*full.shape[:-1], t.shape[-1]))

    # --- merging -----------------------------------------------------------------------------------------

    def delta(self, lora) -> torch.Tensor:
        """The unscaled weight delta (LoRA) or row (column, on the input) factors (IA3) in the module's layout."""
        if _fused(lora) and isinstance(lora, LoRA):
            blocks, a = lora.lora_B.split(self.widths(lora.enabled)), lora.lora_A.split(lora.r)
            d = torch.cat([b @ a_j for b, a_j in zip(blocks, a, strict=True)])
            d = self._pad(d.t(), lora.enabled, 0.0).t()
        elif _fused(lora):
            d = self._pad(lora.lora_B.t(), lora.enabled, 1.0).t()
        elif _on_input(lora):
            d = lora.lora_B.t()
        else:
            d = lora.delta_w
        return d.t() if self.conv1d else d

    def merge(self, name: str) -> None:
        """Fold adapter `name` into the weight: `W + s dW` (LoRA, VeRA), `m / ||.|| * (W + s dW)` per row (DoRA; with
        AdapterHub's convention the bias is scaled too), `W * (lora_B * alpha)` ((IA)^3: the bias stays unscaled).

        Reset must give back the exact weights without keeping a copy of them: it undoes the merge arithmetically
        and corrects the rounding with `ExactUndo` (int8 steps per entry, on the weight's device). The adapter's own
        tensors are kept too, so a reset stays exact even if the adapter is changed or reloaded while merged."""
        lora = self.loras[name]
        module = self.module
        with torch.no_grad():
            weight = module.weight
            snapshot = {k: v.detach().clone() for k, v in _tensors(lora).items()}
            scale = None
            if dora.is_dora(lora):
                scale = dora.row_scale(lora, self.dense(weight), lora.delta_w).to(weight.dtype).detach()
            merged = self._merged(lora, weight, scale)
            undo = ExactUndo.capture(weight, merged, lambda w: self._unmerged(lora, w, scale))
            bias = None
            if scale is not None and lora.dora_style == "adapters" and module.bias is not None:
                bias = module.bias.detach().clone()
            self.restore = {"snapshot": snapshot, "scale": scale, "undo": undo, "bias": bias}
            weight.copy_(merged)
            if bias is not None:
                module.bias.mul_(scale.to(module.bias.dtype))
        self.merged = name

    def _merged(self, lora, weight: torch.Tensor, scale) -> torch.Tensor:
        delta = self.delta(lora).to(weight.dtype)
        if not _adds(lora):
            return weight * (delta * lora.scaling).to(weight.dtype)
        merged = weight + (delta * lora.scaling).to(weight.dtype)
        return merged if scale is None else self.dense(scale.unsqueeze(1) * self.dense(merged))

    def _unmerged(self, lora, merged: torch.Tensor, scale) -> torch.Tensor:
        delta = self.delta(lora).to(merged.dtype)
        if not _adds(lora):
            return merged / (delta * lora.scaling).to(merged.dtype)
        if scale is not None:
            merged = self.dense(self.dense(merged) / scale.unsqueeze(1))
        return merged - (delta * lora.scaling).to(merged.dtype)

    def original_weight(self) -> tuple[torch.Tensor, bool]:
        """The weight before the merge, in the weight's current dtype and on its device (computed; nothing is
        written), and whether it is bit for bit: not after a narrowing cast while merged (`ExactUndo`)."""
        lora, restore = self.loras[self.merged], self.restore
        with torch.no_grad(), _computing_with(lora, restore["snapshot"]):
            inverse = lambda w: self._unmerged(lora, w, restore["scale"])  # noqa: E731
            return restore["undo"].restore(self.module.weight, inverse)

    def original_bias(self) -> torch.Tensor | None:
        """The bias before a DoRA merge that scaled it (AdapterHub's convention), as the bias is now; else None."""
        bias = self.restore["bias"]
        return None if bias is None else bias.to(self.module.bias.device, self.module.bias.dtype)

    def reset(self) -> bool:
        """Undo the merge; returns whether the weight is back bit for bit (see `original_weight`)."""
        if self.merged is None:
            return True
        with torch.no_grad():
            weight, exact = self.original_weight()
            self.module.weight.copy_(weight)
            if self.restore["bias"] is not None:
                self.module.bias.copy_(self.original_bias())
        self.merged, self.restore = None, None
        return exact


class LoRAMethod(AdapterMethod):
    """Adds, removes and merges LoRA/IA3 adapters across all layers of a model (averaging: `core/merging.py`)."""

    kind = "lora"
    supports = frozenset({Stack, Parallel, BatchSplit, Average, MultiTask})

    def __init__(self, engine):
        super().__init__(engine)
        self.targets: dict[str, LoRATarget] = {}  # by module path in the root model
        self.saved: dict[str, SavedModule] = {}  # modules_to_save, by module path in the root model

    def _target(self, path: str) -> LoRATarget:
        if path not in self.targets:
            self.targets[path] = LoRATarget(self.engine, path, self.engine.root.get_submodule(path))
        return self.targets[path]

    def _put(self, name: str, target: LoRATarget, module: nn.Module) -> None:
        target.loras[name] = module
        self.engine.register(name, f"{target.path}.loras.{name}", module, in_root=True)

    @staticmethod
    def _wanted(config: LoRAConfig, key: str) -> bool:
        if key in ("q", "k", "v"):
            return config.selfattn_lora and key in config.attn_matrices
        if key == "qkv":
            return config.selfattn_lora and any(m in config.attn_matrices for m in "qkv")
        return bool(getattr(config, f"{key}_lora"))

    def add(self, name: str, config: LoRAConfig) -> None:
        try:
            if isinstance(config, TargetedLoRAConfig):
                self._add_targeted(name, config)
                return
            prefix = self.engine.base_prefix
            paths = [
                f"{prefix}{ref.path}.{path}"
                for ref in self.engine.layer_refs
                if ref.layer_id not in config.leave_out
                for key, path in lora_places(ref.stack)
                if self._wanted(config, key)
            ]
            shared = self._shared(name, config, [self._target(p) for p in paths])
            for path in paths:
                target = self._target(path)
                self._put(name, target, target.make(config, shared=shared))
        except Exception:
            self.delete(name)
            raise

    def _shared(self, name: str, config: LoRAConfig, targets: list[LoRATarget], r: int | None = None):
        """A VeRA adapter's frozen projection pair, sized for the largest of its targets (None for other adapters)."""
        if not config.is_vera or not targets:
            return None
        shared = _vera().SharedProjections(
            config, r or config.r, max(t.in_features for t in targets), max(t.out_features for t in targets)
        )
        reference = self.engine.reference_weight()
        if reference is not None and shared.lora_A.device.type != "meta":  # (a dry run builds on meta)
            shared.to(reference.device, dtype=None if config.dtype else reference.dtype)
        base = self.engine.base
        if not hasattr(base, "shared_parameters"):
            base.shared_parameters = nn.ModuleDict()
        base.shared_parameters[name] = shared
        self.engine.register(name, f"shared_parameters.{name}", shared)
        return shared

    def _add_targeted(self, name: str, config: TargetedLoRAConfig) -> None:
        """Each module of `config.targets` with its own rank/alpha (layers in `leave_out` skipped), and a trainable
        copy of each module of `config.modules_to_save`."""
        kept = {p: o for p, o in config.targets.items() if locate(self.engine, p)[0] not in config.leave_out}
        shared = self._shared(name, config, [self._target(p) for p in kept])
        for path, options in kept.items():
            target = self._target(path)
            module = target.make(config, options["r"], options["alpha"], options["on_input"], shared=shared)
            self._put(name, target, module)
        for path in config.modules_to_save:
            if path not in self.saved:
                self.saved[path] = SavedModule(self.engine, path, self.engine.root.get_submodule(path))
            saved = self.saved[path]
            saved.copies[name] = saved.make()
            self.engine.register(name, f"{path}.modules_to_save.{name}", saved.copies[name], in_root=True)

    def unmerge(self, name: str) -> bool:
        """Undo the merge of adapter `name` only (bit for bit, else with a warning); True if it was merged."""
        merged = [t for t in self.targets.values() if t.merged == name]
        inexact = [t for t in merged if not t.reset()]
        _warn_inexact({name} if inexact else set(), "restored")
        return bool(merged)

    def delete(self, name: str) -> None:
        self.unmerge(name)
        for key, target in list(self.targets.items()):
            if name in target.loras:
                del target.loras[name]
            if not len(target.loras):
                target.remove()
                del self.targets[key]
        for key, saved in list(self.saved.items()):
            if name in saved.copies:
                del saved.copies[name]
            if not len(saved.copies):
                saved.remove()
                del self.saved[key]
        shared = getattr(self.engine.base, "shared_parameters", None)
        if shared is not None and name in shared and isinstance(shared[name], _vera().SharedProjections):
            del shared[name]
        self.engine.unregister(name)

    def originals(self, names) -> list[nn.Module]:
        """The original modules that adapters `names` replace with trained copies (frozen while they train)."""
        return [s.module for s in self.saved.values() if any(n in s.copies for n in names)]

    def check_setup(self, setup) -> None:
        """Stacked LoRAs feed one adapter's delta into the next: only possible where in and out sizes agree.
        Averages with some children absent from a module: `check_averages`."""
        check_averages(setup, [*self.targets.values(), *self.saved.values()])
        for block, names in blocks_with_names(setup):
            for target in self.targets.values():
                here = [n for n in names if n in target.loras]
                for n in here:
                    if _fused(target.loras[n]) and _mtl().is_mtl(target.loras[n]):
                        raise CompositionError(f"{setup}: " + _fused_mtl_message(n, target.path))
                if len({_on_input(target.loras[n]) for n in here}) > 1:
                    raise CompositionError(
                        f"{setup}: adapters {here} on {target.path} mix (IA)^3 on the input (PEFT feedforward "
                        "modules) with adapters on the output; they cannot be composed there"
                    )
                if isinstance(block, Stack):
                    for i, child in enumerate(block.children[:-1]):
                        later = [n for c in block.children[i + 1 :] for n in _names(c) if n in target.loras]
                        if later and _rowwise_dora(child, target):
                            raise CompositionError(
                                f"{setup}: {later} follow a Parallel/BatchSplit of DoRA adapters on {target.path}; "
                                "each of its rows is finished by its own DoRA magnitude, so nothing can be "
                                "stacked after it"
                            )
                if not isinstance(block, Stack):
                    if len({_adds(target.loras[n]) for n in here}) > 1:
                        raise CompositionError(
                            f"{setup}: {type(block).__name__} mixes LoRA and (IA)^3 adapters {here} on "
                            f"{target.path}; LoRA adds to the output and (IA)^3 scales it, so their rows cannot be "
                            "combined in one pass: run them in separate setups"
                        )
                    continue
                adds = [n for n in here[1:] if _adds(target.loras[n])]
                if adds and not target.square:
                    raise CompositionError(
                        f"{setup}: cannot Stack LoRA adapters {here} on {target.path} "
                        f"({target.in_features} -> {target.out_features} features): stacked LoRAs feed one "
                        "adapter's output into the next, which needs a projection with equal in/out sizes"
                    )

    def merge(self, name: str) -> None:
        """Fold adapter `name` into the base weights; its hook then stays idle until `reset`.

        Refused while `skip_layers` skips a layer the adapter adapts: merged weights run in every layer, so the
        merged model would silently differ from the call it replaces (the adapters library merges anyway)."""
        targets = [t for t in self.targets.values() if name in t.loras]
        skipped = sorted({t.layer_idx for t in targets} & self.engine.skip_layers)
        if skipped:
            raise AdapterConfigError(
                f"cannot merge adapter {name!r} while skip_layers={sorted(self.engine.skip_layers)} skips layer(s) "
                f"{skipped} it adapts: a merged adapter runs in every layer; call set_active_adapters without "
                "skip_layers first, or keep the adapter unmerged"
            )
        for target in targets:
            if _fused(target.loras[name]) and _mtl().is_mtl(target.loras[name]):
                raise AdapterConfigError(_fused_mtl_message(name, target.path))
            if target.quantized:
                raise refuse_dense(target.path, target.quantized, f"merging adapter {name!r}")
            if target.loras[name].use_gating:
                raise AdapterConfigError(f"adapter {name!r} uses gating and cannot be merged")
            if target.merged not in (None, name):
                raise AdapterConfigError(f"{target.path} has {target.merged!r} merged: call reset_adapter() first")
        done = []
        try:
            for target in targets:
                if target.merged is None:
                    target.merge(name)
                    done.append(target)
        except BaseException:  # all or nothing
            for target in done:
                target.reset()
            raise

    def check_call(self, setup) -> None:
        """A merged adapter is in the weights for every call: a call must run exactly it (AdapterSetup included)."""
        merged = {t.merged for t in self.targets.values() if t.merged is not None}
        skipped = sorted({t.layer_idx for t in self.targets.values() if t.merged} & self.engine.skip_layers)
        if skipped:  # merge refuses this; skip_layers set afterwards by hand would run the skipped layers silently
            raise CompositionError(
                f"adapter {sorted(merged)[0]!r} is merged into the weights of layer(s) {skipped}, which skip_layers "
                "skips: a merged adapter cannot skip layers; call reset_adapter() first"
            )
        if not merged or setup is None:  # no setup: the merged weights are the model the user asked for
            return
        names = setup.names() if setup is not None else []
        lora_names = [n for n in names if any(n in t.loras for t in self.targets.values())]
        if lora_names != sorted(merged) or not isinstance(setup, Stack):
            raise CompositionError(
                f"adapter {sorted(merged)[0]!r} is merged into the weights, so every forward runs it; this call's "
                f"setup {setup} is not Stack({sorted(merged)[0]!r}): call reset_adapter() (or set_active_adapters) "
                "first"
            )

    def unmerged_weights(self) -> dict[str, torch.Tensor]:
        """The original weights (keys in the root model) of every projection an adapter is merged into."""
        weights = {}
        inexact = set()
        for t in self.targets.values():
            if t.merged is not None:
                weights[f"{t.path}.weight"], exact = t.original_weight()
                if not exact:
                    inexact.add(t.merged)
                if t.restore["bias"] is not None:
                    weights[f"{t.path}.bias"] = t.original_bias()
        _warn_inexact(inexact, "saved")
        return weights

    def reset(self) -> None:
        """Undo every merge (bit for bit unless the weights changed while merged: then with a warning)."""
        inexact = set()
        for target in self.targets.values():
            name = target.merged
            if not target.reset():
                inexact.add(name)
        _warn_inexact(inexact, "restored")

    # --- MTL-LoRA parameter sharing (mtl_lora.py) -----------------------------------------------------------

    def share_parameters(self, name: str, names: list[str], reference: str) -> int:
        """Tie the A and B of adapters `names` to copies of `reference`'s at every projection carrying all of
        them; returns how many projections were tied. All or nothing."""
        mtl = _mtl()
        done = []
        try:
            for target in self.targets.values():
                if mtl.share(target.module, target.loras, name, names, reference):
                    done.append(target)
        except BaseException:
            for target in done:
                mtl.unshare(target.module, target.loras, name)
            raise
        return len(done)

    def unshare_parameters(self, name: str) -> None:
        for target in self.targets.values():
            _mtl().unshare(target.module, target.loras, name)


def _warn_inexact(names: set, what: str) -> None:
    if names:
        warnings.warn(
            f"the base weights under merged adapter(s) {sorted(names)} were changed after merge_adapter (cast to "
            f"a narrower dtype, such as float32 -> bfloat16, or written): they are {what} as the merged weight "
            "minus the adapter's delta, the original only up to the current dtype's rounding, not bit for bit; "
            "call reset_adapter() before casting to keep them exact",
            stacklevel=3,
        )


def _vera():
    from . import vera  # vera.py builds on this module's classes

    return vera


def _mtl():
    from . import mtl_lora  # mtl_lora.py builds on this module's classes

    return mtl_lora


def _fused_mtl_message(name: str, path: str) -> str:
    return (
        f"MTL-LoRA adapter {name!r} sits on {path}, a fused q|k|v projection, where no MTL-LoRA computation is "
        "defined (adapters 1.3 fails there too): add it with selfattn_lora=False and intermediate_lora/output_lora"
    )


def _names(setup) -> list[str]:
    return [setup] if isinstance(setup, str) else setup.names()


def _rowwise_dora(setup, target: LoRATarget) -> bool:
    """Whether `setup` holds a Parallel/BatchSplit whose rows end in DoRA adapters on `target` (finished there)."""
    if not isinstance(setup, Block):
        return False
    if isinstance(setup, (Parallel, BatchSplit, MultiTask)):
        if any(dora.is_dora(target.loras[n]) for n in setup.names() if n in target.loras):
            return True
    return any(_rowwise_dora(child, target) for child in setup)


class _HostsLoRAs(type):
    def __instancecheck__(cls, module) -> bool:
        return isinstance(module, nn.Module) and isinstance(getattr(module, "loras", None), nn.ModuleDict)


class LoRALayer(metaclass=_HostsLoRAs):
    """AdapterHub's name for a projection that carries LoRA adapters: `isinstance(module, LoRALayer)` is true for
    every module the engine gave a `loras` ModuleDict (the projection itself stays the model's own class)."""
