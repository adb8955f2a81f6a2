"""Prefix tuning on DeBERTa's disentangled attention, which computes its scores itself (no attention function).

Hooks carry the prefixes in, as AdapterHub places them: prefix keys and values are prepended to the token keys
and values (after DeBERTa's own q/v biases), every query attends to all prefix slots, and the relative-position
term (c2p/p2c) is computed from the token keys only, with zeros for the prefix columns. The prefixes, gates and
compositions are `PrefixTuningShim.extend`'s, called once per attention call with empty token keys; the hooks
only put its result where DeBERTa's attention reads keys, values and the mask:

- DeBERTa-v2/v3 (`deberta_v2_prefix`): `key_proj`/`value_proj` outputs get the prefix rows in front; the mask
  `(N, 1, T, T)` gets the prefix columns.
- DeBERTa (`deberta_prefix`): the fused `in_proj` gets P extra rows in its per-head q|k|v layout, holding the
  prefix keys and the prefix values less `v_bias` (which the attention adds to every value row); the P extra
  query rows this makes attend everywhere and are dropped from the attention's output.

Each function is a `LayerStack.prefix_glue`: called with the shim and the attention module when the shim is made,
it returns an object whose `remove()` takes the hooks off again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UnsupportedModelError


@dataclass
class _Call:
    """The prefixes of the running attention call: its `hidden_states` (to tell the projection of the tokens from
    other calls of the same projection, e.g. v2's `share_att_key` on the position embeddings), keys and values
    `(N, H, P, D)`, and which hooks have used them."""

    hidden: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    used: set = field(default_factory=set)

    @property
    def added(self) -> int:
        return self.key.shape[2]


class _DebertaPrefix:
    fused = False
    bias_method = "disentangled_attention_bias"
    projections: tuple[str, ...] = ("key_proj", "value_proj")

    def __init__(self, shim, attention: nn.Module):
        missing = [n for n in (self.bias_method, *self.projections) if not hasattr(attention, n)]
        if missing:
            raise UnsupportedModelError(
                f"prefix tuning on {type(attention).__name__} needs its {', '.join(missing)}, which it no longer has"
            )
        if self.bias_method in vars(attention):
            raise UnsupportedModelError(
                f"{type(attention).__name__}.{self.bias_method} is already replaced on this module; prefix tuning "
                "cannot wrap it"
            )
        heads, dim = attention.num_attention_heads, attention.attention_head_size
        if heads * dim != shim.method.engine.base.config.hidden_size:  # the prefixes are sized hidden / heads
            raise UnsupportedModelError(
                f"prefix tuning on DeBERTa needs attention_head_size * num_attention_heads == hidden_size "
                f"(here {dim} * {heads})"
            )
        self.shim, self.attention = shim, attention
        self.call: _Call | None = None
        self.handles = [
            attention.register_forward_pre_hook(self._begin, with_kwargs=True),
            attention.register_forward_hook(self._end, always_call=True),
        ]
        # appended after LoRA's hooks (which go first): the prefix rows are added to the adapted projection
        for index, name in enumerate(self.projections):
            hook = self._projection_hook("kv"[index] if not self.fused else "qkv")
            self.handles.append(getattr(attention, name).register_forward_hook(hook))
        setattr(attention, self.bias_method, self._bias(getattr(attention, self.bias_method)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        delattr(self.attention, self.bias_method)  # the class's method again
        self.call = None

    # --- hooks ----------------------------------------------------------------------------------------------

    def _begin(self, module, args, kwargs):
        self.call = None
        hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        in_args = len(args) > 1
        mask = args[1] if in_args else kwargs.get("attention_mask")
        rows = hidden.shape[0]
        empty = hidden.new_zeros(rows, module.num_attention_heads, 0, module.attention_head_size)
        mask = mask.bool() if mask is not None else None
        key, value, mask = self.shim.extend(module, empty, empty, empty, mask, is_causal=False)
        if not key.shape[2]:
            return None
        if self.fused and kwargs.get("query_states") is not None:
            raise UnsupportedModelError(
                "prefix tuning on DeBERTa cannot run an attention call with separate query_states (z_steps)"
            )
        self.call = _Call(hidden, key, value)
        if mask is not None:
            mask = self._widen(mask, key.shape[2])
            if in_args:
                args = (args[0], mask, *args[2:])
            else:
                kwargs = {**kwargs, "attention_mask": mask}
        return args, kwargs

    def _widen(self, mask: torch.Tensor, added: int) -> torch.Tensor:
        return mask

    def _projection_hook(self, part: str):
        def hook(module, args, output):
            call = self.call
            if call is None or part in call.used or not args or args[0] is not call.hidden:
                return None
            call.used.add(part)
            return torch.cat([self._rows(part, call, output), output], dim=1)

        return hook

    def _rows(self, part: str, call: _Call, output: torch.Tensor) -> torch.Tensor:
        """The P rows in front of a projection's output `(N, T, H*D)`: the prefix keys or values, heads concatenated."""
        states = call.key if part == "k" else call.value
        return _merge_heads(states).to(output.dtype)

    def _bias(self, original):
        def bias(query_layer, key_layer, relative_pos, rel_embeddings, scale_factor):
            call = self.call
            if call is None:
                return original(query_layer, key_layer, relative_pos, rel_embeddings, scale_factor)
            added = call.added
            score = original(*self._tokens(query_layer, key_layer, added), relative_pos, rel_embeddings, scale_factor)
            if not isinstance(score, torch.Tensor):  # 0 without c2p/p2c
                return score
            return nn.functional.pad(score, self._bias_padding(added))

        return bias

    def _tokens(self, query_layer, key_layer, added):
        return query_layer, key_layer[:, added:]  # v2's keys are (N*H, P+T, D)

    def _bias_padding(self, added: int) -> tuple[int, ...]:
        return (added, 0)

    def _end(self, module, args, output):
        call, self.call = self.call, None
        if call is None or output is None:
            return None
        wanted = {"qkv"} if self.fused else {"k", "v"}
        if call.used != wanted:
            raise RuntimeError(
                f"prefix tuning on {type(module).__name__}: the projection hooks saw {sorted(call.used)}, "
                f"expected {sorted(wanted)}; its forward no longer projects the hidden states as expected"
            )
        return self._output(output, call.added)

    def _output(self, output, added: int):
        return output


class _DebertaV1Prefix(_DebertaPrefix):
    fused = True
    bias_method = "disentangled_att_bias"
    projections = ("in_proj",)

    def _widen(self, mask: torch.Tensor, added: int) -> torch.Tensor:
        """The P query rows of the prefix slots attend everywhere (their outputs are dropped)."""
        rows = mask.new_ones(*mask.shape[:-2], added, mask.shape[-1])
        return torch.cat([rows, mask], dim=-2)

    def _rows(self, part: str, call: _Call, output: torch.Tensor) -> torch.Tensor:
        """`in_proj`'s layout is per head [q | k | v]; the attention adds `v_bias` to the value rows later."""
        rows, heads, added, dim = call.key.shape
        v_bias = self.attention.v_bias.view(1, heads, 1, dim)
        query = call.key.new_zeros(rows, heads, added, dim)
        fused = torch.cat([query, call.key, call.value - v_bias.to(call.value.dtype)], dim=-1)
        return _merge_heads(fused).to(output.dtype)

    def _tokens(self, query_layer, key_layer, added):
        return query_layer[:, :, added:], key_layer[:, :, added:]  # (N, H, P+T, D)

    def _bias_padding(self, added: int) -> tuple[int, ...]:
        return (added, 0, added, 0)

    def _output(self, output, added: int):
        context, probs = output[0], output[1]
        probs = probs[:, :, added:] if probs is not None else None
        return (context[:, added:], probs, *output[2:])


def _merge_heads(states: torch.Tensor) -> torch.Tensor:
    """`(N, H, P, D)` -> `(N, P, H*D)`, the layout of a projection's output."""
    rows, heads, length, dim = states.shape
    return states.permute(0, 2, 1, 3).reshape(rows, length, heads * dim)


def deberta_prefix(shim, attention: nn.Module) -> _DebertaPrefix:
    return _DebertaV1Prefix(shim, attention)


def deberta_v2_prefix(shim, attention: nn.Module) -> _DebertaPrefix:
    return _DebertaPrefix(shim, attention)
