"""Where an adapter's modules sit, in AdapterHub's terms: `{layer index: {location key: module}}`.

`model.get_adapter(name)` answers with this layout (layer -1 holds what is shared across layers). The engine
registers every module an adapter owns by its path in the model; this module reads layer and location from it.
"""

from __future__ import annotations

from collections import defaultdict

from torch import nn

# Owned paths outside the layers: first path segment -> AdapterHub's key at layer -1 (None: not reported, as
# AdapterHub keeps the prefix-tuning pool outside `get_adapter` too).
_GLOBAL_KEYS = {
    "shared_parameters": "shared",
    "invertible_adapters": "invertible",
    "prompt_tuning": "prompt",
    "prefix_tuning": None,
}
_LORA_LOCATIONS = {"q": "selfattn", "k": "selfattn", "v": "selfattn", "qkv": "selfattn"}
_MARKERS = (".adapters.", ".loras.", ".modules_to_save.")


def location_key(stack, path_in_layer: str) -> str:
    """AdapterHub's location key of a module at `path_in_layer` (relative to its transformer layer)."""
    sites = {"mh_adapter": stack.attention_site, "output_adapter": stack.output_site, "cross_adapter": stack.cross_site}
    for key, site in sites.items():
        if site is not None and path_in_layer.startswith(f"{site.host}.adapters."):
            return key
    for marker in _MARKERS:
        if marker in f".{path_in_layer}":
            host = f".{path_in_layer}".split(marker, 1)[0].lstrip(".")
            for place, target in [*stack.lora.items(), *stack.cross_lora.items()]:
                if target == host:
                    return _LORA_LOCATIONS.get(place, place)
            return host
    if "prefix" in path_in_layer:
        cross = stack.cross_attention and path_in_layer.startswith(stack.cross_attention + ".")
        return "cross_prefix" if cross else stack.prefix_key
    return path_in_layer.rsplit(".", 1)[0]


def adapter_locations(engine, name: str) -> dict[int, dict[str, nn.Module]]:
    """The modules adapter `name` owns, by layer index (-1: shared/global) and location key; several modules at
    one location come as an `nn.ModuleList`."""
    found: dict[int, dict[str, list[nn.Module]]] = defaultdict(lambda: defaultdict(list))
    owned = engine.owned.get(name, {})
    in_layers = {path: engine.layer_at(path) for path in owned}
    # Every prefixed attention's shim refers to the one shared prefix pool: AdapterHub reports each location's prefix
    # ("self_prefix"; "encoder_prefix", "self_prefix", "cross_prefix" in encoder-decoder models) once, at the first
    # layer that uses it (gates, one per layer, are reported everywhere). Copies of the pool's keys under attentions
    # without a prefix (AdapterHub's file layout) are not reported.
    first_pool: dict[str, tuple[int, str]] = {}
    for path, at in in_layers.items():
        if at and ".pool." in at[1] and _has_shim(engine, path, name):
            key = location_key(at[0].stack, at[1])
            first_pool[key] = min(first_pool.get(key, (at[0].index, path)), (at[0].index, path))
    reported = {path: key for key, (_, path) in first_pool.items()}
    for path, module in owned.items():
        at = in_layers[path]
        if at:
            ref, inner = at
            if ".pool." in inner:
                if path in reported:  # the pool entry holds one prefix module per location key
                    key = reported[path]
                    found[ref.index][key].append(module[key] if key in module else module)
                continue
            found[ref.index][location_key(ref.stack, inner)].append(module)
            continue
        parts = path.removeprefix(engine.base_prefix).split(".")
        first = next((part for part in parts if part in _GLOBAL_KEYS), parts[0])  # (under an encoder/sub-model)
        key = _GLOBAL_KEYS.get(first, first)
        if key is not None and not any(m is module for m in found[-1][key]):  # shared by sub-models: once
            found[-1][key].append(module)
    return {
        layer: {key: mods[0] if len(mods) == 1 else nn.ModuleList(mods) for key, mods in by_key.items()}
        for layer, by_key in sorted(found.items())
    }


def _has_shim(engine, pool_path: str, name: str) -> bool:
    """Whether the attention of a `<attention>.prefix_tuning.pool...` path gives adapter `name` a prefix."""
    attention = pool_path.split(".prefix_tuning.pool.", 1)[0]
    try:
        shim = engine.root.get_submodule(attention + ".prefix_tuning")
    except AttributeError:
        return False
    return name in getattr(shim, "prefixes", {})
