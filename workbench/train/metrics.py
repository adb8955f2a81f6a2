"""Evaluation metrics per task, computed with numpy from Trainer's `EvalPrediction`.

Classification and tagging: accuracy and F1. Causal LM: perplexity, exp of the mean loss per predicted token,
added to the eval metrics by `WorkbenchTrainer` (it needs the losses, which `compute_metrics` does not see).
Extractive QA is scored on the examples' text, see `qa.SquadMetrics`.
"""

from __future__ import annotations

import numpy as np


def macro_f1(predicted: np.ndarray, gold: np.ndarray, num_labels: int) -> float:
    """Unweighted mean of the per-label F1 over the labels that occur in the gold or predicted values."""
    scores = []
    for label in range(num_labels):
        tp = np.sum((predicted == label) & (gold == label))
        fp = np.sum((predicted == label) & (gold != label))
        fn = np.sum((predicted != label) & (gold == label))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else 0.0


def metrics_for(task: str, num_labels: int):
    """A `compute_metrics` function for Trainer: accuracy and F1 (macro; micro for multilabel); None for
    "causal_lm" (perplexity comes from the batches' losses, and no logits are gathered) and "qa" (see `qa.SquadMetrics`,
    which needs the validation windows)."""

    def single(pred) -> dict[str, float]:
        logits, gold = _arrays(pred)
        predicted = logits.argmax(-1)
        if task == "tagging":
            keep = gold != -100
            predicted, gold = predicted[keep], gold[keep]
        return {"accuracy": float(np.mean(predicted == gold)), "f1": macro_f1(predicted, gold, num_labels)}

    def multilabel(pred) -> dict[str, float]:
        logits, gold = _arrays(pred)
        predicted = logits > 0
        gold = gold > 0.5
        tp = np.sum(predicted & gold)
        denominator = 2 * tp + np.sum(predicted & ~gold) + np.sum(~predicted & gold)
        return {
            "accuracy": float(np.mean(np.all(predicted == gold, axis=-1))),
            "f1": float(2 * tp / denominator) if denominator else 1.0,
        }

    if task in ("causal_lm", "qa"):
        return None
    return multilabel if task == "multilabel" else single


def _arrays(pred) -> tuple[np.ndarray, np.ndarray]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return np.asarray(logits), np.asarray(pred.label_ids)
