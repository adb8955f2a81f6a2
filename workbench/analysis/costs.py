"""What each adapter, composition and the full model costs: trainable parameters and bytes on disk.

Adapter bytes are measured: the AdapterHub files (adapter, fusion and matching head) are written to a temporary
folder as `save_adapter` and `train()` write them by default, and their sizes summed. (Not as safetensors: that
format cannot share memory, so a prefix-tuning pool aliased by every layer would be counted once per layer.)
The full model's bytes are its weights' exact size (what a safetensors checkpoint holds, less its small header),
computed rather than written, since a large model would take long to save.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import torch

from ..core.composition import Block, Fuse
from ..core.keys import is_engine_key, is_fusion_key
from .setups import check_setup, heads_for, setup_label

COLUMNS = [
    "setup",
    "kind",
    "added_params",
    "head_params",
    "trainable_params",
    "bytes_on_disk",
    "pct_params",
    "pct_bytes",
    "measured",
]


def costs(model, setups, full_checkpoint: str | Path | None = None) -> pd.DataFrame:
    """One row per setup (adapter name, composition or its text), the full model, and a full fine-tuned
    checkpoint folder when given. Percentages are of the full model's parameters and bytes."""
    full_params, full_bytes = _full_model_size(model)
    rows = [_setup_row(model, setup) for setup in setups]
    rows.append(
        {
            "setup": "full model",
            "kind": "full model",
            "added_params": 0,
            "head_params": 0,
            "trainable_params": full_params,
            "bytes_on_disk": full_bytes,
            "measured": "tensor bytes",
        }
    )
    if full_checkpoint is not None:
        rows.append(_checkpoint_row(Path(full_checkpoint)))
    for row in rows:
        row["pct_params"] = 100.0 * row["trainable_params"] / full_params if full_params else float("nan")
        row["pct_bytes"] = 100.0 * row["bytes_on_disk"] / full_bytes if full_bytes else float("nan")
    return pd.DataFrame(rows, columns=COLUMNS)


def _unique_numel(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        key = (tensor.data_ptr(), tensor.numel()) if tensor.numel() else id(tensor)
        if key not in seen:
            seen.add(key)
            total += tensor.numel()
    return total


def _full_model_size(model) -> tuple[int, int]:
    """Parameters and weight bytes of the model without anything the engine added (adapters, fusions, heads)."""
    seen, params, size = set(), 0, 0
    parameter_names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    for key, tensor in model.state_dict().items():
        if is_engine_key(key) or key.startswith("heads."):
            continue
        ident = (tensor.data_ptr(), tensor.numel(), tensor.dtype)
        if ident in seen:  # tied weights are stored once
            continue
        seen.add(ident)
        size += tensor.numel() * tensor.element_size()
        if key in parameter_names:
            params += tensor.numel()
    return params, size


def _fuse_names(block) -> list[str]:
    if isinstance(block, Fuse):
        return [block.name]
    if isinstance(block, Block):
        return [name for child in block for name in _fuse_names(child)]
    return []


def _setup_row(model, setup) -> dict:
    block = check_setup(model, setup)
    if block is None:
        raise ValueError("costs are for adapters and compositions; the base model adds nothing")
    adapters = block.names()
    fusions = _fuse_names(block)
    heads = heads_for(model, block)
    # parameters only: a state dict also holds buffers (LoReFT's orthogonal parametrization keeps an h x h base)
    parameters = dict(model.named_parameters(remove_duplicate=False))
    added = [parameters[key] for name in adapters for key in model.adapter_state_dict(name) if key in parameters]
    added += [p for key, p in parameters.items() if any(is_fusion_key(key, f) for f in fusions)]
    base_ids = {p.data_ptr() for p in getattr(model, "base_model", model).parameters()}
    head_tensors = [
        p for name in heads for p in model.heads[name].parameters() if p.data_ptr() not in base_ids
    ]  # a head tied to the input embeddings does not add those
    added_params, head_params = _unique_numel(added), _unique_numel(head_tensors)
    return {
        "setup": setup_label(block),
        "kind": "adapter"
        if len(adapters) == 1 and not fusions and setup_label(block) == adapters[0]
        else "composition",
        "added_params": added_params,
        "head_params": head_params,
        "trainable_params": added_params + head_params,
        "bytes_on_disk": _saved_bytes(model, adapters, fusions, heads),
        "measured": "saved files",
    }


def _saved_bytes(model, adapters: list[str], fusions: list[str], heads: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="workbench-costs-") as tmp:
        folder = Path(tmp)
        for name in adapters:
            model.save_adapter(folder / "adapters" / name, name, with_head=False)
        for name in fusions:
            model.save_adapter_fusion(folder / "fusions" / name, name)
        for name in heads:
            model.save_head(folder / "heads" / name, name)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _checkpoint_row(folder: Path) -> dict:
    if not folder.is_dir():
        raise FileNotFoundError(f"full checkpoint folder {folder} does not exist")
    weight_files = [p for p in folder.rglob("*") if p.is_file() and _is_weight_file(p)]
    if not weight_files:
        raise ValueError(f"{folder} holds no weight files (*.safetensors, pytorch_*.bin)")
    return {
        "setup": "full fine-tuned",
        "kind": "full checkpoint",
        "added_params": 0,
        "head_params": 0,
        "trainable_params": _checkpoint_params(weight_files),
        "bytes_on_disk": sum(p.stat().st_size for p in weight_files),
        "measured": "saved files",
    }


def _is_weight_file(path: Path) -> bool:
    """Weights as transformers and AdapterHub name them: any `.safetensors`, and `pytorch_*.bin` (`pytorch_model.bin`,
    `pytorch_adapter.bin`, ...). Trainer's `training_args.bin` beside them is a pickle of settings, not weights."""
    return path.suffix == ".safetensors" or (path.suffix == ".bin" and path.name.startswith("pytorch_"))


def _checkpoint_params(weight_files: list[Path]) -> int:
    """Parameter count from the safetensors headers (no tensor is loaded); `.bin` files are read safely."""
    from safetensors import safe_open

    total = 0
    for path in weight_files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    shape = handle.get_slice(key).get_shape()
                    total += int(torch.Size(shape).numel())
        else:
            try:
                state = torch.load(path, map_location="meta", weights_only=True)
            except Exception as err:  # not a plain tensor file: never unpickled beyond tensors
                raise ValueError(f"{path} is not a weights file that loads safely ({type(err).__name__})") from None
            total += sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor))
    return total
