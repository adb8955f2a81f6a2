"""AdapterFusion (Pfeiffer et al., 2021, https://arxiv.org/abs/2005.00247): attention over adapter outputs.

At each site, the hidden state queries the adapters' up-projections (keys and values) and mixes them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import AdapterFusionConfig


class FusionLayer(nn.Module):
    """One fusion at one site of one layer (AdapterHub's `BertFusion`)."""

    def __init__(self, config: AdapterFusionConfig, hidden: int, dropout: float):
        super().__init__()
        self.config = config
        if not (config.query or config.key or config.value):
            self.dense = nn.Linear(hidden, 1)
        if config.query:
            self.query = nn.Linear(hidden, hidden)
            nn.init.normal_(self.query.weight, std=0.02)
            nn.init.zeros_(self.query.bias)
        if config.key:
            self.key = nn.Linear(hidden, hidden)
            nn.init.normal_(self.key.weight, std=0.02)
            nn.init.zeros_(self.key.bias)
        if config.value:
            self.value = nn.Linear(hidden, hidden, bias=False)
            nn.init.normal_(self.value.weight, std=0.02)
            if config.value_initialized:
                with torch.no_grad():
                    self.value.weight.copy_(torch.full((hidden, hidden), 1e-6).fill_diagonal_(1.0))
        self.dropout = nn.Dropout(dropout)
        self.initial_temperature = 50.0 if config.temperature else 1.0
        self.temperature = self.initial_temperature

    def forward(self, query, ups, residual, advance: bool = True):
        """query (B,T,H), ups (B,T,n,H), residual (B,T,H) -> (output (B,T,H), attention (B,T,n)).

        `advance` lowers the temperature one step (not when gradient checkpointing replays the layer). It computes
        in its own dtype (the model's, unless `adapter_fusion_to` cast it) and answers in the hidden states' one.
        """
        dtype, own = query.dtype, next((p.dtype for p in self.parameters()), query.dtype)
        query, ups, residual = query.to(own), ups.to(own), residual.to(own)
        if self.config.temperature:  # a Python number lowered on every forward: a compiled graph would freeze it
            out, probs = self._eager_forward(query, ups, residual, advance)
        else:
            out, probs = self._forward(query, ups, residual, advance)
        return out.to(dtype), probs.to(dtype)

    @torch.compiler.disable
    def _eager_forward(self, query, ups, residual, advance: bool):
        """`_forward` outside any compiled graph (a graph break in a compiled model)."""
        return self._forward(query, ups, residual, advance)

    def _forward(self, query, ups, residual, advance: bool):
        config = self.config
        if config.residual_before:
            ups = ups + residual[:, :, None, :]
        q = self.query(query) if config.query else query
        k = self.key(ups) if config.key else ups
        v = self.value(ups) if config.value and config.value_before_softmax else ups
        scores = torch.matmul(q.unsqueeze(2), k.transpose(-2, -1)).squeeze(2)
        probs = torch.softmax(self.dropout(scores) / self.temperature, dim=-1)
        if advance:  # AdapterHub lowers it on every forward, training or not
            self.temperature = max(self.temperature - self.initial_temperature / 1000, 1.0)
        out = torch.matmul(probs.unsqueeze(2), v).squeeze(2)
        if config.value and not config.value_before_softmax:
            out = self.value(out)
        if not config.residual_before:
            out = out + residual
        return out, probs

    def regularization_loss(self) -> torch.Tensor:
        """0.01 * ||I - V||^2, which keeps the value matrix near identity while training a fusion."""
        if not self.config.value or not self.config.regularization:
            return torch.zeros((), device=self.query.weight.device if self.config.query else None)
        eye = torch.eye(self.value.weight.shape[0], device=self.value.weight.device)
        return 0.01 * (eye - self.value.weight).pow(2).sum()
