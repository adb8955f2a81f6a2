"""One interpreter of composition trees, shared by every method.

A method places `ComposableLayer`s in the model (a residual site, a projection, an attention module). Each layer
holds that method's adapters at that place and says how its per-call state is sliced by rows, joined and
averaged, and how one adapter transforms it. `compose` walks the active setup (Stack, Parallel, BatchSplit,
Average, and for layers that take part, Fuse, Split and MultiTask) and calls those operations, so every method
composes the same way. Which blocks a method takes part in is data (`AdapterMethod.supports`); `check_setup` refuses any
other combination when the setup is activated, so nothing is discovered in the middle of a forward pass.
"""

from __future__ import annotations

import torch

from .composition import Average, BatchSplit, Block, Fuse, MultiTask, Parallel, Split, Stack
from .errors import BatchSizeError, CompositionError

ALL_BLOCKS = frozenset({Stack, Parallel, Fuse, Split, BatchSplit, Average})


class ComposableLayer:
    """The adapters of one method at one place of the model. Subclasses implement the state operations."""

    def __contains__(self, name: str) -> bool:
        raise NotImplementedError

    def enter(self, setup, state):
        """Prepare `state` before a block (or a stacked adapter) runs; most methods need nothing here."""
        return state

    def single(self, name: str, state, ctx):
        """Run one adapter on `state`."""
        raise NotImplementedError

    def batch_rows(self, state) -> int:
        """How many batch rows `state` holds."""
        raise NotImplementedError

    def rows(self, state, start: int, stop: int):
        """The slice of `state` for batch rows [start, stop)."""
        raise NotImplementedError

    def concat(self, states: list):
        """Join row slices back into one state."""
        raise NotImplementedError

    def take(self, state, index: torch.Tensor):
        """The rows `index` of `state`, in that order (MultiTask groups rows by task with it). This default joins
        one-row slices; a layer whose state is a plain tensor can index it at once."""
        return self.concat([self.rows(state, i, i + 1) for i in index.tolist()])

    def average(self, states: list, weights: list[float]):
        """Combine the children's states of an `Average` block."""
        raise NotImplementedError

    def alone(self, state, weights: list[float], index: int):
        """The state of an `Average` whose only child in this layer is child `index` (the others are left out here).

        AdapterHub's rule: its `mean` broadcasts the one state over all n weights, so the child's output is scaled
        by sum(weights) / n (1/n for normalised weights), whichever child it is and whatever came before the block.
        """
        return self.average([state], [sum(weights) / len(weights)])

    def fuse(self, block: Fuse, state, ctx, run_child):
        raise CompositionError(f"{type(self).__name__} does not take part in Fuse")

    def split(self, block: Split, state, ctx, run_child):
        raise CompositionError(f"{type(self).__name__} does not take part in Split")


def takes_part(layer: ComposableLayer, setup) -> bool:
    names = [setup] if isinstance(setup, str) else setup.names()
    return any(name in layer for name in names)


def compose(layer: ComposableLayer, setup, state, ctx):
    """Run `setup` (a name or block) through `layer`, returning the new state."""
    if isinstance(setup, str):
        return layer.single(setup, state, ctx) if setup in layer else state
    if not takes_part(layer, setup):
        return state
    if isinstance(setup, Stack):
        for child in setup:
            if isinstance(child, str):
                if child in layer:
                    state = layer.single(child, layer.enter(child, state), ctx)
            else:
                state = compose(layer, child, state, ctx)
        return state
    run_child = lambda child, st: _child(layer, child, st, ctx)  # noqa: E731
    if isinstance(setup, (Parallel, BatchSplit)):
        state = layer.enter(setup, state)
        bounds = row_bounds(setup, layer.batch_rows(state))
        parts = [run_child(child, layer.rows(state, a, b)) for child, (a, b) in zip(setup, bounds, strict=True)]
        return layer.concat(parts)
    if isinstance(setup, Average):
        state = layer.enter(setup, state)
        present = [i for i, child in enumerate(setup) if takes_part(layer, child)]
        if len(present) < len(setup):  # one child here (`check_averages` refused other partial layers)
            return layer.alone(run_child(setup[present[0]], state), setup.weights, present[0])
        return layer.average([run_child(child, state) for child in setup], setup.weights)
    if isinstance(setup, MultiTask):
        return _multi_task(layer, setup, layer.enter(setup, state), ctx, run_child)
    if isinstance(setup, Fuse):
        return layer.fuse(setup, state, ctx, run_child)
    if isinstance(setup, Split):
        return layer.split(setup, state, ctx, run_child)
    raise CompositionError(f"unknown composition block {setup!r}")


def _child(layer, child, state, ctx):
    """A child of a non-Stack block: a name runs without `enter` (the block entered once), a block recurses."""
    if isinstance(child, str):
        return layer.single(child, state, ctx) if child in layer else state
    return compose(layer, child, state, ctx)


def _multi_task(layer, setup: MultiTask, state, ctx, run_child):
    """Rows grouped by task (a stable sort), each group through its child as a BatchSplit slice, then put back in
    their original order: row i gets exactly what child `task_ids[i]` alone gives it."""
    tasks = (ctx.inputs.get("task_rows") or {}).get(id(setup)) if ctx is not None else None
    if tasks is None:
        raise CompositionError(f"{setup} needs task_ids=... in the forward call (one task per batch row)")
    rows = layer.batch_rows(state)
    if tasks.shape[0] != rows:
        raise CompositionError(f"{setup}: {tasks.shape[0]} task_ids for {rows} batch rows")
    order = torch.argsort(tasks, stable=True)
    grouped = layer.take(state, order)
    parts, start = [], 0
    for child, count in zip(setup, torch.bincount(tasks, minlength=len(setup)).tolist(), strict=True):
        if count:
            parts.append(run_child(child, layer.rows(grouped, start, start + count)))
        start += count
    return layer.take(layer.concat(parts), torch.argsort(order))


def task_rows(setup, task_ids, batch: int | None) -> dict[int, torch.Tensor]:
    """At the start of a forward: each MultiTask block's child index per batch row, from `task_ids` (indices into
    the block's children, or their names); keyed by id(block). Refuses what the blocks cannot route."""
    blocks = [b for b, _ in blocks_with_names(setup)] if setup is not None else []
    blocks = [b for b in blocks if isinstance(b, MultiTask)]
    if not blocks:
        return {}
    if task_ids is None:
        raise CompositionError(f"{blocks[0]} needs task_ids=... in the forward call (one task per batch row)")
    if setup.parallel_channels > 1:
        raise CompositionError(
            f"{setup}: a MultiTask block cannot follow a Parallel block (its task_ids name the rows of the batch "
            "before Parallel replicates it)"
        )
    found = {}
    for block in blocks:
        ids = _task_indices(block, task_ids)
        if batch is not None and ids.shape[0] != batch:
            raise CompositionError(f"{block}: {ids.shape[0]} task_ids for a batch of {batch} rows")
        found[id(block)] = ids
    return found


def _task_indices(block: MultiTask, task_ids) -> torch.Tensor:
    names = [c if isinstance(c, str) else None for c in block.children]
    if isinstance(task_ids, torch.Tensor):
        ids = task_ids
    elif isinstance(task_ids, (list, tuple)) and task_ids and all(isinstance(t, str) for t in task_ids):
        unknown = sorted({t for t in task_ids if t not in names})
        if unknown:
            raise CompositionError(f"{block}: task_ids name {unknown}, which are not children of the block")
        ids = torch.tensor([names.index(t) for t in task_ids])
    elif isinstance(task_ids, (list, tuple)):
        ids = torch.tensor(task_ids) if task_ids else torch.zeros(0, dtype=torch.long)
    else:
        raise CompositionError(f"{block}: task_ids must be a tensor or list of task indices or names, not {task_ids!r}")
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise CompositionError(
            f"{block}: task_ids must be one integer per batch row, got {tuple(ids.shape)} {ids.dtype}"
        )
    ids = ids.long()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(block)):
        raise CompositionError(f"{block}: task_ids {ids.tolist()} must lie in [0, {len(block)})")
    return ids


def row_bounds(block: Parallel | BatchSplit, batch: int) -> list[tuple[int, int]]:
    """[start, stop) rows of each child: Parallel splits the replicated batch evenly, BatchSplit by its sizes."""
    if isinstance(block, Parallel):
        if batch % len(block):
            raise CompositionError(f"{block}: a batch of {batch} rows cannot be split into {len(block)} channels")
        sizes = [batch // len(block)] * len(block)
    else:
        sizes = block.batch_sizes
        if sum(sizes) != batch:
            raise BatchSizeError(f"{block}: batch_sizes {sizes} do not add up to the batch size {batch}")
    edges = [0]
    for size in sizes:
        edges.append(edges[-1] + size)
    return list(zip(edges[:-1], edges[1:], strict=True))


def cat_rows(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
    """`torch.cat(tensors)` along the batch, without the copy when they are consecutive row slices of one tensor
    (None for a state field that is absent: the parts' first is None).

    A Parallel/BatchSplit child leaves most of a layer's state (its input, its own output, the residual) as the
    slice it got; joining those slices back with `torch.cat` copies them at every layer for nothing (Parallel of n
    adapters was measurably slower than n separate forwards because of it). Adjacent slices are read as one tensor
    instead: the tensor they were cut from where autograd may follow them, else a view of their memory.
    """
    first = tensors[0]
    if first is None or len(tensors) == 1:
        return first
    if torch.compiler.is_compiling():  # a compiled graph plans its own memory (and cannot read storage addresses)
        return torch.cat(tensors)
    stride, rest, storage = first.stride(), first.shape[1:], first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for t in tensors:
        adjacent = t.storage_offset() == offset and t.stride() == stride and t.shape[1:] == rest
        if not adjacent or t.dtype != first.dtype or t.untyped_storage().data_ptr() != storage:
            return torch.cat(tensors)
        offset += t.shape[0] * stride[0]
    shape = torch.Size((sum(t.shape[0] for t in tensors), *rest))
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)):
        return first.as_strided(shape, stride, first.storage_offset())  # no graph to keep: a view is enough
    # a graph: only the tensor the slices were cut from (or its whole storage, a linear layer's 2-d output seen
    # as 3-d) carries their gradients
    base = first._base
    if base is not None and all(t._base is base for t in tensors) and base.storage_offset() == first.storage_offset():
        if base.shape == shape and base.stride() == stride:
            return base
        if base.is_contiguous() and base.numel() == shape.numel() and stride == _contiguous_strides(shape):
            return base.view(shape)
    return torch.cat(tensors)


def _contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


# --- validation ----------------------------------------------------------------------------------------------


def blocks_with_names(setup):
    """Every block node of a setup with the adapter names below it."""
    if isinstance(setup, Block):
        yield setup, setup.names()
        for child in setup:
            yield from blocks_with_names(child)


def check_setup(setup, engine) -> None:
    """Refuse a setup the engine cannot run on this model, before it takes effect."""
    if setup is None:
        return
    for name in setup.names():
        if name not in engine.configs:
            known = ", ".join(sorted(engine.configs)) or "none"
            raise CompositionError(f"composition {setup} names unknown adapter {name!r} (adapters: {known})")
    if setup.parallel_channels > 1 and not engine.spec.parallel:
        model_type = getattr(engine.base.config, "model_type", type(engine.base).__name__)
        raise CompositionError(
            f"{setup}: model type {model_type!r} does not take Parallel (each channel would see the other channels' "
            "rows in its outputs); use BatchSplit, or run the setups one after the other"
        )
    for block, names in blocks_with_names(setup):
        if isinstance(block, Fuse) and block.name not in engine.fusions:
            raise CompositionError(f"{block} needs an AdapterFusion {block.name!r}: call add_adapter_fusion first")
        if isinstance(block, Fuse):
            fused = list(engine.fusions[block.name][0])
            children = [c if isinstance(c, str) else c.last() for c in block.children]
            if children != fused:
                raise CompositionError(f"{block}: the AdapterFusion {block.name!r} fuses {fused}, not {children}")
        for name in names:
            for kind in engine.method_kinds(name):
                method = engine.method(kind)
                if type(block) not in method.supports:
                    allowed = ", ".join(sorted(b.__name__ for b in method.supports))
                    raise CompositionError(
                        f"{setup}: adapter {name!r} is a {kind} adapter, which takes part in {allowed}, "
                        f"not in {type(block).__name__}"
                    )
    for kind in {k for name in setup.names() for k in engine.method_kinds(name)}:
        engine.method(kind).check_setup(setup)


def check_averages(setup, layers) -> None:
    """Refuse an `Average` that has some but not all of its children in one of `layers`, unless exactly one child
    is there and the absent ones are adapter names: only that case has AdapterHub's rule (`ComposableLayer.alone`;
    its `mean` cannot broadcast 2..n-1 states, and counts an absent nested block as its unchanged input)."""
    for block, _ in blocks_with_names(setup):
        if not isinstance(block, Average):
            continue
        for layer in layers:
            here = [takes_part(layer, child) for child in block]
            absent_blocks = [c for c, h in zip(block, here, strict=True) if not h and isinstance(c, Block)]
            if 0 < sum(here) < len(block) and (sum(here) > 1 or absent_blocks):
                missing = [c for c, h in zip(block, here, strict=True) if not h]
                raise CompositionError(
                    f"{setup}: {block} has {[c for c, h in zip(block, here, strict=True) if h]} but not {missing} "
                    f"at {getattr(layer, 'path', type(layer).__name__)}; an Average averages a layer's adapters "
                    "when all its children are there or exactly one adapter is (AdapterHub's rule): give the "
                    "adapters the same leave_out and sites"
                )


def check_channels_start_alike(setup, own, what: str) -> None:
    """Refuse a setup whose Parallel/BatchSplit/MultiTask channels start with different `what`s (prompt tunings,
    invertible adapters: `own(name)` is the one adapter `name` brings, or None).

    Such a method acts once on the whole batch, before the channels split it, with the setup's first adapter's
    module (AdapterHub's rule); a channel starting with another one would silently run the first channel's."""
    first = setup.first()
    for block, _ in blocks_with_names(setup):
        if not isinstance(block, (Parallel, BatchSplit, MultiTask)) or block.first() != first:
            continue  # a block further on: the setup's first adapter decides for every channel alike
        if getattr(block, "per_row", False):
            continue  # `adapter_names` rows: the methods run each row's own module (`rows.check_names`)
        starts = {child if isinstance(child, str) else child.first(): None for child in block}
        found = {name: own(name) for name in starts}
        if len(set(found.values())) > 1:
            runs = repr(found[first]) if found[first] else "none"
            raise CompositionError(
                f"{setup}: the channels of {block} start with {what}s {found}; one {what} acts on the whole batch, "
                f"the setup's first adapter's (as in AdapterHub), so every channel would run {runs}: run these "
                "setups one after the other"
            )


def check_batch(setup, batch: int | None) -> None:
    """At the start of a forward: BatchSplit sizes must add up to the batch they split."""
    if setup is None or batch is None:
        return
    _check_batch(setup, batch * setup.parallel_channels)  # Parallel replicates the inputs first


def _check_batch(setup, batch: int) -> None:
    if not isinstance(setup, Block):
        return
    if isinstance(setup, BatchSplit) and sum(setup.batch_sizes) != batch:
        raise BatchSizeError(f"{setup}: batch_sizes {setup.batch_sizes} do not add up to the batch size {batch}")
    if isinstance(setup, (BatchSplit, Parallel)):
        for child, (a, b) in zip(setup, row_bounds(setup, batch), strict=True):
            _check_batch(child, b - a)
    else:
        for child in setup:
            _check_batch(child, batch)
