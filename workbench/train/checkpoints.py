"""What a checkpoint holds, and loading it back into the same model in place.

Adapter checkpoints use AdapterHub's layout (what `adapters.AdapterTrainer` writes): one folder per adapter, fusion
and head, named after it (`checkpoint-8/sst-2/adapter_config.json`, `.../sst-2/head_config.json`,
`.../a,b/adapter_fusion_config.json`), so `model.load_adapter(checkpoint / name)` loads an adapter with its head.
Full fine-tuning saves the whole model with `save_pretrained`. Loading copies the saved tensors into the existing
parameters, so an optimizer built over them stays valid and no weight changes whether it trains.

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
from functools import partial
from pathlib import Path

import torch

from ..core import files
from ..core.keys import file_keys_of, from_file_keys, is_adapter_key, is_engine_key, is_fusion_key
from .errors import CheckpointError, NonFiniteLossError, OutputDirError, TrainingError
from .overwrite import NAMES as OVERWRITE_NAMES
from .overwrite import recover_aside

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


@dataclass
class CheckpointParts:
    """The adapters, fusions and heads a checkpoint holds, each in a folder of its name."""

    adapters: list[str] = field(default_factory=list)
    fusions: list[str] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)


def save_parts(model, folder: str | Path, parts: CheckpointParts) -> None:
    """Write `parts` of `model` into `folder` in AdapterHub's layout (an adapter and its head share a folder)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in parts.adapters:
        model.save_adapter(folder / name, name, with_head=False)
    for name in parts.fusions:
        model.save_adapter_fusion(folder / name, name)
    for name in parts.heads:
        model.save_head(folder / name, name)


def load_parts(model, folder: str | Path) -> CheckpointParts:
    """Load what `save_parts` wrote back into `model` and return what was found.

    Adapters, fusions and heads the model has with the same config get the saved tensors copied into their
    parameters in place; others are loaded (added, or replacing one of a different config). Which weights train
    does not change: parts the model lacked come in frozen. Raises `CheckpointError`, before anything changes, when
    the folder is missing, holds no adapter or fusion, has weights the model lacks or of other shapes, or lacks a
    trained weight of an adapter, fusion or head.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"no checkpoint folder {folder}")
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found, state, loads = CheckpointParts(), {}, []
    for sub in subfolders:
        if (sub / files.CONFIG_NAME).is_file():
            found.adapters.append(sub.name)
            _read_adapter(model, sub, state, loads)
    for sub in subfolders:
        if (sub / files.ADAPTERFUSION_CONFIG_NAME).is_file():
            found.fusions.append(sub.name)
            _read_fusion(model, sub, state, loads)
    for sub in subfolders if hasattr(model, "heads") else []:
        if (sub / files.HEAD_CONFIG_NAME).is_file():
            found.heads.append(sub.name)
            _read_head(model, sub, state, loads)
    if not found.adapters and not found.fusions:
        raise CheckpointError(f"{folder} is not a valid checkpoint: it holds no adapter or fusion folder")
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    expected = {
        key
        for key in trainable
        if (is_engine_key(key) or key.startswith("heads.")) and not any(owns(key) for owns, _ in loads)
    }
    _check_state(model, state, expected, folder)
    for _, load in loads:  # adapters before fusions (which need them), then heads
        load()
    _copy_into(model, state, expected, folder)
    for name, param in model.named_parameters():
        param.requires_grad = name in trainable
    return found


def _saved_config(path: Path, kind: str) -> dict:
    return json.loads(json.dumps(files.read_saved_meta(path, kind).get("config")))


def _same(config: dict, current) -> bool:
    return config == json.loads(json.dumps(current))  # tuples and lists compare as they are written


def _read_adapter(model, sub: Path, state: dict, loads: list) -> None:
    name = sub.name
    weights = files.find_weights(sub, files.WEIGHTS_NAME, files.SAFE_WEIGHTS_NAME)
    config = _saved_config(sub / files.CONFIG_NAME, "adapter")
    if name in model.adapters and weights is not None and _same(config, model.adapters[name].to_dict()):
        state.update(from_file_keys(files.read_weights(weights), file_keys_of(model._engine)))
    else:  # a new adapter, another config or PEFT's format
        load = partial(model.load_adapter, str(sub), load_as=name, with_head=False)
        loads.append((partial(is_adapter_key, name=name), load))


def _read_fusion(model, sub: Path, state: dict, loads: list) -> None:
    name = sub.name
    data = files.read_saved_meta(sub / files.ADAPTERFUSION_CONFIG_NAME, "fusion")
    weights = files.find_weights(sub, files.ADAPTERFUSION_WEIGHTS_NAME, files.SAFE_ADAPTERFUSION_WEIGHTS_NAME)
    config, names = model.adapters_config.get_fusion(name)
    same = config is not None and names == list(data.get("adapter_names") or [])
    if same and weights is not None and _same(json.loads(json.dumps(data.get("config"))), config.to_dict()):
        state.update(from_file_keys(files.read_weights(weights), file_keys_of(model._engine)))
    else:

        def load():
            if name in model.adapter_fusions:
                model.delete_adapter_fusion(name)
            model.load_adapter_fusion(str(sub), load_as=name, with_head=False)

        loads.append((partial(is_fusion_key, fusion_name=name), load))


def _read_head(model, sub: Path, state: dict, loads: list) -> None:
    name = sub.name
    weights = files.find_weights(sub, files.HEAD_WEIGHTS_NAME, files.SAFE_HEAD_WEIGHTS_NAME)
    config = _saved_config(sub / files.HEAD_CONFIG_NAME, "head")
    if name in model.heads and weights is not None and _same(config, dict(model.heads[name].config)):
        state.update(files.read_weights(weights))
    else:
        load = partial(model.load_head, str(sub), load_as=name, set_active=False)
        loads.append((lambda key: key.startswith(f"heads.{name}."), load))


@dataclass
class SavePlan:
    """The trained parts of a `train()` run: `kind` is "adapter", "fusion" or "full"."""

    kind: str
    head: str
    adapters: list[str] = field(default_factory=list)
    fusion: str | None = None

    def parts(self) -> CheckpointParts:
        """What an adapter or fusion run's checkpoints hold: the adapter or the fusion, and the head."""
        adapters = list(self.adapters) if self.kind == "adapter" else []
        return CheckpointParts(adapters, [self.fusion] if self.fusion else [], [self.head])

    def write(self, folder: str | Path) -> None:
        (Path(folder) / PLAN_FILE).write_text(json.dumps(self.__dict__, indent=2) + "\n")

    def check(self, folder: str | Path) -> None:
        """Raise `CheckpointError` unless `folder` is a checkpoint of a run of this kind."""
        folder = Path(folder)
        if not (folder / PLAN_FILE).is_file():
            raise CheckpointError(f"{folder} is not a workbench checkpoint (no {PLAN_FILE})")
        saved = json.loads((folder / PLAN_FILE).read_text())
        if saved.get("kind") != self.kind:
            raise CheckpointError(f"{folder} is a {saved.get('kind')!r} checkpoint; this run is {self.kind!r}")


def save_full(model, folder: str | Path) -> None:
    """The whole model (`save_pretrained`: base weights, adapters, fusions, heads)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)


def load_full(model, folder: str | Path, head: str) -> None:
    """Copy a `save_full` folder's base weights and `head` into `model`."""
    folder = Path(folder)
    _load_full(model, folder)
    state = _head_state(folder, head)
    _copy_into(model, state, set(state), folder)


def _load_full(model, folder: Path) -> None:
    shards = sorted(folder.glob("model*.safetensors"))
    if not shards:
        raise CheckpointError(f"{folder} has no model weights (model.safetensors)")
    state = {}
    for shard in shards:
        state.update(files.read_weights(shard))
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


def _check_state(model, state: dict[str, torch.Tensor], expected: set[str], folder: Path) -> None:
    own = model.state_dict(keep_vars=True)
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise CheckpointError(f"{folder}: weight(s) {unknown[:3]} do not exist in the model")
    missing = sorted(expected - set(state))
    if missing:
        raise CheckpointError(f"{folder} lacks trained weight(s) {missing[:3]}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{folder}: {key!r} has shape {tuple(tensor.shape)}, not {tuple(own[key].shape)}")


def _copy_into(model, state: dict[str, torch.Tensor], expected: set[str], folder: Path) -> None:
    _check_state(model, state, expected, folder)  # every check before the first copy: a bad file changes nothing
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, tensor in state.items():
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


BACKUP_PREFIX = STAGING_PREFIX + "old-"  # an earlier folder kept until its replacement is in place


def _replace(staging: Path, folder: Path) -> None:
    """Put the complete `staging` folder in place of `folder`, so that a complete copy (old or new) always exists.

    Two renames, each atomic: `folder` to its backup, then `staging` to `folder`; then the backup is deleted. The
    backup is only made once `staging` is complete, and only deleted once `staging` is `folder`, so a kill at any
    point leaves `folder` or its complete backup; `recover_folder` (run by `train()` under its lock, and by the next
    replacement) puts a backup whose `folder` is missing back, and readers (`run_in_folder`) count it meanwhile.
    (Renames rather than a symlink swap: the folders stay plain folders that every tool and OS reads the same.)
    """
    recover_folder(folder)  # a backup left by a killed replacement: back in place, or deleted if not needed
    if not folder.exists():
        staging.rename(folder)  # atomic within one file system
        return
    backup = _backup_of(folder)
    folder.rename(backup)
    staging.rename(folder)
    shutil.rmtree(backup, ignore_errors=True)


def _backup_of(folder: Path) -> Path:
    return folder.with_name(BACKUP_PREFIX + folder.name)


def recover_folder(folder: str | Path) -> None:
    """Undo a replacement of `folder` killed half way: its backup goes back when `folder` is missing (the backup is
    complete: it was `folder`), and is deleted when `folder` is there (the replacement got that far)."""
    folder = Path(folder)
    backup = _backup_of(folder)
    if not backup.is_dir() or backup.is_symlink():
        return
    if folder.is_dir():
        shutil.rmtree(backup, ignore_errors=True)
    else:
        backup.rename(folder)


def recover_run(folder: str | Path) -> None:
    """Undo what a killed run left half done in the output folder `folder`: the old run an overwrite had set aside
    goes back (`overwrite.recover_aside`), then `recover_folder` for every backup (its `final/` and checkpoints)."""
    folder = Path(folder)
    if folder.is_dir():
        recover_aside(folder, run_parts)
        for backup in folder.glob(BACKUP_PREFIX + "*"):
            recover_folder(folder / backup.name[len(BACKUP_PREFIX) :])


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


# --- what an output folder holds of earlier runs -----------------------------------------------------------------

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class RunFolder:
    """An output folder that holds a run: its `checkpoint-<step>` folders (oldest first) and whether `final/` is
    there. `planned_steps` is the run's total from the last checkpoint's trainer state (0 when unknown)."""

    folder: Path
    checkpoints: list[Path]
    final: bool

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None

    @property
    def last_step(self) -> int:
        return int(_CHECKPOINT.match(self.last_checkpoint.name)[1]) if self.checkpoints else 0

    @property
    def planned_steps(self) -> int:
        state = self.last_checkpoint / "trainer_state.json" if self.checkpoints else None
        try:
            return int(json.loads(state.read_text()).get("max_steps") or 0) if state else 0
        except (OSError, ValueError):
            return 0

    def describe(self) -> str:
        """E.g. "checkpoint-4, checkpoint-8 and final/"."""
        names = [p.name for p in self.checkpoints] + (["final/"] if self.final else [])
        return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def run_in_folder(folder: str | Path) -> RunFolder | None:
    """What `folder` holds of a run (checkpoints, `final/`), or None when it holds none (or does not exist).

    Only reads: a `final/` backup left by a killed replacement counts as `final/` (`recover_run` puts it back)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m[1]), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))]
    final = (folder / "final").is_dir() or _backup_of(folder / "final").is_dir()  # (a replacement killed half way)
    if not found and not final:
        return None
    return RunFolder(folder, [p for _, p in sorted(found)], final)


def free_folder(folder: str | Path) -> Path:
    """The first of `folder-2`, `folder-3`, ... that holds no run: a name to suggest instead of `folder`."""
    folder = Path(folder)
    stem = re.sub(r"-\d+$", "", folder.name) or folder.name
    number = 2
    while (candidate := folder.with_name(f"{stem}-{number}")).exists() and run_in_folder(candidate) is not None:
        number += 1
    return candidate


def run_parts(folder: str | Path) -> list[Path]:
    """A run's checkpoints, `final/` and half-written folders in `folder`: real sub-folders of it only (no link,
    nothing outside it), and never an old run an overwrite set aside."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    run = run_in_folder(folder)
    parts = list(run.checkpoints) + ([folder / "final"] if run and run.final else []) if run else []
    parts += [p for p in folder.glob(STAGING_PREFIX + "*") if p.name not in OVERWRITE_NAMES]
    return [p for p in parts if p.is_dir() and not p.is_symlink() and p.parent.resolve() == folder.resolve()]


def clear_run(folder: str | Path) -> None:
    """Delete a run's checkpoints, `final/` and half-written folders from `folder`, and an old run an overwrite
    set aside; nothing else in it, and nothing outside it."""
    folder = Path(folder)
    doomed = run_parts(folder) + [folder / name for name in OVERWRITE_NAMES]
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
