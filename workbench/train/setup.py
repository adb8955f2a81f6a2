"""Getting the model ready for a run: the adapter or fusion to train, its head, and which weights train."""

from __future__ import annotations

import copy

import torch

from ..core.composition import Fuse
from ..core.errors import HeadError
from ..hub.methods import method_name
from . import data as data_mod
from .checkpoints import SavePlan

_HEAD_TYPES = {
    "classification": "classification",
    "multilabel": "multilabel_classification",
    "tagging": "tagging",
    "qa": "question_answering",
    "causal_lm": "causal_lm",
}


def planned_head(kind, adapter, head, task) -> str | None:
    """The name of the head a run trains: `head`, else the adapter's or the fusion's name (the task for "full")."""
    if head or kind == "full":
        return head or task
    if kind == "adapter":
        return adapter if isinstance(adapter, str) else None
    return ",".join(adapter.names() if isinstance(adapter, Fuse) else list(adapter or []))


def head_labels(model, head: str | None, task: str) -> list[str] | None:
    """The labels (in id order) of the model's head `head` when it exists and has a label set, else None."""
    heads = getattr(model, "heads", {})
    if task not in data_mod.LABELLED_TASKS or head is None or head not in heads:
        return None
    label2id = heads[head].config.get("label2id") or {}
    return [name for name, _ in sorted(label2id.items(), key=lambda item: item[1])] or None


def prepare_model(model, kind, adapter, adapter_config, head, task) -> tuple[SavePlan, str]:
    """The run's `SavePlan` and method name, adding the adapter or the fusion when the model lacks it."""
    if kind == "full":
        return SavePlan("full", head or task), "full"
    if kind == "adapter":
        if not isinstance(adapter, str):
            raise ValueError("kind='adapter' needs adapter=<name> (added with adapter_config when missing)")
        if adapter not in model.adapters:
            if adapter_config is None:
                raise ValueError(f"no adapter {adapter!r} on the model: load it or pass adapter_config")
            model.add_adapter(adapter, config=adapter_config)
        method = method_name(model.adapters[adapter].to_dict())
        return SavePlan("adapter", head or adapter, adapters=[adapter]), method
    names = adapter.names() if isinstance(adapter, Fuse) else list(adapter or [])
    if len(names) < 2:
        raise ValueError("kind='fusion' needs adapter=Fuse(...) or a list of at least two loaded adapter names")
    fusion = ",".join(names)
    if fusion not in model.adapter_fusions:
        model.add_adapter_fusion(names)
    return SavePlan("fusion", head or fusion, adapters=names, fusion=fusion), "fusion"


def ensure_head(model, head: str, task: str, splits, columns, order=()) -> dict[str, int]:
    """The head's label2id, adding the head (labels found in the data) if the model has none of that name.

    A new head's ids follow `order` (label names, e.g. those given to `train(label_names=...)`), then the other
    labels sorted.

    "qa" and "causal_lm" heads have no label set: their label2id is empty.
    """
    if head in model.heads:
        head_type = model.heads[head].config["head_type"]
        if head_type != _HEAD_TYPES[task]:
            raise HeadError(f"head {head!r} is a {head_type} head; task {task!r} needs a {_HEAD_TYPES[task]} head")
        return dict(model.heads[head].config["label2id"] or {}) if task in data_mod.LABELLED_TASKS else {}
    if task == "qa":
        model.add_qa_head(head)
        return {}
    if task == "causal_lm":
        model.add_causal_lm_head(head)
        return {}
    values = []
    for split in splits.values():
        values += [v for v in data_mod.label_values(split, columns, task) if v not in values]
    values = sorted(values, key=lambda v: (isinstance(v, str), v))
    first = [name for name in order if name in values]
    values = first + [v for v in values if v not in first]
    id2label = {i: str(v) for i, v in enumerate(values)}
    if task == "tagging":
        model.add_tagging_head(head, num_labels=len(values), id2label=id2label)
    else:
        model.add_classification_head(head, num_labels=len(values), id2label=id2label, multilabel=task == "multilabel")
    return dict(model.heads[head].config["label2id"])


def set_trainable(model, plan: SavePlan) -> None:
    """Freeze all but what the plan trains; the full baseline trains every weight, with no adapter active."""
    if plan.kind == "full":
        model.set_active_adapters(None)
        model.freeze_model(False)
        for param in model.parameters():
            param.requires_grad = True
        model.train()
    else:
        if plan.kind == "adapter":
            model.train_adapter(plan.adapters[0])
        else:
            model.train_adapter_fusion(Fuse(*plan.adapters))
        for name, head in model.heads.items():  # other adapters' heads are not part of this run
            if name != plan.head:
                head.requires_grad_(False)
        model.unfreeze_head(plan.head)  # a head weight tied to the input embeddings stays frozen
    model.active_head = plan.head


class ModelSnapshot:
    """What a run changes on the model, taken before it changes anything, so a failed `train()` can put every bit
    back: the adapters, fusions and heads it has (new ones are deleted), the active adapters and head, base-model
    freezing, each parameter's `requires_grad`, each module's train/eval mode, the device, the values of the
    weights the run trains (copied once they are known, `keep_trained_values`, so an adapter run copies only its
    adapter and head) and every buffer (`BufferSnapshot`: any hook may change one, and they are small)."""

    def __init__(self, model):
        self.model = model
        engine = getattr(model, "_engine", None)
        self.adapters = set(getattr(model, "adapters", {}))
        self.fusions = set(getattr(model, "adapter_fusions", {}))
        self.heads = set(getattr(model, "heads", {}))
        self.engine_state = _engine_state(engine)
        self.active_head = getattr(model, "_active_head", None)
        self.requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
        self.params = dict(model.named_parameters())
        self.training = {name: m.training for name, m in model.named_modules()}
        self.checkpointing = _checkpointing(model)
        self.device = next(iter(self.params.values())).device if self.params else None
        self.values: dict = {}
        self.buffers = BufferSnapshot(model)

    def keep_trained_values(self) -> None:
        """Copy the weights that existed before the run and are trained now (their values are the ones a run
        moves; new adapters and heads are deleted on failure instead)."""
        for name, param in self.model.named_parameters():
            if param.requires_grad and self.params.get(name) is param and name not in self.values:
                self.values[name] = param.detach().to("cpu", copy=True)

    def restore(self) -> None:
        """Put the model back as it was when the snapshot was taken."""
        model = self.model
        for fusion in set(getattr(model, "adapter_fusions", {})) - self.fusions:
            model.delete_adapter_fusion(fusion)
        for name in set(getattr(model, "adapters", {})) - self.adapters:
            model.delete_adapter(name)
        for name in set(getattr(model, "heads", {})) - self.heads:
            model.delete_head(name)
        if not self.checkpointing and _checkpointing(model):
            model.activation_checkpointing_disable()
        if self.device is not None and next(model.parameters()).device != self.device:
            model.to(self.device)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.values.items():
                params[name].copy_(value)
        self.buffers.restore()
        _set_engine_state(getattr(model, "_engine", None), self.engine_state)
        if hasattr(model, "_active_head"):
            model._active_head = self.active_head
        for name, flag in self.requires_grad.items():
            if name in params:
                params[name].requires_grad_(flag)
        for name, module in model.named_modules():
            if name in self.training:
                module.training = self.training[name]


class BufferSnapshot:
    """Every buffer of the model (running statistics, position ids, ...): the tensor object each module holds and
    a copy of its value (on the CPU), so a restore puts back the same object, value, dtype and device even if a run
    changed it in place or replaced it (`.to()`, `.half()`), and drops buffers a run added to existing modules.
    The copies cost what the buffers weigh: a few kB for a BERT-like model (its position and token type ids)."""

    def __init__(self, model):
        self.modules = dict(model.named_modules())
        self.saved = {
            (name, key): (buffer, buffer.detach().to("cpu", copy=True), buffer.device)
            for name, module in self.modules.items()
            for key, buffer in module._buffers.items()
            if buffer is not None and not buffer.is_meta  # (a meta tensor holds no value to keep)
        }
        self.names = {name: set(module._buffers) for name, module in self.modules.items()}
        self.nones = {(name, key) for name, m in self.modules.items() for key, b in m._buffers.items() if b is None}

    def restore(self) -> None:
        with torch.no_grad():
            for (name, key), (buffer, value, device) in self.saved.items():
                if (buffer.dtype, buffer.device, buffer.shape) == (value.dtype, device, value.shape):
                    buffer.copy_(value)
                else:  # converted or resized through `.data`
                    buffer.data = value.to(device, copy=True)
                self.modules[name]._buffers[key] = buffer
        for name, module in self.modules.items():
            for key in set(module._buffers) - self.names[name]:  # added by the run
                del module._buffers[key]
                module._non_persistent_buffers_set.discard(key)
        for name, key in self.nones:  # registered as None
            self.modules[name]._buffers[key] = None


def _checkpointing(model) -> bool:
    return bool(getattr(model, "is_activation_checkpointing", False))


_ENGINE_FIELDS = ("active_setup", "skip_layers")


def _engine_state(engine) -> dict:
    if engine is None:
        return {}
    state = {field: copy.copy(getattr(engine, field)) for field in _ENGINE_FIELDS if hasattr(engine, field)}
    base = getattr(engine, "base", None)
    if base is not None and hasattr(base, "model_frozen"):
        state["model_frozen"] = base.model_frozen
    return state


def _set_engine_state(engine, state: dict) -> None:
    for field, value in state.items():
        if field == "model_frozen":
            engine.base.model_frozen = value
        else:
            setattr(engine, field, value)
    if "model_frozen" not in state and getattr(engine, "base", None) is not None:
        if hasattr(engine.base, "model_frozen"):
            del engine.base.model_frozen
