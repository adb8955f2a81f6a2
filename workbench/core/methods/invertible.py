"""Invertible adapters for MAD-X language adapters (Pfeiffer et al., 2020, https://arxiv.org/abs/2005.00052).

A NICE coupling block transforms the token embeddings on the way in; LM heads apply its inverse before the
vocabulary projection. Only the first adapter of the active setup acts, as in AdapterHub.
"""

from __future__ import annotations

import torch
from torch import nn

from ..archs import get_module
from ..configs import BnConfig
from ..context import EngineState
from ..errors import AdapterConfigError
from .activations import activation


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
        x1, x2 = x[..., : self.split], x[..., self.split :]
        if not rev:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat([y1, y2], dim=-1)


class InvertibleMethod:
    """Keeps `invertible_adapters.<name>` on the base model and applies the active one to the embeddings."""

    kind = "invertible"

    def __init__(self, state: EngineState):
        self.state = state
        base = state.base
        if not hasattr(base, "invertible_adapters"):
            base.invertible_adapters = nn.ModuleDict()
        self.modules: nn.ModuleDict = base.invertible_adapters
        get_module(base, state.spec.embeddings).register_forward_hook(self._on_embeddings)

    def add(self, name: str, config: BnConfig) -> None:
        if config.inv_adapter != "nice":
            raise AdapterConfigError(f"inv_adapter={config.inv_adapter!r} is not supported; use 'nice'")
        dim = getattr(self.state.base.config, "embedding_size", None) or self.state.hidden_size
        self.modules[name] = NICECoupling(dim, config.inv_adapter_reduction_factor or 2, config.non_linearity)

    def delete(self, name: str) -> None:
        if name in self.modules:
            del self.modules[name]

    def active(self) -> NICECoupling | None:
        setup = self.state.current_setup()
        if setup is None:
            return None
        return self.modules[setup.first()] if setup.first() in self.modules else None

    def _on_embeddings(self, module, args, output):
        adapter = self.active()
        return adapter(output) if adapter is not None else None

    def invert(self, hidden: torch.Tensor) -> torch.Tensor:
        adapter = self.active()
        return adapter(hidden, rev=True) if adapter is not None else hidden
