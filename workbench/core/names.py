"""One rule for adapter, head and fusion names, whether they come from code or from a saved file.

Names become keys of torch `ModuleDict`s (and folder names when saved). AdapterHub code names adapters freely
("pfeiffer+inv", "lora[r=4, alpha=8]"), so only what would break is refused: torch refuses keys with '.' and keys
that shadow a module attribute ("training", "forward", "to", ...); a name must never be a path, nor hold characters
a file system refuses.
"""

from __future__ import annotations

from torch import nn

from .errors import AdapterNameError

MAX_LENGTH = 100
_FORBIDDEN = set('./\\:*?"<>|')  # dots (ModuleDict keys), path separators, and what some file systems refuse
# Attributes torch would refuse (or shadow) as ModuleDict keys: class attributes plus instance ones like `training`.
RESERVED = frozenset(dir(nn.ModuleDict)) | frozenset(vars(nn.ModuleDict()))
RULE = (
    "names may not contain '.', '/', '\\', any of :*?\"<>|, control characters, or start or end with whitespace "
    f"(1 to {MAX_LENGTH} characters)"
)


def check_name(name, kind: str = "adapter", where: str | None = None) -> str:
    """Return `name` if it is a valid adapter/head name, else raise AdapterNameError saying why."""
    reason = _problem(name)
    if reason:
        place = f" in {where}" if where else ""
        raise AdapterNameError(f"invalid {kind} name {name!r}{place}: {reason}")
    return name


def check_fusion_name(name, where: str | None = None, kind: str = "fusion") -> str:
    """A fusion name: a custom name, or the fused adapters' names joined by ',' (no empty part)."""
    check_name(name, kind, where)
    if "" in name.split(","):
        place = f" in {where}" if where else ""
        raise AdapterNameError(f"invalid {kind} name {name!r}{place}: it has an empty part between commas")
    return name


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
    if any(not c.isprintable() for c in name) or name != name.strip():
        return f"it contains control characters or starts or ends with whitespace; {RULE}"
    if _FORBIDDEN & set(name):
        return f"it contains {''.join(sorted(_FORBIDDEN & set(name)))!r}; {RULE}"
    if name.startswith("_") or name in RESERVED:
        return "it is reserved (torch.nn.Module attribute names and names starting with '_' cannot be module keys)"
    return None
