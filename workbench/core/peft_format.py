"""PEFT interop: load PEFT LoRA (DoRA too), (IA)^3 and VeRA adapter folders into the engine, and save them back.

PEFT (https://github.com/huggingface/peft) writes `adapter_config.json` (with `peft_type`) and
`adapter_model.safetensors`, keyed `base_model.model.<module>.lora_A.weight`/`.lora_B.weight` (LoRA),
`base_model.model.<module>.ia3_l` ((IA)^3) and `base_model.model.<module>.<param>` (`modules_to_save` copies);
DoRA adds `<module>.lora_magnitude_vector`, VeRA stores `<module>.vera_lambda_d`/`vera_lambda_b` and the shared pair
as `base_model.vera_A`/`base_model.vera_B`.
The modules are selected with PEFT's own rules (`check_target_module_exists`, `get_pattern_key`) and must agree
with the weights; each becomes a target of a `TargetedLoRAConfig` with its own rank and scaling, so any
nn.Linear/Conv1D module PEFT can wrap loads, not only AdapterHub's places.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import files
from .configs import ConfigUnion, LoRAConfig, TargetedLoRAConfig
from .errors import AdapterConfigError, AdapterLoadError
from .transformers_api import Conv1D

PEFT_CONFIG = "adapter_config.json"
PEFT_SAFETENSORS = "adapter_model.safetensors"
PEFT_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."
SUFFIXES = {
    "LORA": {".lora_A.weight": "A", ".lora_B.weight": "B", ".lora_magnitude_vector": "m"},
    "IA3": {".ia3_l": "l"},
    "VERA": {".vera_lambda_d": "d", ".vera_lambda_b": "b"},
}
VERA_PAIR = {"base_model.vera_A": "lora_A", "base_model.vera_B": "lora_B"}  # VeRA's shared projections
SEQ_CLS_HEAD_NAMES = ("score", "classifier")  # PEFT leaves these out of "all-linear" for task_type SEQ_CLS
# Options that change what the adapter computes and that the engine cannot reproduce (when set/truthy).
UNSUPPORTED = (
    "lora_bias", "layer_replication", "target_parameters", "trainable_token_indices",
    "alora_invocation_tokens", "use_qalora", "use_bdlora", "arrow_config", "kasa_config", "monteclora_config",
    "megatron_config", "modules_to_tie",
)  # fmt: skip
# Selection options written back as plain module lists on saving.
SELECTION = ("target_modules", "exclude_modules", "layers_to_transform", "layers_pattern", "rank_pattern",
             "alpha_pattern", "feedforward_modules", "modules_to_save")  # fmt: skip


def is_peft_folder(folder) -> bool:
    """True if `folder` holds a PEFT adapter (an adapter_config.json with `peft_type`)."""
    path = Path(folder) / PEFT_CONFIG
    if not path.is_file():
        return False
    data = files.read_json(path)
    return "peft_type" in data and "config" not in data


def default_name(source, folder: Path) -> str:
    """The local folder's name or the repo's name, without dots; "default" if that leaves nothing."""
    local = Path(str(source)).expanduser()
    name = local.resolve().name if local.is_dir() else str(source).rstrip("/").rsplit("/", 1)[-1]
    return name.replace(".", "_") or "default"


# --- loading -----------------------------------------------------------------------------------------------


def load_peft(model, folder: Path, name: str, leave_out=None, set_active: bool = False) -> str:
    """Load the PEFT adapter in `folder` as adapter `name`; on any error the model is left unchanged."""
    config_path = Path(folder) / PEFT_CONFIG
    data = files.read_json(config_path)
    kind = _check_config(data, config_path)
    weights_path = files.find_weights(Path(folder), PEFT_WEIGHTS, PEFT_SAFETENSORS)
    if weights_path is None:
        raise AdapterLoadError(f"no PEFT adapter weights ({PEFT_SAFETENSORS} or {PEFT_WEIGHTS}) in {folder}")
    if name in model.adapters:
        raise AdapterConfigError(
            f"an adapter named {name!r} already exists; pass load_as= to load it under another name"
        )
    config, tensors = _from_peft(model, data, kind, files.read_weights(weights_path), weights_path)
    prefix = model._engine.base_prefix
    if leave_out:
        kept = [p for p in config.targets if _layer(model, p) not in set(leave_out)]
        if not kept and not config.modules_to_save:
            raise AdapterConfigError(
                f"leave_out={leave_out} leaves none of the modules of the PEFT adapter in {folder}"
            )
        config = config.replace(leave_out=sorted(set(leave_out)))
        tensors = {k: t for k, t in tensors.items() if k[0] in kept or k[0] in config.modules_to_save}
    model.add_adapter(name, config=config)
    try:
        state = {f"{path}.{holder}.{name}.{param}": t for (path, holder, param), t in tensors.items() if holder}
        own = model._engine.state_dict_of(name)
        for (path, _, param), pair in tensors.items():
            if path is None:  # VeRA's pair, sized for all of PEFT's modules: the leading part serves those kept here
                key = f"{prefix}shared_parameters.{name}.{param}"
                rows, cols = own[key].shape
                state[key] = pair[:rows, :cols] if pair.shape[0] >= rows and pair.shape[1] >= cols else pair
        model._load_weights(state, model._engine.state_dict_of(name, keep_vars=True), weights_path)
    except Exception:
        model.delete_adapter(name)
        raise
    if set_active:
        model.set_active_adapters(name)
    return name


def _layer(model, path: str):
    from .methods.lora import locate

    return locate(model._engine, path)[0]


def _check_config(data: dict, path: Path) -> str:
    """The PEFT type; every option the engine reads must have a usable value (file, key and value named)."""
    kind = str(data.get("peft_type", "")).upper()
    if kind not in SUFFIXES:
        raise AdapterConfigError(
            f"{path}: PEFT type {data.get('peft_type')!r} is not supported (use LORA, IA3 or VERA)"
        )
    for option in UNSUPPORTED:
        if data.get(option):
            raise AdapterConfigError(f"{path}: PEFT option {option}={data[option]!r} is not supported by the engine")
    if data.get("bias", "none") not in (None, "none"):
        raise AdapterConfigError(f"{path}: PEFT bias={data['bias']!r} trains base-model biases; only 'none' loads")

    def bad(key, what):
        return AdapterConfigError(f"{path}: PEFT {key}={data.get(key)!r} must be {what}")

    def names(key, regex_ok=True, required=False):
        value = data.get(key)
        if value is None and not required:
            return
        if isinstance(value, str) and regex_ok:
            try:
                re.compile(value)
            except re.error as err:
                raise bad(key, f"a valid regular expression ({err})") from None
        elif not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise bad(key, "a list of module names" + (" or a regular expression" if regex_ok else ""))

    names("target_modules", required=True)
    names("exclude_modules")
    names("feedforward_modules")
    names("modules_to_save", regex_ok=False)
    layers = data.get("layers_to_transform")
    if not (layers is None or _is_int(layers) or (isinstance(layers, list) and all(_is_int(i) for i in layers))):
        raise bad("layers_to_transform", "a layer index or a list of them")
    pattern = data.get("layers_pattern")
    if not (
        pattern is None
        or isinstance(pattern, str)
        or (isinstance(pattern, list) and all(isinstance(p, str) for p in pattern))
    ):  # noqa: E501
        raise bad("layers_pattern", "a module name or a list of them")
    if kind == "LORA":
        if not (_is_int(data.get("r")) and data["r"] >= 1):
            raise bad("r", "an integer >= 1")
        if not _is_number(data.get("lora_alpha")):
            raise bad("lora_alpha", "a number")
        for key, check, what in (("rank_pattern", _is_int, "integers >= 1"), ("alpha_pattern", _is_number, "numbers")):
            value = data.get(key) or {}
            if not (isinstance(value, dict) and all(check(v) and v > 0 for v in value.values())):
                raise bad(key, f"a dict from module name patterns to {what}")
            for pattern_key in value:
                try:
                    re.compile(pattern_key)
                except re.error as err:
                    raise bad(key, f"keyed by valid regular expressions ({pattern_key!r}: {err})") from None
        dropout = data.get("lora_dropout") or 0.0
        if not (_is_number(dropout) and 0 <= dropout < 1):
            raise bad("lora_dropout", "a probability in [0, 1)")
    if kind == "VERA":
        if not (_is_int(data.get("r")) and data["r"] >= 1):
            raise bad("r", "an integer >= 1")
        if data.get("save_projection") is False:
            raise bad("save_projection", "true: the engine needs the saved vera_A/vera_B, it does not redraw them")
        dropout = data.get("vera_dropout") or 0.0
        if not (_is_number(dropout) and 0 <= dropout < 1):
            raise bad("vera_dropout", "a probability in [0, 1)")
        if not _is_number(data.get("d_initial", 0.1)):
            raise bad("d_initial", "a number")
    return kind


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# PEFT's matching (peft.tuners.tuners_utils.check_target_module_exists, peft.utils.other.get_pattern_key).


def _listed(entries, name: str) -> bool:
    """A list entry matches a module name exactly or as a `.`-suffix; a string is a full regex match."""
    if isinstance(entries, str):
        return re.fullmatch(entries, name) is not None
    return name in entries or any(name.endswith("." + e) for e in entries)


def _selected(data: dict, name: str, all_linear: set[str]) -> bool:
    """Whether PEFT wraps the module `name` (named as in the model PEFT saw)."""
    if data.get("exclude_modules") and _listed(data["exclude_modules"], name):
        return False
    if any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in data.get("modules_to_save") or []):
        return False
    targets = data["target_modules"]
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return name in all_linear
        return re.fullmatch(targets, name) is not None
    if name in targets:
        return True
    if not any(name.endswith("." + t) for t in targets):
        return False
    indexes = data.get("layers_to_transform")
    if indexes is None or indexes == []:
        return True
    patterns = data.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match is not None:
                break
    if match is None:
        return False
    return int(match["idx"]) == indexes if isinstance(indexes, int) else int(match["idx"]) in indexes


def _pattern_value(patterns: dict, name: str, default):
    """PEFT's `get_pattern_key`: the first key whose regex matches the end of `name` after a dot."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return patterns[key]
    return default


def _feedforward(data: dict, name: str) -> bool:
    modules = data.get("feedforward_modules") or []
    if isinstance(modules, str):
        return re.fullmatch(modules, name) is not None
    return any(name.endswith(m) for m in modules)  # sic: PEFT checks a plain suffix here


def _scopes(model):
    """Ways the module names in a PEFT file can map to paths in this model: PEFT wrapped this same model, its bare
    base model (this is a task model or AdapterModel), or a task model around it (this is the bare base)."""
    engine = model._engine
    skip = _engine_modules(model)
    root = {n: n for n, m in model.named_modules() if id(m) not in skip}
    base = {n: engine.base_prefix + n for n, m in engine.base.named_modules() if id(m) not in skip}
    scopes = [root]
    if engine.base is not model:
        scopes.append(base)
    else:
        scopes.append({f"{engine.base.base_model_prefix}.{n}" if n else engine.base.base_model_prefix: p
                       for n, p in base.items()})  # fmt: skip
    return scopes


def _engine_modules(model) -> set[int]:
    """Modules the engine added (adapters, copies, heads): never PEFT targets."""
    engine = model._engine
    skip = {id(m) for owned in engine.owned.values() for top in owned.values() for m in top.modules()}
    for holder in ("loras", "modules_to_save"):
        skip |= {id(m) for top in model.modules() if holder in top._modules for m in top._modules[holder].modules()}
    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.Module):
        skip |= {id(m) for m in heads.modules()}
    return skip


def _all_linear(model, data: dict, scope: dict) -> set[str]:
    """PEFT's "all-linear": every nn.Linear/Conv1D except the output layer (a classifier for SEQ_CLS)."""
    modules = {n: model.get_submodule(p) for n, p in scope.items()}
    linear = {n for n, m in modules.items() if isinstance(m, nn.Linear | Conv1D)}
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    excluded = {n for n, m in modules.items() if out is not None and m is out}
    if out is None and str(data.get("task_type")).upper() == "SEQ_CLS":
        excluded |= {n for n in SEQ_CLS_HEAD_NAMES if n in modules}
    return linear - excluded


def _from_peft(model, data: dict, kind: str, state: dict, path: Path):
    """The engine config and the tensors `{(module path, holder, param): tensor}` of a PEFT adapter."""
    wrapped, other, tensors = {}, {}, {}
    for key, tensor in state.items():
        if kind == "VERA" and key in VERA_PAIR:
            tensors[(None, None, VERA_PAIR[key])] = tensor
            continue
        if not key.startswith(PREFIX):
            raise AdapterLoadError(f"{path}: unexpected weight {key!r} (PEFT keys start with {PREFIX!r})")
        rel = key[len(PREFIX) :]
        suffix = next((s for s in SUFFIXES[kind] if rel.endswith(s)), None)
        if suffix is None and re.search(r"\.(lora_|ia3_|vera_)", rel):
            raise AdapterConfigError(
                f"{path}: PEFT weight {key!r} adapts a module the engine cannot (it adapts nn.Linear and Conv1D "
                "modules only, with lora_A/lora_B, ia3_l or vera_lambda_d/vera_lambda_b)"
            )
        if suffix is None:
            other[rel] = tensor
        else:
            wrapped.setdefault(rel[: -len(suffix)], {})[SUFFIXES[kind][suffix]] = tensor
    if not wrapped:
        raise AdapterLoadError(f"{path} holds no PEFT {kind} weights")
    if kind == "VERA" and len(tensors) != 2:
        raise AdapterLoadError(f"{path} lacks VeRA's shared projections base_model.vera_A/base_model.vera_B")
    scopes = _scopes(model)
    scope = next((s for s in scopes if all(n in s for n in wrapped)), None)
    if scope is None:
        missing = next(n for n in wrapped if n not in scopes[0])
        raise AdapterLoadError(
            f"{path}: PEFT weights for module {missing!r}, which this {type(model).__name__} does not have"
        )
    all_linear = _all_linear(model, data, scope) if str(data["target_modules"]).lower() == "all-linear" else set()
    selected = [n for n in scope if n and _selected(data, n, all_linear)]
    targets = {}
    for name in selected:
        module = model.get_submodule(scope[name])
        if not isinstance(module, nn.Linear | Conv1D):
            raise AdapterConfigError(
                f"{path}: PEFT target_modules={data['target_modules']!r} selects {name!r} "
                f"({type(module).__name__}); the engine adapts nn.Linear and Conv1D modules only"
            )
        if name not in wrapped:
            raise AdapterLoadError(f"{path} lacks the {kind} weights of {name!r}, which its config selects")
        targets[scope[name]] = _target(data, kind, name, wrapped[name], scope[name], tensors, path)
    extra = sorted(set(wrapped) - set(selected))
    if extra:
        raise AdapterLoadError(
            f"{path}: weights for {extra[0]!r}, which target_modules={data['target_modules']!r} does not select"
        )
    saved = _modules_to_save(model, data, scope, other, tensors, path)
    if kind == "LORA":
        config = TargetedLoRAConfig(
            r=int(data["r"]), alpha=data["lora_alpha"], dropout=float(data.get("lora_dropout") or 0.0),
            use_rslora=bool(data.get("use_rslora")), use_dora=bool(data.get("use_dora")), selfattn_lora=False,
            attn_matrices=[], targets=targets, modules_to_save=saved, peft=_kept(data),
        )  # fmt: skip
    elif kind == "VERA":
        config = TargetedLoRAConfig(
            r=int(data["r"]), alpha=int(data["r"]), dropout=float(data.get("vera_dropout") or 0.0), init_weights="vera",
            vera_d=float(data.get("d_initial", 0.1)), vera_b=0.0, selfattn_lora=False, attn_matrices=[],
            targets=targets, modules_to_save=saved, peft=_kept(data),
        )  # fmt: skip
    else:
        config = TargetedLoRAConfig(
            r=1, alpha=1, composition_mode="scale", init_weights="ia3", selfattn_lora=False, attn_matrices=[],
            targets=targets, modules_to_save=saved, peft=_kept(data),
        )  # fmt: skip
    return config, tensors


def _target(data: dict, kind: str, name: str, weights: dict, at: str, tensors: dict, path: Path) -> dict:
    """One module's options (rank, alpha, input side), checking its weights against them."""
    if kind == "IA3":
        vector = weights["l"]
        on_input = _feedforward(data, name)
        if vector.dim() != 2 or vector.shape[1 - int(on_input)] != 1:
            side = "(1, in_features): a feedforward module" if on_input else "(out_features, 1)"
            raise AdapterLoadError(f"{path}: ia3_l of {name!r} has shape {tuple(vector.shape)}, expected {side}")
        tensors[(at, "loras", "lora_B")] = vector.t() if on_input else vector
        return {"r": 1, "alpha": 1, "on_input": on_input}
    if kind == "VERA":
        if "d" not in weights or "b" not in weights:
            raise AdapterLoadError(f"{path}: module {name!r} lacks its vera_lambda_d or vera_lambda_b weight")
        if weights["d"].shape != (data["r"],) or weights["b"].dim() != 1:
            raise AdapterLoadError(
                f"{path}: the VeRA vectors of {name!r} have shapes {tuple(weights['d'].shape)} and "
                f"{tuple(weights['b'].shape)}; its config says r={data['r']}"
            )
        tensors[(at, "loras", "vera_D")], tensors[(at, "loras", "vera_B")] = weights["d"], weights["b"]
        return {"r": data["r"], "alpha": data["r"], "on_input": False}
    if bool(data.get("use_dora")) != ("m" in weights):
        raise AdapterLoadError(
            f"{path}: module {name!r} {'lacks' if data.get('use_dora') else 'has'} a lora_magnitude_vector, but its "
            f"config says use_dora={bool(data.get('use_dora'))}"
        )
    if "m" in weights:
        tensors[(at, "loras", "m.weight")] = weights["m"].reshape(-1, 1)
    if "A" not in weights or "B" not in weights:
        raise AdapterLoadError(f"{path}: module {name!r} lacks its lora_A or lora_B weight")
    r = _pattern_value(data.get("rank_pattern") or {}, name, data["r"])
    alpha = _pattern_value(data.get("alpha_pattern") or {}, name, data["lora_alpha"])
    if weights["A"].shape[0] != r or weights["B"].dim() != 2 or weights["B"].shape[1] != r:
        raise AdapterLoadError(
            f"{path}: the LoRA weights of {name!r} have rank {weights['A'].shape[0]}, its config says r={r}"
        )
    tensors[(at, "loras", "lora_A")], tensors[(at, "loras", "lora_B")] = weights["A"], weights["B"]
    return {"r": r, "alpha": alpha, "on_input": False}


def _modules_to_save(model, data: dict, scope: dict, other: dict, tensors: dict, path: Path) -> list[str]:
    """Paths of the `modules_to_save` present in this model, their copies' weights put in `tensors`."""
    wanted = data.get("modules_to_save") or []
    found = [n for n in scope if n and any(n.endswith(m) for m in wanted)]
    found = [n for n in found if not any(n.startswith(f + ".") for f in found if f != n)]  # outermost only
    found = [n for n in found if any(k.startswith(n + ".") for k in other)]  # PEFT saved weights for it
    saved = []
    for name in found:
        module = model.get_submodule(scope[name])
        own = [k for k in module.state_dict() if not {"loras", "modules_to_save"} & set(k.split("."))]
        for param in own:
            key = next((k for k in (f"{name}.{param}", f"{name}.modules_to_save.{param}") if k in other), None)
            if key is None:
                raise AdapterLoadError(f"{path} lacks weight {name}.{param} of modules_to_save module {name!r}")
            tensors[(scope[name], "modules_to_save", param)] = other.pop(key)
        saved.append(scope[name])
    if other:
        key = next(iter(other))
        if not any(k.startswith(m + ".") or f".{m}." in "." + k for k in other for m in wanted):
            raise AdapterLoadError(f"{path}: unexpected weight {PREFIX + key!r} for a PEFT adapter")
        warnings.warn(
            f"{path}: weights of modules_to_save {wanted} that this model does not have ({len(other)} tensors, "
            f"e.g. {key!r}) are not loaded",
            stacklevel=4,
        )
    return saved


def _kept(data: dict) -> dict:
    """The PEFT options written back on saving (module selection is written from the loaded targets)."""
    return {k: v for k, v in data.items() if k not in SELECTION and _json_plain(v)}


def _json_plain(value) -> bool:
    return value is None or isinstance(value, str | int | float | bool | list | dict)


# --- saving ------------------------------------------------------------------------------------------------


def save_peft(model, folder, name: str) -> None:
    """Write adapter `name` (LoRA or (IA)^3) as PEFT's adapter_config.json and adapter_model.safetensors."""
    config = model._require(name)
    if not isinstance(config, LoRAConfig) or isinstance(config, ConfigUnion):
        raise AdapterConfigError(f"format='peft' saves LoRA and (IA)^3 adapters only; {name!r} is not one")
    if config.use_gating:
        raise AdapterConfigError(f"adapter {name!r} uses gating, which PEFT has no equivalent for")
    if isinstance(config, TargetedLoRAConfig):
        return _save_targeted(model, folder, name, config)
    if config.use_dora or config.is_vera:
        raise AdapterConfigError(
            f"adapter {name!r} is an AdapterHub {'VeRA' if config.is_vera else 'DoRA'} adapter, which PEFT cannot "
            "describe (PEFT's DoRA norms the scaled delta and leaves the bias outside; its VeRA trains vectors and "
            "has no alpha/r): save it in AdapterHub's format. Adapters loaded from PEFT save back to PEFT."
        )
    ia3 = config.composition_mode == "scale"
    targets = [t for t in model._method("lora").targets.values() if name in t.loras]
    fused = {id(t): hasattr(t.loras[name], "enabled") for t in targets}
    rank = max((sum(t.loras[name].enabled) if fused[id(t)] else 1) * config.r for t in targets) if targets else config.r
    state = {}
    with torch.no_grad():
        for t in targets:
            lora, module = t.loras[name], PREFIX + t.path
            if ia3:
                vector = lora.lora_B * lora.scaling
                state[module + ".ia3_l"] = t._pad(vector.t(), lora.enabled, 1.0).t() if fused[id(t)] else vector
                continue
            lora_b = _block_diagonal(t, lora, config.r) if fused[id(t)] else lora.lora_B
            state[module + ".lora_A.weight"] = F.pad(lora.lora_A, (0, 0, 0, rank - lora.lora_A.shape[0]))
            state[module + ".lora_B.weight"] = F.pad(lora_b, (0, rank - lora_b.shape[1]))
    common = {
        "peft_type": "IA3" if ia3 else "LORA",
        "task_type": None,
        "base_model_name_or_path": getattr(model._engine.base.config, "name_or_path", None) or None,
        "target_modules": _target_modules(model, targets),
        "fan_in_fan_out": any(isinstance(t.module, Conv1D) for t in targets),
        "modules_to_save": None,
        "inference_mode": True,
    }
    if ia3:
        extra = {"feedforward_modules": [], "init_ia3_weights": True}
    else:
        alpha = config.alpha / config.r * rank
        extra = {
            "r": rank,
            "lora_alpha": round(alpha) if abs(alpha - round(alpha)) < 1e-9 else alpha,
            "lora_dropout": config.dropout,
            "bias": "none",
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
            "layers_to_transform": None,
            "layers_pattern": None,
            "rank_pattern": {},
            "alpha_pattern": {},
        }
    folder = Path(folder)
    files.write_json(folder / PEFT_CONFIG, {**common, **extra})
    files.write_weights(folder / PEFT_SAFETENSORS, state)


def _block_diagonal(target, lora, r: int) -> torch.Tensor:
    """A fused q|k|v projection's per-matrix B factors as one `(out_features, n * r)` block-diagonal B."""
    full = lora.lora_B.new_zeros(target.out_features, sum(lora.enabled) * r)
    blocks = lora.lora_B.split(target.widths(lora.enabled))
    parts = [part for part, on in zip(target.parts, lora.enabled, strict=True) if on]
    for j, (block, part) in enumerate(zip(blocks, parts, strict=True)):
        full[part, j * r : (j + 1) * r] = block
    return full


def _target_modules(model, targets: list):
    """PEFT `target_modules`: module-path suffixes when they match exactly these modules, else one regex."""
    engine = model._engine
    located = [engine.layer_at(t.path) for t in targets]  # (layer, place in the layer)
    paths = sorted({place for _, place in located})
    wanted = {f"{ref.path}.{place}" for ref, place in located}
    matched = {n for n, _ in engine.base.named_modules() if any(n == p or n.endswith("." + p) for p in paths)}
    if matched == wanted:
        return paths
    layer_paths = {ref.index: ref.path for ref, _ in located}
    layers = "|".join(re.escape(layer_paths[i]) for i in sorted(layer_paths))
    modules = "|".join(re.escape(p) for p in paths)
    return rf"(.*\.)?({layers})\.({modules})"


def _save_targeted(model, folder, name: str, config: TargetedLoRAConfig) -> None:
    """A PEFT-loaded adapter: the original options, with its modules listed by name (exact or as a suffix) and
    per-module ranks/alphas as escaped-name patterns, which PEFT resolves to exactly the same modules."""
    method, prefix = model._method("lora"), model._engine.base_prefix
    ia3, vera = config.composition_mode == "scale", config.is_vera
    targets = [t for t in method.targets.values() if name in t.loras]
    saved = [s for s in method.saved.values() if name in s.copies]
    listed = lambda path: path[len(prefix) :] if prefix and path.startswith(prefix) else path  # noqa: E731
    state, rank_pattern, alpha_pattern = {}, {}, {}
    with torch.no_grad():
        for t in targets:
            lora, key = t.loras[name], PREFIX + t.path
            if ia3:
                vector = lora.lora_B * lora.scaling
                state[key + ".ia3_l"] = vector.t() if lora.on_input else vector
                continue
            if vera:
                state[key + ".vera_lambda_d"], state[key + ".vera_lambda_b"] = lora.vera_D, lora.vera_B
                continue
            state[key + ".lora_A.weight"], state[key + ".lora_B.weight"] = lora.lora_A, lora.lora_B
            if config.use_dora:
                state[key + ".lora_magnitude_vector"] = lora.m.weight.view(-1)
            options = config.targets[t.path]
            if options["r"] != config.r:
                rank_pattern[re.escape(listed(t.path))] = options["r"]
            if options["alpha"] != config.alpha:
                alpha_pattern[re.escape(listed(t.path))] = options["alpha"]
        for s in saved:
            for param, tensor in s.copies[name].state_dict().items():
                state[f"{PREFIX}{s.path}.{param}"] = tensor
    data = {
        **config.peft,
        "target_modules": sorted(listed(t.path) for t in targets),
        "exclude_modules": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "modules_to_save": sorted(listed(s.path) for s in saved) or None,
        "fan_in_fan_out": any(isinstance(t.module, Conv1D) for t in targets),
        "inference_mode": True,
    }
    if ia3:  # PEFT's IA3Config has no layer options
        data["feedforward_modules"] = sorted(listed(t.path) for t in targets if t.loras[name].on_input)
        data.pop("layers_to_transform")
        data.pop("layers_pattern")
    elif vera:
        pair = model._engine.base.shared_parameters[name]
        state.update({k: getattr(pair, v) for k, v in VERA_PAIR.items()})
        data.update(r=config.r, vera_dropout=config.dropout, save_projection=True)
    else:
        data.update(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, use_rslora=config.use_rslora,
                    rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)  # fmt: skip
    folder = Path(folder)
    files.write_json(folder / PEFT_CONFIG, data)
    files.write_weights(folder / PEFT_SAFETENSORS, {k: v.detach().contiguous() for k, v in state.items()})
