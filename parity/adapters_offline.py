"""pytest plugin for running the `adapters` library's tests offline, on transformers 4.57 or 5.

It changes the environment the tests run in, never what they assert, and it is the same for the reference run
(the real library) and the workbench run, so both figures count the same tests:
- tokenizers: the tests name hub tokenizers ("bert-base-uncased", "gpt2", ...) for their training datasets; offline,
  every hub name resolves to the BERT tokenizer the tests ship (tests/fixtures/SiBERT);
- `GlueDataset` / `GlueDataTrainingArguments`, which transformers 5 removed: a small MRPC reader with the same
  constructor and the same features (input_ids, attention_mask, token_type_ids, labels).
"""

from __future__ import annotations

import csv
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

LOCAL_TOKENIZER = Path("tests/fixtures/SiBERT").resolve()


def _offline_tokenizers(transformers) -> None:
    original = transformers.AutoTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if not Path(str(name)).exists():
            name = LOCAL_TOKENIZER
        return original(cls, name, *args, **kwargs)

    transformers.AutoTokenizer.from_pretrained = classmethod(from_pretrained)


@dataclass
class GlueDataTrainingArguments:
    task_name: str
    data_dir: str
    max_seq_length: int = 128
    overwrite_cache: bool = False


@dataclass(frozen=True)
class InputFeatures:
    """One encoded pair, as transformers 4's `InputFeatures` (a dataclass: tests call `asdict` on it)."""

    input_ids: list
    attention_mask: list | None = None
    token_type_ids: list | None = None
    label: int | None = None


class GlueDataset(torch.utils.data.Dataset):
    """MRPC sentence pairs as the removed transformers.GlueDataset gave them (only the task the tests use)."""

    def __init__(self, args: GlueDataTrainingArguments, tokenizer, limit_length=None, mode="train", cache_dir=None):
        if args.task_name != "mrpc":
            raise ValueError(f"the parity harness only provides MRPC, not {args.task_name!r}")
        with open(Path(args.data_dir) / f"{mode}.tsv", encoding="utf-8") as f:  # MRPC has unbalanced quotes
            rows = list(csv.reader(f, delimiter="\t", quotechar=None))[1:]
        rows = rows[:limit_length] if limit_length else rows
        encoded = tokenizer(
            [r[3] for r in rows], [r[4] for r in rows], max_length=args.max_seq_length,
            padding="max_length", truncation=True,
        )
        fields = ("input_ids", "attention_mask", "token_type_ids")
        self.features = [
            InputFeatures(**{k: encoded[k][i] for k in fields if k in encoded}, label=int(row[0]))
            for i, row in enumerate(rows)
        ]

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def pytest_configure(config):
    # the module as it is now: another plugin may have imported transformers afresh since this one was imported
    current = importlib.import_module("transformers")
    _offline_tokenizers(current)
    if not hasattr(current, "GlueDataset"):
        current.GlueDataset = GlueDataset
        current.GlueDataTrainingArguments = GlueDataTrainingArguments
