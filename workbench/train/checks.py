"""Checks on a run's data before any training time is spent: every problem at once, in words that name the column
and the values.

`check_data` returns `Problem`s (errors stop a run, warnings do not); `train()` calls `check_data_before_training`,
which raises one error listing every error found, so code users get the protection the Train panel gives. Checked:

- the columns the task needs are there;
- the text columns hold text, in training and validation rows: not numbers, not lists (word lists are right for
  "tagging"), not mostly empty;
- every row has a label, the labels are not all the same (never a silent one-class run), each label has at least
  `MIN_ROWS_PER_LABEL` training rows (fewer than `FEW_ROWS_PER_LABEL` is a warning), the validation split has no
  label that training never sees, and, when the head exists already, every label is one of the head's.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

from datasets import DatasetDict

from .data import LABELLED_TASKS, Columns, load_splits, rename_labels
from .errors import DataCheckError, MissingColumnError, UnknownLabelError

logger = logging.getLogger(__name__)
MIN_ROWS_PER_LABEL = 2  # fewer training rows than this for a label is an error: it cannot be learned
FEW_ROWS_PER_LABEL = 8  # fewer than this is a warning: expect unreliable results for the label
EMPTY_TEXT_SHARE = 0.5  # a text column with more empty rows than this share is not usable
SHOWN_VALUES = 5  # values quoted in one message


@dataclass(frozen=True)
class Problem:
    """One finding: `severity` "error" (a run is refused) or "warning"; `kind` picks the exception type."""

    message: str
    severity: str = "error"
    column: str | None = None
    kind: str = "data"  # "missing_column", "unknown_label" or "data"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        return self.message if self.is_error else f"warning: {self.message}"


def check_data(
    data,
    task: str = "classification",
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    question_column: str = "question",
    context_column: str = "context",
    answers_column: str = "answers",
    label_names: dict | None = None,
    head_labels: list[str] | None = None,
    validation_fraction: float = 0.1,
    seed: int = 42,
) -> list[Problem]:
    """Every problem `train()` would find in `data` for a run of `task` (same column arguments), errors first.

    Args:
        data: anything `train()` takes, or the `DatasetDict` of `load_splits` (then the split is not redone).
        label_names: as in `train()`: {value: name}.
        head_labels: the label names of the head the run would train, when the model has it already.
        validation_fraction, seed: as in `TrainConfig`, for the validation split held out of train.
    """
    columns = Columns(text_column, text_pair_column, label_column, question_column, context_column, answers_column)
    splits = data if _is_split(data) else load_splits(data, validation_fraction, seed)
    return problems_of(rename_labels(splits, columns, task, label_names or {}), columns, task, head_labels)


def problems_of(splits: DatasetDict, columns: Columns, task: str, head_labels: list | None = None) -> list[Problem]:
    """`check_data` on the splits of a run (labels already renamed)."""
    problems = _missing_columns(splits, columns, task)
    missing = {p.column for p in problems}
    if task in LABELLED_TASKS and columns.label in _text_columns(columns, task):
        both = f"column {columns.label!r} is picked as both the text and the label"
        problems.append(Problem(both, column=columns.label))
    for column in _text_columns(columns, task):
        if column not in missing:
            problems += _text_problems(splits, column, lists_ok=task == "tagging" and column == columns.text)
    if task in LABELLED_TASKS and columns.label not in missing:
        problems += _label_problems(splits, columns.label, task, head_labels)
    return sorted(problems, key=lambda p: not p.is_error)


def check_data_before_training(
    splits: DatasetDict, columns: Columns, task: str, head_labels: list[str] | None = None
) -> None:
    """Raise one error that lists every error `check_data` finds; log the warnings (`train()` calls this)."""
    problems = problems_of(splits, columns, task, head_labels)
    for warning in (p for p in problems if not p.is_error):
        logger.warning("workbench.train: %s", warning.message)
    errors = [p for p in problems if p.is_error]
    if not errors:
        return
    kinds = {p.kind for p in errors}
    error_type = {"missing_column": MissingColumnError, "unknown_label": UnknownLabelError}.get(
        kinds.pop() if len(kinds) == 1 else "data", DataCheckError
    )
    if len(errors) == 1:
        message = errors[0].message
    else:
        message = f"the data has {len(errors)} problems:\n" + "\n".join(f"- {p.message}" for p in errors)
    error = error_type(message)
    error.problems = tuple(errors)
    raise error


def _is_split(data) -> bool:
    return isinstance(data, DatasetDict) and "train" in data and "validation" in data


def _missing_columns(splits: DatasetDict, columns: Columns, task: str) -> list[Problem]:
    problems = []
    for column in columns.needed(task):
        for split, dataset in splits.items():
            if column not in dataset.column_names:
                role = "label column" if column == columns.label and task in LABELLED_TASKS else "column"
                problems.append(
                    Problem(
                        f"{role} {column!r} is not in the {split!r} split (columns: {', '.join(dataset.column_names)})",
                        column=column,
                        kind="missing_column",
                    )
                )
                break  # one message per column
    return problems


def _text_columns(columns: Columns, task: str) -> list[str]:
    if task == "qa":
        return [columns.question, columns.context]
    return [c for c in (columns.text, columns.text_pair if task != "causal_lm" else None) if c]


def _text_problems(splits: DatasetDict, column: str, lists_ok: bool) -> list[Problem]:
    """The text checks on both splits: a validation row with no text would be evaluated as the word "None"."""
    problems = []
    for split, rows in (("train", "training"), ("validation", "validation")):
        if split in splits:
            problems += _split_text_problems(splits[split][column], column, lists_ok, rows)
    return problems


def _split_text_problems(values: list, column: str, lists_ok: bool, rows: str) -> list[Problem]:
    where = "" if rows == "training" else f" in the {rows} rows"
    if not values:
        return []
    empty = [v for v in values if _is_empty(v)]
    filled = [v for v in values if not _is_empty(v)]
    numbers = [v for v in filled if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lists = [v for v in filled if isinstance(v, (list, tuple))]
    if len(empty) > EMPTY_TEXT_SHARE * len(values):
        mostly = f"text column {column!r} is mostly empty: {len(empty)} of {len(values)} {rows} rows"
        return [Problem(mostly, column=column)]
    if filled and len(numbers) > len(filled) / 2:
        return [
            Problem(
                f"text column {column!r}{where} holds numbers, not text (e.g. {_quote(numbers)}): "
                "pick the column with the text",
                column=column,
            )
        ]
    if filled and len(lists) > len(filled) / 2 and not lists_ok:
        return [
            Problem(
                f"text column {column!r}{where} holds lists, not text (e.g. {lists[0]!r}); "
                "word lists are for task 'tagging'",
                column=column,
            )
        ]
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and math.isnan(v))]
    odd = [i for i, v in enumerate(values) if not _is_empty(v) and not isinstance(v, str) and not lists_ok]
    if missing or odd:  # a few None or numbers among texts would be trained on as the words "None" or "7"
        found = [f"no text (None) in {rows} rows {_quote(missing)}"] if missing else []
        found += [f"non-text values in {rows} rows {_quote(odd)} (e.g. {values[odd[0]]!r})"] if odd else []
        return [Problem(f"text column {column!r}: {'; '.join(found)}", column=column)]
    if empty:
        return [
            Problem(
                f"text column {column!r} is empty in {len(empty)} of {len(values)} {rows} rows",
                severity="warning",
                column=column,
            )
        ]
    return []


def _label_problems(splits: DatasetDict, column: str, task: str, head_labels: list[str] | None) -> list[Problem]:
    rows = {split: splits[split][column] for split in ("train", "validation")}
    unlabelled = [i for i, value in enumerate(rows["train"]) if _is_empty(value)]
    problems = []
    if unlabelled:
        where = _quote(unlabelled)
        problems.append(
            Problem(f"{len(unlabelled)} training rows have no label in column {column!r} (rows {where})", column=column)
        )
    if task == "classification":
        lists = [v for v in rows["train"] if isinstance(v, (list, tuple))]
        if lists:
            return [
                *problems,
                Problem(
                    f"label column {column!r} holds lists (e.g. {lists[0]!r}): use task 'multilabel' or 'tagging'",
                    column=column,
                ),
            ]
    counts = {split: _label_counts(values, task) for split, values in rows.items()}
    if head_labels:  # labels the head does not know are named once; the other checks leave them out
        known = {str(label) for label in head_labels}
        indices = all(label == f"LABEL_{i}" for i, label in enumerate(head_labels))
        outside = sorted(
            {k for c in counts.values() for k in c if str(k) not in known and not _index_label(k, indices, known)},
            key=str,
        )
        if outside:
            problems.append(
                Problem(
                    f"label(s) {_quote(outside)} in column {column!r} are not in the head's labels "
                    f"({', '.join(map(repr, head_labels))})",
                    column=column,
                    kind="unknown_label",
                )
            )
            counts = {split: Counter({k: n for k, n in c.items() if k not in outside}) for split, c in counts.items()}
    train = counts["train"]
    if not train:
        if not problems:
            problems.append(Problem(f"label column {column!r} has no labels in the training rows", column=column))
        return problems
    if _constant(rows["train"], train, task):
        only = ", ".join(_quote([label]) for label in train)
        problems.append(
            Problem(
                f"label column {column!r} holds one value only ({only}) in all {len(rows['train'])} training rows: "
                "a classifier needs at least two different labels; pick the column that holds the labels",
                column=column,
            )
        )
    elif (rare := {k: n for k, n in train.items() if n < MIN_ROWS_PER_LABEL}) and len(rare) > max(len(train) / 2, 5):
        rows_count = len(rows["train"])
        return [
            *problems,
            Problem(
                f"label column {column!r} has {len(train)} different values in {rows_count} training rows, "
                f"{len(rare)} of them in one row only (e.g. {_quote(list(rare), 3)}): is it the label column?",
                column=column,
            ),
        ]
    elif rare:
        problems.append(
            Problem(
                f"too few training rows for label(s) {_counted(rare)} in column {column!r}: each label needs at "
                f"least {MIN_ROWS_PER_LABEL}",
                column=column,
            )
        )
    if few := {k: n for k, n in train.items() if MIN_ROWS_PER_LABEL <= n < FEW_ROWS_PER_LABEL}:
        problems.append(
            Problem(
                f"few training rows for label(s) {_counted(few)} in column {column!r}: results for them will be "
                "unreliable",
                severity="warning",
                column=column,
            )
        )
    if unseen := {k: n for k, n in counts["validation"].items() if k not in train}:
        problems.append(
            Problem(
                f"label(s) {_counted(unseen)} of the validation split in column {column!r} are never seen in "
                "training: add training rows for them or remove them from the validation data",
                column=column,
            )
        )
    return problems


def labels_found(splits: DatasetDict, column: str, task: str = "classification") -> list:
    """The label values of every split, in the order a new head numbers them (numbers first, then text)."""
    found = Counter()
    for split in splits.values():
        if column in split.column_names:
            found.update(_label_counts(split[column], task))
    return sorted(found, key=lambda v: (isinstance(v, str), v if isinstance(v, (int, float)) else 0, str(v)))


def _label_counts(values: list, task: str) -> Counter:
    """In how many rows each label occurs (for multilabel and tagging rows, each label of the row once)."""
    counts = Counter()
    for value in values:
        if _is_empty(value):
            continue
        if task == "classification":
            counts[_hashable(value)] += 1
        else:
            items = value.split("," if task == "multilabel" else None) if isinstance(value, str) else value
            counts.update({_hashable(item.strip() if isinstance(item, str) else item) for item in items})
    return counts


def _constant(values: list, counts: Counter, task: str) -> bool:
    if task == "multilabel":  # every row with the same set of labels
        sets = {frozenset(_label_counts([v], task)) for v in values if not _is_empty(v)}
        return len(sets) == 1
    return len(counts) == 1


def _index_label(value, indices: bool, known: set[str]) -> bool:
    return indices and isinstance(value, int) and 0 <= value < len(known)


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def _is_empty(value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, (str, list, tuple)) and len(value) == 0 or (isinstance(value, str) and not value.strip())


def _quote(values: list, limit: int = SHOWN_VALUES) -> str:
    shown = ", ".join(_short(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _short(value, width: int = 30) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 4] + "...'"


def _counted(counts: dict) -> str:
    items = sorted(counts.items(), key=lambda kv: (kv[1], str(kv[0])))
    shown = ", ".join(f"{_short(k)} ({n} row{'s' if n != 1 else ''})" for k, n in items[:SHOWN_VALUES])
    return shown + (f" and {len(items) - SHOWN_VALUES} more" if len(items) > SHOWN_VALUES else "")
