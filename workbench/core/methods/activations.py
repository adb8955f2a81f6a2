"""Activation functions by AdapterHub's names (transformers' ACT2FN names plus "leakyrelu", any case)."""

from torch import nn
from torch.nn import functional as F

from ..errors import AdapterConfigError
from ..transformers_api import ACT2FN, get_activation

KNOWN_ACTIVATIONS = tuple(sorted({*ACT2FN, "leakyrelu"}))


class _LeakyReLU(nn.Module):
    def forward(self, x):
        return F.leaky_relu(x)


def check_activation(name, key: str = "non_linearity", where: str | None = None) -> str:
    """Return `name` if it names a known activation; else AdapterConfigError naming it and listing known ones."""
    if not isinstance(name, str) or name.lower() not in KNOWN_ACTIVATIONS:
        place = f"{where}: " if where else ""
        raise AdapterConfigError(
            f"{place}{key}={name!r} is not a known activation (known: {', '.join(KNOWN_ACTIVATIONS)})"
        )
    return name


def activation(name: str | None) -> nn.Module:
    """The activation module for a name such as "relu", "gelu", "swish", "tanh" (None: identity)."""
    if name is None:
        return nn.Identity()
    name = check_activation(name, "activation").lower()
    if name == "leakyrelu":
        return _LeakyReLU()
    return get_activation(name)
