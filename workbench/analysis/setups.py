"""Naming the setups that analyses compare: the base model (None), one adapter, or a composition block."""

from __future__ import annotations

import re

from ..core.composition import BLOCKS, Block, Fuse, Parallel, Stack, parse_composition

BASE = "base model"
_TOKEN = re.compile(r"\s*(?:(?P<word>[A-Za-z0-9_.\-]+)|(?P<quoted>'[^']*'|\"[^\"]*\")|(?P<punct>[(),]))")


def as_setup(setup) -> Block | None:
    """`None`/"" (the base model), an adapter name, a composition text like "Stack(a, Fuse(b, c))" or a block."""
    if setup is None or (isinstance(setup, str) and setup.strip() in ("", BASE)):
        return None
    if isinstance(setup, str):
        setup = parse_setup_text(setup)
    return parse_composition(setup)


def parse_setup_text(text: str) -> str | Block:
    """Read "sst" or "Stack(a, Parallel(b, c))" (block names as in `workbench`), without evaluating code."""
    tokens = _tokenize(text)
    value, rest = _parse(tokens, text)
    if rest:
        raise ValueError(f"unexpected {rest[0]!r} in setup {text!r}")
    return value


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(text.rstrip()):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"cannot read setup {text!r} at {text[pos:]!r}")
        tokens.append(match.group("word") or match.group("punct") or match.group("quoted")[1:-1])
        pos = match.end()
    return tokens


def _parse(tokens: list[str], text: str):
    if not tokens or tokens[0] in "(),":
        raise ValueError(f"setup {text!r}: expected an adapter name or a block like Stack(a, b)")
    head, rest = tokens[0], tokens[1:]
    if not rest or rest[0] != "(":
        return head, rest
    if head not in BLOCKS:
        raise ValueError(f"setup {text!r}: unknown block {head!r} (known: {', '.join(BLOCKS)})")
    children, rest = [], rest[1:]
    while True:
        child, rest = _parse(rest, text)
        children.append(child)
        if not rest:
            raise ValueError(f"setup {text!r}: missing ')'")
        if rest[0] == ")":
            return BLOCKS[head](*children), rest[1:]
        if rest[0] != ",":
            raise ValueError(f"setup {text!r}: expected ',' or ')' but found {rest[0]!r}")
        rest = rest[1:]


def setup_label(setup) -> str:
    """A readable, stable name for a setup: "base model", "sst" or "Stack('a', 'b')"."""
    block = as_setup(setup)
    if block is None:
        return BASE
    if isinstance(block, Stack) and len(block) == 1 and isinstance(block[0], str):
        return block[0]
    return str(block)


def check_setup(model, setup) -> Block | None:
    """The parsed setup, after checking that the model has every adapter (and fusion) it names."""
    block = as_setup(setup)
    if block is None:
        return None
    known = set(getattr(model, "adapters", {}))
    for name in block.names():
        if name not in known:
            loaded = ", ".join(sorted(known)) or "none"
            raise ValueError(f"setup {block} names adapter {name!r}, which is not loaded (loaded: {loaded})")
    for fuse in _fuse_blocks(block):
        if fuse.name not in getattr(model, "adapter_fusions", {}):
            raise ValueError(f"setup {block} needs the AdapterFusion {fuse.name!r}, which is not on the model")
    return block


def _fuse_blocks(block) -> list[Fuse]:
    if isinstance(block, Fuse):
        return [block]
    if isinstance(block, Block):
        return [f for child in block for f in _fuse_blocks(child)]
    return []


def heads_for(model, block) -> list[str]:
    """The prediction heads of `model` that belong to a setup, AdapterHub's way: the head named like the adapter
    (the last of a Stack, the fusion for a Fuse, one per branch of a Parallel). Empty when there is none."""
    heads = getattr(model, "heads", None)
    if heads is None or block is None:
        return []
    if isinstance(block, str):
        return [block] if block in heads else []
    if isinstance(block, Parallel):
        found = [heads_for(model, child) for child in block]
        return [h[0] for h in found] if all(found) else []
    if isinstance(block, Stack):
        return heads_for(model, block.children[-1])
    if isinstance(block, Fuse):
        if block.name in heads:
            return [block.name]
        return heads_for(model, block.children[-1])
    last = block.last()
    return [last] if last in heads else []
