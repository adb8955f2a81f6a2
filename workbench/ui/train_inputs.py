"""The Train and Fusion panels' inputs: the data (`DataPicker`), the task and its columns (`TaskColumns`) and the
hyper-parameters (`HyperParams`)."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import ipywidgets as widgets

from workbench.train import TASKS, TrainConfig, load_splits

from .common import ErrorBox, guarded, html_table, start_worker

NONE = "(none)"
PREVIEW_ROWS = 5
_ROLES = {  # column dropdown -> (train() argument, the tasks that use it)
    "text": ("text_column", ("classification", "multilabel", "tagging", "causal_lm")),
    "text pair": ("text_pair_column", ("classification", "multilabel")),
    "label": ("label_column", ("classification", "multilabel", "tagging")),
    "question": ("question_column", ("qa",)),
    "context": ("context_column", ("qa",)),
    "answers": ("answers_column", ("qa",)),
}


def device_name() -> str:
    """The GPU's name when torch sees one, else "CPU"."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"


class DataPicker(widgets.VBox):
    """The training data: a DataFrame given in code, or a CSV/TSV/JSON(L) path or dataset id typed in."""

    def __init__(self, error: ErrorBox, data=None, prefix: str = "wb-train"):
        self.error = error
        self.data = None  # what train() gets: the DataFrame, path or id
        self.head = None  # the first rows of the train split, a DataFrame
        self.columns: list[str] = []
        self.listeners: list[Callable[[list[str]], None]] = []
        self.source = widgets.Text(placeholder="CSV / TSV / JSON(L) path or dataset id", description="data")
        self.load_button = widgets.Button(description="Load", icon="table")
        self.status = widgets.HTML()
        self.preview = widgets.HTML()
        self.source.add_class(f"{prefix}-data")
        self.load_button.add_class(f"{prefix}-load")
        self.preview.add_class(f"{prefix}-preview")
        self.load_button.on_click(guarded(error, "loading the data")(self._load_clicked))
        self.loader: threading.Thread | None = None
        super().__init__([widgets.HBox([self.source, self.load_button]), self.status, self.preview])
        if data is not None:
            if isinstance(data, str):
                self.source.value = data
                self._load(data)
            else:
                self.source.placeholder = "(the DataFrame given in code; or type a path or dataset id)"
                self._load(data)

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
    """The task and which columns hold the text, label, ... (filled from the data's columns)."""

    def __init__(self, prefix: str = "wb-train"):
        self.task = widgets.Dropdown(options=TASKS, value="classification", description="task")
        self.task.add_class(f"{prefix}-task")
        self.role = {role: widgets.Dropdown(options=[NONE], description=role) for role in _ROLES}
        for role, dropdown in self.role.items():
            dropdown.add_class(f"{prefix}-col-{role.replace(' ', '-')}")
        self.task.observe(lambda _: self._show_roles(), "value")
        super().__init__([self.task, *self.role.values()])
        self._show_roles()

    def set_columns(self, columns: list[str]) -> None:
        for role, dropdown in self.role.items():
            argument = _ROLES[role][0]
            default = argument.removesuffix("_column")
            guess = default if default in columns else None
            if guess is None and role == "text":
                guess = next((c for c in columns if c not in ("label", "labels")), columns[0] if columns else None)
            if guess is None and role == "label" and len(columns) > 1:
                guess = columns[-1]
            dropdown.options = [NONE, *columns]
            dropdown.value = guess or NONE

    def column_kwargs(self) -> dict[str, str]:
        """`train()`'s column arguments for the chosen task; a needed column left empty is an error."""
        kwargs = {}
        for role, (argument, tasks) in _ROLES.items():
            if self.task.value not in tasks:
                continue
            value = self.role[role].value
            if value == NONE:
                if role == "text pair":
                    continue
                raise ValueError(f"pick the {role} column for task {self.task.value!r}")
            kwargs[argument] = value
        return kwargs

    def _show_roles(self) -> None:
        for role, dropdown in self.role.items():
            dropdown.layout.display = None if self.task.value in _ROLES[role][1] else "none"


class HyperParams(widgets.VBox):
    """Learning rate, epochs or max steps, batch size, max length and eval interval, checked as numbers."""

    def __init__(self, prefix: str = "wb-train"):
        self.fields = {
            "learning rate": widgets.Text(value="1e-4", description="learning rate"),
            "epochs": widgets.Text(value="3", description="epochs"),
            "max steps": widgets.Text(value="", placeholder="(from epochs)", description="max steps"),
            "batch size": widgets.Text(value="16", description="batch size"),
            "max length": widgets.Text(value="128", description="max length"),
            "eval every": widgets.Text(value="", placeholder="(each epoch)", description="eval every"),
        }
        for name, field in self.fields.items():
            field.add_class(f"{prefix}-{name.replace(' ', '-')}")
        super().__init__(list(self.fields.values()))

    def config(self) -> TrainConfig:
        """A `TrainConfig`; a bad number raises ValueError naming the field and the value."""
        max_steps = self._number("max steps", int, optional=True)
        eval_steps = self._number("eval every", int, optional=True)
        return TrainConfig(
            learning_rate=self._number("learning rate", float),
            num_train_epochs=self._number("epochs", float),
            max_steps=max_steps or -1,
            batch_size=self._number("batch size", int),
            max_length=self._number("max length", int),
            eval_strategy="steps" if eval_steps else "epoch",
            eval_steps=eval_steps,
        )

    def _number(self, name: str, kind: type, optional: bool = False):
        text = self.fields[name].value.strip()
        if not text and optional:
            return None
        try:
            value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise ValueError(f"{name}: {text!r} is not {what}") from None
        if not value > 0:
            raise ValueError(f"{name}: {text!r} must be greater than 0")
        return value
