"""An adapter run and its full fine-tuning baseline, really trained (a few steps) on a tiny model, for the
Compare tests: `train_pair(folder)` -> (model, tokenizer, adapter_record, full_record)."""

import copy

import torch
from test_train import fast, keyword_frame, make_tokenizer
from tiny import tiny_adapter_model

from workbench.train import train

LABELS = {"no", "yes"}


def train_pair(folder, adapter: str = "kw", suffix: str = ""):
    """The adapter run (seq_bn adapter `adapter` with its head) on the returned model, then the full baseline on a
    copy of it, as the Train panel does; both write into `folder`."""
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    model = tiny_adapter_model()
    data = keyword_frame()
    settings = dict(tokenizer=tokenizer, config=fast())
    adapter_run = train(
        model, data, adapter=adapter, adapter_config="seq_bn", output_dir=folder / adapter,
        name=f"adapter:{adapter}{suffix}", **settings,
    )  # fmt: skip
    full_run = train(
        copy.deepcopy(model), data, kind="full", output_dir=folder / f"{adapter}-full", name=f"full:{adapter}{suffix}",
        **settings,
    )  # fmt: skip
    return model, tokenizer, adapter_run, full_run
