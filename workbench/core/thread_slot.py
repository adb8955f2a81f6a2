"""A value per thread with `contextvars`-style set and reset, that `torch.compile` can read inside a graph.

Per thread, not per asyncio task, so only for state set and unset within one synchronous call (a forward, a
`generate`); a `with AdapterSetup(...)` block, which may span an `await`, keeps a context variable (see context.py).

The engine's per-call state (the running forward, per-row adapters) must differ between
threads sharing a model, and the layer hooks that read it run inside compiled graphs. Dynamo cannot trace
`ContextVar.get` (each read is a graph break), but it traces an attribute of a `threading.local` and guards it
per thread: a compiled graph runs only while the calling thread's value still matches what it was traced with.
The slot starts as None in the thread that creates it (the importing one), so there a graph sees the same state
at every call; another thread's first call finds no value yet and compiles once more.
"""

from __future__ import annotations

import threading

import torch


class ThreadSlot:
    """`slot.get()`, `token = slot.set(value)`, `slot.reset(token)`: like a `ContextVar`, but per thread only."""

    def __init__(self, name: str):
        self.name = name
        self._local = threading.local()  # a plain one: Dynamo mistraces writes to a subclass's attributes
        self._local.value = None

    def get(self):
        return getattr(self._local, "value", None)

    def set(self, value) -> tuple:
        """Make `value` this thread's; returns the token that puts the previous value back."""
        token = (self, _thread(), self.get())
        self._local.value = value
        return token

    def put(self, value) -> None:
        """Make `value` this thread's, with no way back (a copy of a value kept elsewhere)."""
        self._local.value = value

    def reset(self, token: tuple) -> None:
        slot, thread, previous = token
        if slot is not self:
            raise ValueError(f"a token of {slot.name!r} cannot reset {self.name!r}")
        if thread is not None and _thread() not in (None, thread):
            raise ValueError(f"a token of {self.name!r} set in another thread cannot reset this thread's value")
        self._local.value = previous

    def __repr__(self) -> str:
        return f"ThreadSlot({self.name!r})"


def _thread() -> int | None:
    """The calling thread's id; None inside a compiled graph (Dynamo cannot trace it; the engine's own set/reset
    pairs there are in one call, on one thread)."""
    return None if torch.compiler.is_compiling() else threading.get_ident()
