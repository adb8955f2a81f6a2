"""`workbench.analysis`: compare what the base model, adapters, compositions and a full fine-tuned model do.

    predict(model, tok, texts, setup="Stack(lang, task)")    # labels with scores, tags, generated text or a span
    costs(model, ["a", "Fuse(a,b)"], full_checkpoint=path)     # parameters, bytes on disk, % of the full model
    inference_speed(model, tok, texts, [None, "a"])            # seconds per batch, median of repeats
    run_table(records); run_predictions(model, tok, records, texts)  # training runs (adapter vs full) side by side
    evaluate_run(model, tok, record)                           # confusion matrix and misclassified examples

Plain Python, no UI: the notebook's Compare panel only calls these.
"""

from .costs import costs
from .fusion_attention import fusion_attention
from .outputs import HEAD_KINDS, Prediction, head_kind, load_checkpoint, predict
from .runs import (
    CheckpointCache,
    Evaluation,
    checkpoint_head,
    evaluate_run,
    run_model,
    run_predictions,
    run_score,
    run_speed,
    run_table,
)
from .setups import BASE, as_setup, parse_setup_text, setup_label
from .speed import inference_speed

__all__ = [
    "BASE",
    "CheckpointCache",
    "Evaluation",
    "HEAD_KINDS",
    "Prediction",
    "as_setup",
    "checkpoint_head",
    "evaluate_run",
    "costs",
    "fusion_attention",
    "head_kind",
    "inference_speed",
    "load_checkpoint",
    "parse_setup_text",
    "predict",
    "run_model",
    "run_predictions",
    "run_score",
    "run_speed",
    "run_table",
    "setup_label",
]
