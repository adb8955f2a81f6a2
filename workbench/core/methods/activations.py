"""Activation functions by AdapterHub's names."""

from torch import nn
from torch.nn import functional as F
from transformers.activations import get_activation


class _LeakyReLU(nn.Module):
    def forward(self, x):
        return F.leaky_relu(x)


def activation(name: str | None) -> nn.Module:
    """The activation module for a name such as "relu", "gelu", "swish", "tanh" (None: identity)."""
    if name is None:
        return nn.Identity()
    name = name.lower()
    if name == "leakyrelu":
        return _LeakyReLU()
    return get_activation(name)
