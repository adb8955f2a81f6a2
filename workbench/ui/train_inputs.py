"""The Train and Fusion panels' inputs: the data (`DataPicker`), the task and its columns (`TaskColumns`), the label
names (`LabelNames`) and the hyper-parameters (`HyperParams`).

Every input collects all of its problems at once (`problems()`), in words that name the field and the value; the
panels list them together next to Start (`SettingsError`).
"""

from __future__ import annotations

import dataclasses
import html
import threading
from collections.abc import Callable

import ipywidgets as widgets

from workbench.train import TASKS, TrainConfig, load_splits
from workbench.train.config import DEFAULT_LEARNING_RATES, SCHEDULERS

from .common import ErrorBox, guarded, html_table, start_worker

NONE = "(none)"
PREVIEW_ROWS = 5
# descriptions readable in full ("learning r…" and "output fol…" were cut at ipywidgets' default width): as wide as
# their text, or one width for a column of fields so that their boxes line up
WIDE = {"description_width": "initial"}
ALIGNED = {"description_width": "13em"}  # fits "baseline learning rate"
COLUMNS = {"description_width": "9em"}  # fits "text pair column"
FIELD_WIDTH = "25em"
_ROLES = {  # column dropdown -> (train() argument, the tasks that use it)
    "text": ("text_column", ("classification", "multilabel", "tagging", "causal_lm")),
    "text pair": ("text_pair_column", ("classification", "multilabel")),
    "label": ("label_column", ("classification", "multilabel", "tagging")),
    "question": ("question_column", ("qa",)),
    "context": ("context_column", ("qa",)),
    "answers": ("answers_column", ("qa",)),
}
# a column is taken for a role only by one of these names: never a guess from its position (a CSV without a label
# column once trained on its last, constant column and reported accuracy 1.0)
_NAMES = {
    "text": ("text", "sentence", "sentence1", "review", "content", "document", "tokens", "words"),
    "text pair": ("text_pair", "sentence2"),
    "label": ("label", "labels", "target", "class", "category", "sentiment", "tags", "ner_tags"),
    "question": ("question",),
    "context": ("context",),
    "answers": ("answers",),
}


class SettingsError(ValueError):
    """Every problem of a panel's settings, listed at once by `ErrorBox.show` (its `problems`)."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


def text_field(description: str, value: str = "", placeholder: str = "", **layout) -> widgets.Text:
    """A Text whose description shows in full."""
    return widgets.Text(
        value=value, placeholder=placeholder, description=description, style=WIDE, layout=widgets.Layout(**layout)
    )


def device_name() -> str:
    """The GPU's name when torch sees one, else "CPU"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


class DataPicker(widgets.VBox):
    """The training data: a DataFrame given in code, or a CSV/TSV/JSON(L) path or dataset id typed in; with
    `validation=True`, also a validation file or the share of the training rows held out for validation."""

    def __init__(self, error: ErrorBox, data=None, prefix: str = "wb-train", validation: bool = False):
        self.error = error
        self.data = None  # the training data train() gets: the DataFrame, path or id
        self.head = None  # the first rows of the train split, a DataFrame
        self.columns: list[str] = []
        self.listeners: list[Callable[[list[str]], None]] = []
        self.source = text_field("data", placeholder="CSV / TSV / JSON(L) path or dataset id", width="32em")
        self.load_button = widgets.Button(description="Load", icon="table")
        self.validation_file = text_field(
            "validation file", placeholder="(optional) CSV / TSV / JSON(L) path", width="32em"
        )
        self.holdout = text_field("or hold out", "0.1", width="12em")
        self.holdout.tooltip = "the share of the training rows held out for validation"
        self.status = widgets.HTML()
        self.preview = widgets.HTML()
        for widget, name in (
            (self.source, "data"),
            (self.load_button, "load"),
            (self.preview, "preview"),
            (self.validation_file, "validation-file"),
            (self.holdout, "holdout"),
        ):
            widget.add_class(f"{prefix}-{name}")
        self.load_button.on_click(guarded(error, "loading the data")(self._load_clicked))
        self.loader: threading.Thread | None = None
        rows = [widgets.HBox([self.source, self.load_button])]
        if validation:
            rows.append(widgets.HBox([self.validation_file, self.holdout]))
        super().__init__([*rows, self.status, self.preview])
        if data is not None:
            if isinstance(data, str):
                self.source.value = data
            else:
                self.source.placeholder = "(the DataFrame given in code; or type a path or dataset id)"
            self._load(data)

    def run_data(self):
        """What `train()` gets: the training data, or {"train": ..., "validation": file} with a validation file."""
        validation = self.validation_file.value.strip()
        return {"train": self.data, "validation": validation} if validation and self.data is not None else self.data

    def validation_fraction(self) -> float:
        """The held-out share typed in; ValueError naming the field on a bad value."""
        text = self.holdout.value.strip()
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"hold out: {text!r} is not a number (e.g. 0.1 for a tenth of the rows)") from None
        if not 0 < value < 1:
            raise ValueError(f"hold out: {text!r} must be between 0 and 1 (e.g. 0.1 for a tenth of the rows)")
        return value

    def _load_clicked(self, _=None) -> None:
        source = self.source.value.strip()
        if not source:
            raise ValueError("type a CSV/TSV/JSON(L) path or a dataset id first")
        self.status.value = f"<i>loading {html.escape(source)} ...</i>"
        self.loader = start_worker(lambda: self._load_in_worker(source), "wb-load-data")

    def _load_in_worker(self, source: str) -> None:
        try:
            self._load(source)
        except Exception as err:  # shown in the panel, like a handler's error
            self.status.value = ""
            self.error.show(err, "loading the data")

    def _load(self, source) -> None:
        train_split = load_splits(source)["train"]
        head = train_split.select(range(min(PREVIEW_ROWS, len(train_split)))).to_pandas()
        self.data, self.head, self.columns = source, head, list(train_split.column_names)
        self.status.value = f"{len(train_split)} training rows, columns: {html.escape(', '.join(self.columns))}"
        self.preview.value = html_table(head.astype(str).to_dict("records"), self.columns)
        for listener in self.listeners:
            listener(self.columns)


class TaskColumns(widgets.VBox):
    """The task and which columns hold the text, label, ... (taken from the data's columns by name only)."""

    def __init__(self, prefix: str = "wb-train"):
        self.task = widgets.Dropdown(
            options=TASKS, value="classification", description="task", style=COLUMNS, layout=field_layout()
        )
        self.task.add_class(f"{prefix}-task")
        self.role = {
            role: widgets.Dropdown(options=[NONE], description=f"{role} column", style=COLUMNS, layout=field_layout())
            for role in _ROLES
        }
        for role, dropdown in self.role.items():
            dropdown.add_class(f"{prefix}-col-{role.replace(' ', '-')}")
        self.task.observe(lambda _: self._show_roles(), "value")
        super().__init__([self.task, *self.role.values()])
        self._show_roles()

    def set_columns(self, columns: list[str]) -> None:
        """Offer `columns` for every role; a role gets a column only when one has a usual name for it."""
        for role, dropdown in self.role.items():
            lower = {c.lower(): c for c in columns}
            guess = next((lower[name] for name in _NAMES[role] if name in lower), None)
            dropdown.options = [NONE, *columns]
            dropdown.value = guess or NONE

    def column_kwargs(self) -> dict[str, str]:
        """`train()`'s column arguments for the chosen task; a needed column left empty is an error."""
        kwargs, problems = self._collect()
        if problems:
            raise SettingsError(problems)
        return kwargs

    def problems(self) -> list[str]:
        return self._collect()[1]

    def _collect(self) -> tuple[dict[str, str], list[str]]:
        kwargs, problems = {}, []
        for role, (argument, tasks) in _ROLES.items():
            if self.task.value not in tasks:
                continue
            value = self.role[role].value
            if value == NONE:
                if role != "text pair":
                    problems.append(f"pick the {role} column for task {self.task.value!r}")
                continue
            kwargs[argument] = value
        return kwargs, problems

    def _show_roles(self) -> None:
        for role, dropdown in self.role.items():
            dropdown.layout.display = None if self.task.value in _ROLES[role][1] else "none"


class LabelNames(widgets.VBox):
    """The labels found in the data, each with an editable name: the head's id2label (ids in the order shown)."""

    MAX_SHOWN = 30  # more labels than this: most likely not a label column (the data checks say so)

    def __init__(self, prefix: str = "wb-train"):
        self.values: list = []  # the label values in the data, in id order
        self.names: list[widgets.Text] = []
        self.note = widgets.HTML()
        self.add_class(f"{prefix}-labels")
        super().__init__([self.note])

    def set_labels(self, values: list, fixed: list[str] | None = None) -> None:
        """Show `values` with their names; `fixed`: the labels of a head the model has already (not editable)."""
        if fixed:
            self.values, self.names = [], []
            shown = ", ".join(f"{i}: {name}" for i, name in enumerate(fixed))
            self.note.value = f"<b>labels</b> (of the existing head): {html.escape(shown)}"
            self.children = [self.note]
            return
        if len(values) > self.MAX_SHOWN or not values:
            self.values, self.names = [], []
            self.note.value = f"<b>labels</b>: {len(values)} found" if values else ""
            self.children = [self.note]
            return
        old = {str(value): field.value for value, field in zip(self.values, self.names, strict=True)}
        self.values = list(values)
        self.names = [
            text_field(f"{i}: {_short(value)} →", old.get(str(value), str(value)), width="20em")
            for i, value in enumerate(values)
        ]
        self.note.value = "<b>labels</b> (id: value in the data → name in the head, editable)"
        self.children = [self.note, *self.names]

    def label_names(self) -> dict | None:
        """{value: name} when a name differs from its value (for `train(label_names=...)`), else None."""
        names = {value: field.value.strip() for value, field in zip(self.values, self.names, strict=True)}
        return names if any(str(value) != name for value, name in names.items()) else None

    def problems(self) -> list[str]:
        names = [field.value.strip() for field in self.names]
        found = [f"label {value!r}: give it a name" for value, name in zip(self.values, names, strict=True) if not name]
        repeated = sorted({name for name in names if name and names.count(name) > 1})
        found += [f"label name {name!r} is given to more than one label" for name in repeated]
        return found


def _short(value, width: int = 16) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


class HyperParams(widgets.VBox):
    """Learning rate(s), epochs or max steps, batch size, max length, eval interval, warm-up, weight decay, seed and
    the learning-rate schedule, each checked; `problems()` names every bad field at once.

    With `baseline=True` there is a second learning rate, for the full fine-tuning baseline: it moves every weight,
    so it needs a much smaller one than an adapter."""

    def __init__(self, prefix: str = "wb-train", baseline: bool = False):
        self.fields = {
            "learning rate": text_field("learning rate", _rate("adapter")),
            "epochs": text_field("epochs", "3"),
            "max steps": text_field("max steps", placeholder="(from epochs)"),
            "batch size": text_field("batch size", "16"),
            "max length": text_field("max length", "128"),
            "eval every": text_field("eval every", placeholder="(each epoch)"),
            "warm-up": text_field("warm-up", "0"),
            "weight decay": text_field("weight decay", "0"),
            "seed": text_field("seed", "42"),
        }
        self.fields["warm-up"].tooltip = "steps (e.g. 100) or a share of all steps (e.g. 0.06)"
        if baseline:
            self.fields["baseline learning rate"] = text_field("baseline learning rate", _rate("full"))
            self.fields["learning rate"].description = "adapter learning rate"
        self.scheduler = widgets.Dropdown(
            options=SCHEDULERS, value="linear", description="schedule", style=ALIGNED, layout=field_layout()
        )
        for name, field in self.fields.items():
            field.add_class(f"{prefix}-{name.replace(' ', '-')}")
            field.layout, field.style = field_layout(), ALIGNED
        self.scheduler.add_class(f"{prefix}-scheduler")
        super().__init__([*self.fields.values(), self.scheduler])

    def config(self) -> TrainConfig:
        """A `TrainConfig` (with the adapter's learning rate); `SettingsError` naming every bad field."""
        values, problems = self._collect()
        if problems:
            raise SettingsError(problems)
        return self._config(values)

    def baseline_config(self, config: TrainConfig) -> TrainConfig:
        """`config` with the full fine-tuning baseline's learning rate."""
        rate = self._number("baseline learning rate", float) if "baseline learning rate" in self.fields else None
        return dataclasses.replace(config, learning_rate=rate)

    def problems(self) -> list[str]:
        return self._collect()[1]

    def _collect(self) -> tuple[dict, list[str]]:
        kinds = {"max steps": int, "eval every": int, "batch size": int, "max length": int, "seed": int}
        optional = ("max steps", "eval every")
        zero_ok = ("warm-up", "weight decay", "seed")
        values, problems = {}, []
        for name in self.fields:
            try:
                values[name] = self._number(name, kinds.get(name, float), name in optional, name in zero_ok)
            except ValueError as err:
                problems.append(str(err))
        return values, problems

    def _config(self, values: dict) -> TrainConfig:
        return TrainConfig(
            learning_rate=values["learning rate"],
            num_train_epochs=values["epochs"],
            max_steps=values["max steps"] or -1,
            batch_size=values["batch size"],
            max_length=values["max length"],
            eval_strategy="steps" if values["eval every"] else "epoch",
            eval_steps=values["eval every"],
            warmup_steps=values["warm-up"] if values["warm-up"] < 1 else int(values["warm-up"]),
            weight_decay=values["weight decay"],
            seed=values["seed"],
            lr_scheduler_type=self.scheduler.value,
        )

    def _number(self, name: str, kind: type, optional: bool = False, zero_ok: bool = False):
        """The field's number; ValueError naming the field (as labelled in the panel) and the text."""
        text = self.fields[name].value.strip()
        name = self.fields[name].description
        if not text and optional:
            return None
        try:
            number = float(text)
            value = int(number) if kind is int and number.is_integer() else kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{name}: {text!r} is not {what}") from None
        if zero_ok and not value >= 0:
            raise ValueError(f"{name}: {text!r} must be 0 or more")
        if not zero_ok and not value > 0:
            raise ValueError(f"{name}: {text!r} must be greater than 0")
        if kind is float and "warm-up" in name and value >= 1 and not float(value).is_integer():
            raise ValueError(f"{name}: {text!r}: give whole steps (e.g. 100) or a share below 1 (e.g. 0.06)")
        return value


def field_layout(width: str = FIELD_WIDTH) -> widgets.Layout:
    """A layout of its own for each field (a shared one would hide them all when one is hidden)."""
    return widgets.Layout(width=width)


def _rate(kind: str) -> str:
    return f"{DEFAULT_LEARNING_RATES[kind]:g}"
