"""Bottleneck adapters: sequential (Houlsby et al., 2019, https://arxiv.org/abs/1902.00751; Pfeiffer et al.,
2021, https://arxiv.org/abs/2005.00247) and parallel (He et al., 2022, https://arxiv.org/abs/2110.04366).

An adapter is `up(act(down(x))) * scaling` plus a residual, placed at a layer's attention output ("mh_adapter")
and/or FFN output ("output_adapter"). `pre_forward`/`post_forward` reproduce AdapterHub's handling of the
layer's own residual and LayerNorm, so outputs match the `adapters` library. `stochastic_depth` (AdapterPlus,
Steitz & Roth, 2024, https://arxiv.org/abs/2406.06820) drops a row's adapter branch in training (`DropPath`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..configs import BnConfig
from ..errors import AdapterConfigError, AdapterConfigKeyError
from .activations import activation
from .phm import PHMLayer


def bottleneck_size(config: BnConfig, hidden: int, layer_idx: int) -> int:
    factor = config.reduction_factor
    if isinstance(factor, dict):
        factor = factor.get(str(layer_idx), factor.get("default"))
        if factor is None:
            raise AdapterConfigKeyError(
                f"reduction_factor={dict(config.reduction_factor)!r}: no entry for layer {layer_idx} and no 'default'"
            )
    size = max(int(hidden // factor), 1)
    if size > 16 * hidden:  # a typo'd factor (or a hostile file) would allocate a huge adapter
        limit = 16 * hidden
        raise AdapterConfigError(
            f"reduction_factor={factor!r} gives a {size}-wide bottleneck for hidden size {hidden} (at most {limit})"
        )
    return size


class DropPath(nn.Module):
    """Stochastic depth per row ("row" mode of torchvision's `StochasticDepth`, without torchvision).

    In training each row (example) keeps its input with probability 1 - p, scaled by 1 / (1 - p) so the expected
    value is unchanged, and is zeroed otherwise; in eval it is the identity.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * (keep / survival if survival > 0.0 else keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Adapter(nn.Module):
    """One sequential bottleneck adapter at one site of one layer."""

    def __init__(self, hidden: int, config: BnConfig, layer_idx: int, shared_phm: nn.ParameterDict | None = None):
        super().__init__()
        self.config = config
        size = bottleneck_size(config, hidden, layer_idx)
        if config.init_weights_seed:
            torch.manual_seed(config.init_weights_seed)
        down: list[nn.Module] = []
        if config.ln_before:
            self.adapter_norm_before = nn.LayerNorm(hidden)
            down.append(self.adapter_norm_before)
        down.append(PHMLayer(hidden, size, "down", config, shared_phm) if config.phm_layer else nn.Linear(hidden, size))
        self.non_linearity = activation(config.non_linearity)
        down.append(self.non_linearity)
        self.adapter_down = nn.Sequential(*down)
        self.adapter_up = (
            PHMLayer(size, hidden, "up", config, shared_phm) if config.phm_layer else nn.Linear(size, hidden)
        )
        if config.scaling == "learned":
            self.scaling = nn.Parameter(torch.ones(1))
        elif config.scaling == "channel":
            self.scaling = nn.Parameter(torch.ones(hidden))
        else:
            self.scaling = float(config.scaling)
        if config.ln_after:
            self.adapter_norm_after = nn.LayerNorm(hidden)
        if config.use_gating:
            self.gate = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(config.dropout)
        if config.stochastic_depth:
            self.drop_path = DropPath(config.stochastic_depth)
        self._init_weights(config.init_weights)

    def _init_weights(self, scheme: str) -> None:
        linears = [m for m in (*self.adapter_down, self.adapter_up) if isinstance(m, nn.Linear)]
        gate = [self.gate] if self.config.use_gating else []
        if scheme == "bert":
            for module in linears + gate:
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        elif scheme == "mam_adapter":
            for module in self.adapter_down:
                if isinstance(module, nn.Linear):
                    nn.init.kaiming_uniform_(module.weight, a=5**0.5)
                    nn.init.zeros_(module.bias)
            if isinstance(self.adapter_up, nn.Linear):
                nn.init.zeros_(self.adapter_up.weight)
                nn.init.zeros_(self.adapter_up.bias)
            for module in gate:
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        elif scheme == "houlsby":
            for module in linears:
                nn.init.trunc_normal_(module.weight, std=1e-2, a=-2e-2, b=2e-2)
                nn.init.zeros_(module.bias)

    def pre_forward(self, h, r, norm, query_before_ln: bool | None = None):
        """Returns (adapter input, fusion query, adapter residual)."""
        residual = h if self.config.residual_before_ln is True else None
        query = h if query_before_ln else None
        if self.config.original_ln_before:
            if norm is not None and self.config.residual_before_ln == "post_add":
                h = residual = h + r
                h = norm(h)
            elif norm is not None:
                h = norm.of_sum(h, r) if hasattr(norm, "of_sum") else norm(h + r)
            elif r is not None:
                h = h + r
        if self.config.residual_before_ln is not True and residual is None:
            residual = h
        if query_before_ln is False:
            query = h
        return h, query, residual

    def bottleneck(self, x):
        """The scaled up-projection (AdapterFusion combines these), after stochastic depth."""
        up = self.adapter_up(self.adapter_down(x.to(_dtype_of(self.adapter_up))))  # `adapter_to` may cast it
        if hasattr(self, "drop_path"):
            up = self.drop_path(up)
        up = up if isinstance(self.scaling, float) and self.scaling == 1.0 else up * self.scaling
        return up.to(x.dtype)

    def forward(self, x, residual, keep_up: bool = False):
        """Returns (output, scaled up-projection, gate or None); `keep_up` when the caller reads `up` later."""
        up = self.bottleneck(x)
        out, gate = self._gated(self.dropout(up), x)
        if self.config.adapter_residual_before_ln:
            out = _add(out, residual, reuse=not (keep_up and out is up))
        if self.config.ln_after:
            out = self.adapter_norm_after(out.to(self.adapter_norm_after.weight.dtype)).to(out.dtype)
        if not self.config.adapter_residual_before_ln:
            out = _add(out, residual, reuse=not (keep_up and out is up))
        return out, up, gate

    def _gated(self, out, x):
        if not self.config.use_gating:
            return out, None
        gate = torch.sigmoid(self.gate(x.to(self.gate.weight.dtype))).mean(dim=1).unsqueeze(-1).to(out.dtype)
        return out * gate, gate

    def post_forward(self, h, sublayer_output, r, norm, layer_adds_r: bool = False):
        """The layer's residual (and post-norm) after the adapter. `layer_adds_r` where the layer adds `r` (and
        applies its norms) to what the site returns: a hooked site (AdapterHub's plugin interface) or a pre-LN one.
        There the result is `h`, less `r` without `original_ln_after` (hooked sites refuse that config): never
        `r` added here and taken away again (two passes over the hidden states, and their rounding)."""
        if layer_adds_r:
            return h if self.config.original_ln_after else h - r
        if not self.config.original_ln_after:
            return h
        total = _add(h, r, reuse=True)
        return norm(total) if norm is not None else total


def _dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype an adapter computes in: its weights' (the model's, unless `adapter_to` or the config chose one)."""
    param = next(module.parameters(), None)
    return param.dtype if param is not None else torch.get_default_dtype()


def _add(a: torch.Tensor, b: torch.Tensor, reuse: bool) -> torch.Tensor:
    """a + b, written into `a` (a fresh tensor of ours) when no gradient is recorded: saves an allocation."""
    if reuse and not torch.is_grad_enabled() and a.shape == torch.broadcast_shapes(a.shape, b.shape):
        return a.add_(b)
    return a + b


class ParallelAdapter(Adapter):
    """A bottleneck adapter that reads the sublayer's input (the residual stream) instead of its output."""

    def pre_forward(self, h, r, norm, query_before_ln: bool | None = None):
        return r, (r if query_before_ln is not None else None), r

    def forward(self, x, residual, keep_up: bool = False):
        up = self.bottleneck(x)
        out, gate = self._gated(self.dropout(up), x)
        if self.config.ln_after:
            out = self.adapter_norm_after(out)
        return out, up, gate

    def post_forward(self, h, sublayer_output, r, norm, layer_adds_r: bool = False):
        h = h + sublayer_output
        return super().post_forward(h, sublayer_output, r, norm, layer_adds_r)


def make_adapter(hidden: int, config: BnConfig, layer_idx: int, shared_phm=None) -> Adapter:
    cls = ParallelAdapter if config.is_parallel else Adapter
    return cls(hidden, config, layer_idx, shared_phm)
