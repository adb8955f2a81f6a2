"""Extractive question answering: contexts split into overlapping windows, and SQuAD scoring back on the examples.

A context longer than `max_length` (after the question, which is never truncated) is cut into windows that share
`doc_stride` tokens with the previous one, as in the SQuAD recipes of BERT (arXiv:1810.04805). A window's target
is the answer's token span when the whole answer lies inside it, else position 0 (the CLS token: "not here").

Evaluation puts the windows back together: for each example, the best valid span of any window (start <= end,
inside the context, at most `max_answer_length` tokens) by start + end logit, turned back into text through the
offset mapping, then exact match and F1 on normalized text against every gold answer (the SQuAD v1.1 metric,
arXiv:1606.05250). When some validation examples have no answer (SQuAD 2.0 layout), "no answer" is predicted
where the lowest CLS score of the example's windows beats its best span.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping

import numpy as np

from .errors import DataError

EXAMPLE_ID = "example_id"  # window -> row of its split (metadata columns, removed before training)
OFFSETS = "offset_mapping"  # (start, end) characters of each context token; None elsewhere
METADATA = (EXAMPLE_ID, OFFSETS)
_PUNCTUATION = set(string.punctuation)


def encode_windows(rows, indices, *, tokenizer, columns, max_length: int, doc_stride: int) -> dict:
    """Tokenize a batch of rows into windows with start/end targets and the metadata evaluation needs."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("question answering needs a fast tokenizer (it maps characters to tokens)")
    questions = [str(q).strip() for q in rows[columns.question]]
    contexts = [str(c) for c in rows[columns.context]]
    _check_room(questions, indices, tokenizer, columns, max_length, doc_stride)
    encoded = tokenizer(
        questions,
        contexts,
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    spans = [answer_span(a, contexts[i], columns, indices[i]) for i, a in enumerate(rows[columns.answers])]
    starts, ends, example_ids, offsets = [], [], [], []
    for window, row in enumerate(encoded.pop("overflow_to_sample_mapping")):
        sequence = encoded.sequence_ids(window)
        context_offsets = [o if sequence[t] == 1 else None for t, o in enumerate(encoded[OFFSETS][window])]
        start, end = _target(context_offsets, spans[row])
        starts.append(start)
        ends.append(end)
        example_ids.append(indices[row])
        offsets.append(context_offsets)
    encoded["start_positions"], encoded["end_positions"] = starts, ends
    encoded[EXAMPLE_ID], encoded[OFFSETS] = example_ids, offsets
    return encoded


def _check_room(questions, indices, tokenizer, columns, max_length: int, doc_stride: int) -> None:
    """The question is never cut: each window must still hold more context tokens than the overlap."""
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    lengths = tokenizer(questions, add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(lengths):
        room = max_length - specials - len(ids)
        if room <= doc_stride:
            raise DataError(
                f"row {indices[i]}: the question in column {columns.question!r} has {len(ids)} tokens, leaving "
                f"{room} of max_length={max_length} for the context, not more than doc_stride={doc_stride}: "
                "raise max_length or lower doc_stride"
            )


def answer_span(answers, context: str, columns, row: int) -> tuple[int, int] | None:
    """The first answer's (start, end) characters in `context`, or None for a row without an answer."""
    column = columns.answers
    if not isinstance(answers, Mapping) or "text" not in answers or "answer_start" not in answers:
        expected = '{"text": [...], "answer_start": [...]}'
        raise DataError(f"row {row}: column {column!r} must hold {expected}, found {answers!r}")
    texts, starts = list(answers["text"] or []), list(answers["answer_start"] or [])
    if not texts or not starts:
        return None
    text, start = str(texts[0]), int(starts[0])
    found = context[start : start + len(text)]
    if start < 0 or found != text:
        raise DataError(
            f"row {row}: answer {text!r} is not at answer_start={start} of column {columns.context!r} "
            f"(the context has {found!r} there)"
        )
    return start, start + len(text)


def _target(offsets: list, span: tuple[int, int] | None) -> tuple[int, int]:
    """The window's (start, end) token positions of the answer, or (0, 0) when it is not wholly inside."""
    tokens = [t for t, o in enumerate(offsets) if o is not None and o[1] > o[0]]
    if span is None or not tokens:
        return 0, 0
    char_start, char_end = span
    if offsets[tokens[0]][0] > char_start or offsets[tokens[-1]][1] < char_end:
        return 0, 0
    inside = [t for t in tokens if offsets[t][0] < char_end and offsets[t][1] > char_start]
    return (inside[0], inside[-1]) if inside else (0, 0)


def best_span(start_logits, end_logits, offsets: list, max_answer_length: int) -> tuple[float, int, int] | None:
    """(score, start, end) of the window's best span of context tokens by start + end logit, or None."""
    valid = np.array([o is not None and o[1] > o[0] for o in offsets] + [False] * (len(start_logits) - len(offsets)))
    starts = np.where(valid, np.asarray(start_logits, dtype=np.float64), -np.inf)
    ends = np.where(valid, np.asarray(end_logits, dtype=np.float64), -np.inf)
    best = None
    for length in range(min(max_answer_length, len(starts))):  # end = start + length
        scores = starts[: len(starts) - length] + ends[length:]
        position = int(np.argmax(scores))
        if np.isfinite(scores[position]) and (best is None or scores[position] > best[0]):
            best = (float(scores[position]), position, position + length)
    return best


def predict_answers(
    start_logits, end_logits, example_ids, offsets, contexts: list[str], max_answer_length: int, null_answers: bool
) -> list[str]:
    """The answer text of each example: its windows' best span (or "" for "no answer", with `null_answers`)."""
    windows = collections.defaultdict(list)
    for window, example in enumerate(example_ids):
        windows[example].append(window)
    predictions = []
    for example, context in enumerate(contexts):
        best, null_score = None, np.inf
        for window in windows.get(example, []):
            span = best_span(start_logits[window], end_logits[window], offsets[window], max_answer_length)
            if span is not None and (best is None or span[0] > best[0]):
                best = (*span, window)
            null_score = min(null_score, float(start_logits[window][0] + end_logits[window][0]))
        if best is None or (null_answers and null_score > best[0]):
            predictions.append("")
            continue
        _, start, end, window = best
        predictions.append(context[offsets[window][start][0] : offsets[window][end][1]])
    return predictions


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((collections.Counter(predicted) & collections.Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: list[str], golds: list[list[str]]) -> dict[str, float]:
    """Mean exact match and F1 (0..1), each the best over an example's gold answers ([""]: no answer)."""
    exact, f1 = [], []
    for prediction, answers in zip(predictions, golds, strict=True):
        answers = answers or [""]
        exact.append(max(float(normalize_answer(prediction) == normalize_answer(a)) for a in answers))
        f1.append(max(token_f1(prediction, a) for a in answers))
    return {"exact_match": float(np.mean(exact)), "f1": float(np.mean(f1))}


class SquadMetrics:
    """Trainer's `compute_metrics` for "qa": windows' logits back to answers per example, scored SQuAD-style."""

    def __init__(self, windows, examples, columns, max_answer_length: int):
        self.example_ids = list(windows[EXAMPLE_ID])
        self.offsets = list(windows[OFFSETS])
        self.contexts = [str(c) for c in examples[columns.context]]
        self.golds = [[str(t) for t in (a.get("text") or [])] for a in examples[columns.answers]]
        self.max_answer_length = max_answer_length
        self.null_answers = any(not gold for gold in self.golds)

    def __call__(self, pred) -> dict[str, float]:
        start_logits, end_logits = (np.asarray(x) for x in pred.predictions[:2])
        if len(start_logits) != len(self.example_ids):
            raise ValueError(f"{len(start_logits)} predicted windows for {len(self.example_ids)} validation windows")
        predictions = predict_answers(
            start_logits,
            end_logits,
            self.example_ids,
            self.offsets,
            self.contexts,
            self.max_answer_length,
            self.null_answers,
        )
        return squad_scores(predictions, self.golds)
