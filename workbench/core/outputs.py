"""Outputs of forward passes that run several prediction heads (AdapterHub's `MultiHeadOutput`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .transformers_api import ModelOutput


@dataclass
class MultiHeadOutput(ModelOutput):
    """One output per head (`head_outputs`); `loss` is their sum when every head computed one.

    `output[i]` is the i-th head's output, `len(output)` the number of heads, iterating gives the heads' outputs and
    `output["loss"]` the summed loss, as in AdapterHub.
    """

    head_outputs: list | None = None
    loss: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        return torch.vstack([out["logits"] for out in self.head_outputs])

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.head_outputs[key]
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        if isinstance(key, int):
            self.head_outputs[key] = value
        else:
            super().__setitem__(key, value)

    def __iter__(self):
        return iter(self.head_outputs)

    def __len__(self) -> int:
        return len(self.head_outputs)
