"""`workbench.analysis`: compare what the base model, adapters, compositions and a full fine-tuned model do.

    predict(model, tok, texts, setup="Stack(lang, task)")    # labels with scores, tags, generated text or a span
    costs(model, ["a", "Fuse(a,b)"], full_checkpoint=path)     # parameters, bytes on disk, % of the full model
    inference_speed(model, tok, texts, [None, "a"])            # seconds per batch, median of repeats

Plain Python, no UI: the notebook's Compare panel only calls these.
"""

from .costs import costs
from .fusion_attention import fusion_attention
from .outputs import HEAD_KINDS, Prediction, head_kind, load_checkpoint, predict
from .setups import BASE, as_setup, parse_setup_text, setup_label
from .speed import inference_speed

__all__ = [
    "BASE",
    "HEAD_KINDS",
    "Prediction",
    "as_setup",
    "costs",
    "fusion_attention",
    "head_kind",
    "inference_speed",
    "load_checkpoint",
    "parse_setup_text",
    "predict",
    "setup_label",
]
