"""Per-row adapters in one batch (PEFT's `adapter_names`): `model(..., adapter_names=["a", "__base__", "b"])`.

Each row runs its own adapter ("__base__": none). The rows become a `BatchSplit` over runs of consecutive rows
with the same name, so every method computes them with the composition interpreter it already has (no second
mechanism): rows of one adapter need not be contiguous, a run is as short as one row, and row order never changes,
so KV caches, heads and labels keep their rows. The list overrides the active setup for the call.

`generate(..., adapter_names=[...])` keeps the list for every step (`rows_scope`); a batch that generation widened
(beams, several sequences per prompt, `repeat_interleave` per row) repeats each row's name accordingly.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, field

from .composition import BatchSplit, Stack
from .errors import CompositionError
from .thread_slot import ThreadSlot

BASE = "__base__"  # no adapter for this row (names starting with "_" are never adapter names)

_PLAN = ThreadSlot("workbench_row_adapters")


@dataclass
class RowPlan:
    """The adapter of each row of the calls made while it is current."""

    names: tuple[str, ...]
    widen: bool = False  # generate(): a batch k times as long repeats each row's name k times
    setups: dict = field(default_factory=dict)  # id(engine) -> the setup of that model's running call
    owner: int | None = None  # id of the model whose call set it (its forward hook takes it away)
    token: tuple | None = None
    frame: object = None  # the frame running that call: on the stack for as long as the call runs


def current_plan() -> RowPlan | None:
    return _PLAN.get()


@contextlib.contextmanager
def rows_scope(names, widen: bool = False):
    """Run the block with one adapter per row (`names`; None: the block runs as usual)."""
    if names is None:
        yield None
        return
    plan = RowPlan(parse_names(names), widen)
    token = _PLAN.set(plan)
    try:
        yield plan
    finally:
        _PLAN.reset(token)


def enter_plan(names, owner: int | None = None, frame=None) -> RowPlan:
    """Make `names` the current plan (until `leave_plan(plan.token)`)."""
    plan = RowPlan(parse_names(names), owner=owner, frame=frame)
    plan.token = _PLAN.set(plan)
    return plan


def drop_dead_plans() -> None:
    """Leave the plans of model calls that no longer run in this thread.

    A KeyboardInterrupt skips the hook that leaves a call's plan, and without this any later call in the thread,
    of another model or of the same model's base model, would run the interrupted call's rows. A plan entered by
    a call's hook holds that call's frame, which is on the stack exactly while the call runs."""
    plan = _PLAN.get()
    while plan is not None and plan.frame is not None and plan.token is not None and not _on_stack(plan.frame):
        leave_plan(plan.token)
        plan = _PLAN.get()


def _on_stack(frame) -> bool:
    here = sys._getframe(1)
    while here is not None:
        if here is frame:
            return True
        here = here.f_back
    return False


def leave_plan(token) -> None:
    _PLAN.reset(token)


def parse_names(names) -> tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
        raise CompositionError(
            f"adapter_names={names!r}: pass a list with one adapter name (or {BASE!r}) per row of the batch"
        )
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise CompositionError(f"adapter_names: every entry is an adapter name or {BASE!r}, not {bad[0]!r}")
    return tuple(names)


def row_names(plan: RowPlan, batch: int | None) -> tuple[str, ...]:
    """The name of each of the call's `batch` rows."""
    names = plan.names
    if batch is None or batch == len(names):
        return names
    if plan.widen and batch % len(names) == 0:
        k = batch // len(names)
        return tuple(n for n in names for _ in range(k))
    raise CompositionError(
        f"adapter_names has {len(names)} entries but the batch has {batch} rows: give one name per row"
    )


def runs(names) -> list[tuple[str, int, int]]:
    """(name, start, stop) of every run of consecutive rows with the same name."""
    out: list[tuple[str, int, int]] = []
    for i, name in enumerate(names):
        if out and out[-1][0] == name:
            out[-1] = (name, out[-1][1], i + 1)
        else:
            out.append((name, i, i + 1))
    return out


def setup_of(names) -> BatchSplit | Stack | None:
    """The composition that runs `names` row by row: one adapter (or none) for all rows, else a BatchSplit."""
    parts = runs(names)
    if len(parts) == 1:
        name = parts[0][0]
        return None if name == BASE else Stack(name)
    return BatchSplit(*[n for n, _, _ in parts], batch_sizes=[b - a for _, a, b in parts])


def check_names(engine, names) -> None:
    """Refuse unknown names and adapters whose methods cannot run row by row, before any layer runs."""
    from .runtime import check_setup

    adapters = [n for n in dict.fromkeys(names) if n != BASE]
    for name in adapters:
        if name not in engine.configs:
            known = ", ".join(sorted(engine.configs)) or "none"
            raise CompositionError(f"adapter_names names unknown adapter {name!r} (adapters: {known}; {BASE!r}: none)")
    if not adapters:
        return
    key = (tuple(adapters), engine.version)
    if engine._checked_rows == key:
        return
    for name in adapters:
        for kind in engine.method_kinds(name):
            method = engine.method(kind)
            if not getattr(method, "rowwise", False):
                raise CompositionError(
                    f"adapter_names: adapter {name!r} is a {kind} adapter, which cannot run row by row in a batch"
                )
    check = BatchSplit(*adapters, batch_sizes=1) if len(adapters) > 1 else Stack(adapters[0])
    check.per_row = True  # rows run their own prompt tuning / invertible adapter (`check_channels_start_alike`)
    try:
        check_setup(check, engine)
    except CompositionError as err:
        raise CompositionError(f"adapter_names {list(adapters)} cannot share a batch: {err}") from None
    engine._checked_rows = key
