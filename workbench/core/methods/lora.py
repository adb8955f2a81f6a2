"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) and (IA)^3 (Liu et al., 2022,
https://arxiv.org/abs/2205.05638) on unmodified transformers `nn.Linear`/`Conv1D` projections.

Every wrapped projection gets a child `loras` ModuleDict, so weights are keyed like AdapterHub's
(`...attention.self.query.loras.<name>.lora_A`), and one forward hook that adds (LoRA, "add") or multiplies
(IA3, "scale") the active adapters' output. GPT-2's fused `c_attn` takes one adapter whose q|k|v thirds are
enabled by `attn_matrices`. `merge`/`reset` fold an adapter into the base weight and back.

AdapterHub's `LoRAConfig` names places (`spec.lora`); a `TargetedLoRAConfig` (PEFT adapters) names any
nn.Linear/Conv1D module by its path, each with its own rank and scaling, (IA)^3 optionally on the module's input,
plus `modules_to_save`: full trainable copies whose output replaces the original module's while the adapter runs.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..composition import Average, BatchSplit, Parallel, Stack
from ..configs import LoRAConfig, TargetedLoRAConfig
from ..engine import record_gating
from ..errors import AdapterConfigError, CompositionError, UnsupportedModelError
from ..runtime import ComposableLayer, blocks_with_names, compose
from ..transformers_api import Conv1D
from .base import AdapterMethod
from .exact_undo import ExactUndo
from .modules_to_save import SavedModule
from .targets import call_setup, locate

LOCATIONS = {
    "q": "selfattn",
    "k": "selfattn",
    "v": "selfattn",
    "qkv": "selfattn",
    "intermediate": "intermediate",
    "output": "output",
}


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
            self.gate = nn.Linear(in_features, heads)
            nn.init.normal_(self.gate.weight, std=0.02)

    def _scale(self, h, x):
        if not self.use_gating:
            return h * self.scaling, None
        gate = torch.sigmoid(self.gate(x)).mean(dim=1).unsqueeze(-1)
        return h * gate, gate


class LoRA(_LoRABase):
    """`h = dropout(x) A^T B^T * alpha/r`; the layer output becomes `Wx + b + h`."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, heads: int = 1, r=None, scaling=None):
        super().__init__()
        dtype = getattr(torch, config.dtype) if config.dtype else None
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
        h = x if h is None else h
        if h.shape[-1] != self.lora_A.shape[1]:
            raise CompositionError(
                f"cannot Stack LoRA adapters here: the previous adapter's output has {h.shape[-1]} features, "
                f"this one expects {self.lora_A.shape[1]} (stacked LoRAs need projections with equal in/out sizes)"
            )
        down = F.linear(self.lora_dropout(h.to(self.lora_A.dtype)), self.lora_A)
        down, gate = self._scale(down, x)  # scaling the r-wide intermediate is cheaper than the output
        return F.linear(down, self.lora_B), gate

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
        self.lora_B = nn.Parameter(torch.zeros(out_features, 1))
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


def _fused(lora) -> bool:
    """An AdapterHub adapter on a fused q|k|v projection (GPT-2's c_attn), with only some thirds enabled."""
    return hasattr(lora, "enabled")


def _on_input(lora) -> bool:
    return getattr(lora, "on_input", False)


class LoRATarget(ComposableLayer):
    """One wrapped projection (`path` in the root model): its `loras` ModuleDict, forward hook and merge state."""

    def __init__(self, engine, path: str, module: nn.Module):
        self.engine, self.path, self.module = engine, path, module
        self.layer_idx, key, self.inside = locate(engine, path)
        self.location = LOCATIONS[key] + "_lora" if key else "lora"
        self.fused = key == "qkv"  # the place is a fused q|k|v projection (AdapterHub adapters split it)
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
        module.loras = nn.ModuleDict()
        self.loras: nn.ModuleDict = module.loras
        self.merged: str | None = None
        self.undo: ExactUndo | None = None  # how `reset` restores the weight after a merge
        self.snapshot: nn.Module | None = None  # the merged adapter's weights at merge time
        self.handle = module.register_forward_hook(self._hook)

    def remove(self) -> None:
        self.reset()
        self.handle.remove()
        del self.module.loras

    @property
    def square(self) -> bool:
        return self.in_features == self.out_features and not self.fused

    def make(self, config: LoRAConfig, r=None, alpha=None, on_input: bool = False) -> nn.Module:
        """A new adapter module here; `r`/`alpha`/`on_input` for a targeted (PEFT) module, which is never split."""
        cls = IA3 if config.composition_mode == "scale" else LoRA
        if isinstance(config, TargetedLoRAConfig):
            r = config.r if r is None else r
            alpha = config.alpha if alpha is None else alpha
            scaling = alpha if cls is IA3 else alpha / (math.sqrt(r) if config.use_rslora else r)
            size = self.in_features if on_input else self.out_features
            module = cls(self.in_features, size, config, r=r, scaling=scaling)
            if on_input:
                module.on_input = True
            return module
        if not self.fused:
            return cls(self.in_features, self.out_features, config)
        enabled = [m in config.attn_matrices for m in "qkv"]
        module = cls(self.in_features, self.out_features // 3 * sum(enabled), config, heads=sum(enabled))
        module.enabled = enabled
        return module

    # --- forward -----------------------------------------------------------------------------------------

    def _hook(self, module, args, output):
        if self.merged is not None or self.layer_idx in self.engine.skip_layers:
            return None
        setup, names, ctx = call_setup(self.engine, self.inside)
        if setup is None or not any(name in self.loras for name in names):
            return None
        st = compose(self, setup, _State(args[0], None, output), ctx)
        if st.last is None or st.h is None:
            return None
        if _on_input(self.loras[st.last]):  # (IA)^3 on the input: run the projection again on the scaled input
            x = args[0]
            return module.forward((x.to(st.h.dtype) * st.h).to(x.dtype))
        return self.loras[st.last].com(output, st.h)

    # --- the composition contract --------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.loras

    def single(self, name: str, st: _State, ctx) -> _State:
        lora = self.loras[name]
        if _fused(lora):
            h, gate = self._fused_delta(lora, st)
        else:
            h, gate = lora(st.h, st.x)
        if gate is not None:
            record_gating(ctx, name, self.layer_idx, self.location, gate)
        return replace(st, h=h, last=name)

    def batch_rows(self, st: _State) -> int:
        return st.x.shape[0]

    def rows(self, st: _State, a: int, b: int) -> _State:
        return _State(st.x[a:b], st.h[a:b] if st.h is not None else None, st.y[a:b], st.last)

    def concat(self, parts: list[_State]) -> _State:
        last = next((p.last for p in reversed(parts) if p.last is not None), None)
        x, y = torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts])
        if last is None:
            return _State(x, None, y)
        identity = 0.0 if isinstance(self.loras[last], LoRA) else 1.0  # rows without an adapter here: no change
        side = "x" if _on_input(self.loras[last]) else "y"  # the input-scaling vector has the input's width
        shape = lambda p: getattr(p, side).shape  # noqa: E731
        hs = [p.h.expand(shape(p)) if p.h is not None else torch.full(shape(p), identity).to(p.y) for p in parts]
        return _State(x, torch.cat(hs), y, last)

    def average(self, parts: list[_State], weights: list[float]) -> _State:
        present = [(p, w) for p, w in zip(parts, weights, strict=True) if p.h is not None]
        if not present:
            return parts[0]
        first = present[0][0]
        w = torch.tensor([w for _, w in present], dtype=first.h.dtype, device=first.h.device)
        stacked = torch.stack([p.h.expand_as(first.h) for p, _ in present])
        h = (stacked * w.view(-1, *[1] * (stacked.dim() - 1))).mean(dim=0)
        return replace(first, h=h, last=present[-1][0].last)

    def _fused_delta(self, lora, st: _State):
        """A fused q|k|v projection: the enabled thirds' scaled delta over the full width (others: no change)."""
        n = sum(lora.enabled)
        width = self.out_features // 3
        x = st.x
        if isinstance(lora, LoRA):
            a = F.linear(lora.lora_dropout(x.to(lora.lora_A.dtype)), lora.lora_A)
            a = a.view(*a.shape[:-1], n, lora.r)
            delta = torch.einsum("...nr,ner->...ne", a, lora.lora_B.view(n, width, lora.r)).flatten(-2)
            delta = self._pad(delta, lora.enabled, 0.0)
        else:
            delta = self._pad(lora.lora_B.view(1, 1, -1), lora.enabled, 1.0)
        gate = None
        if lora.use_gating:
            gate = torch.sigmoid(lora.gate(x)).mean(dim=1)
            scaling = self._pad(gate.repeat_interleave(width, dim=-1), lora.enabled, 1.0).unsqueeze(1)
        else:
            scaling = lora.scaling
        delta = delta * scaling
        if isinstance(lora, IA3) and st.h is not None:
            delta = st.h * delta
        return delta, gate

    @staticmethod
    def _pad(t, enabled, fill):
        """Spread the enabled q|k|v thirds of the last dim over the full width, filling the others."""
        chunks = iter(t.chunk(sum(enabled), dim=-1))
        width = t.shape[-1] // sum(enabled)
        parts = [next(chunks) if on else t.new_full((*t.shape[:-1], width), fill) for on in enabled]
        return torch.cat(parts, dim=-1)

    # --- merging -----------------------------------------------------------------------------------------

    def delta(self, lora) -> torch.Tensor:
        """The unscaled weight delta (LoRA) or row (column, on the input) factors (IA3) in the module's layout."""
        if _fused(lora) and isinstance(lora, LoRA):
            n = sum(lora.enabled)
            d = torch.bmm(lora.lora_B.view(n, -1, lora.r), lora.lora_A.view(n, lora.r, -1)).flatten(0, 1)
            d = self._pad(d.t(), lora.enabled, 0.0).t()
        elif _fused(lora):
            d = self._pad(lora.lora_B.t(), lora.enabled, 1.0).t()
        elif _on_input(lora):
            d = lora.lora_B.t()
        else:
            d = lora.delta_w
        return d.t() if self.conv1d else d

    def merge(self, name: str) -> None:
        """`W + delta * scaling` (LoRA) or `W * (lora_B * alpha)` (IA3: the bias stays unscaled).

        No copy of `W` is kept (on any device): `ExactUndo` keeps the rounding steps that turn the inverse
        (`W' - delta * scaling`, `W' / scale`) back into `W` bit for bit, computed from a snapshot of the adapter's
        (small) weights taken now, so `reset` is exact even if the adapter's weights change meanwhile."""
        lora = self.loras[name]
        with torch.no_grad():
            weight = self.module.weight
            original = weight.detach().clone()
            weight.copy_(lora.com(weight, self.delta(lora).to(weight.dtype), lora.scaling))
            self.snapshot = copy.deepcopy(lora)
            self.undo = ExactUndo.capture(original, self._inverse(self.snapshot))
        self.merged = name

    def _inverse(self, lora):
        """The merged weight mapped back by the closed-form inverse of the merge, or None for other module types."""
        weight = self.module.weight
        if type(lora) is LoRA:
            return lambda: weight - (self.delta(lora).to(weight.dtype) * lora.scaling).to(weight.dtype)
        if type(lora) is IA3:
            return lambda: weight / (self.delta(lora).to(weight.dtype) * lora.scaling).to(weight.dtype)
        return None

    def unmerged_weight(self) -> torch.Tensor:
        """The weight as it was before the merge (bit for bit), computed without changing the module."""
        weight, undo = self.module.weight, self.undo
        with torch.no_grad():
            if weight.dtype != undo.dtype:  # the model was cast after the merge: only the inverse is left
                message = f"{self.path} was cast to {weight.dtype} after a merge; unmerging approximately"
                warnings.warn(message, stacklevel=3)
                inverse = self._inverse(self.snapshot)
                return inverse() if inverse is not None else undo.copy.to(weight)
            return undo.restore(self._inverse(self.snapshot), weight.device)

    def reset(self) -> None:
        if self.merged is None:
            return
        with torch.no_grad():
            self.module.weight.copy_(self.unmerged_weight())
        self.merged, self.undo, self.snapshot = None, None, None


class LoRAMethod(AdapterMethod):
    """Adds, removes and merges LoRA/IA3 adapters across all layers of a model (averaging: `core/merging.py`)."""

    kind = "lora"
    supports = frozenset({Stack, Parallel, BatchSplit, Average})

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
            layers = f"{self.engine.base_prefix}{self.engine.spec.layers}"
            for idx in range(len(self.engine.layers)):
                if idx in config.leave_out:
                    continue
                for key, path in self.engine.spec.lora.items():
                    if self._wanted(config, key):
                        target = self._target(f"{layers}.{idx}.{path}")
                        self._put(name, target, target.make(config))
        except Exception:
            self.delete(name)
            raise

    def _add_targeted(self, name: str, config: TargetedLoRAConfig) -> None:
        """Each module of `config.targets` with its own rank/alpha (layers in `leave_out` skipped), and a trainable
        copy of each module of `config.modules_to_save`."""
        for path, options in config.targets.items():
            if locate(self.engine, path)[0] in config.leave_out:
                continue
            target = self._target(path)
            self._put(name, target, target.make(config, options["r"], options["alpha"], options["on_input"]))
        for path in config.modules_to_save:
            if path not in self.saved:
                self.saved[path] = SavedModule(self.engine, path, self.engine.root.get_submodule(path))
            saved = self.saved[path]
            saved.copies[name] = saved.make()
            self.engine.register(name, f"{path}.modules_to_save.{name}", saved.copies[name], in_root=True)

    def delete(self, name: str) -> None:
        for key, target in list(self.targets.items()):
            if target.merged == name:
                target.reset()
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
        self.engine.unregister(name)

    def originals(self, names) -> list[nn.Module]:
        """The original modules that adapters `names` replace with trained copies (frozen while they train)."""
        return [s.module for s in self.saved.values() if any(n in s.copies for n in names)]

    def check_setup(self, setup) -> None:
        """Stacked LoRAs feed one adapter's delta into the next: only possible where in and out sizes agree."""
        for block, names in blocks_with_names(setup):
            for target in self.targets.values():
                here = [n for n in names if n in target.loras]
                if len({_on_input(target.loras[n]) for n in here}) > 1:
                    raise CompositionError(
                        f"{setup}: adapters {here} on {target.path} mix (IA)^3 on the input (PEFT feedforward "
                        "modules) with adapters on the output; they cannot be composed there"
                    )
                if not isinstance(block, Stack):
                    if len({type(target.loras[n]) for n in here}) > 1:
                        raise CompositionError(
                            f"{setup}: {type(block).__name__} mixes LoRA and (IA)^3 adapters {here} on "
                            f"{target.path}; LoRA adds to the output and (IA)^3 scales it, so their rows cannot be "
                            "combined in one pass: run them in separate setups"
                        )
                    continue
                adds = [n for n in here[1:] if isinstance(target.loras[n], LoRA)]
                if adds and not target.square:
                    raise CompositionError(
                        f"{setup}: cannot Stack LoRA adapters {here} on {target.path} "
                        f"({target.in_features} -> {target.out_features} features): stacked LoRAs feed one "
                        "adapter's output into the next, which needs a projection with equal in/out sizes"
                    )

    def merge(self, name: str) -> None:
        """Fold adapter `name` into the base weights; its hook then stays idle until `reset`."""
        targets = [t for t in self.targets.values() if name in t.loras]
        for target in targets:
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
        if not merged or setup is None:  # no setup: the merged weights are the model the user asked for
            return
        names = setup.flatten() if setup is not None else []
        lora_names = [n for n in names if any(n in t.loras for t in self.targets.values())]
        if lora_names != sorted(merged) or not isinstance(setup, Stack):
            raise CompositionError(
                f"adapter {sorted(merged)[0]!r} is merged into the weights, so every forward runs it; this call's "
                f"setup {setup} is not Stack({sorted(merged)[0]!r}): call reset_adapter() (or set_active_adapters) "
                "first"
            )

    def unmerged_weights(self) -> dict[str, torch.Tensor]:
        """The original weights (keys in the root model) of every projection an adapter is merged into."""
        return {f"{t.path}.weight": t.unmerged_weight() for t in self.targets.values() if t.merged is not None}

    def reset(self) -> None:
        """Undo every merge."""
        for target in self.targets.values():
            target.reset()
