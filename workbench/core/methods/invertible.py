"""Invertible adapters for MAD-X language adapters (Pfeiffer et al., 2020, https://arxiv.org/abs/2005.00052).

A NICE coupling block transforms the token embeddings on the way in; LM heads apply its inverse before the
vocabulary projection. Only the first adapter of the active setup acts, as in AdapterHub.
"""

from __future__ import annotations

import torch
from torch import nn

from ..archs import get_module
from ..configs import BnConfig
from ..context import current_call
from ..errors import AdapterConfigError
from ..rows import runs
from ..runtime import ALL_BLOCKS, check_channels_start_alike
from .activations import activation
from .base import AdapterMethod


def _subnet(d_in: int, d_out: int, reduction: float, act: str) -> nn.Sequential:
    hidden = int(d_in // reduction)
    net = nn.Sequential(nn.Linear(d_in, hidden), activation(act), nn.Linear(hidden, d_out))
    for module in (net[0], net[2]):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    return net


class NICECoupling(nn.Module):
    """y1 = x1 + F(x2); y2 = x2 + G(y1); exactly invertible."""

    def __init__(self, dim: int, reduction: float, act: str):
        super().__init__()
        self.split = dim // 2
        self.F = _subnet(dim - self.split, self.split, reduction, act)
        self.G = _subnet(self.split, dim - self.split, reduction, act)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        dtype = x.dtype
        x = x.to(self.F[0].weight.dtype)  # `adapter_to` may give the coupling another dtype than the model's
        x1, x2 = x[..., : self.split], x[..., self.split :]
        if not rev:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat([y1, y2], dim=-1).to(dtype)


class InvertibleMethod(AdapterMethod):
    """Keeps `invertible_adapters.<name>` on the base model and applies the active one to the embeddings."""

    kind = "invertible"
    supports = ALL_BLOCKS  # only the first adapter of the setup acts, whatever the blocks

    def __init__(self, engine):
        super().__init__(engine)
        self._handle = None

    @property
    def owner(self) -> nn.Module:
        """The module holding `invertible_adapters`: the base model, or an encoder-decoder model's encoder
        (AdapterHub's keys: `encoder.invertible_adapters.<name>`)."""
        return get_module(self.engine.base, self.engine.spec.encoder)

    @classmethod
    def refusal_hint(cls, engine) -> str:
        main_input = getattr(engine.base, "main_input_name", "input_ids")
        if main_input == "input_ids":
            return ""
        return f"; this model reads {main_input}, and invertible adapters transform token embeddings"

    def add(self, name: str, config: BnConfig) -> None:
        if config.inv_adapter != "nice":
            raise AdapterConfigError(f"inv_adapter={config.inv_adapter!r} is not supported; use 'nice'")
        base, owner = self.engine.base, self.owner
        if self._handle is None:
            owner.invertible_adapters = nn.ModuleDict()
            embeddings = get_module(base, self.engine.spec.embeddings)
            if self.engine.spec.embeddings_input:  # the stream is that module's input (T5's first encoder block)
                self._handle = embeddings.register_forward_pre_hook(self._on_embedding_input, with_kwargs=True)
            else:
                self._handle = embeddings.register_forward_hook(self._on_embeddings)
        dim = getattr(base.config, "embedding_size", None) or self.engine.hidden_size
        factor = config.inv_adapter_reduction_factor or 2
        module = NICECoupling(dim, factor, config.non_linearity).train(base.training)
        owner.invertible_adapters[name] = module
        prefix = f"{self.engine.spec.encoder}." if self.engine.spec.encoder else ""
        self.engine.register(name, f"{prefix}invertible_adapters.{name}", module)
        for path in self._sharing():  # AdapterHub's model and decoder refer to the encoder's couplings
            get_module(base, path).invertible_adapters = owner.invertible_adapters
            self.engine.register(name, f"{path}.invertible_adapters.{name}".lstrip("."), module)

    def _sharing(self) -> list[str]:
        """For a model made of sub-models (`EncoderDecoderModel`): the model itself and its other sub-models (the
        decoder) hold the encoder's `invertible_adapters` too, as AdapterHub's do, so their keys are in its files."""
        spec = self.engine.spec
        if not any(stack.submodel for stack in spec.stacks):
            return []
        return ["", *(stack.submodel for stack in spec.more_stacks if stack.submodel != spec.encoder)]

    def delete(self, name: str) -> None:
        modules = getattr(self.owner, "invertible_adapters", None)
        if modules is not None and name in modules:
            del modules[name]
        if modules is not None and not len(modules) and self._handle is not None:
            self._handle.remove()
            self._handle = None
            del self.owner.invertible_adapters
            for path in self._sharing():
                del get_module(self.engine.base, path).invertible_adapters
        self.engine.unregister(name)

    def check_setup(self, setup) -> None:
        """Channels that start with different invertible adapters (or none) are refused: the coupling transforms
        the embeddings of the whole batch, before Parallel/BatchSplit/MultiTask split it."""
        modules = getattr(self.owner, "invertible_adapters", {})
        check_channels_start_alike(setup, lambda name: name if name in modules else None, "invertible adapter")

    def active(self, setup) -> NICECoupling | None:
        modules = getattr(self.owner, "invertible_adapters", None)
        if setup is None or modules is None:
            return None
        return modules[setup.first()] if setup.first() in modules else None

    def _on_embeddings(self, module, args, output):
        scale = self._unscale(module, output)
        x = output if scale is None else output / scale
        ctx = current_call(self.engine)
        if ctx is not None and ctx.rows is not None:
            y = self._by_rows(x, ctx.rows, rev=False)
        else:
            adapter = self.active(ctx.setup if ctx is not None else None)
            y = adapter(x) if adapter is not None else None
        return y if y is None or scale is None else y * scale

    def _unscale(self, module: nn.Module, output: torch.Tensor) -> torch.Tensor | None:
        """The embedding module's own scale, when the spec has the coupling act before it (`invertible_unscaled`)."""
        if not self.engine.spec.invertible_unscaled:
            return None
        return module.embed_scale.to(output.dtype)

    def _on_embedding_input(self, module, args, kwargs):
        if args:
            out = self._on_embeddings(module, args, args[0])
            return None if out is None else ((out, *args[1:]), kwargs)
        out = self._on_embeddings(module, args, kwargs["hidden_states"])
        return None if out is None else (args, {**kwargs, "hidden_states": out})

    def invert(self, hidden: torch.Tensor, setup, rows=None) -> torch.Tensor:
        """The inverse transform, for an LM head's output of a call that ran `setup` (or per-row adapters `rows`)."""
        if rows is not None:
            return self._by_rows(hidden, rows, rev=True)
        adapter = self.active(setup)
        return adapter(hidden, rev=True) if adapter is not None else hidden

    def _by_rows(self, hidden: torch.Tensor, rows, rev: bool) -> torch.Tensor | None:
        """Per-row adapters (`adapter_names`): each run of rows through its own adapter's coupling, if it has one."""
        modules = getattr(self.owner, "invertible_adapters", None)
        parts = [(modules[n] if modules is not None and n in modules else None, a, b) for n, a, b in runs(rows)]
        if all(m is None for m, _, _ in parts):
            return None if not rev else hidden
        return torch.cat([m(hidden[a:b], rev=rev) if m is not None else hidden[a:b] for m, a, b in parts])
