"""Extractive QA with overflow windows: windows, targets, aggregation over windows, SQuAD scores, a tiny run."""

import random

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict
from test_train import WORDS, fast, make_tokenizer
from tiny import tiny_adapter_model

from workbench.train import DataError, TrainConfig, train
from workbench.train.data import Columns, tokenize
from workbench.train.qa import EXAMPLE_ID, OFFSETS, normalize_answer, predict_answers, squad_scores

COLUMNS = Columns(question="q", context="c", answers="a")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def windows(tokenizer, rows: list[dict], max_length: int, doc_stride: int) -> Dataset:
    splits = DatasetDict(train=Dataset.from_list(rows))
    return tokenize(splits, tokenizer, COLUMNS, "qa", None, max_length=max_length, doc_stride=doc_stride)["train"]


def row(context: str, answer: str | None, question: str = "w4 w5") -> dict:
    found = {"text": [answer], "answer_start": [context.index(answer)]} if answer else {"text": [], "answer_start": []}
    return {"q": question, "c": context, "a": found}


def context_tokens(window) -> list[int]:
    return [t for t, offset in zip(window["input_ids"], window[OFFSETS], strict=True) if offset is not None]


def test_long_context_is_split_into_overlapping_windows_and_the_question_is_kept(tokenizer):
    context = " ".join(WORDS[20:40])  # 20 context tokens, w24..w43
    encoded = windows(tokenizer, [row(context, "w30")], max_length=12, doc_stride=3)
    # 12 = [CLS] w4 w5 [SEP] + 7 context tokens + [SEP]; each window starts 7 - 3 = 4 tokens after the previous one
    assert len(encoded) == 5 and list(encoded[EXAMPLE_ID]) == [0] * 5
    pieces = [context_tokens(w) for w in encoded]
    assert [len(p) for p in pieces] == [7, 7, 7, 7, 4]
    for first, second in zip(pieces, pieces[1:], strict=False):
        assert first[-3:] == second[:3]  # exactly doc_stride tokens shared
    assert sorted({t for p in pieces for t in p}) == tokenizer(context, add_special_tokens=False)["input_ids"]
    assert all(w["input_ids"][:4] == tokenizer("w4 w5")["input_ids"][:-1] + [3] for w in encoded)
    assert all(len(w["input_ids"]) <= 12 for w in encoded)


def test_each_window_targets_the_answer_when_it_holds_all_of_it_else_cls(tokenizer):
    context = " ".join(WORDS[20:40])
    rows = [row(context, "w29 w30 w31"), row("w10 w11 w12", "w11"), row("w10 w11", None)]
    encoded = windows(tokenizer, rows, max_length=12, doc_stride=3)
    assert list(encoded[EXAMPLE_ID]) == [0, 0, 0, 0, 0, 1, 2]
    targets = list(zip(encoded["start_positions"], encoded["end_positions"], strict=True))
    holding = []
    for window, (start, end) in zip(encoded, targets, strict=True):
        text = tokenizer.decode(window["input_ids"])
        if (start, end) != (0, 0):
            holding.append(window[EXAMPLE_ID])
            answer = window["input_ids"][start : end + 1]
            expected = {0: "w29 w30 w31", 1: "w11"}[window[EXAMPLE_ID]]
            assert tokenizer.decode(answer) == expected
        else:  # not wholly inside this window (or no answer at all)
            expected = {0: "w29 w30 w31", 1: "w11", 2: "no answer"}[window[EXAMPLE_ID]]
            assert expected not in text
    # context w24..w43 in windows w24-30, w28-34, w32-38, w36-42, w40-43: only the second holds w29 w30 w31
    assert targets[:5] == [(0, 0), (5, 7), (0, 0), (0, 0), (0, 0)] and holding == [0, 1]


def test_bad_qa_rows_are_named(tokenizer):
    with pytest.raises(DataError, match=r"row 1: answer 'w12' is not at answer_start=3 of column 'c'"):
        windows(
            tokenizer,
            [row("w10 w11", "w11"), {"q": "w4", "c": "w10 w11 w12", "a": {"text": ["w12"], "answer_start": [3]}}],
            12,
            3,
        )
    long_question = " ".join(WORDS[:8])
    with pytest.raises(DataError, match=r"row 0: the question in column 'q' has 8 tokens.*doc_stride=3"):
        windows(tokenizer, [row("w10 w11 w12", "w11", question=long_question)], max_length=12, doc_stride=3)
    too_long = TrainConfig(doc_stride=128).task_problems("qa")
    assert too_long == ["TrainConfig.doc_stride=128: must be below max_length=128"]


def hand_made_windows():
    """Two windows of one context "w10 w11 w12 w13 w14 w15": tokens 4..7 are context (offsets), 0..3 are not."""
    context = "w10 w11 w12 w13 w14 w15"
    spans = [(0, 3), (4, 7), (8, 11), (12, 15), (16, 19), (20, 23)]
    question = [None] * 4
    offsets = [question + spans[0:4], question + spans[2:6]]  # the windows share w12 w13
    return context, offsets


def test_aggregation_picks_the_best_valid_span_over_all_windows():
    context, offsets = hand_made_windows()
    start = np.full((2, 8), -5.0)
    end = np.full((2, 8), -5.0)
    start[0, 1] = end[0, 2] = 50.0  # the question tokens score highest, but are not context: never chosen
    start[0, 7], end[0, 4] = 9.0, 9.0  # the best start and end of window 0, but end before start: invalid
    end[0, 7] = -6.0  # window 0's best valid span: w10 (start 4 + end 4 = 4 > start 7 + end 7 = 3)
    start[1, 5], end[1, 7] = 4.0, 3.0  # window 1: w13 w14 w15 (7), the best of all
    predicted = predict_answers(start, end, [0, 0], offsets, [context], max_answer_length=5, null_answers=False)
    assert predicted == ["w13 w14 w15"]
    predicted = predict_answers(start, end, [0, 0], offsets, [context], max_answer_length=2, null_answers=False)
    assert predicted == ["w10"]  # three tokens are too long now: window 1's best span scores 4 - 5 = -1
    # positions past a window's own tokens (Trainer pads shorter windows with -100) are ignored, whatever they hold
    padded_start, padded_end = (np.pad(x, ((0, 0), (0, 2)), constant_values=100.0) for x in (start, end))
    assert predict_answers(padded_start, padded_end, [0, 0], offsets, [context], 5, False) == ["w13 w14 w15"]


def test_no_answer_is_predicted_only_when_cls_beats_every_span_and_the_data_has_unanswerable_rows():
    context, offsets = hand_made_windows()
    start, end = np.zeros((2, 8)), np.zeros((2, 8))
    start[0, 4] = end[0, 4] = 1.0  # best span w10 scores 2
    start[:, 0] = end[:, 0] = 3.0  # CLS scores 6 in both windows
    assert predict_answers(start, end, [0, 0], offsets, [context], 5, null_answers=True) == [""]
    assert predict_answers(start, end, [0, 0], offsets, [context], 5, null_answers=False) == ["w10"]
    start[1, 0] = -3.0  # the lowest CLS score (0 in window 1) no longer beats the span
    assert predict_answers(start, end, [0, 0], offsets, [context], 5, null_answers=True) == ["w10"]


def test_squad_exact_match_and_f1():
    assert normalize_answer("The  Black-cat, sat!") == "blackcat sat"
    scores = squad_scores(
        ["the cat", "black cat sat", "dog", "", "a"],
        [["Cat"], ["the cat"], ["cat", "a dog!"], [], ["b"]],
    )
    # exact: 1, 0, 1 (second gold), 1 (no answer, none predicted), 0 ("a" normalizes to nothing, "b" does not)
    assert scores["exact_match"] == pytest.approx(3 / 5)
    # f1: 1, 2 * (1/3 * 1) / (1/3 + 1) = 0.5, 1, 1, 0
    assert scores["f1"] == pytest.approx((1 + 0.5 + 1 + 1 + 0) / 5)


def long_qa_frame(rows: int, seed: int) -> pd.DataFrame:
    """Contexts of 24 words (three windows at max_length=16); the answer is always w7."""
    rng = random.Random(seed)
    data = []
    for _ in range(rows):
        words = rng.sample(WORDS[10:90], 24)
        words[rng.randrange(24)] = "w7"
        data.append(row(" ".join(words), "w7"))
    return pd.DataFrame(
        {"question": [r["q"] for r in data], "context": [r["c"] for r in data], "answers": [r["a"] for r in data]}
    )


def test_tiny_qa_run_on_windows_learns_and_scores_examples(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = tiny_adapter_model()
    model.add_adapter("qa", config="lora")
    data = {"train": long_qa_frame(96, seed=0), "validation": long_qa_frame(24, seed=1)}
    config = fast(
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        batch_size=16,
        max_steps=60,
        eval_steps=60,
        max_length=16,
        doc_stride=4,
    )
    seen = []
    record = train(
        model,
        data,
        adapter="qa",
        task="qa",
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=config,
        callbacks=[seen.append],
    )
    losses = record.train_losses
    assert len(losses) == 60 and np.mean(losses[-10:]) < np.mean(losses[:10]) * 0.7
    metrics = record.final_metrics
    assert {"eval_loss", "eval_exact_match", "eval_f1"} <= set(metrics)
    assert 0 <= metrics["eval_exact_match"] <= metrics["eval_f1"] <= 1
    assert metrics["eval_exact_match"] > 0.5  # scored per example (24), over its windows
