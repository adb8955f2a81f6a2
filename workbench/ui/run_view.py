"""`RunView`: Start / Stop, progress, live curves and run records for one kind of run, following
`session.active_run` from a worker thread (shared by the Train and Fusion panels)."""

from __future__ import annotations

import copy
import html
import threading
import time
from collections.abc import Callable

import ipywidgets as widgets

from workbench.train import RunControl, StepEvent, compare_runs, train

from .code import RunSpec, as_code
from .common import ErrorBox, Throttle, guarded, html_table, start_worker
from .curves import LiveCurves
from .session import ActiveRun, Session

OVERLAID_RUNS = 3  # earlier runs drawn under the current one


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
        below_start: list | None = None,
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
                *(below_start or []),  # the panel's messages about Start, where the eye is after the click
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
        if self.session.run_in_progress() is not None:
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
        if run is not None and run.in_progress:
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
            self.start.disabled = self.session.run_in_progress() is not None

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
        if following is not run and following is not None and following.in_progress and following.kind == self.kind:
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
        self.start.disabled = self.session.run_in_progress() is not None
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
        if not (run is not None and run.in_progress):
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
            if active is not None and active.in_progress and active.kind == self.kind:
                self.attach(active)
            else:
                self.start.disabled = active is not None and active.in_progress

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
