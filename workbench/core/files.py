"""Reading and writing the AdapterHub on-disk files safely: JSON configs and weights (.bin or .safetensors).

Weights are never unpickled freely: `.bin` files go through `torch.load(weights_only=True)`, which accepts
tensors and plain containers only. Every error names the file.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .errors import AdapterConfigError, AdapterLoadError, AdapterNameError
from .names import check_fusion_name, check_head_name, check_name

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "pytorch_adapter.bin"
SAFE_WEIGHTS_NAME = "adapter.safetensors"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "pytorch_model_head.bin"
SAFE_HEAD_WEIGHTS_NAME = "model_head.safetensors"
ADAPTERFUSION_CONFIG_NAME = "adapter_fusion_config.json"
ADAPTERFUSION_WEIGHTS_NAME = "pytorch_model_adapter_fusion.bin"
SAFE_ADAPTERFUSION_WEIGHTS_NAME = "model_adapter_fusion.safetensors"
_FORMAT_PAIRS = [  # one file's two formats: a save in one replaces the other, so a folder never holds both
    (WEIGHTS_NAME, SAFE_WEIGHTS_NAME),
    (HEAD_WEIGHTS_NAME, SAFE_HEAD_WEIGHTS_NAME),
    (ADAPTERFUSION_WEIGHTS_NAME, SAFE_ADAPTERFUSION_WEIGHTS_NAME),
    ("adapter_model.bin", "adapter_model.safetensors"),  # PEFT's
]
EMBEDDING_FILE = "embedding.pt"
TOKENIZER_PATH = "tokenizer"
SETUP_CONFIG_NAME = "adapter_setup.json"
INTERFACE_CONFIG_NAME = "adapter_interface.json"


def read_json(path: str | os.PathLike) -> dict:
    """Load a JSON object from `path`, raising AdapterLoadError that names the file on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AdapterLoadError(f"missing file: {path}") from None
    except UnicodeDecodeError as err:
        raise AdapterLoadError(f"{path} is not UTF-8 text (byte {err.start}): is it really a JSON file?") from None
    except OSError as err:
        raise AdapterLoadError(f"cannot read {path}: {err}") from err
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise AdapterLoadError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


SAVED_KINDS = {"adapter": CONFIG_NAME, "head": HEAD_CONFIG_NAME, "fusion": ADAPTERFUSION_CONFIG_NAME}


def read_saved_meta(path: str | os.PathLike, kind: str) -> dict:
    """Read an adapter_config.json, head_config.json or adapter_fusion_config.json (`kind`: "adapter", "head"
    or "fusion") and check the fields every loader relies on, so that a bad value is reported with the file,
    key and value instead of crashing later. Returns the dict; the `config` entry itself is checked by its loader.
    """
    if kind not in SAVED_KINDS:
        raise AdapterConfigError(f"kind={kind!r}: use one of {sorted(SAVED_KINDS)}")
    path = Path(path)
    data = read_json(path)

    def bad(key: str, what: str):
        return AdapterLoadError(f"{path}: {key}={data[key]!r} must be {what}")

    if "config" not in data:
        raise AdapterLoadError(f"{path} has no 'config' entry")
    if not isinstance(data["config"], dict) and not (kind == "head" and data["config"] is None):
        raise bad("config", "a JSON object")  # (a head's is null for a static head: AdapterHub's `...For<Task>`)
    for key in ("model_type", "model_name", "model_class", "version"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise bad(key, "a string")
    hidden = data.get("hidden_size")
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise bad("hidden_size", "a positive integer")
    try:
        if data.get("name") is not None:
            where = f"{path}, key 'name'"
            if kind == "fusion":
                check_fusion_name(data["name"], where)
            elif kind == "head":
                check_head_name(data["name"], where)
            else:
                check_name(data["name"], kind, where)
        if kind == "fusion":
            names = data.get("adapter_names")
            if names is None and data.get("name") is None:
                raise AdapterLoadError(f"{path} names no adapters: 'adapter_names' and 'name' are both missing")
            if names is not None:
                if not isinstance(names, list) or not names:
                    raise bad("adapter_names", "a non-empty list of adapter names")
                for name in names:
                    check_name(name, "adapter", f"{path}, key 'adapter_names'")
                if len(set(names)) != len(names):
                    raise bad("adapter_names", "a list of distinct adapter names")
    except AdapterNameError as err:
        raise AdapterLoadError(str(err)) from None
    return data


def write_json(path: str | os.PathLike, data: dict) -> None:
    _atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def find_weights(folder: Path, bin_name: str, safetensors_name: str) -> Path | None:
    """The weights file in `folder`; None if neither exists.

    Where both formats are there (an older save in the other format, by another tool or an older workbench,
    which did not remove it), the newer file is the last save: it is read, with a warning naming both."""
    found = [folder / name for name in (safetensors_name, bin_name) if (folder / name).is_file()]
    if len(found) < 2:
        return found[0] if found else None
    safe, binary = found
    newer, older = (binary, safe) if binary.stat().st_mtime_ns > safe.stat().st_mtime_ns else (safe, binary)
    warnings.warn(f"{folder} holds both {safe.name} and {binary.name}: loading the newer, {newer.name}", stacklevel=3)
    return newer


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a flat {key: tensor} dict from a .safetensors or a tensors-only .bin file.

    Any failure of the readers is an AdapterLoadError naming the file: a damaged file can make the weights-only
    unpickler or the zip reader fail in many ways (IndexError, KeyError, struct errors, ...), all of them "corrupt".
    A weights file that is a link to somewhere outside its folder is refused (see `check_inside`).
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"missing weights file: {path}")
    check_inside(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - whatever the reader trips on, the file is corrupt
            raise AdapterLoadError(f"corrupt safetensors file {path}: {_first_line(err)}") from None
    state = load_torch_file(path)
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise AdapterLoadError(f"{path} must hold a flat dict of named tensors")
    return state


def load_torch_file(path: Path, what: str = "weights file"):
    """`torch.load` with `weights_only=True` (tensors and plain containers only), every failure an
    AdapterLoadError naming the file: a damaged pickle or zip fails in many ways (IndexError, KeyError, ...)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _refusal(err)
        raise AdapterLoadError(f"{path} holds something other than tensors and was not loaded ({reason})") from None
    except Exception as err:  # noqa: BLE001 - whatever the reader trips on, the file is corrupt
        raise AdapterLoadError(f"corrupt {what} {path}: {_first_line(err)}") from None


def _refusal(err: pickle.UnpicklingError) -> str:
    """The reason in the weights-only unpickler's message (its first lines are generic advice)."""
    text = str(err)
    _, marker, reason = text.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in (reason if marker else text).splitlines() if line.strip()]
    return lines[0] if lines else "unpickling refused"


def _first_line(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_inside(path: Path) -> None:
    """Refuse a weights file that is a link to outside its (resolved) folder: an adapter folder from elsewhere
    must not make us read arbitrary files. The one exception is the Hugging Face cache, whose snapshot files are
    links into the repo's `blobs/` folder."""
    target = path.resolve()
    folder = path.parent.resolve()
    if target.is_relative_to(folder):
        return
    for ancestor in path.absolute().parents:
        if ancestor.name == "snapshots" and (ancestor.parent / "blobs").is_dir():
            if target.is_relative_to((ancestor.parent / "blobs").resolve()):
                return
            break
    raise AdapterLoadError(f"{path} is a link to {target}, outside its folder {folder}: not loaded")


def write_weights(path: str | os.PathLike, state: dict[str, torch.Tensor]) -> None:
    """Write tensors to `path` (.safetensors or .bin), atomically."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if path.suffix == ".safetensors":  # safetensors stores no shared memory: tied copies (prefix pools) are copied
        storages = set()
        for key, tensor in tensors.items():
            storage = tensor.untyped_storage().data_ptr()
            if storage in storages:
                tensors[key] = tensor.clone()
            storages.add(storage)
        _atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    else:
        _atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    for pair in _FORMAT_PAIRS:
        if path.name in pair:
            other = path.with_name(pair[1] if path.name == pair[0] else pair[0])
            if other.is_file():
                other.unlink()  # the same file in the other format, from an earlier save: now stale


def write_tensor(path: str | os.PathLike, tensor: torch.Tensor) -> None:
    """Write one tensor with `torch.save` (AdapterHub's `embedding.pt`), atomically."""
    tensor = tensor.detach().contiguous().cpu()
    _atomic_write(Path(path), lambda tmp: torch.save(tensor, tmp))


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
