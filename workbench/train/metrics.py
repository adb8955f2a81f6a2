"""Evaluation metrics per task, computed with numpy from Trainer's `EvalPrediction`.

Classification and tagging: accuracy and F1. Extractive QA: exact match and token-level F1 of the predicted span
(argmax start, argmax end) against the gold token span. Causal LM: perplexity, exp of the eval loss, added to the
eval metrics by `WorkbenchTrainer` (it needs the loss, which `compute_metrics` does not see).
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


def span_scores(pred_start, pred_end, gold_start, gold_end) -> tuple[np.ndarray, np.ndarray]:
    """Per-example exact match and token-level F1 of predicted vs gold token spans (inclusive ends).

    A span with end < start is empty; the null span (0, 0), the CLS token, means "no answer" and scores only
    by exact match.
    """
    ps, pe, gs, ge = (np.asarray(a, dtype=np.int64) for a in (pred_start, pred_end, gold_start, gold_end))
    exact = (ps == gs) & (pe == ge)
    overlap = np.clip(np.minimum(pe, ge) - np.maximum(ps, gs) + 1, 0, None)
    predicted_len = np.clip(pe - ps + 1, 0, None)
    gold_len = np.clip(ge - gs + 1, 0, None)
    total = predicted_len + gold_len
    f1 = np.where(total > 0, 2 * overlap / np.maximum(total, 1), 0.0)
    null = ((ps == 0) & (pe == 0)) | ((gs == 0) & (ge == 0))
    f1 = np.where(null, exact.astype(float), f1)
    return exact.astype(float), f1


def metrics_for(task: str, num_labels: int):
    """A `compute_metrics` function for Trainer: accuracy and F1 (macro; micro for multilabel); exact match and
    F1 for "qa"; None for "causal_lm" (perplexity comes from the eval loss, and no logits are gathered)."""

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

    def qa(pred) -> dict[str, float]:
        start_logits, end_logits = (_unpadded(np.asarray(x)) for x in pred.predictions[:2])
        gold_start, gold_end = (np.asarray(x).reshape(-1) for x in pred.label_ids[:2])
        exact, f1 = span_scores(start_logits.argmax(-1), end_logits.argmax(-1), gold_start, gold_end)
        return {"exact_match": float(exact.mean()), "f1": float(f1.mean())}

    if task == "causal_lm":
        return None
    if task == "qa":
        return qa
    return multilabel if task == "multilabel" else single


def _unpadded(logits: np.ndarray) -> np.ndarray:
    """Trainer pads logits of eval batches of different lengths with -100: never pick those positions."""
    return np.where(logits == -100, -np.inf, logits)


def _arrays(pred) -> tuple[np.ndarray, np.ndarray]:
    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    return np.asarray(logits), np.asarray(pred.label_ids)
