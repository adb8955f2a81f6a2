"""Parameterized hypercomplex multiplication layers for Compacter (https://arxiv.org/abs/2106.04647).

The weight is a sum of Kronecker products `sum_i kron(rule[i], W[i])`; the rules may be shared by all layers of
an adapter (they then live in `shared_parameters.<name>` on the base model).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import BnConfig
from ..errors import AdapterConfigError


def kron_sum(rule: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum_i kron(rule[i], weight[i]) for rule (n, n, n) and weight (n, a, b) -> (n*a, n*b)."""
    n, a, b = weight.shape
    product = rule[:, :, None, :, None] * weight[:, None, :, None, :]  # (n, n, a, n, b)
    return product.sum(0).reshape(n * a, n * b)


def shared_phm_parameters(config: BnConfig, hidden: int, bottleneck: int) -> nn.ParameterDict:
    """The per-adapter parameters shared by every PHM layer of an adapter."""
    n = config.phm_dim
    params = nn.ParameterDict()
    if config.shared_phm_rule:
        if config.factorized_phm_rule:
            params["phm_rule_left"] = nn.Parameter(torch.empty(n, n, 1).normal_(0, config.phm_init_range))
            params["phm_rule_right"] = nn.Parameter(torch.empty(n, 1, n).normal_(0, config.phm_init_range))
        else:
            params["phm_rule"] = nn.Parameter(torch.empty(n, n, n).normal_(0, config.phm_init_range))
    if config.shared_W_phm:
        for side, (fan_in, fan_out) in {"down": (hidden, bottleneck), "up": (bottleneck, hidden)}.items():
            if config.factorized_phm_W:
                params[f"W_{side}_left"] = nn.Parameter(_xavier(n, fan_in // n, config.phm_rank))
                params[f"W_{side}_right"] = nn.Parameter(_xavier(n, config.phm_rank, fan_out // n))
            else:
                params[f"W_{side}"] = nn.Parameter(_xavier(n, fan_in // n, fan_out // n))
    return params


def _xavier(*shape) -> torch.Tensor:
    tensor = torch.empty(*shape)
    for block in tensor:
        nn.init.xavier_normal_(block)
    return tensor


class PHMLayer(nn.Module):
    """y = x @ sum_i kron(rule_i, W_i) + b."""

    def __init__(self, in_features: int, out_features: int, side: str, config: BnConfig, shared: nn.ParameterDict):
        super().__init__()
        n = config.phm_dim
        if in_features % n or out_features % n:
            raise AdapterConfigError(f"PHM layer sizes {in_features}->{out_features} must be divisible by phm_dim={n}")
        self.side, self.config, self._shared = side, config, [shared]  # list: keep out of our state dict
        if not config.shared_phm_rule:
            if config.factorized_phm_rule:
                self.phm_rule_left = nn.Parameter(torch.empty(n, n, 1).normal_(0, 0.01))
                self.phm_rule_right = nn.Parameter(torch.empty(n, 1, n).normal_(0, 0.01))
            else:
                self.phm_rule = nn.Parameter(torch.empty(n, n, n).normal_(0, 0.01))
        if not config.shared_W_phm:
            if config.factorized_phm_W:
                self.W_left = nn.Parameter(_xavier(n, in_features // n, config.phm_rank))
                self.W_right = nn.Parameter(_xavier(n, config.phm_rank, out_features // n))
            else:
                self.W = nn.Parameter(_xavier(n, in_features // n, out_features // n))
        self.b = nn.Parameter(torch.zeros(out_features)) if config.phm_bias else None

    def _rule(self) -> torch.Tensor:
        source = self._shared[0] if self.config.shared_phm_rule else dict(self.named_parameters(recurse=False))
        if self.config.factorized_phm_rule:
            return torch.bmm(source["phm_rule_left"], source["phm_rule_right"])
        return source["phm_rule"]

    def _weight(self) -> torch.Tensor:
        if self.config.shared_W_phm:
            shared = self._shared[0]
            if self.config.factorized_phm_W:
                return torch.bmm(shared[f"W_{self.side}_left"], shared[f"W_{self.side}_right"])
            return shared[f"W_{self.side}"]
        if self.config.factorized_phm_W:
            return torch.bmm(self.W_left, self.W_right)
        return self.W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ kron_sum(self._rule(), self._weight())
        return out + self.b if self.b is not None else out
