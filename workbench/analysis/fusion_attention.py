"""How much each AdapterFusion layer attends to each fused adapter, on a few input texts.

    fusion_attention(model, tok, ["a great film", "dull"], Fuse("sst", "imdb"))   # DataFrame [layer x adapter]

AdapterHub users plot this to see which adapters a fusion relies on (adapters issues #83, #174, #452). The
model's forward with `output_adapter_fusion_attentions=True` gives, per layer and site, the attention of every
token over the fused adapters; here it is averaged over the real (unpadded) tokens of all texts and over the
sites of a layer, so every row sums to 1 (NaN for an adapter left out of a layer: the fusion there attends over
the others, as in AdapterHub).
"""

from __future__ import annotations

import pandas as pd
import torch

from ..core.composition import Fuse
from ..core.context import AdapterSetup


def fusion_attention(model, tokenizer, texts: list[str] | str, fusion, max_length: int = 128) -> pd.DataFrame:
    """The mean fusion attention of `model` on `texts`: one row per layer, one column per fused adapter.

    Args:
        fusion: a `Fuse`, a list of adapter names, or the fusion's name ("a,b"); the fusion must be on the model.
            It is activated for this call only: the model's active adapters, head and train/eval mode stay as
            they were.
    """
    block = _as_fuse(fusion)
    if block.name not in model.adapter_fusions:
        known = ", ".join(model.adapter_fusions) or "none"
        raise ValueError(f"no AdapterFusion {block.name!r} on the model (fusions: {known})")
    texts = [texts] if isinstance(texts, str) else [t for t in texts if t.strip()]
    if not texts:
        raise ValueError("no input texts: give at least one non-empty text")
    inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).float().cpu()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), AdapterSetup(block):
            outputs = model(**inputs, output_adapter_fusion_attentions=True)
    finally:
        model.train(was_training)
    per_layer = outputs["adapter_fusion_attentions"].get(block.name, {})
    present = model._method("bottleneck").fused_children(block)
    rows = {
        layer: _token_mean([(probs, present[(layer, site)]) for site, probs in sites.items()], mask, len(block))
        for layer, sites in sorted(per_layer.items())
    }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=block.name.split(","))
    frame.index.name = "layer"
    frame.columns.name = "adapter"
    return frame


def _as_fuse(fusion) -> Fuse:
    if isinstance(fusion, Fuse):
        return fusion
    names = fusion.split(",") if isinstance(fusion, str) else list(fusion)
    names = [n.strip() for n in names if n.strip()]
    if len(names) < 2:
        raise ValueError(f"fusion={fusion!r}: give a Fuse or at least two adapter names")
    return Fuse(*names)


def _token_mean(sites: list[tuple[torch.Tensor, list[int]]], mask: torch.Tensor, width: int) -> list[float]:
    """Each site's (batch, tokens, present adapters) attention averaged over unpadded tokens, placed in the
    columns of the adapters present there (NaN elsewhere), then averaged over the sites."""
    means = []
    for probs, columns in sites:
        row = torch.full((width,), float("nan"))
        row[columns] = (probs.float() * mask[..., None]).sum(dim=(0, 1)) / mask.sum()
        means.append(row)
    return torch.stack(means).nanmean(dim=0).tolist()
