"""Per-call state: what one forward pass needs, never kept on modules.

Two threads (or two nested calls) that run the same model each see their own `AdapterSetup` and their own
`ForwardContext`: a scoped setup lives in a context variable (per thread and asyncio task), the state of a running
forward in per-thread slots (`ThreadSlot`, readable inside `torch.compile`d graphs), and tokens undo each `with`
block exactly. Gradient checkpointing re-runs a layer during backward, after the forward has ended; the
checkpoint function is wrapped (`keep_call_context`) so the replay sees the context the layer first ran in.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from dataclasses import dataclass, field

import torch

from .composition import Block, parse_composition
from .thread_slot import ThreadSlot

# The scoped setup is held across arbitrary user code (an `await` too), so it lives in a context variable: per
# thread and per asyncio task. Dynamo cannot read one, so compiled graphs read its copy for this thread, updated
# whenever a block is entered or left here (exact unless asyncio tasks interleave blocks in one thread, or a
# block's setup is used from `asyncio.to_thread`: there only compiled models miss it).
_SCOPED_SETUP: contextvars.ContextVar = contextvars.ContextVar("workbench_adapter_setup", default=None)
_SCOPED_COPY = ThreadSlot("workbench_adapter_setup_copy")
_CALLS = ThreadSlot("workbench_forward_calls")  # {id(engine): ForwardContext} of the calls running in this thread


class AdapterSetup:
    """`with AdapterSetup(Stack("a", "b"), head_setup="b"): model(...)` activates a setup for the block only.

    The setup is checked against the model when a forward starts inside the block: unknown adapters or a
    composition the methods cannot run raise `CompositionError` before any layer runs.
    """

    def __init__(self, adapter_setup, head_setup=None, ignore_empty: bool = False):
        self.adapter_setup = parse_composition(adapter_setup)
        self.head_setup = head_setup
        self.ignore_empty = ignore_empty
        self._tokens = threading.local()  # .stack: per thread, so one block object may be entered by several

    def __enter__(self):
        stack = self._tokens.__dict__.setdefault("stack", [])
        if self.adapter_setup is not None or not self.ignore_empty:
            stack.append(_SCOPED_SETUP.set(self))
        else:
            stack.append(None)
        _SCOPED_COPY.put(_SCOPED_SETUP.get())
        return self

    def __exit__(self, *exc):
        token = self._tokens.stack.pop()
        if token is not None:
            _SCOPED_SETUP.reset(token)
        _SCOPED_COPY.put(_SCOPED_SETUP.get())


def scoped_setup() -> AdapterSetup | None:
    """The innermost `AdapterSetup` block being run here (this thread and asyncio task), if any."""
    if torch.compiler.is_compiling():
        return _SCOPED_COPY.get()
    return _SCOPED_SETUP.get()


@dataclass
class ForwardContext:
    """What one forward pass of one model knows: its setup, batch bookkeeping, scratch space and extras."""

    setup: Block | None
    names: frozenset[str]
    batch_size: int | None = None  # before Parallel replication
    output_fusion_attentions: bool = False
    fusion_attentions: dict = field(default_factory=dict)
    output_gating_scores: bool = False
    gating_scores: dict = field(default_factory=dict)
    scratch: dict = field(default_factory=dict)  # per-call values hooks hand each other, keyed by their owner
    inputs: dict = field(default_factory=dict)  # facts about the call's inputs set in `begin`, kept on replays
    replaying: bool = False  # a gradient-checkpointing replay: nothing is recorded twice
    rows: tuple[str, ...] | None = None  # per-row adapters (`adapter_names`): each row's name; `setup` runs them

    @property
    def recording(self) -> bool:
        return not self.replaying


def current_call(engine) -> ForwardContext | None:
    """The forward context of `engine`'s model in this thread, or None outside its forward."""
    calls = _CALLS.get()
    return calls.get(id(engine)) if calls else None


def enter_call(engine, ctx: ForwardContext):
    """Make `ctx` the current call of `engine`; returns the token `leave_call` needs."""
    calls = dict(_CALLS.get() or {})
    calls[id(engine)] = ctx
    return _CALLS.set(calls)


def leave_call(token) -> None:
    _CALLS.reset(token)


@contextlib.contextmanager
def replaying(calls: dict | None):
    """Run a block with the forward contexts captured when a checkpointed layer first ran."""
    replayed = {key: _as_replay(ctx) for key, ctx in (calls or {}).items()}
    token = _CALLS.set(replayed or None)
    try:
        yield
    finally:
        _CALLS.reset(token)


def _as_replay(ctx: ForwardContext) -> ForwardContext:
    copy = ForwardContext(**{**ctx.__dict__, "replaying": True})
    copy.scratch = {}
    return copy


def keep_call_context(checkpoint_fn):
    """Wrap a gradient-checkpointing function so the recomputed layer sees the forward context it first ran in.

    Works for both `use_reentrant` modes: the wrapper is what `checkpoint` calls, on the forward and on replay.
    """
    if getattr(checkpoint_fn, "keeps_call_context", False):
        return checkpoint_fn

    @functools.wraps(checkpoint_fn)
    def run(function, *args, **kwargs):
        captured = _CALLS.get()
        first = [True]

        def layer(*inner_args, **inner_kwargs):
            if first[0]:
                first[0] = False
                return function(*inner_args, **inner_kwargs)
            with replaying(captured):
                return function(*inner_args, **inner_kwargs)

        return checkpoint_fn(layer, *args, **kwargs)

    run.keeps_call_context = True
    return run


# A model's main inputs, whatever its modality (text, images, audio features): each is batch-first.
BATCH_INPUTS = ("input_ids", "inputs_embeds", "pixel_values", "input_features", "input_values", "attention_mask")
# An encoder-decoder model's decoder inputs: the only batch-shaped ones of a generate() step (encoder_outputs given).
DECODER_INPUTS = ("decoder_input_ids", "decoder_inputs_embeds")


def batch_size_of(args, kwargs) -> int | None:
    """The batch size of a model call, from its first batch-shaped input."""
    for key in (*BATCH_INPUTS, *DECODER_INPUTS):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    for value in args:
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    return None


def replicate_batch(args, kwargs, batch: int, channels: int):
    """Repeat every batch-shaped input `channels` times along the batch (Parallel composition)."""

    def repeat(value):
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value.repeat(channels, *([1] * (value.dim() - 1)))
        return value

    return tuple(repeat(a) for a in args), {k: repeat(v) for k, v in kwargs.items()}
