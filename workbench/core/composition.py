"""Composition blocks (Stack, Parallel, Fuse, Split, BatchSplit, Average, MultiTask) and their nesting rules.

The rules follow AdapterHub: which block may contain which is data (`ALLOWED_NESTINGS`), and a setup may be at
most two blocks deep below the top, where only a Stack or an adapter name may stand.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from .errors import CompositionError


class Block(Sequence):
    """A node of an adapter composition: an ordered list of adapter names or nested blocks."""

    def __init__(self, *children):
        if not children:
            raise CompositionError(f"{type(self).__name__}() needs at least one adapter name or block")
        self.children = [parse_composition(child, level=None) for child in children]
        for child in self.children:
            if child is None:
                raise CompositionError(f"{type(self).__name__} got an empty child: {children!r}")

    def __getitem__(self, index):
        return self.children[index]

    def __len__(self):
        return len(self.children)

    def __eq__(self, other):
        return type(self) is type(other) and self.children == other.children and self._options() == other._options()

    def __hash__(self):
        return hash((type(self).__name__, tuple(map(str, self.children))))

    def __repr__(self):
        args = [repr(c) if isinstance(c, str) else repr(c) for c in self.children]
        args += [f"{k}={v!r}" for k, v in self._options().items()]
        return f"{type(self).__name__}({', '.join(args)})"

    __str__ = __repr__

    def _options(self) -> dict:
        return {}

    @property
    def name(self) -> str:
        return ",".join(c if isinstance(c, str) else c.last() for c in self.children)

    def first(self) -> str:
        child = self.children[0]
        return child if isinstance(child, str) else child.first()

    def last(self) -> str:
        child = self.children[-1]
        return child if isinstance(child, str) else child.last()

    def names(self) -> list[str]:
        """All adapter names in the composition, in order, without repeats."""
        names: list[str] = []
        for child in self.children:
            for name in [child] if isinstance(child, str) else child.names():
                if name not in names:
                    names.append(name)
        return names

    def flatten(self) -> set[str]:
        """All adapter names in the composition, as a set (AdapterHub's API; `names()` keeps their order)."""
        return set(self.names())

    @property
    def parallel_channels(self) -> int:
        channels = 1  # a loop, not max(..., default=): torch.compile traces it
        for child in self.children:
            if isinstance(child, Block):
                channels = max(channels, child.parallel_channels)
        return channels

    def to_dict(self) -> dict:
        return {
            "type": type(self).__name__,
            "children": [c if isinstance(c, str) else c.to_dict() for c in self.children],
            **self._options(),
        }

    @staticmethod
    def from_dict(data: dict | str | Block) -> str | Block:
        if isinstance(data, (str, Block)):
            return data
        kind = data.get("type")
        if kind not in BLOCKS:
            raise CompositionError(f"unknown composition block type {kind!r} (known: {', '.join(BLOCKS)})")
        options = {k: v for k, v in data.items() if k not in ("type", "children")}
        return BLOCKS[kind](*[Block.from_dict(c) for c in data.get("children", [])], **options)


class Stack(Block):
    """Adapters applied one after the other, each on the output of the previous."""


class Parallel(Block):
    """The input replicated along the batch, one copy per child, each through its own adapters."""

    @property
    def parallel_channels(self) -> int:
        return len(self.children)


class Fuse(Block):
    """AdapterFusion: an attention over the outputs of the children (adapter names or Stacks).

    The fusion it uses is named by its adapters ("a,b"), or by `name` for a fusion added with a custom name.
    """

    def __init__(self, *children, name: str | None = None):
        super().__init__(*children)
        if name is not None and (not isinstance(name, str) or not name):
            raise CompositionError(f"Fuse(name={name!r}): a fusion name is a non-empty string")
        self._name = name

    def _options(self):
        return {"name": self._name} if self._name else {}

    @property
    def name(self) -> str:
        return self._name or ",".join(c if isinstance(c, str) else c.last() for c in self.children)


class Split(Block):
    """The sequence split at `splits` positions: the first part goes to the first child, and so on."""

    def __init__(self, *children, splits: int | list[int]):
        super().__init__(*children)
        self.splits = _sizes(self, "splits", splits)

    def _options(self):
        return {"splits": self.splits}


class BatchSplit(Block):
    """The batch split by `batch_sizes`: the first rows go to the first child, and so on."""

    def __init__(self, *children, batch_sizes: int | list[int]):
        super().__init__(*children)
        self.batch_sizes = _sizes(self, "batch_sizes", batch_sizes)

    def _options(self):
        return {"batch_sizes": self.batch_sizes}


class Average(Block):
    """The weighted average of the children's outputs (weights normalised to sum 1 unless told otherwise)."""

    def __init__(self, *children, weights: list[float] | None = None, normalize_weights: bool = True):
        super().__init__(*children)
        weights = list(weights) if weights is not None else [1 / len(children)] * len(children)
        if len(weights) != len(children):
            raise CompositionError(f"Average has {len(children)} children but {len(weights)} weights: {weights}")
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
            raise CompositionError(f"Average weights must be finite numbers, got {weights}")
        if normalize_weights:
            total = sum(weights)
            if total == 0 or not math.isfinite(total):
                raise CompositionError(f"Average weights {weights} sum to {total} and cannot be normalised")
            weights = [w / total for w in weights]
        self.weights = weights
        self.normalize_weights = bool(normalize_weights)

    def _options(self):
        """The weights, and `normalize_weights=False` where they are not normalised: a saved setup (or `to_dict`)
        read back would otherwise rescale them (AdapterHub writes only the weights and loses this)."""
        return {"weights": self.weights, **({} if self.normalize_weights else {"normalize_weights": False})}


class MultiTask(Block):
    """Each batch row through the child its task id names: `model(..., task_ids=...)` gives one id per row, the
    index of a child or a child's name (AdapterHub's `MultiTask`, for MTL-LoRA; LoRA-family adapters take part)."""


def _sizes(block: Block, option: str, value) -> list[int]:
    """Validated `splits`/`batch_sizes`: one positive int per child (an int means the same for every child)."""
    sizes = [value] * len(block.children) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(sizes, (list, tuple)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sizes
    ):
        raise CompositionError(f"{type(block).__name__} {option}={value!r}: use positive integers")
    if len(sizes) != len(block.children):
        raise CompositionError(
            f"{type(block).__name__} has {len(block.children)} children but {option}={list(sizes)} has {len(sizes)}"
        )
    return list(sizes)


BLOCKS = {cls.__name__: cls for cls in (Stack, Parallel, Fuse, Split, BatchSplit, Average, MultiTask)}

ALLOWED_NESTINGS: dict[type, tuple[type, ...]] = {
    Stack: (str, Fuse, Split, Parallel, BatchSplit, Average, MultiTask),
    Fuse: (str, Stack),
    Split: (str, Split, Stack, BatchSplit, Average),
    Parallel: (str, Stack, BatchSplit, Average),
    BatchSplit: (str, Stack, Split, BatchSplit, Average),
    Average: (str, Stack, Split, BatchSplit),
    MultiTask: (str, Stack, Average, Fuse),
}


def validate_composition(setup, level: int = 0) -> None:
    """Raise CompositionError if `setup` nests blocks in a way AdapterHub does not support."""
    if level > 1 and not isinstance(setup, (str, Stack)):
        raise CompositionError(f"composition is nested too deeply: {setup} may not stand at depth {level}")
    if isinstance(setup, Block):
        for child in setup:
            if not isinstance(child, ALLOWED_NESTINGS[type(setup)]):
                raise CompositionError(f"{type(setup).__name__} may not contain {child}: invalid setup {setup}")
            validate_composition(child, level + 1)
    elif not isinstance(setup, str):
        raise CompositionError(f"not an adapter name or composition block: {setup!r}")


def parse_composition(setup, level: int | None = 0):
    """Normalise what a user passes to `active_adapters` into a composition block (or a name, when nested).

    A name at the top becomes `Stack(name)`; a list becomes a Stack (a list inside a list: a Fuse), as the
    AdapterHub library accepts for backwards compatibility.
    """
    if setup is None or (isinstance(setup, (list, tuple)) and not setup) or setup == "":
        return None
    if isinstance(setup, Block):
        if level is not None:
            validate_composition(setup, level)
        return setup
    if isinstance(setup, str):
        return Stack(setup) if level == 0 else setup
    if isinstance(setup, Iterable):
        block = Fuse if level == 1 else Stack
        next_level = None if level is None else level + 1
        parsed = block(*[parse_composition(child, next_level) for child in setup])
        if level is not None:
            validate_composition(parsed, level)
        return parsed
    raise CompositionError(f"cannot use {setup!r} as an adapter setup: pass a name, a list or a composition block")
