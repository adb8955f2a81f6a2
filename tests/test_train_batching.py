"""Training batches group examples of similar length (less padding, the same examples each epoch), evaluation runs
longest first in batches of similar length, and neither changes what a run computes: QA keeps the data's order."""

from __future__ import annotations

import random

import pandas as pd
import pytest
import torch
from test_train import WORDS, adapter_model, fast, make_tokenizer, trained_state

from workbench.analysis import predict
from workbench.train import run as run_module
from workbench.train import train


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def mixed_lengths(rows: int = 96, seed: int = 0) -> pd.DataFrame:
    """Texts of 1 to 40 words, shuffled; label "yes" when w5 is in the text."""
    rng = random.Random(seed)
    texts = []
    for i in range(rows):
        words = [rng.choice(WORDS[6:40]) for _ in range(1 + (i * 7) % 40)]
        if i % 2:
            words[rng.randrange(len(words))] = "w5"
        texts.append(" ".join(words))
    rng.shuffle(texts)
    return pd.DataFrame({"text": texts, "label": ["yes" if "w5" in t.split() else "no" for t in texts]})


def batch_lengths(model, tokenizer, tmp_path, **config) -> tuple[list[int], list[int], list[list[int]]]:
    """Padded lengths of the training batches, of the evaluation batches, and the training batches' rows' lengths."""
    train_shapes, eval_shapes, rows = [], [], []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        (train_shapes if module.training else eval_shapes).append(ids.shape[1])
        if module.training:
            rows.append(mask.sum(dim=1).tolist())

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    data = {"train": mixed_lengths(), "validation": mixed_lengths(48, seed=1)}
    try:
        train(model, data, adapter="kw", tokenizer=tokenizer, output_dir=tmp_path, config=fast(**config))
    finally:
        hook.remove()
    return train_shapes, eval_shapes, rows


def test_training_batches_group_similar_lengths_and_pad_less(tokenizer, tmp_path):
    grouped, _, grouped_rows = batch_lengths(
        adapter_model(), tokenizer, tmp_path / "g", max_steps=12, batch_size=8, eval_strategy="no"
    )
    plain, _, plain_rows = batch_lengths(
        adapter_model(),
        tokenizer,
        tmp_path / "p",
        max_steps=12,
        batch_size=8,
        eval_strategy="no",
        group_by_length=False,
    )
    padded = sum(shape * len(r) for shape, r in zip(grouped, grouped_rows, strict=True))
    padded_plain = sum(shape * len(r) for shape, r in zip(plain, plain_rows, strict=True))
    assert padded < 0.75 * padded_plain, (padded, padded_plain)
    spread = [max(r) - min(r) for r in grouped_rows]
    spread_plain = [max(r) - min(r) for r in plain_rows]
    assert sum(spread) < 0.5 * sum(spread_plain)
    assert sorted(n for r in grouped_rows for n in r) == sorted(n for r in plain_rows for n in r)  # same examples


def test_evaluation_runs_longest_first_and_pairs_every_row_with_its_label(tokenizer, tmp_path, monkeypatch):
    model = adapter_model()
    config = dict(max_steps=3, eval_strategy="steps", eval_steps=3, eval_batch_size=8)
    _, eval_shapes, _ = batch_lengths(model, tokenizer, tmp_path, **config)
    assert len(eval_shapes) == 6  # one evaluation of 48 rows
    assert eval_shapes == sorted(eval_shapes, reverse=True) and eval_shapes[0] > eval_shapes[-1]

    seen = []  # what the metrics get: each row's scores beside the label it is scored against

    def capturing(task, num_labels):
        metrics = run_module.metrics_for.__wrapped__(task, num_labels)
        return lambda prediction: seen.append(prediction) or metrics(prediction)

    capturing.__wrapped__ = run_module.metrics_for
    monkeypatch.setattr(run_module, "metrics_for", capturing)
    model, validation = adapter_model(adapter_seed=7), mixed_lengths(48, seed=1)  # random adapter: varied scores
    data = {"train": mixed_lengths(), "validation": validation}
    train(model, data, adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "again", config=fast(**config))
    label_ids = {name: i for i, name in model.heads["kw"].id2label.items()}
    lengths = [len(ids) for ids in tokenizer(list(validation["text"]), truncation=True, max_length=128)["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # longest first, ties in the data's order
    assert order != list(range(len(order)))
    evaluated = seen[-1]
    assert evaluated.label_ids.tolist() == [label_ids[validation["label"][i]] for i in order]
    in_order = predict(model, tokenizer, list(validation["text"]), setup="kw")
    expected = torch.tensor([[in_order[i].scores[name] for name in label_ids] for i in order])
    got = torch.softmax(torch.as_tensor(evaluated.predictions), dim=-1)[:, [label_ids[n] for n in label_ids]]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_run_resumed_in_a_later_epoch_sees_the_batches_of_an_uninterrupted_one(tokenizer, tmp_path):
    data = {"train": mixed_lengths(), "validation": mixed_lengths(16, seed=1)}  # 96 rows: 12 steps an epoch

    def run(folder, resume_from=None):
        model, seen = adapter_model(adapter_seed=None if resume_from is None else 123), []

        def record(module, args, kwargs):
            if module.training:
                ids, mask = kwargs["input_ids"], kwargs["attention_mask"].bool()
                seen.append(sorted(tuple(row[keep].tolist()) for row, keep in zip(ids, mask, strict=True)))

        hook = model.register_forward_pre_hook(record, with_kwargs=True)
        config = fast(eval_strategy="no", save_steps=15, max_steps=30, save_total_limit=None)
        train(
            model,
            data,
            adapter="kw",
            tokenizer=tokenizer,
            output_dir=folder,
            config=config,
            resume_from_checkpoint=resume_from,
        )
        hook.remove()
        return model, seen

    straight, straight_batches = run(tmp_path / "a")
    resumed, resumed_batches = run(tmp_path / "b", resume_from=tmp_path / "a" / "checkpoint-15")  # in epoch 2
    assert resumed_batches == straight_batches[15:]
    expected, got = trained_state(straight, "kw"), trained_state(resumed, "kw")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
