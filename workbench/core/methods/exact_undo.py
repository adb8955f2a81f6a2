"""Undo an in-place weight merge bit for bit without keeping a copy of the weight.

A merge overwrites `W` with `W' = f(W)` (LoRA: `W + s·BA`, (IA)^3: `W * l`). Inverting `f` in floating point
(`W' - s·BA`, `W' / l`) gives `W` only up to a few rounding steps. `ExactUndo` keeps just those steps: for each
element the signed distance, in units in the last place, between `W` and the inverted value, as one `int8`
(a quarter of a float32 weight, half of a bf16/fp16 one), on the weight's own device. Elements whose distance
does not fit (the inverse is far off: a zero (IA)^3 scale, a sign change) are kept exactly as (index, value)
pairs; when those would cost more than the weight itself, a plain copy on the weight's device is kept instead.

The steps are integer differences of the bit patterns, so restoring adds them back to the bit pattern of the
inverted value and gets `W`'s bits exactly, provided the inverse is computed the same way at reset as at merge
(the caller recomputes it from a snapshot of the adapter's weights; `capture` checks it is reproducible).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_STEP = 127


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_VIEW[t.element_size()])


class ExactUndo:
    """What restores one weight after a merge: `restore(inverse(W'))` returns the original `W` bit for bit."""

    def __init__(self, dtype, shape, steps=None, index=None, values=None, copy=None):
        self.dtype, self.shape = dtype, shape
        self.steps, self.index, self.values, self.copy = steps, index, values, copy

    @classmethod
    def capture(cls, original: torch.Tensor, inverse: Callable[[], torch.Tensor] | None) -> ExactUndo:
        """`original`: the weight before the merge; `inverse()`: the merged weight mapped back (called twice, to
        check it is reproducible). Without an inverse, or for a dtype without an integer view, keep a copy on the
        weight's device."""
        original = original.detach()
        if inverse is None or not original.is_floating_point() or original.element_size() not in _INT_VIEW:
            return cls(original.dtype, original.shape, copy=original.clone())
        approx = inverse()
        again = inverse()
        if approx.dtype != original.dtype or not torch.equal(_bits(approx), _bits(again)):
            return cls(original.dtype, original.shape, copy=original.clone())  # not reproducible: keep a copy
        diff = _bits(original).long() - _bits(approx).long()
        del approx, again
        far = diff.abs() > _MAX_STEP
        bad = int(far.sum())
        numel, size = original.numel(), original.element_size()
        if bad * (8 + size) + numel >= numel * size:  # steps plus exceptions would outgrow a copy
            return cls(original.dtype, original.shape, copy=original.clone())
        index = far.view(-1).nonzero().squeeze(1)
        values = original.reshape(-1)[index].clone()
        steps = diff.masked_fill_(far, 0).to(torch.int8)
        return cls(original.dtype, original.shape, steps=steps, index=index, values=values)

    def restore(self, inverse: Callable[[], torch.Tensor], device) -> torch.Tensor:
        """The original weight, on `device`; `inverse()` as at `capture`."""
        if self.copy is not None:
            return self.copy.to(device)
        approx = inverse()
        int_dtype = _INT_VIEW[approx.element_size()]
        bits = (_bits(approx).long() + self.steps.to(device).long()).to(int_dtype)
        restored = bits.view(self.dtype).view(self.shape)
        restored.view(-1)[self.index.to(device)] = self.values.to(device)
        return restored

    def nbytes(self) -> int:
        """Memory kept for the undo (for tests and summaries)."""
        kept = [t for t in (self.steps, self.index, self.values, self.copy) if t is not None]
        return sum(t.numel() * t.element_size() for t in kept)
