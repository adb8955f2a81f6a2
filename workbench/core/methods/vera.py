"""VeRA (Kopiczko et al., 2024, https://arxiv.org/abs/2310.11454): one frozen random pair A (r x in) / B (out x r)
per adapter, shared by every projection it adapts; each projection trains only two scaling matrices.

Layout as AdapterHub's `adapters` 1.3 writes it: the shared pair is `shared_parameters.<name>.lora_A/lora_B` on the
base model, and each projection holds `loras.<name>.vera_D` (r x r, initialised `vera_d * I`) and
`loras.<name>.vera_B` (out x out, initialised `vera_b * I`), so `dW = vera_B @ B @ vera_D @ A`, scaled by alpha/r.
The library sizes the pair from the first projection and fails on any other shape; here the pair takes the largest
in/out sizes and each projection uses its leading slice (PEFT's rule), which is the same pair whenever all shapes
agree. The pair is kept in buffers: it is saved and loaded with the adapter but never trained.
A PEFT VeRA adapter trains vectors (`vera_lambda_d`, `vera_lambda_b`) instead of matrices and has no alpha/r scaling:
`diagonal=True` keeps `vera_D`/`vera_B` as those vectors, so it trains and saves as PEFT does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import LoRAConfig
from ..errors import CompositionError
from .lora import _LoRABase


class SharedProjections(nn.Module):
    """The frozen random A (r x max in) and B (max out x r) of one VeRA adapter."""

    def __init__(self, config: LoRAConfig, r: int, in_features: int, out_features: int):
        super().__init__()
        dtype = getattr(torch, config.dtype) if config.dtype else None
        if config.init_weights_seed:  # as the library: the seed is reset before drawing the pair
            torch.manual_seed(config.init_weights_seed)
        a, b = torch.zeros(r, in_features, dtype=dtype), torch.zeros(out_features, r, dtype=dtype)
        if config.init_weights == "lora":
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        elif config.init_weights == "bert":
            nn.init.normal_(a, std=0.02)
            nn.init.normal_(b, std=0.02)
        elif config.init_weights == "ia3":
            nn.init.ones_(a)
            nn.init.ones_(b)
        else:
            nn.init.kaiming_uniform_(a)
            nn.init.kaiming_uniform_(b)
        self.register_buffer("lora_A", a)
        self.register_buffer("lora_B", b)


class Vera(_LoRABase):
    """`h = dropout(x) (vera_B B vera_D A)^T * alpha/r` with A, B the leading slices of the shared pair."""

    def __init__(self, in_features: int, out_features: int, config: LoRAConfig, shared: SharedProjections,
                 r: int | None = None, scaling: float | None = None, diagonal: bool = False):  # fmt: skip
        super().__init__()
        dtype = getattr(torch, config.dtype) if config.dtype else None
        self.r = config.r if r is None else r
        self.scaling = config.alpha / config.r if scaling is None else scaling
        self.in_features, self.out_features = in_features, out_features
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.diagonal = diagonal
        d, b = (
            torch.full((self.r,), config.vera_d, dtype=dtype),
            torch.full((out_features,), config.vera_b, dtype=dtype),
        )
        self.vera_D = nn.Parameter(d if diagonal else torch.diag(d))
        self.vera_B = nn.Parameter(b if diagonal else torch.diag(b))
        self._shared = (shared,)  # a plain reference: the pair is saved once, under shared_parameters
        self._add_gate(config, in_features, 1)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(vera_D A, vera_B B): the delta is their product, `dW = (vera_B B) (vera_D A)`."""
        shared = self._shared[0]
        dtype = self.vera_D.dtype
        a, b = shared.lora_A[:, : self.in_features].to(dtype), shared.lora_B[: self.out_features].to(dtype)
        if self.diagonal:
            return self.vera_D.unsqueeze(1) * a, self.vera_B.unsqueeze(1) * b
        return self.vera_D @ a, self.vera_B @ b

    @property
    def delta_w(self) -> torch.Tensor:
        down, up = self.factors()
        return up @ down

    def forward(self, h, x):
        """Returns (scaled delta, gate or None); `h` is the previous Stack member's delta, else None."""
        h = x if h is None else h
        if h.shape[-1] != self.in_features:
            raise CompositionError(
                f"cannot Stack VeRA adapters here: the previous adapter's output has {h.shape[-1]} features, "
                f"this one expects {self.in_features}"
            )
        down_w, up_w = self.factors()
        down = F.linear(self.lora_dropout(h.to(self.vera_D.dtype)), down_w)
        down, gate = self._scale(down, x)
        return F.linear(down, up_w), gate

    @staticmethod
    def com(base, added, scaling=1.0):
        if not (isinstance(scaling, float) and scaling == 1.0):
            added = added * scaling
        return base + added.to(base.dtype)
