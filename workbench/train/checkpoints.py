"""What a checkpoint holds per kind of run, and loading it back into the same model in place.

Adapter runs save the adapter (AdapterHub format) and its head; fusion runs the fusion layer and the head;
full fine-tuning saves the whole model with `save_pretrained`. Loading copies the saved tensors into the existing
parameters, so an optimizer built over them stays valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..core import files
from ..core.keys import is_engine_key
from .errors import CheckpointError, NonFiniteLossError

PLAN_FILE = "workbench_run.json"
_WEIGHT_FILES = (
    files.ADAPTER_WEIGHTS,
    files.ADAPTER_SAFETENSORS,
    files.HEAD_WEIGHTS,
    files.HEAD_SAFETENSORS,
    files.FUSION_WEIGHTS,
    files.FUSION_SAFETENSORS,
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
    path = files.find_weights(folder / "heads" / head, files.HEAD_WEIGHTS, files.HEAD_SAFETENSORS)
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
