"""The Train panel: data, task and columns, method and hyper-parameters; Start / Stop; live curves; run records.

    panel = TrainPanel(model=model, tokenizer=tokenizer, data=df)   # or a path / dataset id typed in the panel
    panel                                                           # Start, watch, Stop; panel.record afterwards

Training runs in a worker thread through `workbench.train.train` (the notebook stays responsive); the run lives
in `session.active_run`, so a panel built while it runs re-attaches to it. The pieces here (`DataPicker`,
`TaskColumns`, `HyperParams`, `RunView`) are shared with the Fusion panel.
"""

from __future__ import annotations

import copy
import html
import threading
import time
from collections.abc import Callable

import ipywidgets as widgets
from IPython.display import display

import workbench
from workbench.train import TASKS, RunControl, StepEvent, TrainConfig, compare_runs, load_splits, train

from .code import RunSpec, as_code
from .common import ErrorBox, StaticSummary, Throttle, guarded, html_table, start_worker
from .curves import LiveCurves
from .session import ActiveRun, Session, default_session

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
NONE = "(none)"
PREVIEW_ROWS = 5
OVERLAID_RUNS = 3  # earlier runs drawn under the current one
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


class RunView(widgets.VBox):
    """Start / Stop, progress, live curves, run records and "show as code" for one kind of run ("train" or
    "fusion"), following `session.active_run` from a worker thread."""

    def __init__(
        self,
        session: Session,
        error: ErrorBox,
        make_spec: Callable[[], RunSpec],
        kind: str = "train",
        prefix: str = "wb-train",
        callbacks: list | None = None,
    ):
        self.session, self.error, self.make_spec, self.kind = session, error, make_spec, kind
        self.callbacks = list(callbacks or [])
        self.record = None  # the RunRecord of the last run this view followed
        self.spec: RunSpec | None = None
        self.follower: threading.Thread | None = None
        self.following: ActiveRun | None = None
        self.finished_listeners: list[Callable[[], None]] = []
        self.start = widgets.Button(description="Start", icon="play", button_style="success")
        self.stop = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.bar = widgets.IntProgress(value=0, min=0, max=1)
        self.line = widgets.HTML("not started")
        self.curves = LiveCurves()
        self.records = widgets.HTML()
        self.code_button = widgets.Button(description="show as code", icon="code")
        self.code = widgets.Textarea(layout=widgets.Layout(width="100%", height="14em", display="none"))
        self.progress = widgets.HBox([self.bar, self.line])
        for widget, name in (
            (self.start, "start"),
            (self.stop, "stop"),
            (self.progress, "progress"),
            (self.records, "records"),
            (self.code_button, "code-button"),
            (self.code, "code"),
        ):
            widget.add_class(f"{prefix}-{name}")
        self.start.on_click(guarded(error, "starting the run")(self._start_clicked))
        self.stop.on_click(guarded(error, "stopping the run")(self._stop_clicked))
        self.code_button.on_click(guarded(error, "show as code")(self._code_clicked))
        self._progress = Throttle(self._show_progress, 0.5)
        self._last_step: StepEvent | None = None
        super().__init__(
            [
                widgets.HBox([self.start, self.stop, self.code_button]),
                self.progress,
                self.curves,
                self.records,
                self.code,
            ]
        )
        session.on_change(self._session_changed)
        self._show_records()
        self._attach_or_wait()

    # --- starting and stopping ---------------------------------------------------------------------------

    def _start_clicked(self, _=None) -> None:
        if in_progress(self.session.active_run):
            raise RuntimeError("a run is in progress: stop it or wait for it to finish")
        spec = self.make_spec()  # raises on bad settings: nothing is started
        model = self.session.model
        if model is None:
            raise ValueError("no model: load one in the Model panel, or pass model=... and tokenizer=...")
        self.spec = spec
        run = ActiveRun(self.kind, RunControl(), thread=None)
        run.planned_steps = max(spec.config.max_steps, 0)
        run.thread = start_worker(
            lambda: _run_jobs(self.session, run, spec, model, self.session.tokenizer, self.callbacks), "wb-train"
        )
        self.session.active_run = run
        self.session.notify("active_run")  # this view (and any other of its kind) attaches to it

    def _stop_clicked(self, _=None) -> None:
        run = self.session.active_run
        if in_progress(run):
            run.control.stop("Stop clicked")
            self.line.value += " &middot; <b>stopping after this step</b>"
        self.stop.disabled = True

    # --- following a run ---------------------------------------------------------------------------------

    def attach(self, run: ActiveRun, title: str | None = None) -> None:
        """Show `run`'s events so far and follow the rest from a worker thread."""
        if self.following is run:
            return
        self.following = run
        self.start.disabled, self.stop.disabled = True, False
        self._last_step = None
        self.bar.value, self.bar.max = 0, max(run.planned_steps, 1)
        earlier = dict(list(self.session.run_curves.items())[-OVERLAID_RUNS:])
        self.curves.reset(run.planned_steps, overlays=earlier, title=title or _run_title(run, self.spec))
        self.line.value = "starting ..."
        self.follower = start_worker(lambda: self._follow_shown(run), "wb-train-follow")

    def _follow_shown(self, run: ActiveRun) -> None:
        try:
            self._follow(run)
        except Exception as err:  # a drawing problem must not leave the panel stuck: say so, free Start
            self.error.show(err, "following the run")
            self.start.disabled = in_progress(self.session.active_run)

    def _follow(self, run: ActiveRun) -> None:
        seen, behind = 0, False
        while True:
            finished = run.record is not None or run.error is not None or not run.running
            events = run.events[seen:]  # the worker only appends: a slice is a consistent snapshot
            seen += len(events)
            for event in events:
                self.curves.add(event)
                if isinstance(event, StepEvent):
                    self._last_step = event
            if events:
                self._progress()
                behind = True
            elif behind:  # the run is quiet (a slow step, an evaluation): show what the throttle held back
                self.curves.flush()
                self._progress.flush()
                behind = False
            if finished:
                break
            time.sleep(0.2)
        self.curves.flush()
        self._progress.flush()
        self._finish(run)
        following = self.session.active_run
        if following is not run and in_progress(following) and following.kind == self.kind:
            name = f": {self.spec.name}" if self.spec is not None else ""
            self.attach(following, f"full fine-tuning baseline{name}")  # it runs after the adapter

    def _finish(self, run: ActiveRun) -> None:
        if run.error is not None:
            self.error.show(run.error, "training")
            self.line.value = "failed"
        elif run.record is not None:
            self.record = record = run.record
            metrics = ", ".join(f"{k.removeprefix('eval_')} {v:.4g}" for k, v in record.final_metrics.items())
            self.line.value = html.escape(
                f"{record.name}: {record.stop_reason} at step {record.global_step}, {record.wall_time_s:.1f} s"
                + (f"; eval {metrics}" if metrics else "")
            )
        self.stop.disabled = True
        self.start.disabled = in_progress(self.session.active_run)
        for listener in self.finished_listeners:
            listener()

    def _show_progress(self) -> None:
        event = self._last_step
        if event is None:
            return
        self.bar.max = max(event.max_steps, 1)
        self.bar.value = min(event.step, self.bar.max)
        self.line.value = (
            f"step {event.step}/{event.max_steps} &middot; {event.samples_per_second:.1f} samples/s "
            f"&middot; ETA {_clock(event.eta_seconds)}"
            + (f" &middot; loss {event.loss:.4f}" if event.loss is not None else "")
        )

    def _attach_or_wait(self) -> None:
        run = self.session.active_run
        if not in_progress(run):
            return
        if run.kind == self.kind:
            self.attach(run)
        else:
            self.start.disabled = True
            self.line.value = f"a {html.escape(run.kind)} run is in progress in another panel"

    def _session_changed(self, what: str) -> None:
        if what == "runs":
            self._show_records()
        elif what == "active_run" and not (self.follower is not None and self.follower.is_alive()):
            active = self.session.active_run
            if in_progress(active) and active.kind == self.kind:
                self.attach(active)
            else:
                self.start.disabled = in_progress(active)

    # --- results -----------------------------------------------------------------------------------------

    def records_frame(self):
        """`compare_runs` of the session's runs (None before the first)."""
        return compare_runs(self.session.runs) if self.session.runs else None

    def _show_records(self) -> None:
        frame = self.records_frame()
        if frame is None:
            self.records.value = "<p><i>no runs yet</i></p>"
            return
        columns = [c for c in _RECORD_COLUMNS if c in frame.columns]
        columns += [c for c in frame.columns if c.startswith("final_") and c not in columns]
        rows = [{"name": name, **{c: _cell(row[c]) for c in columns}} for name, row in frame.iterrows()]
        self.records.value = "<b>runs</b>" + html_table(rows, ["name", *columns])

    def _code_clicked(self, _=None) -> None:
        self.code.value = as_code(self.make_spec())
        self.code.layout.display = None

    def summary_html(self) -> str:
        """The last run's outcome and the run records, as HTML that a saved notebook keeps."""
        parts = [f"<p>{self.line.value}</p>", self.records.value]
        if self.curves.point_count:
            parts.append(self.curves.figure().to_html(include_plotlyjs="cdn", full_html=False))
        return "\n".join(parts)


_RECORD_COLUMNS = (
    "kind",
    "method",
    "global_step",
    "stop_reason",
    "trainable_params",
    "trainable_percent",
    "saved_bytes",
    "wall_time_s",
    "train_samples_per_second",
)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def in_progress(run: ActiveRun | None) -> bool:
    """Whether `run` is still training (its worker may live on briefly after the record is in)."""
    return run is not None and run.running and run.record is None and run.error is None


def _run_title(run: ActiveRun, spec: RunSpec | None) -> str:
    return f"{run.kind} run" + (f": {spec.name}" if spec is not None else "")


def _run_jobs(session: Session, run: ActiveRun, spec: RunSpec, model, tokenizer, callbacks: list) -> None:
    """The worker: the run, then (if asked and not stopped) the full fine-tuning baseline on a copy of the model.

    Each run's events go to its `ActiveRun` (panels follow them), its record to `session.add_run`.
    """
    record = _run_one(session, run, model, spec.data, spec.train_kwargs(), tokenizer, callbacks)
    if record is None or not spec.baseline or record.stop_reason == "stop_request":
        return
    baseline = ActiveRun(run.kind, RunControl(), thread=threading.current_thread())
    baseline.planned_steps = run.planned_steps
    session.active_run = baseline
    session.notify("active_run")
    try:
        copied = copy.deepcopy(model)  # full fine-tuning changes every weight: keep the adapters' base model
    except Exception as err:  # shown by the panel that follows the baseline
        baseline.error = err
        return
    _run_one(session, baseline, copied, spec.data, spec.baseline_kwargs(), tokenizer, callbacks)


def _run_one(session: Session, run: ActiveRun, model, data, kwargs: dict, tokenizer, callbacks: list):
    def keep(event) -> None:
        if isinstance(event, StepEvent):
            run.planned_steps = event.max_steps
            run.events.append(event)
        elif type(event).__name__ == "EvalEvent":
            run.events.append(event)

    try:
        record = train(model, data, **kwargs, tokenizer=tokenizer, callbacks=[keep, *callbacks], control=run.control)
    except Exception as err:  # the panels following the run show it
        run.error = err
        session.notify("active_run")
        return None
    following = session.active_run is not run
    run.record = record
    session.add_run(record, run.events)
    if not following:
        session.notify("active_run")
    return record


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
        self.error = ErrorBox()
        self.data = DataPicker(self.error, data)
        self.columns = TaskColumns()
        self.data.listeners.append(self.columns.set_columns)
        if self.data.columns:
            self.columns.set_columns(self.data.columns)
        self.adapter = widgets.Text(value="my_adapter", description="adapter")
        self.method = widgets.Dropdown(options=METHODS, value="seq_bn", description="method")
        self.method_config = widgets.Text(placeholder="e.g. reduction_factor=8", description="config")
        self.output_dir = widgets.Text(value="runs", description="output folder")
        self.params = HyperParams()
        self.baseline = widgets.Checkbox(description="also run a full fine-tuning baseline", indent=False)
        self.device = widgets.HTML(f"device: <b>{html.escape(device_name())}</b>")
        for widget, name in (
            (self.adapter, "adapter"),
            (self.method, "method"),
            (self.method_config, "method-config"),
            (self.output_dir, "output"),
            (self.baseline, "baseline"),
            (self.device, "device"),
        ):
            widget.add_class(f"wb-train-{name}")
        self.view = RunView(self.session, self.error, self.spec, kind="train", callbacks=callbacks)
        self.summary = StaticSummary()
        self.view.finished_listeners.append(lambda: self.summary.update(self.summary_html()))
        settings = widgets.VBox(
            [self.adapter, self.method, self.method_config, self.params, self.output_dir, self.baseline, self.device]
        )
        super().__init__(
            [
                self.error,
                widgets.HTML("<b>Data</b>"),
                self.data,
                widgets.HBox([self.columns, settings]),
                self.view,
            ]
        )
        self.add_class("wb-train")

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

    def spec(self) -> RunSpec:
        """The run as set in the panel; raises ValueError (shown in the panel) on a bad setting."""
        if self.data.data is None:
            raise ValueError("no data: type a path or dataset id and click Load, or pass data=...")
        name = self.adapter.value.strip()
        if not name or "," in name:
            raise ValueError(f"adapter name {name!r}: give a name without commas")
        options = self.method_config.value.strip().strip("[]")
        adapter_config = f"{self.method.value}[{options}]" if options else self.method.value
        workbench.AdapterConfig.load(adapter_config)  # an unknown key or bad value is named here
        return RunSpec(
            kind="adapter",
            data=self.data.data,
            adapter=name,
            task=self.columns.task.value,
            columns=self.columns.column_kwargs(),
            adapter_config=adapter_config,
            config=self.params.config(),
            output_dir=f"{self.output_dir.value.strip() or 'runs'}/{name}",
            baseline=self.baseline.value,
            model_source=self.session.source,
        )

    def summary_html(self) -> str:
        return self.view.summary_html()

    def _ipython_display_(self) -> None:
        display(self._repr_mimebundle_(), raw=True)
        self.summary.display()
