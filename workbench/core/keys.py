"""Which state-dict keys belong to an adapter, a fusion or a head, and how keys are renamed on load.

The patterns are AdapterHub's, so files round-trip with the `adapters` library.
"""

from __future__ import annotations

import re

import torch

ADAPTER_KEY_PARTS = (
    "adapters", "prefix_tunings", "prefix_gates", "loras", "prompt_tunings", "shared_parameters", "modules_to_save",
    "refts",
)  # fmt: skip
LEGACY_RENAMES = {
    "attention_text_task_adapters": "adapters",
    "attention_text_lang_adapters": "adapters",
    "layer_text_task_adapters": "adapters",
    "layer_text_lang_adapters": "adapters",
    "invertible_lang_adapters": "invertible_adapters",
}


def is_adapter_key(key: str, name: str) -> bool:
    """True for every weight of adapter `name` (bottleneck, invertible, LoRA, prefix, prompt, shared PHM)."""
    dotted = "." + key
    return any(f".{part}.{name}." in dotted or f"_{part}.{name}." in dotted for part in ADAPTER_KEY_PARTS)


ENGINE_KEY_PARTS = (
    "adapters.",
    "adapter_fusion_layer.",
    "loras.",
    "modules_to_save.",
    "prefix_tuning.",
    "prompt_tuning.",
    "reft_layer.",
    "shared_parameters.",
)


def is_engine_key(key: str) -> bool:
    """True for any weight the engine added to a model (adapters, fusions, LoRA, prefix/prompt, shared PHM)."""
    dotted = "." + key
    return any(f".{part}" in dotted or f"_{part}" in dotted for part in ENGINE_KEY_PARTS)


def is_fusion_key(key: str, fusion_name: str) -> bool:
    return f"adapter_fusion_layer.{fusion_name}." in key


def rename_adapter_keys(state: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    """Apply legacy renames and move every key from adapter `old` to adapter `new`."""
    renamed = {}
    for key, value in state.items():
        for legacy, current in LEGACY_RENAMES.items():
            key = key.replace(legacy, current)
        if old != new:
            for part in ADAPTER_KEY_PARTS:
                key = key.replace(f"{part}.{old}.", f"{part}.{new}.")
        renamed[key] = value
    return renamed


def rename_prefixed(state: dict[str, torch.Tensor], marker: str, old: str, new: str) -> dict[str, torch.Tensor]:
    if old == new:
        return dict(state)
    return {k.replace(f"{marker}.{old}.", f"{marker}.{new}."): v for k, v in state.items()}


def align_base_prefix(state: dict[str, torch.Tensor], prefix: str, root_is_base: bool) -> dict[str, torch.Tensor]:
    """Add or strip the base-model prefix (e.g. `bert.`) so keys fit the model they are loaded into.

    Files saved from a bare base model have no prefix; files saved from a model with heads have one.
    """
    dotted = prefix + "."
    if root_is_base:
        return {k[len(dotted) :] if k.startswith(dotted) else k: v for k, v in state.items()}
    return {k if k.startswith(dotted) or k.startswith("heads.") else dotted + k: v for k, v in state.items()}


# Segments that start an adapter's own part of a key: renames of module paths (`ArchSpec.file_keys`) reach up to and
# including the first of them, never further, so an adapter named like a module ("layers") is never renamed.
_OWNED_SEGMENTS = frozenset(
    {"adapters", "adapter_fusion_layer", "loras", "prefix_tunings", "prefix_gates", "refts", "prompt_tunings",
     "shared_parameters", "modules_to_save", "invertible_adapters"}
)  # fmt: skip


def file_keys_of(engine) -> tuple[tuple[str, str], ...]:
    """The renames (`ArchSpec.file_keys`) that apply to `engine`'s model. A pattern starting with "^" names the root
    model's own modules and applies only to a base model used on its own (e.g. CLIPTextModel, whose layers
    AdapterHub's transformers 4 model kept under `text_model.`; CLIPTextModelWithProjection has that prefix already)."""
    pairs = engine.spec.file_keys
    return pairs if engine.root is engine.base else tuple(p for p in pairs if not p[0].startswith("^"))


def _renamer(pairs: tuple[tuple[str, str], ...]):
    """A function renaming the module-path part of a key by `pairs`: whole dotted segments, in one pass (no
    chaining); a pattern starting with "^" matches only at the start of the key."""
    table = {k.removeprefix("^"): v for k, v in pairs}
    anchored = [k[1:] for k, _ in pairs if k.startswith("^")]
    inner = [k for k, _ in pairs if not k.startswith("^")]
    alternatives = [rf"^(?:{re.escape(k)})(?![^.])" for k in anchored]
    alternatives += [rf"(?<![^.])(?:{re.escape(k)})(?![^.])" for k in sorted(inner, key=len, reverse=True)]
    pattern = re.compile("|".join(alternatives))

    def rename(key: str) -> str:
        parts = key.split(".")
        cut = next((i + 1 for i, part in enumerate(parts) if part in _OWNED_SEGMENTS), len(parts))
        path = pattern.sub(lambda m: table[m.group(0)], ".".join(parts[:cut]))
        return ".".join([path, *parts[cut:]])

    return rename


def to_file_keys(state: dict[str, torch.Tensor], pairs: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    """`state` (this model's keys) with the module names AdapterHub's files use (`ArchSpec.file_keys`)."""
    if not pairs:
        return state
    rename = _renamer(pairs)
    return {rename(k): v for k, v in state.items()}


def from_file_keys(state: dict[str, torch.Tensor], pairs: tuple[tuple[str, str], ...]) -> dict[str, torch.Tensor]:
    """The inverse of `to_file_keys`: keys read from an AdapterHub file, with this model's module names."""
    if not pairs:
        return state
    anchor = lambda ours, theirs: "^" if ours.startswith("^") else ""  # noqa: E731
    rename = _renamer(tuple((anchor(ours, theirs) + theirs, ours.removeprefix("^")) for ours, theirs in pairs))
    return {rename(k): v for k, v in state.items()}
