"""Reading and writing the AdapterHub on-disk files safely: JSON configs and weights (.bin or .safetensors).

Weights are never unpickled freely: `.bin` files go through `torch.load(weights_only=True)`, which accepts
tensors and plain containers only. Every error names the file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import AdapterLoadError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "pytorch_adapter.bin"
ADAPTER_SAFETENSORS = "adapter.safetensors"
HEAD_CONFIG = "head_config.json"
HEAD_WEIGHTS = "pytorch_model_head.bin"
HEAD_SAFETENSORS = "model_head.safetensors"
FUSION_CONFIG = "adapter_fusion_config.json"
FUSION_WEIGHTS = "pytorch_model_adapter_fusion.bin"
FUSION_SAFETENSORS = "model_adapter_fusion.safetensors"


def read_json(path: str | os.PathLike) -> dict:
    """Load a JSON object from `path`, raising AdapterLoadError that names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdapterLoadError(f"missing file: {path}") from None
    except OSError as err:
        raise AdapterLoadError(f"cannot read {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def write_json(path: str | os.PathLike, data: dict) -> None:
    _atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def find_weights(folder: Path, bin_name: str, safetensors_name: str) -> Path | None:
    """The weights file in `folder`, preferring safetensors; None if neither exists."""
    for name in (safetensors_name, bin_name):
        if (folder / name).is_file():
            return folder / name
    return None


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat {key: tensor} dict from a .safetensors or a tensors-only .bin file."""
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"missing weights file: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise AdapterLoadError(f"corrupt safetensors file {path}: {err}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).splitlines()[0] if str(err) else "unpickling refused"
        raise AdapterLoadError(f"{path} holds something other than tensors and was not loaded ({first_line})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise AdapterLoadError(f"corrupt weights file {path}: {err}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise AdapterLoadError(f"{path} must hold a flat dict of named tensors")
    return state


def write_weights(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Write tensors to `path` (.safetensors or .bin), atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":
        _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    else:
        _atomic_write(path, lambda tmp: torch.save(tensors, tmp))


def _atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename, so no half-written file is ever left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
