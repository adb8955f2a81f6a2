"""ReFT: representation fine-tuning (Wu et al., 2024, https://arxiv.org/abs/2404.03592) on unmodified layers.

An intervention rewrites a layer's output hidden states `h` at a few token positions as
`dropout(h + (act(W h + b) - R h) @ R)` with a rank-`r` projection `R`: LoReFT keeps R's rows orthonormal (torch's
orthogonal parametrization, so the weight keys match AdapterHub's), NoReFT leaves R free, DiReFT drops `- R h`.
It acts on the first `prefix_positions` and the last `suffix_positions` tokens of each row, found from the 2-D
attention mask as AdapterHub does: a row starts at its first 1 and has as many tokens as 1s, so right and left
padding both work; without a mask or tokens (a vision model's `pixel_values`), every row spans the layer's whole
sequence, as in AdapterHub, and so it does in a stack whose sequence is not the call's tokens (CLIP's vision tower;
AdapterHub applies the text's mask there too, so its suffix positions land on arbitrary patches). The prefix and the
suffix have a unit each unless `tied_weights` (where they overlap, the suffix wins). A batch whose rows are too
short for the positions is refused (the library fails on an index).

Generation with a KV cache: the positions are those of the forward that fills the cache (the prompt); a forward
that extends it intervenes only on its tokens that are still among the first `prefix_positions` of the text (the
suffix belongs to the prompt), so cached decoding equals re-running the whole text for prefix positions. (adapters
1.3 re-applies the prefix intervention to every generated token, which re-running the text would not do.)

Encoder-decoder models: encoder layers read the encoder's rows (`input_ids`, `attention_mask`), decoder layers the
decoder's: `decoder_attention_mask`, else every decoder token is real; when the model derives its decoder inputs
from `input_ids` (shifted right), the encoder's rows. (adapters 1.3 uses the encoder's mask in the decoder too,
which agrees for right-padded rows and prefix positions; its suffix positions then fall on encoder positions.)

Composition: in a Stack every ReFT adapter intervenes in turn (adapters 1.3 runs only the setup's first adapter,
whatever the block); Parallel and BatchSplit give each row group its own adapters. Average, Fuse and Split are
refused, and so is prompt tuning in the same setup (the prompt shifts the positions).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..archs import get_module
from ..composition import BatchSplit, MultiTask, Parallel, Stack
from ..configs import ReftConfig
from ..context import current_call
from ..errors import AdapterConfigError, CompositionError, UnsupportedModelError
from ..runtime import ComposableLayer, compose
from ..transformers_api import CACHE_ARGUMENTS, cache_length
from .activations import activation
from .base import AdapterMethod

HALF = (torch.float16, torch.bfloat16)


class ReftUnit(nn.Module):
    """One intervention: `learned_source` (W, b) and `projection` (R)."""

    def __init__(self, hidden: int, config: ReftConfig, device=None, dtype=None):
        super().__init__()
        if config.init_weights_seed:  # every unit starts alike, as in AdapterHub
            torch.manual_seed(config.init_weights_seed)
        self.subtract_projection = config.subtract_projection
        self.learned_source = nn.Linear(hidden, config.r, device=device, dtype=dtype)
        projection = nn.Linear(hidden, config.r, bias=False, device=device, dtype=dtype)
        self.projection = _orthogonal(projection) if config.orthogonality else projection
        self.non_linearity = activation(config.non_linearity)
        self.dropout = nn.Dropout(config.dropout)

    def _apply(self, fn, recurse=True):
        """A cast of the model (`model.to(torch.bfloat16)`) moves an orthogonal projection but keeps it in float32:
        torch has no half-precision orthogonal map (the forward would fail), and its base rounded to bf16 and back
        would no longer be orthogonal."""
        probe = fn(torch.empty(0, device=self.learned_source.weight.device))  # what the cast makes of float32
        if not hasattr(self.projection, "parametrizations") or probe.dtype not in HALF or not recurse:
            return super()._apply(fn, recurse)
        for child in self.children():
            child._apply((lambda t: t.to(device=probe.device)) if child is self.projection else fn)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.learned_source.weight.dtype
        x = x.to(dtype)
        weight = self.projection.weight.to(dtype)  # an orthogonal one is computed once per call
        source = self.non_linearity(self.learned_source(x))
        if self.subtract_projection:
            source = source - nn.functional.linear(x, weight)
        return self.dropout(x + source @ weight)


def _orthogonal(projection: nn.Linear) -> nn.Module:
    """torch's orthogonal parametrization (keys `parametrizations.weight.original` and `.0.base`).

    On the meta device (the engine's dry run) torch leaves the `base` buffer unset; it gets its shape here.
    """
    if projection.weight.dtype in HALF:  # torch has no half-precision orthogonal map (AdapterHub: float32 too)
        projection = projection.float()
    module = nn.utils.parametrizations.orthogonal(projection)
    orth = module.parametrizations.weight[0]
    if getattr(orth, "base", None) is None:
        n = max(module.parametrizations.weight.original.shape)
        orth.base = torch.empty(n, n, device="meta", dtype=module.parametrizations.weight.original.dtype)
    return module


class ReftModule(nn.Module):
    """One adapter's interventions at one layer: `units.0` (prefix, or both if tied) and `units.1` (suffix)."""

    def __init__(self, hidden: int, config: ReftConfig, device=None, dtype=None):
        super().__init__()
        self.prefix_positions, self.suffix_positions = config.prefix_positions, config.suffix_positions
        self.tied_weights = config.tied_weights
        count = 1 if config.tied_weights else 2
        self.units = nn.ModuleList(ReftUnit(hidden, config, device, dtype) for _ in range(count))

    def forward(
        self, hidden: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor, name: str, past: int = 0
    ) -> torch.Tensor:
        if past:
            return self._extend(hidden, starts, past)
        length = hidden.shape[1]
        prefix = starts[:, None] + torch.arange(min(self.prefix_positions, length), device=hidden.device)
        suffix = ends[:, None] + torch.arange(-min(self.suffix_positions, length), 0, device=hidden.device)
        for kind, index in (("prefix", prefix), ("suffix", suffix)):
            # reads tensor values: a compiled graph breaks here (an index out of range on a GPU would otherwise
            # be a device-side assert, which leaves the CUDA context unusable)
            if index.numel() and (index.min() < 0 or index.max() >= length):
                row = int(((index < 0) | (index >= length)).any(dim=1).nonzero()[0])
                count = getattr(self, f"{kind}_positions")
                raise CompositionError(
                    f"ReFT adapter {name!r}: row {row} has {int(ends[row] - starts[row])} tokens starting at position "
                    f"{int(starts[row])} of {length}, too few for {kind}_positions={count}"
                )
        wide = lambda index: index[..., None].expand(-1, -1, hidden.shape[-1])  # noqa: E731
        states = [hidden.gather(1, wide(prefix)), hidden.gather(1, wide(suffix))]
        if self.tied_weights:
            both = self.units[0](torch.cat(states, dim=1))
            states = [both[:, : prefix.shape[1]], both[:, prefix.shape[1] :]]
        else:
            states = [unit(state) for unit, state in zip(self.units, states, strict=True)]
        for index, state in ((prefix, states[0]), (suffix, states[1])):  # the suffix wins where they overlap
            if index.numel():
                hidden = hidden.scatter(1, wide(index), state.to(hidden.dtype))
        return hidden

    def _extend(self, hidden: torch.Tensor, starts: torch.Tensor, past: int) -> torch.Tensor:
        """A forward that extends a cache of `past` tokens: its tokens among each row's first `prefix_positions`
        (a unit acts on each token alone, so adapting all and keeping those is the same as gathering them)."""
        positions = past + torch.arange(hidden.shape[1], device=hidden.device)
        chosen = (positions >= starts[:, None]) & (positions < starts[:, None] + self.prefix_positions)
        if not chosen.any():
            return hidden
        return torch.where(chosen[..., None], self.units[0](hidden).to(hidden.dtype), hidden)


class ReftContainer(nn.Module):
    """`<layer>.reft_layer`, holding `refts.<name>` (AdapterHub's key layout)."""

    def __init__(self):
        super().__init__()
        self.refts = nn.ModuleDict()


@dataclass
class ReftState:
    hidden: torch.Tensor  # (rows, tokens, hidden) layer output
    starts: torch.Tensor  # (rows,) position of each row's first token
    ends: torch.Tensor  # (rows,) one past each row's last token
    past: int = 0  # tokens already in the key/value cache before this forward's first one


@dataclass(frozen=True)
class Rows:
    """Where one layer stack's rows start and end (from a 2-D mask, or every token), and the cache length."""

    starts: torch.Tensor
    ends: torch.Tensor
    past: int = 0


class ReftLayer(ComposableLayer):
    """The interventions on one layer's output, run through the composition interpreter."""

    def __init__(self, engine, layer_idx: int):
        self.engine, self.layer_idx = engine, layer_idx
        ref = engine.layer_refs[layer_idx]
        self.whole_rows = ref.stack.whole_rows
        self.layer_id = ref.layer_id  # AdapterHub's id, for `skip_layers`
        layer = ref.module
        self.stack = next(i for i, stack in enumerate(engine.spec.stacks) if stack is ref.stack)
        self.container = ReftContainer()
        layer.reft_layer = self.container
        self.refts: nn.ModuleDict = self.container.refts
        target = get_module(layer, ref.stack.layer_output)
        self._handle = target.register_forward_hook(self._on_output)

    def remove(self) -> None:
        self._handle.remove()
        del self.engine.layers[self.layer_idx].reft_layer

    def _on_output(self, module, args, output):
        ctx = current_call(self.engine)
        if ctx is None or ctx.setup is None or self.layer_id in self.engine.skip_layers:
            return None
        stacks = ctx.inputs.get(ReftMethod.kind)
        if stacks is None or not any(name in self.refts for name in ctx.names):
            return None  # no ReFT adapter runs here
        rows = stacks[self.stack]
        hidden = output[0] if isinstance(output, tuple) else output
        if rows is None or self.whole_rows:  # e.g. pixel_values: the layer's sequence (patches) has no padding
            starts = torch.zeros(hidden.shape[0], dtype=torch.long, device=hidden.device)
            rows = Rows(starts, starts + hidden.shape[1], 0)
        out = compose(self, ctx.setup, ReftState(hidden, rows.starts, rows.ends, rows.past), ctx).hidden
        if out is hidden:
            return None
        return (out, *output[1:]) if isinstance(output, tuple) else out

    # --- the composition contract --------------------------------------------------------------------------

    def __contains__(self, name: str) -> bool:
        return name in self.refts

    def single(self, name: str, st: ReftState, ctx) -> ReftState:
        return replace(st, hidden=self.refts[name](st.hidden, st.starts, st.ends, name, st.past))

    def batch_rows(self, st: ReftState) -> int:
        return st.hidden.shape[0]

    def rows(self, st: ReftState, start: int, stop: int) -> ReftState:
        return ReftState(st.hidden[start:stop], st.starts[start:stop], st.ends[start:stop], st.past)

    def concat(self, parts: list[ReftState]) -> ReftState:
        joined = (torch.cat([getattr(p, f) for p in parts]) for f in ("hidden", "starts", "ends"))
        return ReftState(*joined, parts[0].past)

    def average(self, parts, weights):  # never reached: check_setup refuses Average (ReftMethod.supports)
        raise CompositionError("ReFT adapters do not take part in Average")


class ReftMethod(AdapterMethod):
    """Adds and removes ReFT interventions and finds each row's token positions when a forward starts."""

    kind = "reft"
    supports = frozenset({Stack, Parallel, BatchSplit, MultiTask})

    def __init__(self, engine):
        super().__init__(engine)
        self.layers: dict[int, ReftLayer] = {}
        self._params = list(inspect.signature(engine.base.forward).parameters)

    def add(self, name: str, config: ReftConfig) -> None:
        engine, hidden = self.engine, self.engine.hidden_size
        count = max(ref.layer_id for ref in engine.layer_refs) + 1  # AdapterHub's layer ids (per sub-model, if any)
        if config.layers != "all" and any(i >= count for i in config.layers):
            raise AdapterConfigError(f"layers={config.layers!r}: the model has {count} layers (0 to {count - 1})")
        wanted = lambda ref: config.layers == "all" or ref.layer_id in config.layers  # noqa: E731
        indices = [ref.index for ref in engine.layer_refs if wanted(ref)]
        if config.r > hidden:
            raise AdapterConfigError(f"r={config.r} is larger than the hidden size {hidden}")
        device, dtype = self._placement(config)
        try:
            for idx in indices:
                if idx not in self.layers:
                    self.layers[idx] = ReftLayer(engine, idx)
                layer = self.layers[idx]
                layer.refts[name] = ReftModule(hidden, config, device, dtype)
                engine.register(name, f"{engine.layer_refs[idx].path}.reft_layer.refts.{name}", layer.refts[name])
        except Exception:
            self.delete(name)
            raise

    def _placement(self, config: ReftConfig) -> tuple:
        """Device and dtype of new units: the model's (the config's dtype if it names one).

        The engine moves only parameters to the model afterwards, so the orthogonal `base` buffer is built in place.
        A half-precision model needs a float32 LoReFT (torch has no half-precision orthogonal map).
        """
        reference = self.engine.reference_weight()
        meta = torch.get_default_device().type == "meta"  # the engine's dry run: allocate nothing
        device = None if meta or reference is None else reference.device
        if config.dtype:
            return device, getattr(torch, config.dtype)
        dtype = reference.dtype if reference is not None and reference.is_floating_point() else None
        if config.orthogonality and dtype in HALF:
            raise AdapterConfigError(
                f"orthogonality=True needs a float32 projection, and this model is {dtype}: add the adapter with "
                "dtype='float32' (e.g. \"loreft[dtype='float32']\")"
            )
        return device, dtype

    def delete(self, name: str) -> None:
        for idx, layer in list(self.layers.items()):
            if name in layer.refts:
                del layer.refts[name]
            if not len(layer.refts):
                layer.remove()
                del self.layers[idx]
        self.engine.unregister(name)

    def check_setup(self, setup) -> None:
        kinds = {kind for name in setup.names() for kind in self.engine.method_kinds(name)}
        if "prompt_tuning" in kinds:
            raise CompositionError(
                f"{setup}: ReFT and prompt tuning cannot run together (the prompt shifts the positions ReFT adapts)"
            )

    def begin(self, ctx, args, kwargs):
        """Record, per layer stack, each row's first token and end (ctx.inputs["reft"])."""
        if ctx.setup is None or not any(name in layer.refts for layer in self.layers.values() for name in ctx.names):
            return None
        ctx.inputs[self.kind] = self._positions(args, kwargs)
        return None

    def _argument(self, name: str, args: tuple, kwargs: dict):
        if name in kwargs:
            return kwargs[name]
        position = self._params.index(name) if name in self._params else None
        return args[position] if position is not None and position < len(args) else None

    def _positions(self, args: tuple, kwargs: dict) -> list[Rows | None]:
        """The rows of every layer stack (None where the call says nothing about them)."""
        get = lambda name: self._argument(name, args, kwargs)  # noqa: E731
        past = max(cache_length(get(name)) for name in CACHE_ARGUMENTS)
        if len(self.engine.spec.stacks) == 1:
            return [_rows(get("input_ids"), get("inputs_embeds"), get("attention_mask"), past)]
        encoder = _rows(get("input_ids"), get("inputs_embeds"), get("attention_mask"))
        tokens, embeds, mask = get("decoder_input_ids"), get("decoder_inputs_embeds"), get("decoder_attention_mask")
        if tokens is None and embeds is None and mask is None and encoder is not None:
            decoder = Rows(encoder.starts, encoder.ends, past)  # decoder inputs: input_ids shifted right
        else:
            decoder = _rows(tokens, embeds, mask, past)
        return [encoder, *[decoder] * (len(self.engine.spec.stacks) - 1)]


def _rows(tokens, embeds, mask, past: int = 0) -> Rows | None:
    """Rows from a 2-D attention mask (a row starts at its first 1 and has as many tokens as 1s), else every token
    of `tokens`/`embeds` is real (after the `past` cached ones); None without any of them."""
    tokens = tokens if tokens is not None else embeds
    if mask is None:
        if tokens is None:
            return None
        starts = torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)
        return Rows(starts, starts + past + tokens.shape[1], past)
    if mask.dim() != 2 or (tokens is not None and mask.shape[1] != past + tokens.shape[1]):
        raise UnsupportedModelError(
            f"ReFT needs a 2-D attention_mask with one entry per token, not shape {tuple(mask.shape)}"
            + (f" for {past + tokens.shape[1]} tokens" if tokens is not None else "")
        )
    real = (mask == 1).long()
    starts = real.argmax(dim=1)  # the first 1 of each row
    return Rows(starts, starts + real.sum(dim=1), past)
