"""Checks that an adapter or head file's weights are what the model expects (keys and shapes), before any is copied
in; the errors name the file and the keys."""

from __future__ import annotations

import re
import warnings

import torch

from .errors import AdapterLoadError

_POOL_COPY = re.compile(r"\.prefix_tuning\.pool\.(prefix_tunings\..+)$")  # a copy under an attention module
_POOL_TENSOR = re.compile(r"(?:^|\.)prefix_tuning\.(?:pool\.)?(prefix_tunings\..+)$")  # the pool or a copy


def fill_pool_copies(state: dict[str, torch.Tensor], shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Prefix tuning's pool is one module that files repeat under every attention module (AdapterHub's layout);
    files written by workbench before it repeated them everywhere (with `leave_out`) lack some copies: they are the
    pool's own tensors, so they are taken from a copy the file has."""
    present: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _POOL_TENSOR.search(key)
        if match:
            present.setdefault(match.group(1), tensor)
    filled = dict(state)
    for key in shapes:
        match = _POOL_COPY.search(key)
        if key not in state and match and match.group(1) in present:
            filled[key] = present[match.group(1)]
    return filled


def check_weights(state: dict[str, torch.Tensor], shapes: dict[str, tuple], source, warn: bool = True) -> None:
    """The file's weights are exactly the expected keys with the expected shapes."""
    missing = sorted(set(shapes) - set(state))
    # The adapters library does not save a bare base model's shared PHM parameters (no leading dot).
    unsaved = [k for k in missing if k.startswith("shared_parameters.")]
    if unsaved and warn:
        warnings.warn(f"{source} has no {_few(unsaved)}; they keep their initial values", stacklevel=4)
    missing = [k for k in missing if k not in unsaved]
    unexpected = sorted(set(state) - set(shapes))
    if missing:
        raise AdapterLoadError(f"{source} lacks weight(s) {_few(missing)}")
    if unexpected:
        raise AdapterLoadError(f"{source} has unexpected weight(s) {_few(unexpected)}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != shapes[key]:
            raise AdapterLoadError(
                f"{source}: weight {key!r} has shape {tuple(tensor.shape)}, the model expects {shapes[key]}"
            )


def copy_into(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> None:
    """Copy checked `state` into the model's tensors `own` (same keys), in their dtype."""
    with torch.no_grad():
        for key, tensor in state.items():
            own[key].copy_(tensor.to(own[key].dtype))


def _few(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
