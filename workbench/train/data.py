"""Data for a run: load any source into train/validation splits, check columns, map labels, tokenize.

Sources: a Hugging Face dataset id ("owner/name", through `datasets.load_dataset`), a local CSV/TSV/JSON/JSONL
file, a local folder (of data files, or saved with `save_to_disk`), a pandas DataFrame, a `datasets.Dataset` or
`DatasetDict`, or a dict of splits of any of these. Labels are mapped through the head's `label2id`, so the
label names live in the head (and in its saved `head_config.json`).
"""

from __future__ import annotations

import contextlib
import csv
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
import pandas as pd
import pyarrow as pa
from datasets import Dataset, DatasetDict

from . import qa
from .errors import DataError, EmptyDatasetError, UnknownLabelError

TASKS = ("classification", "multilabel", "tagging", "qa", "causal_lm")
LABELLED_TASKS = ("classification", "multilabel", "tagging")  # the tasks whose head has a label set
_VALIDATION_NAMES = ("validation", "valid", "dev", "val", "test")
# TSV has no quoting (GLUE, SST-2 and the IANA format): a quote is text. With CSV's quoting, a text opening with
# a quote swallowed the rows up to the next quote into one text with the last row's label, silently.
_READERS = {
    ".csv": lambda p: pd.read_csv(p),
    ".tsv": lambda p: pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE),
    ".json": lambda p: pd.read_json(p),
    ".jsonl": lambda p: pd.read_json(p, lines=True),
}


@dataclass
class Columns:
    """Which columns hold the text, the optional second text, and the label; for "qa", the question, the
    context and the answers (SQuAD layout: {"text": [...], "answer_start": [...]})."""

    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    question: str = "question"
    context: str = "context"
    answers: str = "answers"

    def needed(self, task: str = "classification") -> list[str]:
        if task == "qa":
            return [self.question, self.context, self.answers]
        if task == "causal_lm":
            return [self.text]
        return [c for c in (self.text, self.text_pair, self.label) if c]


def load_splits(data, validation_fraction: float = 0.1, seed: int = 42) -> DatasetDict:
    """A `DatasetDict` with "train" and "validation", holding out part of train when no validation is given."""
    splits = _as_dataset_dict(data)
    if "train" not in splits:
        raise DataError(f"the data has no 'train' split (splits: {', '.join(splits) or 'none'})")
    validation = next((name for name in _VALIDATION_NAMES if name in splits), None)
    train = splits["train"]
    if len(train) == 0:
        raise EmptyDatasetError("the 'train' split is empty")
    if validation is None:
        if len(train) < 2:
            raise EmptyDatasetError("the 'train' split has 1 row: too few to hold out a validation split")
        parts = train.train_test_split(test_size=validation_fraction, seed=seed)
        return DatasetDict(train=parts["train"], validation=parts["test"])
    if len(splits[validation]) == 0:
        raise EmptyDatasetError(f"the {validation!r} split is empty")
    return DatasetDict(train=train, validation=splits[validation])


def _as_dataset_dict(data) -> DatasetDict:
    if isinstance(data, DatasetDict):
        return data
    if isinstance(data, Mapping):
        return DatasetDict({str(k): _as_dataset(v) for k, v in data.items()})
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        return _load_folder(Path(data))
    if isinstance(data, (str, Path)) and not _looks_local(data):
        return _load_by_id(str(data))
    return DatasetDict(train=_as_dataset(data))


def _load_by_id(dataset_id: str) -> DatasetDict:
    """A dataset of the Hub (or of the local `datasets` cache when offline): every split it has."""
    try:
        loaded = datasets.load_dataset(dataset_id)
    except FileNotFoundError:  # datasets' DatasetNotFoundError: no such repo, or a private one
        raise DataError(
            f"no dataset {dataset_id!r}: it is not a local file or folder, and not a dataset the Hub can serve"
        ) from None
    except (ConnectionError, ValueError) as err:  # offline without a cached copy; a config name is needed
        raise DataError(f"cannot load the dataset {dataset_id!r}: {err}") from err
    return _splits_of(loaded, dataset_id)


def _load_folder(folder: Path) -> DatasetDict:
    """A folder saved by `save_to_disk`, or a folder of data files (split names from the file names)."""
    try:
        if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(str(folder))
    except (FileNotFoundError, ValueError) as err:
        raise DataError(f"{folder}: cannot load it as a dataset folder ({err})") from None
    return _splits_of(loaded, str(folder))


def _splits_of(loaded, source: str) -> DatasetDict:
    if isinstance(loaded, Dataset):
        return DatasetDict(train=loaded)
    if isinstance(loaded, DatasetDict):
        return loaded
    raise DataError(f"{source}: loaded a {type(loaded).__name__}, not a dataset with splits")


def _looks_local(source) -> bool:
    path = Path(source)
    return path.exists() or path.suffix.lower() in _READERS


def _as_dataset(part) -> Dataset:
    if isinstance(part, Dataset):
        return part
    if isinstance(part, (str, Path)):
        part = _read_file(Path(part))
    try:
        if isinstance(part, pd.DataFrame):
            return Dataset.from_pandas(part, preserve_index=False)
        if isinstance(part, list):
            return Dataset.from_list(part)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # e.g. numbers mixed into a column of text
        raise DataError(f"the data has a column of mixed value types: {err.args[-1] if err.args else err}") from None
    raise DataError(f"cannot use {type(part).__name__} as data: pass a DataFrame, a Dataset, a file or a dataset id")


def _read_file(path: Path) -> pd.DataFrame:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r} (use {', '.join(_READERS)})")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        return reader(path)
    except pd.errors.EmptyDataError:
        raise EmptyDatasetError(f"{path} holds no rows") from None
    except ValueError as err:
        raise DataError(f"{path}: cannot read it ({err})") from None


def rename_labels(splits: DatasetDict, columns: Columns, task: str, names: Mapping) -> DatasetDict:
    """The splits with label values replaced by their names ({value: name}, values compared as text), so the head
    built from the data carries the names; labels become text, and values without a name keep their own."""
    by_text = {str(value): str(name) for value, name in names.items()}

    def rename(value):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, (list, tuple)):
            return [rename(item) for item in value]
        if isinstance(value, str) and task == "multilabel":
            return ",".join(by_text.get(item.strip(), item.strip()) for item in value.split(",") if item.strip())
        if isinstance(value, str) and task == "tagging":
            return " ".join(by_text.get(item, item) for item in value.split())
        return by_text.get(str(value), str(value))

    def batch(rows):
        return {columns.label: [rename(value) for value in rows[columns.label]]}

    if not names or any(columns.label not in split.column_names for split in splits.values()):
        return splits  # nothing to rename; a missing column is named by the checks
    with _quiet():
        return DatasetDict({name: split.map(batch, batched=True) for name, split in splits.items()})


@contextlib.contextmanager
def _quiet():
    """No `datasets` progress bars inside: these steps are quick, the run's own events report progress."""
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if bars:
            datasets.enable_progress_bars()


def label_values(dataset: Dataset, columns: Columns, task: str) -> list:
    """The distinct label values of a split, sorted (numbers numerically, others as text)."""
    seen = set()
    for value in dataset[columns.label]:
        items = _as_list(value, columns.label, task) if task != "classification" else [value]
        for item in items:
            _check_present(item, columns.label)
            seen.add(item)
    return sorted(seen, key=lambda v: (isinstance(v, str), v))


class LabelMap:
    """Maps data label values to head ids through the head's `label2id` (strings, or LABEL_i indices)."""

    def __init__(self, label2id: dict[str, int], column: str):
        self.label2id = dict(label2id)
        self.column = column
        self._indices = all(k == f"LABEL_{i}" for k, i in label2id.items())

    def __call__(self, value) -> int:
        _check_present(value, self.column)
        key = str(value.item() if hasattr(value, "item") else value)
        if key in self.label2id:
            return self.label2id[key]
        if self._indices and isinstance(value, int) and 0 <= value < len(self.label2id):
            return value
        known = ", ".join(map(repr, self.label2id))
        raise UnknownLabelError(f"label {value!r} in column {self.column!r} is not in the head's labels ({known})")


def _check_present(value, column: str) -> None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise UnknownLabelError(f"a row has no label in column {column!r}")


def _as_list(value, column: str, task: str) -> list:
    """A multilabel or tagging label as a list. A string holds comma-separated labels for "multilabel"
    ("sports, politics") and whitespace-separated tags for "tagging" ("O B-PER O", one per word, as text files hold
    them); the head's labels, the checks and the encoding all split it this way."""
    if isinstance(value, str):
        return [v.strip() for v in value.split("," if task == "multilabel" else None) if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise DataError(f"column {column!r} must hold lists of labels, found {type(value).__name__}: {value!r}")


def tokenize(
    splits: DatasetDict, tokenizer, columns: Columns, task: str, labels: LabelMap, max_length: int, doc_stride: int = 32
):
    """Tokenize every split (no padding: batches are padded dynamically) and map labels to head ids.

    "qa" gives windows of the context (`doc_stride` tokens of overlap) with the first answer's start/end token
    positions, and the metadata columns `qa.METADATA` for evaluation; "causal_lm" gives input ids only (the
    collator makes the labels).
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {', '.join(TASKS)}")
    encode = {
        "classification": _encode_classification,
        "multilabel": _encode_multilabel,
        "tagging": _encode_tags,
        "causal_lm": _encode_causal_lm,
    }
    if task == "qa":
        batch = functools.partial(
            qa.encode_windows, tokenizer=tokenizer, columns=columns, max_length=max_length, doc_stride=doc_stride
        )
    else:

        def batch(rows, indices):
            return encode[task](rows, tokenizer, columns, labels, max_length)

    with _quiet():
        return DatasetDict(
            {
                name: ds.map(batch, batched=True, with_indices=True, remove_columns=ds.column_names)
                for name, ds in splits.items()
            }
        )


def _texts(rows, tokenizer, columns: Columns, max_length: int, **kwargs):
    texts = [str(t) for t in rows[columns.text]]
    pairs = [str(t) for t in rows[columns.text_pair]] if columns.text_pair else None
    return tokenizer(texts, pairs, truncation=True, max_length=max_length, **kwargs)


def _encode_classification(rows, tokenizer, columns, labels, max_length):
    encoded = _texts(rows, tokenizer, columns, max_length)
    encoded["labels"] = [labels(v) for v in rows[columns.label]]
    return encoded


def _encode_multilabel(rows, tokenizer, columns, labels, max_length):
    encoded = _texts(rows, tokenizer, columns, max_length)
    count = len(labels.label2id)
    hot = []
    for value in rows[columns.label]:
        row = [0.0] * count
        for item in _as_list(value, columns.label, "multilabel"):
            row[labels(item)] = 1.0
        hot.append(row)
    encoded["labels"] = hot
    return encoded


def _encode_tags(rows, tokenizer, columns, labels, max_length):
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("token tagging needs a fast tokenizer (it maps word ids to tokens)")
    words = [w.split() if isinstance(w, str) else list(w) for w in rows[columns.text]]
    encoded = tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length)
    all_tags = []
    for i, tags in enumerate(rows[columns.label]):
        tags = _as_list(tags, columns.label, "tagging")
        if len(tags) != len(words[i]):
            raise DataError(
                f"row with {len(words[i])} words in column {columns.text!r} has {len(tags)} tags in {columns.label!r}"
            )
        ids, previous = [], None
        for word in encoded.word_ids(i):
            ids.append(-100 if word is None or word == previous else labels(tags[word]))
            previous = word
        all_tags.append(ids)
    encoded["labels"] = all_tags
    return encoded


def _encode_causal_lm(rows, tokenizer, columns, labels, max_length):
    texts = [str(t) for t in rows[columns.text]]
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


class CausalLMCollator:
    """Pads a batch on the right; labels are the input ids with the padding set to -100 (the head shifts them)."""

    def __init__(self, tokenizer, pad_to_multiple_of: int | None = None):
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out anyway
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict]) -> dict:
        import torch

        length = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        ids = torch.full((len(features), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        for row, feature in enumerate(features):
            tokens = list(feature["input_ids"])
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = torch.tensor(list(feature.get("attention_mask", [1] * len(tokens))))
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
