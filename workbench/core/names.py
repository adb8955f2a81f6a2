"""One rule for adapter, head and fusion names, whether they come from code or from a saved file.

Names become keys of torch `ModuleDict`s (and folder names when saved), so they must be short identifiers:
ASCII letters, digits, '-', '_' and '+' (AdapterHub names adapters like "pfeiffer+inv"). torch refuses keys
with '.' and keys that shadow a module attribute ("training", "forward", "to", ...); a name from a file must never
be a path.
"""

from __future__ import annotations

import re

from torch import nn

from .errors import AdapterNameError

MAX_LENGTH = 100
_ALLOWED = re.compile(r"[A-Za-z0-9_+-]+")
# Attributes torch would refuse (or shadow) as ModuleDict keys: class attributes plus instance ones like `training`.
RESERVED = frozenset(dir(nn.ModuleDict)) | frozenset(vars(nn.ModuleDict()))
RULE = f"names may contain only ASCII letters, digits, '-', '_' and '+' (1 to {MAX_LENGTH} characters)"


def check_name(name, kind: str = "adapter", where: str | None = None) -> str:
    """Return `name` if it is a valid adapter/head name, else raise AdapterNameError saying why."""
    reason = _problem(name)
    if reason:
        place = f" in {where}" if where else ""
        raise AdapterNameError(f"invalid {kind} name {name!r}{place}: {reason}")
    return name


def check_fusion_name(name, where: str | None = None, kind: str = "fusion") -> str:
    """A fusion name: a custom valid name, or the fused adapters' names joined by ','."""
    if isinstance(name, str) and "," in name:
        for part in name.split(","):
            check_name(part, "adapter", f"{kind} name {name!r}" + (f" in {where}" if where else ""))
        return name
    return check_name(name, kind, where)


def check_head_name(name, where: str | None = None) -> str:
    """A head name: like an adapter name, or a fusion's name ("a,b": the head of a fusion run)."""
    return check_fusion_name(name, where, kind="head")


def _problem(name) -> str | None:
    """Why `name` cannot be used, or None if it can."""
    if not isinstance(name, str):
        return f"a name must be a string, not {type(name).__name__}"
    if not name:
        return "a name must not be empty"
    if len(name) > MAX_LENGTH:
        return f"it has {len(name)} characters; {RULE}"
    if "/" in name or "\\" in name or ".." in name or name.startswith("~"):
        return f"it looks like a path; {RULE}"
    if "." in name:
        return f"'.' is not allowed (names become torch ModuleDict keys, which cannot contain dots); {RULE}"
    if any(c.isspace() or not c.isprintable() for c in name):
        return f"it contains whitespace or control characters; {RULE}"
    if not _ALLOWED.fullmatch(name):
        return RULE
    if name.startswith("_") or name in RESERVED:
        return "it is reserved (torch.nn.Module attribute names and names starting with '_' cannot be module keys)"
    return None
