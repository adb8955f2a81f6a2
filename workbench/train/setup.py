"""Getting the model ready for a run: the adapter or fusion to train, its head, and which weights train."""

from __future__ import annotations

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
