"""Per-model engine state and the per-forward context that hooks read."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field

import torch
from torch import nn

from .archs import arch_for, get_module
from .composition import Block, parse_composition

_SCOPED_SETUP: contextvars.ContextVar = contextvars.ContextVar("workbench_adapter_setup", default=None)


class AdapterSetup:
    """`with AdapterSetup(Stack("a", "b"), head_setup="b"): model(...)` activates a setup for the block only."""

    def __init__(self, adapter_setup, head_setup=None, ignore_empty: bool = False):
        self.adapter_setup = parse_composition(adapter_setup)
        self.head_setup = head_setup
        self.ignore_empty = ignore_empty
        self._token = None

    def __enter__(self):
        if self.adapter_setup is not None or not self.ignore_empty:
            self._token = _SCOPED_SETUP.set(self)
        return self

    def __exit__(self, *exc):
        if self._token is not None:
            _SCOPED_SETUP.reset(self._token)
            self._token = None


def scoped_setup() -> AdapterSetup | None:
    """The innermost `AdapterSetup` block being run, if any."""
    return _SCOPED_SETUP.get()


@dataclass
class ForwardContext:
    """What one forward pass needs to know: the setup, batch bookkeeping and collected extras."""

    setup: Block | None
    names: frozenset[str]
    batch_size: int | None = None  # before Parallel replication
    output_fusion_attentions: bool = False
    fusion_attentions: dict = field(default_factory=dict)
    output_gating_scores: bool = False
    gating_scores: dict = field(default_factory=dict)
    prefix_states: dict = field(default_factory=dict)


class EngineState:
    """Everything the engine keeps for one model: configs, fusions, the active setup, and method layers."""

    def __init__(self, root: nn.Module, base: nn.Module):
        self.root = root
        self.base = base
        self.spec = arch_for(base.config)
        self.configs: dict = {}
        self.fusions: dict[str, tuple[list[str], object]] = {}
        self.active_setup: Block | None = None
        self.skip_layers: set[int] = set()
        self.context: ForwardContext | None = None
        self.methods: dict[str, object] = {}
        self.forward_begin_hooks: list = []  # callables(ctx, args, kwargs) -> (args, kwargs) | None
        base.register_forward_pre_hook(self._begin, with_kwargs=True)
        base.register_forward_hook(self._end)

    @property
    def layers(self) -> nn.ModuleList:
        return get_module(self.base, self.spec.layers)

    @property
    def hidden_size(self) -> int:
        return self.base.config.hidden_size

    def current_setup(self) -> Block | None:
        return self.context.setup if self.context is not None else self.active_setup

    def _begin(self, module, args, kwargs):
        scoped = scoped_setup()
        setup = scoped.adapter_setup if scoped is not None else self.active_setup
        names = frozenset(setup.flatten()) if setup is not None else frozenset()
        ctx = ForwardContext(
            setup,
            names,
            output_fusion_attentions=bool(kwargs.pop("output_adapter_fusion_attentions", False)),
            output_gating_scores=bool(kwargs.pop("output_adapter_gating_scores", False)),
        )
        ctx.batch_size = _batch_size(args, kwargs)
        self.context = ctx
        if setup is not None and setup.parallel_channels > 1 and ctx.batch_size is not None:
            args, kwargs = _replicate(args, kwargs, ctx.batch_size, setup.parallel_channels)
        for hook in self.forward_begin_hooks:
            result = hook(ctx, args, kwargs)
            if result is not None:
                args, kwargs = result
        return args, kwargs

    def _end(self, module, args, output):
        ctx, self.context = self.context, None
        if ctx is None or not hasattr(output, "keys"):
            return None
        if ctx.output_fusion_attentions:
            output["adapter_fusion_attentions"] = ctx.fusion_attentions
        if ctx.output_gating_scores:
            output["adapter_gating_scores"] = ctx.gating_scores
        return None

    def record_gating(self, adapter: str, layer_idx: int, location: str, gate: torch.Tensor) -> None:
        """Keep a per-example gate value when the forward asked for `output_adapter_gating_scores`."""
        ctx = self.context
        if ctx is not None and ctx.output_gating_scores:
            ctx.gating_scores.setdefault(adapter, {}).setdefault(layer_idx, {})[location] = gate.detach().cpu()


def _batch_size(args, kwargs) -> int | None:
    for key in ("input_ids", "inputs_embeds", "attention_mask"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    return None


def _replicate(args, kwargs, batch: int, channels: int):
    """Repeat every batch-shaped input `channels` times along the batch (Parallel composition)."""

    def repeat(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value.repeat(channels, *([1] * (value.dim() - 1)))
        return value

    return tuple(repeat(a) for a in args), {k: repeat(v) for k, v in kwargs.items()}
