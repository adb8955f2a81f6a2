"""The Train panel: data, task and columns, label names, method and hyper-parameters; Start / Stop; live curves;
run records.

    panel = TrainPanel(model=model, tokenizer=tokenizer, data=df)   # or a path / dataset id typed in the panel
    panel                                                           # Start, watch, Stop; panel.record afterwards

The data is checked (`workbench.train.check_data`) whenever it or the columns change, and again with every other
setting when Start is clicked: every problem is listed at once, under Start, and nothing starts. Start is disabled,
with the reason beside it, while there is no model or no data. Training runs in a worker thread through
`workbench.train.train` (the notebook stays responsive); the run lives in `session.active_run`, so a panel built
while it runs re-attaches to it. Its pieces (`train_inputs`, `run_view`) are shared with the Fusion panel.
"""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path

import ipywidgets as widgets
from IPython.display import display

import workbench
from workbench.core.names import check_name
from workbench.train import LABELLED_TASKS, Problem, check_data, load_splits
from workbench.train.checks import labels_found

from .code import RunSpec
from .common import ErrorBox, StaticSummary, explain_disabled, plain_message
from .curves import LiveCurves
from .run_view import RunView
from .session import Session, default_session
from .train_inputs import (
    ALIGNED,
    NONE,
    DataPicker,
    HyperParams,
    LabelNames,
    SettingsError,
    TaskColumns,
    device_name,
    field_layout,
)

METHODS = (
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "scaled_par_bn",
    "seq_bn_inv",
    "double_seq_bn_inv",
    "lora",
    "ia3",
    "prefix_tuning",
    "prompt_tuning",
    "compacter",
    "compacter++",
    "mam",
    "unipelt",
    "dora",
    "vera",
    "dvora",
    "loreft",
    "noreft",
    "direft",
    "adapterplus",
)  # mtl_lora is not offered: it needs task_ids per row, which the panel's data has no column for


class TrainPanel(widgets.VBox):
    """Train an adapter on a dataset, live; optionally a full fine-tuning baseline after it.

    Args:
        session: shared with the other panels (default: the kernel's session); `model`/`tokenizer` given here
            become the session's model.
        data: a DataFrame, a CSV/TSV/JSON(L) path or a dataset id.
        callbacks: extra `workbench.train` callbacks for every run started here.
    """

    def __init__(self, session: Session | None = None, model=None, tokenizer=None, data=None, callbacks=None):
        self.session = session or default_session()
        if model is not None and model is not self.session.model:
            self.session.set_model(model, tokenizer or self.session.tokenizer)
        self.error = ErrorBox()  # under Start: every problem found when Start is clicked, and the run's errors
        self.data_error = ErrorBox()  # under the data row: loading problems
        self.checks = ErrorBox()  # the data checks, redone whenever the data or the columns change
        self.warnings = widgets.HTML()
        self.start_hint = widgets.HTML()  # why Start is disabled
        self._splits_cache: tuple | None = None
        self._loads = 0  # data loads so far: a new load (even of the same file) is checked afresh
        self.data = DataPicker(self.data_error, data, validation=True)
        self.columns = TaskColumns()
        self.labels = LabelNames()
        self.adapter = widgets.Text(value="my_adapter", description="adapter", style=ALIGNED, layout=field_layout())
        self.method = widgets.Dropdown(
            options=METHODS, value="seq_bn", description="method", style=ALIGNED, layout=field_layout()
        )
        self.method_config = widgets.Text(
            placeholder="e.g. reduction_factor=8", description="method config", style=ALIGNED, layout=field_layout()
        )
        self.output_dir = widgets.Text(value="runs", description="output folder", style=ALIGNED, layout=field_layout())
        self.params = HyperParams(baseline=True)
        self.baseline = widgets.Checkbox(description="also run a full fine-tuning baseline", indent=False)
        self.device = widgets.HTML(f"device: <b>{html.escape(device_name())}</b>")
        for widget, name in (
            (self.adapter, "adapter"),
            (self.method, "method"),
            (self.method_config, "method-config"),
            (self.output_dir, "output"),
            (self.baseline, "baseline"),
            (self.device, "device"),
            (self.checks, "checks"),
            (self.warnings, "warnings"),
            (self.start_hint, "start-hint"),
            (self.error, "start-error"),
        ):
            widget.add_class(f"wb-train-{name}")
        self.view = RunView(
            self.session,
            self.error,
            self.spec,
            kind="train",
            callbacks=callbacks,
            rename=self._use_name,
            below_start=[self.start_hint, self.error],
        )
        self.summary = StaticSummary()
        self.view.finished_listeners.append(lambda: self.summary.update(self.summary_html()))
        settings = widgets.VBox(
            [self.adapter, self.method, self.method_config, self.params, self.output_dir, self.baseline, self.device]
        )
        super().__init__(
            [
                widgets.HTML("<b>Data</b>"),
                self.data,
                self.data_error,
                widgets.HBox([widgets.VBox([self.columns, self.labels]), settings]),
                self.checks,
                self.warnings,
                self.view,
            ]
        )
        self.add_class("wb-train")
        self.data.listeners.append(self._data_loaded)
        for widget in (self.columns.task, *self.columns.role.values(), self.adapter, self.data.holdout):
            widget.observe(lambda _: self.refresh_checks(), "value")
        self.data.validation_file.continuous_update = False
        self.data.validation_file.observe(lambda _: self.refresh_checks(), "value")
        self.session.on_change(self._session_changed)
        if self.data.columns:
            self._data_loaded(self.data.columns)
        self._update_start()

    @property
    def record(self):
        """The RunRecord of the last run this panel followed (None before)."""
        return self.view.record

    @property
    def curves(self) -> LiveCurves:
        return self.view.curves

    @property
    def records(self):
        """`compare_runs` of the session's runs, a DataFrame (None before the first run)."""
        return self.view.records_frame()

    # --- checks -----------------------------------------------------------------------------------------------

    def data_problems(self) -> list[Problem]:
        """What `check_data` finds in the data with the columns, label names and validation as set (errors first);
        empty before any data is loaded."""
        if self.data.data is None:
            return []
        kwargs, picks = self.columns._collect()
        if picks:
            return [Problem(pick) for pick in picks]
        try:
            splits = self._splits()
        except (ValueError, OSError) as err:
            return [Problem(f"the data: {plain_message(err)}")]
        task = self.columns.task.value
        return check_data(
            splits, task, **kwargs, label_names=self.labels.label_names(), head_labels=self._head_labels()
        )

    def refresh_checks(self) -> None:
        """Redo the data checks: errors in the red box above Start, warnings under it; the label names offered."""
        try:
            self._show_labels()
            problems = self.data_problems()
        except Exception as err:  # a check that cannot run is shown, never hides the panel
            self.checks.show(err, "checking the data")
            return
        errors = [p.message for p in problems if p.is_error]
        self.checks.show_problems(errors, "The data cannot be used yet")
        warnings = "".join(f"<li>{html.escape(p.message)}</li>" for p in problems if not p.is_error)
        self.warnings.value = f'<ul style="color:#8a4b00;margin:0.2em 0">{warnings}</ul>' if warnings else ""

    def _splits(self):
        """The run's train/validation splits as `train()` will make them (one cached copy per setting)."""
        seed = self._seed()
        key = (self._loads, self.data.validation_file.value.strip(), self.data.holdout.value.strip(), seed)
        if self._splits_cache is None or self._splits_cache[0] != key:
            splits = load_splits(self.data.run_data(), self.data.validation_fraction(), seed)
            self._splits_cache = (key, splits)
        return self._splits_cache[1]

    def _seed(self) -> int:
        try:
            return int(self.params.fields["seed"].value)
        except ValueError:
            return 42  # the field's own problem is reported by Start

    def _head_labels(self) -> list[str] | None:
        """The labels of the head this run would train when the model has it already (its name is the adapter's)."""
        model, name = self.session.model, self.adapter.value.strip()
        if model is None or self.columns.task.value not in LABELLED_TASKS or name not in getattr(model, "heads", {}):
            return None
        label2id = model.heads[name].config.get("label2id") or {}
        return [label for label, _ in sorted(label2id.items(), key=lambda item: item[1])] or None

    def _show_labels(self) -> None:
        label = self.columns.role["label"].value
        task = self.columns.task.value
        if self.data.data is None or task not in LABELLED_TASKS or label not in self.data.columns:
            self.labels.set_labels([])
            return
        try:
            values = labels_found(self._splits(), label, task)
        except (ValueError, OSError):
            values = []
        self.labels.set_labels(values, fixed=self._head_labels())

    def _data_loaded(self, columns: list[str]) -> None:
        self._loads += 1
        self.columns.set_columns(columns)
        if self.columns.task.value in LABELLED_TASKS and self.columns.role["label"].value == NONE and columns:
            self.data.status.value += "<br><b>no label column found by name</b>: pick the column that holds the labels"
        self.refresh_checks()
        self._update_start()

    def _session_changed(self, what: str) -> None:
        if what in ("model", "adapters", "active_run"):
            self._update_start()
        if what in ("model", "adapters"):
            self.refresh_checks()

    def _update_start(self) -> None:
        """Start is disabled, with the reason beside it, while it cannot act (a run in progress: RunView's call)."""
        if self.session.run_in_progress() is not None:
            return
        reason = None
        if self.session.model is None:
            reason = "no model yet: load one in the Model panel (or pass model=... and tokenizer=...)"
        elif self.data.data is None:
            reason = "no data yet: type a path or dataset id above and click Load (or pass data=...)"
        explain_disabled(self.view.start, reason, self.start_hint)

    # --- the run ----------------------------------------------------------------------------------------------

    def spec(self) -> RunSpec:
        """The run as set in the panel; `SettingsError` listing every problem (fields and data) otherwise."""
        problems = []
        if self.data.data is None:
            problems.append("no data: type a path or dataset id and click Load, or pass data=...")
        name = self.adapter.value.strip()
        if not name or "," in name:
            problems.append(f"adapter name {name!r}: give a name without commas")
        else:
            try:  # the engine's rule: the name becomes a folder under the output folder, never a path
                check_name(name)
            except workbench.AdapterError as err:
                problems.append(f"adapter name {name!r}: {plain_message(err).split(': ', 1)[-1]}")
        options = self.method_config.value.strip().strip("[]")
        adapter_config = f"{self.method.value}[{options}]" if options else self.method.value
        try:
            workbench.AdapterConfig.load(adapter_config)  # an unknown key or bad value is named here
        except Exception as err:
            problems.append(f"method config {options!r}: {plain_message(err)}")
        output = self.output_dir.value.strip() or "runs"
        problems += _folder_problems(output)
        problems += self.params.problems()
        try:
            fraction = self.data.validation_fraction()
        except ValueError as err:
            problems.append(str(err))
            fraction = 0.1
        problems += self.columns.problems() + self.labels.problems()
        if not problems:
            problems += [p.message for p in self.data_problems() if p.is_error]
            self.refresh_checks()
        if problems:
            raise SettingsError(problems)
        config = dataclasses.replace(self.params.config(), validation_fraction=fraction)
        return RunSpec(
            kind="adapter",
            data=self.data.run_data(),
            adapter=name,
            task=self.columns.task.value,
            columns=self.columns.column_kwargs(),
            adapter_config=adapter_config,
            config=config,
            output_dir=f"{output}/{name}",
            baseline=self.baseline.value,
            model_source=self.session.source,
            baseline_config=self.params.baseline_config(config),
            label_names=self.labels.label_names(),
        )

    def summary_html(self) -> str:
        return self.view.summary_html()

    def _use_name(self, name: str) -> None:
        """The run view's "Use <free name>": a new adapter under that name (its folder follows)."""
        self.adapter.value = name

    def _ipython_display_(self) -> None:
        display(self._repr_mimebundle_(), raw=True)
        self.summary.display()


def _folder_problems(folder: str) -> list[str]:
    """A file where the output folder (or a folder above it) would be: a run could write nothing."""
    path = Path(folder).expanduser()
    for part in (path, *path.parents):
        if part.exists():
            return [] if part.is_dir() else [f"output folder: {part} is a file, not a folder"]
    return []
