"""PEFT interop: load PEFT LoRA/(IA)^3 adapter folders into the engine, and save adapters in PEFT's format.

PEFT (https://github.com/huggingface/peft) writes `adapter_config.json` (with `peft_type`) and
`adapter_model.safetensors`, keyed `base_model.model.<module>.lora_A.weight`/`.lora_B.weight` (LoRA) or
`base_model.model.<module>.ia3_l` ((IA)^3). The wrapped modules are read from the weights, so the engine adapts
exactly the modules PEFT wrapped; layers without any are left out, and modules missing from a layer get a no-op.
Per-module ranks and scalings (`rank_pattern`, `alpha_pattern`, `use_rslora`) are folded into zero-padded factors
of one shared rank, which gives the same outputs.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from . import files
from .configs import ConfigUnion, IA3Config, LoRAConfig
from .errors import AdapterConfigError, AdapterLoadError
from .transformers_api import Conv1D

PEFT_CONFIG = "adapter_config.json"
PEFT_SAFETENSORS = "adapter_model.safetensors"
PEFT_WEIGHTS = "adapter_model.bin"
PREFIX = "base_model.model."
SUFFIXES = {"LORA": {".lora_A.weight": "A", ".lora_B.weight": "B"}, "IA3": {".ia3_l": "l"}}
# Options that change what the adapter computes and that the engine cannot reproduce (when set/truthy).
UNSUPPORTED = (
    "use_dora", "lora_bias", "layer_replication", "target_parameters", "trainable_token_indices",
    "alora_invocation_tokens", "use_qalora", "use_bdlora", "arrow_config", "kasa_config", "monteclora_config",
    "megatron_config",
)  # fmt: skip


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
    found = _read_modules(model, files.read_weights(weights_path), data, kind, weights_path)
    found = {at: m for at, m in found.items() if at[0] not in set(leave_out or [])}
    if not found:
        raise AdapterConfigError(f"leave_out={leave_out} leaves none of the modules of the PEFT adapter in {folder}")
    convert = _lora_from_peft if kind == "LORA" else _ia3_from_peft
    config, tensors = convert(model, found, data, weights_path)
    wrapped = {i for i, _ in found}
    config = config.replace(leave_out=[i for i in range(len(model._engine.layers)) if i not in wrapped])
    if name in model.adapters:
        raise AdapterConfigError(
            f"an adapter named {name!r} already exists; pass load_as= to load it under another name"
        )
    base = _base_name(model)
    state = {f"{base}{module}.loras.{name}.{param}": t for (module, param), t in tensors.items()}
    model.add_adapter(name, config=config)
    try:
        for key, own in model.adapter_state_dict(name).items():  # modules PEFT did not wrap in a layer: no-op
            state.setdefault(key, torch.full_like(own, 1.0 if kind == "IA3" else 0.0))
        model._load_weights(state, model._engine.state_dict_of(name, keep_vars=True), weights_path)
    except Exception:
        model.delete_adapter(name)
        raise
    if set_active:
        model.set_active_adapters(name)
    return name


def _check_config(data: dict, path: Path) -> str:
    kind = str(data.get("peft_type", "")).upper()
    if kind not in SUFFIXES:
        raise AdapterConfigError(f"{path}: PEFT type {data.get('peft_type')!r} is not supported (use LORA or IA3)")
    for option in UNSUPPORTED:
        if data.get(option):
            raise AdapterConfigError(f"{path}: PEFT option {option}={data[option]!r} is not supported by the engine")
    if data.get("bias", "none") not in (None, "none"):
        raise AdapterConfigError(f"{path}: PEFT bias={data['bias']!r} trains base-model biases; only 'none' loads")
    return kind


def _read_modules(model, state: dict, data: dict, kind: str, path: Path) -> dict:
    """Map PEFT weights to `{(layer, lora key): {"name": PEFT module name, "A"/"B"/"l": tensor}}`."""
    spec = model._engine.spec
    places = {f"{spec.layers}.{i}.{p}": (i, k) for i in range(len(model._engine.layers)) for k, p in spec.lora.items()}
    prefix = model._engine.base.base_model_prefix + "."
    keep = data.get("modules_to_save") or []
    found, skipped = {}, []
    for key, tensor in state.items():
        rel = key.removeprefix(PREFIX)
        suffix = next((s for s in SUFFIXES[kind] if rel.endswith(s)), None)
        if suffix is None:
            if any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", rel) for m in keep):
                skipped.append(rel)
                continue
            raise AdapterLoadError(f"{path}: unexpected weight {key!r} for a PEFT {kind} adapter")
        module = rel[: -len(suffix)]
        place = places.get(module.removeprefix(prefix) if module.startswith(prefix) else module)
        if place is None:
            raise AdapterConfigError(
                f"{path}: PEFT target {_target_of(data, module)} wraps {module!r}, which has no equivalent in the "
                f"engine for {model._engine.base.config.model_type} (it adapts {', '.join(spec.lora.values())})"
            )
        found.setdefault(place, {"name": module})[SUFFIXES[kind][suffix]] = tensor
    if skipped:
        warnings.warn(
            f"{path}: weights of modules_to_save {keep} ({len(skipped)} tensors, e.g. a task head) are not "
            "loaded; the engine loads the adapter weights only (add or load a head separately)",
            stacklevel=4,
        )
    if not found:
        raise AdapterLoadError(f"{path} holds no PEFT {kind} weights")
    return found


def _target_of(data: dict, module: str) -> str:
    targets = data.get("target_modules")
    if isinstance(targets, list):
        targets = [t for t in targets if module == t or module.endswith("." + t)] or targets
        return ", ".join(repr(t) for t in targets)
    return repr(targets)


def _matrices(found: dict) -> dict:
    keys = {k for _, k in found}
    attn = [m for m in "qkv" if m in keys or "qkv" in keys]
    return {
        "selfattn_lora": bool(attn),
        "attn_matrices": attn or ["q", "v"],
        "intermediate_lora": "intermediate" in keys,
        "output_lora": "output" in keys,
    }


def _lora_from_peft(model, found: dict, data: dict, path: Path):
    r, alpha = int(data["r"]), data["lora_alpha"]
    rslora, patterns = bool(data.get("use_rslora")), data.get("alpha_pattern") or {}

    def scaling(a, rank):
        return a / math.sqrt(rank) if rslora else a / rank

    for m in found.values():
        if "A" not in m or "B" not in m:
            raise AdapterLoadError(f"{path}: module {m['name']!r} lacks its lora_A or lora_B weight")
    rank = max(m["A"].shape[0] for m in found.values())
    shared = scaling(alpha, r)
    tensors = {}
    for (i, key), m in found.items():
        a_m = next((v for p, v in patterns.items() if re.match(rf"(.*\.)?({p})$", m["name"])), alpha)
        pad = rank - m["A"].shape[0]
        lora_a = F.pad(m["A"], (0, 0, 0, pad))
        lora_b = F.pad(m["B"] * (scaling(a_m, m["A"].shape[0]) / shared), (0, pad))
        module = f"{model._engine.spec.layers}.{i}.{model._engine.spec.lora[key]}"
        tensors[(module, "lora_A")] = lora_a.repeat(3, 1) if key == "qkv" else lora_a
        tensors[(module, "lora_B")] = lora_b
    new_alpha = shared * rank
    new_alpha = round(new_alpha) if abs(new_alpha - round(new_alpha)) < 1e-9 else new_alpha
    dropout = float(data.get("lora_dropout") or 0.0)
    return LoRAConfig(r=rank, alpha=new_alpha, dropout=dropout, **_matrices(found)), tensors


def _ia3_from_peft(model, found: dict, data: dict, path: Path):
    tensors = {}
    for (i, key), m in found.items():
        if m["l"].dim() != 2 or m["l"].shape[1] != 1:
            raise AdapterConfigError(
                f"{path}: PEFT (IA)^3 module {m['name']!r} is a feedforward module (feedforward_modules), which "
                "scales the layer's input; the engine's (IA)^3 scales outputs only"
            )
        tensors[(f"{model._engine.spec.layers}.{i}.{model._engine.spec.lora[key]}", "lora_B")] = m["l"]
    return IA3Config(**_matrices(found)), tensors


def _base_name(model) -> str:
    """The base model's state-dict prefix inside the root model ("" or e.g. "bert.")."""
    base = model._engine.base
    name = next((n for n, m in model.named_modules() if m is base), "")
    return name + "." if name else ""


# --- saving ------------------------------------------------------------------------------------------------


def save_peft(model, folder, name: str) -> None:
    """Write adapter `name` (LoRA or (IA)^3) as PEFT's adapter_config.json and adapter_model.safetensors."""
    config = model._require(name)
    if not isinstance(config, LoRAConfig) or isinstance(config, ConfigUnion):
        raise AdapterConfigError(f"format='peft' saves LoRA and (IA)^3 adapters only; {name!r} is not one")
    if config.use_gating:
        raise AdapterConfigError(f"adapter {name!r} uses gating, which PEFT has no equivalent for")
    ia3 = config.composition_mode == "scale"
    targets = [t for t in model._method("lora").targets.values() if name in t.loras]
    names = {id(m): n for n, m in model.named_modules()}
    rank = max((sum(t.loras[name].enabled) if t.fused else 1) * config.r for t in targets) if targets else config.r
    state = {}
    with torch.no_grad():
        for t in targets:
            lora, module = t.loras[name], PREFIX + names[id(t.module)]
            if ia3:
                vector = lora.lora_B * lora.scaling
                state[module + ".ia3_l"] = t._pad(vector.t(), lora.enabled, 1.0).t() if t.fused else vector
                continue
            lora_b = _block_diagonal(lora.lora_B, lora.enabled, config.r) if t.fused else lora.lora_B
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


def _block_diagonal(lora_b: torch.Tensor, enabled: list[bool], r: int) -> torch.Tensor:
    """A fused q|k|v projection's per-matrix B factors as one `(3 * width, n * r)` block-diagonal B."""
    n = sum(enabled)
    width = lora_b.shape[0] // n
    full = lora_b.new_zeros(3 * width, n * r)
    for j, third in enumerate(i for i, on in enumerate(enabled) if on):
        full[third * width : (third + 1) * width, j * r : (j + 1) * r] = lora_b[j * width : (j + 1) * width]
    return full


def _target_modules(model, targets: list):
    """PEFT `target_modules`: module-path suffixes when they match exactly these modules, else one regex."""
    spec, base = model._engine.spec, model._engine.base
    paths = sorted({t.path for t in targets})
    wanted = {f"{spec.layers}.{t.layer_idx}.{t.path}" for t in targets}
    matched = {n for n, _ in base.named_modules() if any(n == p or n.endswith("." + p) for p in paths)}
    if matched == wanted:
        return paths
    layers = "|".join(str(i) for i in sorted({t.layer_idx for t in targets}))
    modules = "|".join(re.escape(p) for p in paths)
    return rf"(.*\.)?{re.escape(spec.layers)}\.({layers})\.({modules})"
