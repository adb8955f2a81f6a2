"""Cheaper dropout for training on CPU: the same Bernoulli(p) dropout, with faster random numbers.

`torch.nn.functional.dropout` on CPU draws one float per element (`bernoulli_`), which costs about as much as a
frozen MiniLM's matrix products in adapter training. `seeded_dropout` instead fills a quarter as many int64s
with raw 64-bit random numbers (from a `torch.Generator` seeded by one draw of torch's default generator, so
`torch.manual_seed` still fixes every mask), reads them as 16-bit uniforms and drops an element when its uniform
falls below round(p · 65536); kept elements are scaled by 1 / (1 - p'), p' = that threshold / 65536 (so
the expectation is exact; |p' - p| ≤ 2⁻¹⁷). The mask is a float tensor multiplied in, so autograd keeps it for
backward, as `nn.functional.dropout` does.

`fast_dropout(model)` switches a model's `nn.Dropout` modules and its sdpa attention (whose CPU kernel falls
back to an unfused path with `bernoulli_` when dropout > 0) to this dropout, for the duration of a `with`
block; with `attention=False` attention-probability dropout is switched off instead (a change of what is
trained: opt-in). Outside training mode, and on other devices, nothing changes: eval outputs are the same bits.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..core.methods.prefix_tuning import prefix_implementation, wrapped_implementation
from ..core.transformers_api import AttentionInterface, AttentionMaskInterface, sdpa_attention_forward, sdpa_mask

LEVELS = 1 << 16  # uniforms per 16-bit lane
IMPL_NAME = "workbench_fast_sdpa"
UNSUPPORTED_KWARGS = ("position_bias", "softcap", "head_mask", "s_aux", "sinks")  # left to sdpa when given


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, seed: int, device=None) -> torch.Tensor:
    """Bool mask of `shape`: True (keep) with probability 1 - p', independently per element, fixed by `seed`."""
    return _lanes(shape, seed, device) >= _lowest_kept(p)


def scaled_mask(shape, p: float, seed: int, dtype=torch.float32, device=None, scale: bool = True) -> torch.Tensor:
    """`keep_mask` as 0 / 1 / (1 - p') values of `dtype` (0 / 1 with `scale=False`), made in one pass."""
    mask = torch.empty(shape, dtype=dtype, device=device)
    torch.ge(_lanes(shape, seed, device), _lowest_kept(p), out=mask)
    return mask.mul_(keep_scale(p)) if scale else mask


def _lanes(shape, seed: int, device) -> torch.Tensor:
    """int16 tensor of `shape`, independent and uniform over [-32768, 32767], from a generator seeded `seed`."""
    numel = math.prod(shape)
    generator = torch.Generator(device=device or "cpu").manual_seed(seed)
    words = torch.empty((numel + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)  # the full 64-bit range: 4 independent 16-bit uniforms each
    return words.view(torch.int16)[:numel].view(shape)


def _lowest_kept(p: float) -> int:
    return -(LEVELS // 2) + drop_threshold(p)


def drop_threshold(p: float) -> int:
    """How many of the 65,536 lane values drop an element: p' = this / 65536."""
    return round(p * LEVELS)


def keep_scale(p: float) -> float:
    """1 / (1 - p'): the factor that keeps each element's expectation."""
    return LEVELS / (LEVELS - drop_threshold(p))


def draw_seed() -> int:
    """A mask seed: one draw of torch's default generator, so `torch.manual_seed` fixes every mask."""
    return int(torch.randint(0, 2**62, (1,)))


def _check(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p}: must be in [0, 1)")


def seeded_dropout(x: torch.Tensor, p: float, training: bool = True, scale: bool = True) -> torch.Tensor:
    """Dropout of `x` with probability `p` (as `nn.functional.dropout`), its mask drawn by `keep_mask`.

    `scale=False` leaves out the 1 / (1 - p') factor, for a caller that applies it to a smaller tensor.
    """
    _check(p)
    if not training or p == 0.0:
        return x
    return x * scaled_mask(x.shape, p, draw_seed(), x.dtype, x.device, scale)


class FastDropout(nn.Dropout):
    """An `nn.Dropout` whose training-mode mask comes from `seeded_dropout` (CPU tensors; others: as before)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return seeded_dropout(x, self.p, self.training)


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """sdpa, except in training on CPU with dropout: explicit softmax attention with the chosen dropout."""
    mode = getattr(module, "workbench_attention_dropout", None)  # "fast", "off" or None (set by fast_dropout)
    if mode == "off":
        dropout = 0.0
    plain = (
        mode != "fast"
        or dropout == 0.0
        or query.device.type != "cpu"
        or key.shape[1] != query.shape[1]  # grouped key/value heads
        or kwargs.get("is_causal")
        or getattr(module, "is_causal", False)
        or any(kwargs.get(name) is not None for name in UNSUPPORTED_KWARGS)
        or kwargs.get("output_attentions", False)
    )
    if plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)).mul_(scale)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill_(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores.add_(attention_mask[..., : key.shape[-2]])
    probs = torch.softmax(scores, dim=-1)
    # the 1 / (1 - p') factor goes on the 4x smaller values: (probs * keep) @ (value * s) = dropout(probs) @ value
    output = torch.matmul(seeded_dropout(probs, dropout, scale=False), value * keep_scale(dropout))
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(IMPL_NAME, _attention)
AttentionMaskInterface.register(IMPL_NAME, sdpa_mask)


def _fast_implementation(impl: str | None) -> str | None:
    """The implementation that applies fast dropout in place of `impl` (sdpa, or prefix tuning over sdpa)."""
    if impl == "sdpa":
        return IMPL_NAME
    if wrapped_implementation(impl) == "sdpa":
        return prefix_implementation(IMPL_NAME)
    return None


@contextlib.contextmanager
def fast_dropout(model: nn.Module, fast: bool = True, attention: bool = True):
    """Within the block, `model` trains with `seeded_dropout` (`fast`); `attention=False` drops no attention
    probabilities (a change of what is trained).

    `fast` swaps the class of every plain `nn.Dropout` to `FastDropout`; the modules are marked with the
    attention-dropout mode, and an sdpa model (also one with prefix tuning over sdpa) is switched to an attention
    function that applies it. The explicit fast path covers encoder-style
    attention (no causal flag, as many key/value heads as query heads); other calls go to sdpa unchanged.
    Everything is restored on exit. Eval mode is unaffected either way.
    """
    swapped = [m for m in model.modules() if type(m) is nn.Dropout] if fast else []
    for module in swapped:
        module.__class__ = FastDropout
    mode = "off" if not attention else "fast" if fast else None
    marked = list(model.modules()) if mode else []  # the attention function reads the mark off its module
    for module in marked:
        module.workbench_attention_dropout = mode
    config = getattr(model, "config", None)
    original = getattr(config, "_attn_implementation", None)
    fast_impl = _fast_implementation(original) if marked else None
    if fast_impl is not None:
        model.set_attn_implementation(fast_impl)
    try:
        yield model
    finally:
        for module in swapped:
            module.__class__ = nn.Dropout
        for module in marked:
            del module.workbench_attention_dropout
        if fast_impl is not None and config._attn_implementation == fast_impl:
            model.set_attn_implementation(original)
