"""Undo an in-place weight merge bit for bit without keeping a copy of the weight.

A merge overwrites `W` with `W' = f(W)` (LoRA: `W + s·BA`, (IA)^3: `W * l`). Inverting `f` in floating point
(`W' - s·BA`, `W' / l`) gives `W` only up to a few rounding steps. `ExactUndo` keeps just those steps: for each
element the signed distance, in units in the last place, between `W` and the inverted value, as one `int8`
(a quarter of a float32 weight, half of a bf16/fp16 one), on the weight's own device. Elements whose distance
does not fit (the inverse is far off: a zero (IA)^3 scale, a sign change) are kept exactly as (index, value)
pairs; when those would cost more than the weight itself, a plain copy on the weight's device is kept instead.

The steps are integer differences of the bit patterns, so restoring adds them back to the bit pattern of the
inverted value and gets `W`'s bits exactly, provided the inverse is computed the same way at reset as at merge:
from the same `W'`, in the dtype and on the device of the merge (the caller recomputes it from a snapshot of the
adapter's weights; `capture` checks it is reproducible). The record therefore keeps that dtype and device and a
fingerprint of `W'`. A model moved to another device, or cast to a dtype that holds every value of the merge dtype
(bf16/fp16 -> fp32), still holds `W'` exactly: it is cast back, undone where it was merged, and the result is the
original in the weight's new dtype exactly (what casting the unmerged model gives). Any other change of `W'`
(a narrowing cast such as fp32 -> bf16 or fp16 <-> bf16, or the weight written while merged) lost bits no record
without a copy can give back: `restore` then falls back to inverting the current weight in float32 (or wider),
which is the original only up to the new dtype's rounding, and says so (`exact` is False).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_STEP = 127


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(_INT_VIEW[t.element_size()])


def _fingerprint(t: torch.Tensor, chunk: int = 1 << 22) -> int:
    """A position-weighted sum of `t`'s bit patterns (int64, wrapping: exact in any summation order); any rounding
    or rewrite of the weight changes it, barring an astronomically unlikely cancellation. In chunks, so that it
    needs a few MB beside the weight, not three int64 copies of it."""
    bits, total = _bits(t).view(-1), 0
    for start in range(0, bits.numel(), chunk):
        part = bits[start : start + chunk].long()
        position = torch.arange(start, start + part.numel(), device=part.device) % 65521 + 1
        total += int((part * position).sum())
    return total


class ExactUndo:
    """What restores one weight after a merge: `restore(inverse(W'))` returns the original `W` bit for bit."""

    def __init__(self, original, merged=None, steps=None, index=None, values=None, copy=None):
        self.dtype, self.shape, self.device = original.dtype, original.shape, original.device
        self.fingerprint = None if merged is None else _fingerprint(merged)  # of `W'`, as the merge wrote it
        self.steps, self.index, self.values, self.copy = steps, index, values, copy

    @classmethod
    def capture(
        cls, original: torch.Tensor, merged: torch.Tensor, inverse: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> ExactUndo:
        """`original`: the weight before the merge; `merged`: what the merge writes; `inverse(merged)`: the merged
        weight mapped back (called twice, to check it is reproducible). Without an inverse, or for a dtype without
        an integer view, keep a copy on the weight's device."""
        original = original.detach()
        if inverse is None or not original.is_floating_point() or original.element_size() not in _INT_VIEW:
            return cls(original, copy=original.clone())
        approx = inverse(merged)
        again = inverse(merged)
        if approx.dtype != original.dtype or not torch.equal(_bits(approx), _bits(again)):
            return cls(original, copy=original.clone())  # not reproducible: keep a copy
        diff = _bits(original).long() - _bits(approx).long()
        del approx, again
        far = diff.abs() > _MAX_STEP
        bad = int(far.sum())
        numel, size = original.numel(), original.element_size()
        if bad * (8 + size) + numel >= numel * size:  # steps plus exceptions would outgrow a copy
            return cls(original, copy=original.clone())
        index = far.view(-1).nonzero().squeeze(1)
        values = original.reshape(-1)[index].clone()
        steps = diff.masked_fill_(far, 0).to(torch.int8)
        return cls(original, merged, steps=steps, index=index, values=values)

    def restore(
        self, current: torch.Tensor, inverse: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, bool]:
        """The original weight in `current`'s dtype and on its device, and whether it is exact (see the module
        docstring); `current`: the merged weight as it is now; `inverse` as at `capture` (it must compute on
        this record's device, in the dtype of the tensor it is given)."""
        if self.copy is not None:
            return self.copy.to(current.device, current.dtype), True
        merged = current.detach().to(self.device, self.dtype)
        if _fingerprint(merged) == self.fingerprint:
            approx = inverse(merged)
            restored = (_bits(approx).long() + self.steps.long()).to(_INT_VIEW[approx.element_size()])
            restored = restored.view(self.dtype).view(self.shape)
            exact = True
        else:  # `W'` is gone: invert what is there, in a dtype wide enough for both
            wide = torch.promote_types(torch.promote_types(self.dtype, current.dtype), torch.float32)
            restored = inverse(current.detach().to(self.device, wide)).contiguous().view(self.shape)
            exact = False
        restored.view(-1)[self.index] = self.values.to(restored.dtype)  # kept exactly (far from the inverse)
        return restored.to(current.device, current.dtype), exact

    def nbytes(self) -> int:
        """Memory kept for the undo (for tests and summaries)."""
        kept = [t for t in (self.steps, self.index, self.values, self.copy) if t is not None]
        return sum(t.numel() * t.element_size() for t in kept)
