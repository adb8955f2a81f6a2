"""DoRA (Liu et al., 2024, https://arxiv.org/abs/2402.09353): a LoRA-style adapter that also trains a magnitude `m`
per output feature, so the adapted weight is `m * (W + dW) / ||W + dW||` (row norms).

Two conventions exist and both are kept, because each is what its files were trained with:
- AdapterHub's `adapters` 1.3 ("adapters"): the norm uses the *unscaled* delta `B A`, and the magnitude scales the
  whole layer output including the bias: `y' = m / ||W + B A|| * (W x + b + s B A x)`.
- PEFT ("peft"): the norm uses the scaled delta and is detached from the gradient, the bias stays outside:
  `y' = m / ||W + s B A|| * (W x + s B A x) + b`.
The magnitude lives in a module `m` (`nn.Linear(1, out)`, key `m.weight` of shape (out, 1)) as in AdapterHub;
PEFT files store it as `lora_magnitude_vector` of shape (out,).
"""

from __future__ import annotations

import torch
from torch import nn


def add_magnitude(lora: nn.Module, weight: torch.Tensor, style: str, dtype=None) -> None:
    """Give `lora` a magnitude initialised to the row norms of `weight` (out, in): the adapter starts as a no-op."""
    lora.dora_style = style
    lora.m = nn.Linear(1, weight.shape[0], bias=False, dtype=dtype)
    with torch.no_grad():
        lora.m.weight.copy_(torch.linalg.norm(weight.detach().float(), dim=1).unsqueeze(1))


def is_dora(lora: nn.Module) -> bool:
    return getattr(lora, "dora_style", None) is not None


def row_scale(lora: nn.Module, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """`m / ||W + dW||` per output feature; `weight` (out, in) and the unscaled `delta` in the same layout."""
    if lora.dora_style == "peft":
        norm = torch.linalg.norm(weight + lora.scaling * delta.to(weight.dtype), dim=1).detach()
    else:
        norm = torch.linalg.norm(weight + delta.to(weight.dtype), dim=1)
    return lora.m.weight.view(-1) / norm


def finish(lora: nn.Module, y: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, bias) -> torch.Tensor:
    """The adapted output from the layer's own output `y` and the (scaled, composed) LoRA output `h`."""
    h = h.to(y.dtype)
    scale = scale.to(y.dtype)
    if lora.dora_style == "peft" and bias is not None:
        return scale * (y - bias + h) + bias
    return scale * (y + h)
