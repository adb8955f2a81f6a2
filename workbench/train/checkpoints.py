"""What a checkpoint holds per kind of run, and loading it back into the same model in place.

Adapter runs save the adapter (AdapterHub format) and its head; fusion runs the fusion layer and the head;
full fine-tuning saves the whole model with `save_pretrained`. Loading copies the saved tensors into the existing
parameters, so an optimizer built over them stays valid.

Every folder is written under a temporary name beside its final one and renamed when complete (`staged_folder`),
so a full disk or an unwritable folder never leaves a half-written checkpoint, and never touches the earlier ones.
"""

from __future__ import annotations

import errno
import json
import re
import shutil
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core import files
from ..core.keys import is_engine_key
from .errors import CheckpointError, NonFiniteLossError, OutputDirError, TrainingError

try:
    import resource
except ImportError:  # Windows
    resource = None

PLAN_FILE = "workbench_run.json"
STAGING_PREFIX = ".partial-"  # not matched by Trainer's "checkpoint-*" globs, so never taken for a checkpoint
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "a file would exceed the file size limit",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
}
_WEIGHT_FILES = (
    files.WEIGHTS_NAME,
    files.SAFE_WEIGHTS_NAME,
    files.HEAD_WEIGHTS_NAME,
    files.SAFE_HEAD_WEIGHTS_NAME,
    files.ADAPTERFUSION_WEIGHTS_NAME,
    files.SAFE_ADAPTERFUSION_WEIGHTS_NAME,
)


@dataclass
class SavePlan:
    """The trained parts of a run: `kind` is "adapter", "fusion" or "full"."""

    kind: str
    head: str
    adapters: list[str] = field(default_factory=list)
    fusion: str | None = None

    def save(self, model, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.kind == "full":
            model.save_pretrained(folder)
        else:
            if self.kind == "adapter":
                for name in self.adapters:
                    model.save_adapter(folder / "adapters" / name, name, with_head=False)
            if self.fusion is not None:
                model.save_adapter_fusion(folder / "fusions" / self.fusion, self.fusion)
            model.save_head(folder / "heads" / self.head, self.head)
        (folder / PLAN_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")

    def load(self, model, folder: str | Path) -> None:
        """Copy the checkpoint's weights into `model`, checking that every trained tensor is there."""
        folder = Path(folder)
        if not (folder / PLAN_FILE).is_file():
            raise CheckpointError(f"{folder} is not a workbench checkpoint (no {PLAN_FILE})")
        saved = json.loads((folder / PLAN_FILE).read_text())
        if saved.get("kind") != self.kind:
            raise CheckpointError(f"{folder} is a {saved.get('kind')!r} checkpoint; this run is {self.kind!r}")
        if self.kind == "full":
            _load_full(model, folder)
            state = _head_state(folder, self.head)
            expected = set(state)
        else:
            state = {}
            for path in sorted(folder.glob("*/*/*")):
                if path.name in _WEIGHT_FILES:
                    state.update(files.read_weights(path))
            expected = {name for name, param in model.named_parameters() if param.requires_grad}
        _copy_into(model, state, expected, folder)


def _load_full(model, folder: Path) -> None:
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        raise CheckpointError(f"{folder} has no model weights (model.safetensors)")
    state = {}
    for shard in shards:
        state.update(load_file(shard))
    result = model.base_model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not is_engine_key(k)]
    if result.unexpected_keys or missing:
        problem = f"unexpected weight(s) {result.unexpected_keys[:3]}" if result.unexpected_keys else ""
        problem = problem or f"missing weight(s) {missing[:3]}"
        raise CheckpointError(f"{folder}: {problem}")


def _head_state(folder: Path, head: str) -> dict:
    path = files.find_weights(folder / "heads" / head, files.HEAD_WEIGHTS_NAME, files.SAFE_HEAD_WEIGHTS_NAME)
    if path is None:
        raise CheckpointError(f"{folder} has no weights for head {head!r}")
    return files.read_weights(path)


def _copy_into(model, state: dict[str, torch.Tensor], expected: set[str], folder: Path) -> None:
    own = model.state_dict(keep_vars=True)
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise CheckpointError(f"{folder}: weight(s) {unknown[:3]} do not exist in the model")
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(f"{folder} lacks trained weight(s) {missing[:3]}")
    with torch.no_grad():
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise CheckpointError(f"{folder}: {key!r} has shape {tuple(tensor.shape)}, not {tuple(own[key].shape)}")
            own[key].copy_(tensor.to(own[key].dtype))


def check_finite(model) -> None:
    """Raise `NonFiniteLossError` naming the first trained parameter that holds NaN or infinity."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param).all():
            raise NonFiniteLossError(f"training diverged: parameter {name!r} holds NaN or infinite values")


def folder_bytes(folder: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


@contextmanager
def staged_folder(folder: str | Path, *, writer: bool = True, barrier=None):
    """Yield a temporary folder beside `folder`, renamed to `folder` (replacing it) when the block completes.

    If the block fails, the temporary folder is removed and every other folder is left as it was; a failed write
    (disk full, file too large, unwritable or read-only folder) becomes an `OutputDirError` naming `folder`.
    With several processes only the `writer` creates, renames and removes; `barrier()`, called by every process,
    keeps the others from writing before the temporary folder exists or after it has been renamed.
    """
    folder = Path(folder)
    staging = folder.with_name(STAGING_PREFIX + folder.name)
    try:
        if writer:
            shutil.rmtree(staging, ignore_errors=True)  # left behind by a killed run
            staging.mkdir(parents=True)
        if barrier is not None:
            barrier()
        yield staging
        if barrier is not None:
            barrier()
        if writer:
            _replace(staging, folder)
    except BaseException as err:
        if writer:
            shutil.rmtree(staging, ignore_errors=True)
        if _is_write_failure(err):
            raise _write_error(folder, err) from err
        raise


def _replace(staging: Path, folder: Path) -> None:
    if not folder.exists():
        staging.rename(folder)  # atomic within one file system
        return
    old = folder.with_name(STAGING_PREFIX + "old-" + folder.name)
    shutil.rmtree(old, ignore_errors=True)
    folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _is_write_failure(err: BaseException) -> bool:
    if isinstance(err, TrainingError):
        return False
    if isinstance(err, OSError):
        return True
    # torch.save reports a failed write as a RuntimeError (its message varies), safetensors as its own error
    if isinstance(err, RuntimeError) and _raised_in(err, "torch/serialization.py", "save"):
        return True
    return type(err).__name__ == "SafetensorError" and "I/O error" in str(err)


def _raised_in(err: BaseException, file: str, function: str) -> bool:
    frames = traceback.extract_tb(err.__traceback__)
    return any(Path(f.filename).as_posix().endswith(file) and f.name == function for f in frames)


def _write_error(folder: Path, err: BaseException) -> OutputDirError:
    code = getattr(err, "errno", None)
    if code is None and (match := re.search(r"os error (\d+)", str(err))):
        code = int(match[1])
    reason = _WRITE_FAILURES.get(code) or _diagnose(folder.parent)
    detail = getattr(err, "strerror", None) or str(err)
    error = OutputDirError(
        f"cannot write {folder}: {reason + ' ' if reason else ''}({detail}); it was not saved, and the folders "
        "saved before are kept"
    )
    error.errno = code  # (setting filename would change the message)
    return error


def _diagnose(parent: Path) -> str:
    """Why a write failed that did not say (torch.save's errors carry no errno)."""
    try:
        if shutil.disk_usage(parent).free < 1 << 20:
            return "the disk is full"
    except OSError:
        pass
    if resource is not None:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            return f"a file would exceed the file size limit of {limit} bytes (ulimit -f)"
    return ""
