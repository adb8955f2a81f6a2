"""Training runs side by side: an adapter run and its full fine-tuning baseline, by what they predict and cost.

    table = run_table(records)                                 # metrics, parameters, bytes, time, memory per run
    with run_model(model, tok, record) as trained:             # the weights the run saved, ready to predict
        predict(trained.model, tok, texts, setup=trained.setup, head=trained.head, max_length=trained.max_length)
    evaluation = evaluate_run(model, tok, record)               # confusion matrix and misclassified examples

A run is found through its `final/` folder (`record.saved_path`), whose `workbench_run.json` says what it
trained: a full run's folder is loaded as a model of its own (safetensors, never `training_args.bin`); an adapter
run uses the adapter on `model` when its weights are the saved ones, else loads the saved adapter and head under
a temporary name for the call and removes them after.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..core import files
from .outputs import MAX_LENGTH, load_checkpoint, predict
from .speed import inference_speed

PLAN_FILE = "workbench_run.json"
# the metric a run is judged by on the accuracy-vs-cost plot, first found wins
SCORE_METRICS = ("eval_accuracy", "eval_exact_match", "eval_f1")
TABLE_COLUMNS = [
    "run",
    "kind",
    "method",
    "metric",
    "score",
    "metrics",
    "trainable_params",
    "pct_params",
    "bytes_on_disk",
    "train_time_s",
    "train_samples_per_s",
    "peak_memory_bytes",
    "memory_kind",
    "saved_path",
]


def run_score(record) -> tuple[str, float] | None:
    """The run's headline metric (accuracy, else exact match or F1) of the weights it saved (the best evaluation,
    which `final/` holds), or None when it was never evaluated on such a metric."""
    metrics = record.best_metrics or record.final_metrics
    for key in SCORE_METRICS:
        if key in metrics:
            return key.removeprefix("eval_"), float(metrics[key])
    return None


def run_table(records) -> pd.DataFrame:
    """One row per run: its eval metrics, trainable parameters, bytes on disk, training time, samples/s and peak
    memory, all as the run recorded them."""
    rows = []
    for record in records:
        score = run_score(record)
        metrics = record.best_metrics or record.final_metrics
        rows.append(
            {
                "run": record.name,
                "kind": record.kind,
                "method": record.method,
                "metric": score[0] if score else None,
                "score": score[1] if score else float("nan"),
                "metrics": {k.removeprefix("eval_"): float(v) for k, v in metrics.items()},
                "trainable_params": record.trainable_params,
                "pct_params": record.adapter_percent or record.trainable_percent,  # as the Model panel and runs table
                "bytes_on_disk": record.saved_bytes,
                "train_time_s": record.wall_time_s,
                "train_samples_per_s": record.train_samples_per_second,
                "peak_memory_bytes": record.peak_memory_bytes,
                "memory_kind": record.memory_kind,
                "saved_path": record.saved_path,
            }
        )
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def run_plan(record) -> dict:
    """What the run's `final/` folder holds: {"kind", "head", "adapters", "fusion"}."""
    path = Path(record.saved_path) / PLAN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"run {record.name!r}: {path} not found (was the run's folder moved or deleted?)")
    return json.loads(path.read_text())


@dataclass
class TrainedModel:
    """What to call `predict` with for a run: the model, its tokenizer, the adapter setup, the head and the
    run's `max_length` (its metrics were computed on inputs cut there)."""

    model: object
    tokenizer: object
    setup: str | None
    head: str | None
    max_length: int = MAX_LENGTH


class CheckpointCache:
    """Full fine-tuned models loaded from their folders, kept until the folder's weights change."""

    def __init__(self):
        self._loaded: dict[str, tuple[float, object, object]] = {}

    def get(self, folder: str | Path, tokenizer=None):
        folder = Path(folder)
        stamp = max((p.stat().st_mtime for p in folder.glob("*.safetensors")), default=0.0)
        key = str(folder.resolve())
        if key not in self._loaded or self._loaded[key][0] != stamp:
            model, tok = load_checkpoint(folder, tokenizer=tokenizer)
            self._loaded[key] = (stamp, model, tok)
        return self._loaded[key][1:]

    def keep_only(self, folders) -> None:
        """Forget models whose folders are not in `folders` (runs no longer in the session)."""
        wanted = {str(Path(f).resolve()) for f in folders}
        for key in [k for k in self._loaded if k not in wanted]:
            del self._loaded[key]


def checkpoint_head(model, folder: str | Path) -> str | None:
    """The head a full fine-tuned folder was trained with (its `workbench_run.json`), else its only head; None
    for a transformers task model (its own head is used) or when the choice is ambiguous."""
    heads = getattr(model, "heads", None)
    if not heads:
        return None
    path = Path(folder) / PLAN_FILE
    trained = json.loads(path.read_text()).get("head") if path.is_file() else None
    if trained in heads:
        return trained
    return next(iter(heads)) if len(heads) == 1 else None


@contextlib.contextmanager
def run_model(model, tokenizer, record, cache: CheckpointCache | None = None) -> Iterator[TrainedModel]:
    """The weights `record` saved, ready for `predict` / `inference_speed` inside the block (see the module doc)."""
    plan = run_plan(record)
    folder = Path(record.saved_path)
    max_length = (record.config or {}).get("max_length", MAX_LENGTH)
    if plan["kind"] == "full":
        full, tok = (cache or CheckpointCache()).get(folder, tokenizer)
        yield TrainedModel(full, tok, None, checkpoint_head(full, folder), max_length)
        return
    if plan["kind"] != "adapter":
        raise ValueError(f"run {record.name!r} is a {plan['kind']} run: only adapter and full runs are compared")
    if model is None:
        raise ValueError(f"run {record.name!r}: no model to put its adapter on (load the run's base model)")
    [adapter] = plan["adapters"]
    _check_same_model(model, folder / adapter, record.name)
    if _holds_saved_adapter(model, folder / adapter, adapter, plan["head"]):
        yield TrainedModel(model, tokenizer, adapter, plan["head"], max_length)
        return
    temporary = f"run_{uuid.uuid4().hex[:8]}"
    model.load_adapter(str(folder / adapter), load_as=temporary, with_head=True, set_active=False)
    try:
        yield TrainedModel(model, tokenizer, temporary, temporary if temporary in model.heads else None, max_length)
    finally:
        if temporary in getattr(model, "heads", {}):
            model.delete_head(temporary)
        model.delete_adapter(temporary)


def _check_same_model(model, folder: Path, run: str) -> None:
    """Refuse an adapter saved for another base model (its config names the model and its hidden size)."""
    path = folder / files.CONFIG_NAME
    saved = json.loads(path.read_text()) if path.is_file() else {}
    config = getattr(model, "config", None)
    ours = getattr(config, "name_or_path", "") or ""
    if saved.get("model_name") and ours and saved["model_name"] != ours:
        raise ValueError(f"run {run!r} trained an adapter for {saved['model_name']}; the model is {ours}")
    hidden = getattr(config, "hidden_size", None)
    if saved.get("hidden_size") and hidden and saved["hidden_size"] != hidden:
        raise ValueError(
            f"run {run!r} trained an adapter for a model of hidden size {saved['hidden_size']}; the model has {hidden}"
        )


def _holds_saved_adapter(model, folder: Path, adapter: str, head: str) -> bool:
    """Whether `model` has the adapter and head under these names with exactly the weights in `folder`."""
    if adapter not in getattr(model, "adapters", {}) or head not in getattr(model, "heads", {}):
        return False
    saved = {}
    for name, safe in (
        (files.WEIGHTS_NAME, files.SAFE_WEIGHTS_NAME),
        (files.HEAD_WEIGHTS_NAME, files.SAFE_HEAD_WEIGHTS_NAME),
    ):
        path = files.find_weights(folder, name, safe)
        if path is None:
            return False
        saved.update(files.read_weights(path))
    own = model.state_dict()
    return all(key in own and torch.equal(own[key].cpu(), value.to(own[key].dtype)) for key, value in saved.items())


def run_predictions(model, tokenizer, records, texts: list[str], cache: CheckpointCache | None = None) -> dict:
    """Each run's `Prediction`s for `texts`, keyed by run name (label names from the run's own head)."""
    cache = cache or CheckpointCache()
    results = {}
    for record in records:
        with run_model(model, tokenizer, record, cache) as trained:
            results[record.name] = predict(
                trained.model, trained.tokenizer, texts, trained.setup, head=trained.head, max_length=trained.max_length
            )
    return results


def run_speed(model, tokenizer, records, texts: list[str], repeats: int = 5, cache=None) -> pd.DataFrame:
    """`inference_speed` of each run's saved weights on `texts`, one row per run ("setup" is the run's name);
    `slowdown` is relative to the first full run (NaN without one)."""
    cache = cache or CheckpointCache()
    tables = []
    for record in records:
        with run_model(model, tokenizer, record, cache) as trained:
            table = inference_speed(
                trained.model, trained.tokenizer, texts, [trained.setup], repeats=repeats, max_length=trained.max_length
            )
        tables.append(table.assign(setup=record.name, kind=record.kind))
    table = pd.concat(tables, ignore_index=True)
    full = table.loc[table["kind"] == "full", "median_s"]
    table["slowdown"] = table["median_s"] / full.iloc[0] if len(full) else float("nan")  # vs the full model
    return table.drop(columns="kind")


@dataclass
class Evaluation:
    """A run's saved weights on its validation examples: `confusion` (true labels as rows, predicted as
    columns, label names) and `misclassified` (text, true, predicted, score)."""

    run: str
    accuracy: float
    confusion: pd.DataFrame
    misclassified: pd.DataFrame
    examples: int


def evaluate_run(model, tokenizer, record, cache=None, batch_size: int = 64) -> Evaluation:
    """Predict the validation examples the run kept (`record.validation`) with the weights it saved."""
    data = record.validation or {}
    if not data.get("text"):
        raise ValueError(
            f"run {record.name!r} kept no validation examples (only classification runs on one text column do)"
        )
    if data.get("text_pair"):
        raise ValueError(f"run {record.name!r} classifies text pairs: evaluation details cover single texts only")
    kept = [(text, label) for text, label in zip(data["text"], data["label"], strict=True) if text.strip()]
    texts, truth = [t for t, _ in kept], [label for _, label in kept]
    with run_model(model, tokenizer, record, cache) as trained:
        predicted = predict(
            trained.model,
            trained.tokenizer,
            texts,
            trained.setup,
            head=trained.head,
            max_length=trained.max_length,
            batch_size=batch_size,
        )
    labels = list(dict.fromkeys([*sorted(set(truth)), *sorted({p.label for p in predicted})]))
    confusion = pd.DataFrame(0, index=pd.Index(labels, name="true"), columns=pd.Index(labels, name="predicted"))
    wrong = []
    for text, true, pred in zip(texts, truth, predicted, strict=True):
        confusion.loc[true, pred.label] += 1
        if pred.label != true:
            wrong.append({"text": text, "true": true, "predicted": pred.label, "score": pred.scores[pred.label]})
    correct = len(texts) - len(wrong)
    misclassified = pd.DataFrame(wrong, columns=["text", "true", "predicted", "score"])
    return Evaluation(record.name, correct / len(texts), confusion, misclassified, len(texts))
