"""`RunView`: Start / Stop / Resume, progress, live curves and the runs table for one kind of run, following
`session.active_run` from a worker thread (shared by the Train and Fusion panels).

A run never writes into a folder that holds another run: Start on such a folder shows, right under Start, what
the folder holds and three explicit choices (resume it from its last checkpoint, overwrite it, or use a free
name). Resume continues the last run (also one ended with Stop) from its last checkpoint to the planned total.
"""

from __future__ import annotations

import copy
import html
import threading
import time
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets

from workbench.train import RunControl, StepEvent, compare_runs, free_folder, run_in_folder, train

from .code import RunSpec, as_code
from .common import ErrorBox, Throttle, explain_disabled, guarded, start_worker
from .curves import LiveCurves
from .runs_table import RunsTable
from .session import ActiveRun, Session

OVERLAID_RUNS = 3  # earlier runs drawn under the current one


class RunView(widgets.VBox):
    """Start / Stop / Resume, progress, live curves, the runs table and "show as code" for one kind of run
    ("train" or "fusion"), following `session.active_run` from a worker thread.

    Errors of starting and of the run show in `self.error`: the panel's `error` box (which the panel places by
    Start) or, when `error` is None, the view's own box, directly under the Start row. `rename(name)`, when
    given, renames what the panel trains (e.g. its adapter name field) for "Use <free name>"; without it that
    choice only changes the output folder.
    """

    def __init__(
        self,
        session: Session,
        error: ErrorBox | None,
        make_spec: Callable[[], RunSpec],
        kind: str = "train",
        prefix: str = "wb-train",
        callbacks: list | None = None,
        rename: Callable[[str], None] | None = None,
        below_start: list | None = None,
    ):
        self.session, self.make_spec, self.kind, self.rename = session, make_spec, kind, rename
        self.error = error if error is not None else ErrorBox()
        self.callbacks = list(callbacks or [])
        self.record = None  # the RunRecord of the last run this view followed
        self.spec: RunSpec | None = None
        self._model_of_spec = None  # the model the last run started here trained (Resume must find the same)
        self.follower: threading.Thread | None = None
        self.following: ActiveRun | None = None
        self.finished_listeners: list[Callable[[], None]] = []
        self.start = widgets.Button(description="Start", icon="play", button_style="success")
        self.stop = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True)
        self.resume = widgets.Button(description="Resume", icon="forward", disabled=True, layout={"width": "auto"})
        self.conflict = widgets.HTML()
        self.resume_run = widgets.Button(
            description="Resume", icon="forward", button_style="info", layout={"width": "auto"}
        )
        self.overwrite = widgets.Button(description="Overwrite", icon="trash", button_style="warning")
        self.use_free = widgets.Button(description="Use a new name", icon="plus", layout={"width": "auto"})
        self.choices = widgets.VBox(
            [self.conflict, widgets.HBox([self.resume_run, self.overwrite, self.use_free])],
            layout=widgets.Layout(display="none", border="1px solid #e0b000", padding="4px"),
        )
        self.bar = widgets.IntProgress(value=0, min=0, max=1)
        self.line = widgets.HTML("not started")
        self.curves = LiveCurves(colour=session.colour)
        self.table = RunsTable(session, prefix=f"{prefix}-runs")
        self.table.overlay_listeners.append(self._overlays_picked)
        self.records = widgets.HTML(layout=widgets.Layout(display="none"))  # the static copy, for summary_html
        self.code_button = widgets.Button(description="show as code", icon="code")
        self.code = widgets.Textarea(layout=widgets.Layout(width="100%", height="14em", display="none"))
        self.progress = widgets.HBox([self.bar, self.line])
        for widget, name in (
            (self.start, "start"),
            (self.stop, "stop"),
            (self.resume, "resume"),
            (self.choices, "conflict"),
            (self.resume_run, "conflict-resume"),
            (self.overwrite, "conflict-overwrite"),
            (self.use_free, "conflict-new"),
            (self.progress, "progress"),
            (self.records, "records"),
            (self.code_button, "code-button"),
            (self.code, "code"),
        ):
            widget.add_class(f"{prefix}-{name}")
        if error is None:
            self.error.add_class(f"{prefix}-start-error")
        self.start.on_click(guarded(self.error, "starting the run")(self._start_clicked))
        self.stop.on_click(guarded(self.error, "stopping the run")(self._stop_clicked))
        self.resume.on_click(guarded(self.error, "resuming the run")(self._resume_clicked))
        self.resume_run.on_click(guarded(self.error, "resuming the run")(lambda _: self._choose("resume")))
        self.overwrite.on_click(guarded(self.error, "overwriting the run")(lambda _: self._choose("overwrite")))
        self.use_free.on_click(guarded(self.error, "starting the run")(lambda _: self._choose("new")))
        self.code_button.on_click(guarded(self.error, "show as code")(self._code_clicked))
        self._pending: RunSpec | None = None  # the spec waiting for a choice on its folder
        self._suggestion = None
        self._progress = Throttle(self._show_progress, 0.5)
        self._last_step: StepEvent | None = None
        super().__init__(
            [
                widgets.HBox([self.start, self.stop, self.resume, self.code_button]),
                *(below_start or []),  # the panel's messages about Start, where the eye is after the click
                *([] if error is not None else [self.error]),  # else the panel placed its box (below_start)
                self.choices,
                self.progress,
                self.curves,
                self.table,
                self.records,
                self.code,
            ]
        )
        session.on_change(self._session_changed)
        self._show_records()
        self._attach_or_wait()

    # --- starting and stopping ---------------------------------------------------------------------------

    def _start_clicked(self, _=None) -> None:
        self._hide_choices()
        if self.session.run_in_progress() is not None:
            raise RuntimeError("a run is in progress: stop it or wait for it to finish")
        spec = self.make_spec()  # raises on bad settings: nothing is started
        if self.session.model is None:
            raise ValueError("no model: load one in the Model panel, or pass model=... and tokenizer=...")
        held = [run_in_folder(folder) for folder in _folders(spec)]
        held = [h for h in held if h is not None]
        if held:  # never mix two runs' checkpoints: ask what to do, next to Start
            self._ask(spec, held)
            return
        self._launch(spec)

    def _ask(self, spec: RunSpec, held: list) -> None:
        self._pending = spec
        self._suggestion = free_folder(spec.output_dir)
        last = held[0].last_checkpoint if held[0].folder == Path(spec.output_dir) else None
        if last is not None and _completed(held[0], self.session.runs):
            last = None  # a completed run has nothing left to resume: Overwrite or a new name
        lines = [
            f"<b>{html.escape(str(h.folder))}</b> already holds a run ({html.escape(h.describe())})." for h in held
        ]
        lines.append("Starting here would mix two runs' checkpoints. Choose:")
        self.conflict.value = "<br>".join(lines)
        self.resume_run.description = f"Resume from {last.name}" if last is not None else "Resume"
        explain_disabled(self.resume_run, None if last is not None else "nothing to resume: no unfinished run here")
        self.overwrite.tooltip = "delete the old run's checkpoints and final/ (only those), then start"
        self.use_free.description = f"Use {self._suggestion.name}"
        self.choices.layout.display = "flex"

    def _hide_choices(self) -> None:
        self._pending = None
        self.choices.layout.display = "none"

    def _choose(self, choice: str) -> None:
        spec = self._pending
        if spec is None:
            raise RuntimeError("nothing to choose for: click Start again")
        self._hide_choices()
        if self.session.run_in_progress() is not None:
            raise RuntimeError("a run is in progress: stop it or wait for it to finish")
        if choice == "new":
            if self.rename is not None:  # a new adapter under the new name, in its own folder
                self.rename(self._suggestion.name)
                spec = self.make_spec()
                if any(run_in_folder(f) is not None for f in _folders(spec)):
                    self._ask(spec, [h for h in map(run_in_folder, _folders(spec)) if h is not None])
                    return
                self._launch(spec)
            else:
                self._launch(spec, folder=str(self._suggestion))
        else:
            self._launch(spec, mode=choice)

    def _resume_clicked(self, _=None) -> None:
        if self.session.run_in_progress() is not None:
            raise RuntimeError("a run is in progress: stop it or wait for it to finish")
        spec = self.spec
        if spec is None or run_in_folder(spec.output_dir) is None:
            raise ValueError("no run to resume: Start one first")
        if self._model_of_spec is not None and self.session.model is not self._model_of_spec:
            raise ValueError(
                f"the model was replaced since {spec.name} ran: its checkpoint belongs to the earlier model; "
                "load that model again, or Start a new run"
            )
        self._hide_choices()
        self._launch(spec, mode="resume")

    def _launch(self, spec: RunSpec, mode: str | None = None, folder: str | None = None) -> None:
        """Start `spec` in a worker: `mode` "resume" continues its folder's last checkpoint, "overwrite" replaces
        its folder's run; `folder` runs it in another output folder."""
        model = self.session.model
        if model is None:
            raise ValueError("no model: load one in the Model panel, or pass model=... and tokenizer=...")
        if folder is not None:
            spec = copy.copy(spec)
            spec.output_dir = folder
        self.spec = spec
        run = ActiveRun(self.kind, RunControl(), thread=None, name=_run_name(spec, folder))
        held = run_in_folder(spec.output_dir)
        run.planned_steps = max(spec.config.max_steps, 0) or (held.planned_steps if held else 0)
        if mode == "resume" and held is not None and held.last_checkpoint is not None:
            earlier = self.session.run_curves.get(run.name, [])
            run.events.extend(e for e in earlier if getattr(e, "step", 0) <= held.last_step)
        run.thread = threading.Thread(
            target=lambda: _run_jobs(self.session, run, spec, model, self.session.tokenizer, self.callbacks, mode),
            name="wb-train",
            daemon=True,
        )
        self.session.active_run = run  # before the worker starts: its notices must find this run
        self._model_of_spec = model
        run.thread.start()
        self.attach(run)  # even if it fails at once (before other views would see it in progress)
        self.session.notify("active_run")  # other views of its kind attach to it

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
        self.start.disabled, self.stop.disabled, self.resume.disabled = True, False, True
        self._last_step = None
        self.bar.value, self.bar.max = 0, max(run.planned_steps, 1)
        self.curves.reset(
            run.planned_steps, overlays=self._overlays(), title=title or _run_title(run, self.spec), run_name=run.name
        )
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
        self.curves.finish()  # the x-axis ends at the run's last step
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
            metrics = ", ".join(_metric_text(k.removeprefix("eval_"), v) for k, v in record.final_metrics.items())
            held = run_in_folder(record.output_dir)
            planned = held.planned_steps if held is not None else 0
            of = f" of {planned}" if record.stop_reason != "completed" and planned > record.global_step else ""
            status = {"stop_request": "stopped", "early_stopping": "stopped early"}.get(record.stop_reason, "completed")
            self.line.value = html.escape(
                f"{record.name}: {status} at step {record.global_step}{of}, {record.wall_time_s:.1f} s"
                + (f"; eval {metrics}" if metrics else "")
            )
        self.stop.disabled = True
        self.start.disabled = self.session.run_in_progress() is not None
        self._explain_resume()
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

    def _explain_resume(self) -> None:
        """Resume is on when the last run's folder has a checkpoint it did not finish from."""
        spec = self.spec
        held = run_in_folder(spec.output_dir) if spec is not None else None
        reason = None
        if self.session.run_in_progress() is not None:
            reason = "a run is in progress"
        elif held is None or held.last_checkpoint is None:
            reason = "no stopped run with a checkpoint to resume"
        elif _completed(held, self.session.runs):
            reason = "the last run completed"
        explain_disabled(self.resume, reason)
        if reason is None:
            self.resume.description = f"Resume from step {held.last_step}"
            self.resume.tooltip = f"continue {held.folder} from {held.last_checkpoint.name} to the planned total"
        else:
            self.resume.description = "Resume"

    def _overlays(self) -> dict[str, list]:
        """The runs ticked in the runs table (by default the last few), name -> events."""
        curves = self.session.run_curves
        names = self.table.overlaid() or list(curves)[-OVERLAID_RUNS:]
        return {name: curves[name] for name in names if name in curves}

    def _overlays_picked(self, names: list[str]) -> None:
        self.curves.set_overlays({n: self.session.run_curves[n] for n in names if n in self.session.run_curves})

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
                self._explain_resume()

    # --- results -----------------------------------------------------------------------------------------

    def records_frame(self):
        """`compare_runs` of the session's runs (None before the first)."""
        return compare_runs(self.session.runs) if self.session.runs else None

    def _show_records(self) -> None:
        self.records.value = "<b>runs</b>" + self.table.summary_html()

    def _code_clicked(self, _=None) -> None:
        self.code.value = as_code(self.make_spec())
        self.code.layout.display = None

    def summary_html(self) -> str:
        """The last run's outcome and the run records, as HTML that a saved notebook keeps."""
        parts = [f"<p>{self.line.value}</p>", self.records.value]
        if self.curves.point_count:
            parts.append(self.curves.figure().to_html(include_plotlyjs="cdn", full_html=False))
        return "\n".join(parts)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


def _run_title(run: ActiveRun, spec: RunSpec | None) -> str:
    return f"{run.kind} run" + (f": {spec.name}" if spec is not None else "")


def _folders(spec: RunSpec) -> list[Path]:
    """The output folders a Start of `spec` writes: the run's, and its baseline's."""
    return [Path(spec.output_dir)] + ([Path(spec.baseline_kwargs()["output_dir"])] if spec.baseline else [])


def _run_name(spec: RunSpec, folder: str | None) -> str:
    name = spec.train_kwargs()["name"]
    return f"{name} ({Path(folder).name})" if folder is not None else name


def _folder_options(folder, mode: str | None) -> dict:
    """train()'s resume / overwrite for one folder: resume what has a checkpoint, replace what holds a run."""
    held = run_in_folder(folder)
    if held is None or mode is None:
        return {}
    if mode == "resume" and held.last_checkpoint is not None:
        return {"resume": True}
    return {"overwrite": True}  # "overwrite", or a resume whose baseline folder holds only final/


def _run_jobs(session: Session, run: ActiveRun, spec: RunSpec, model, tokenizer, callbacks: list, mode=None) -> None:
    """The worker: the run, then (if asked and not stopped) the full fine-tuning baseline on a copy of the model.

    Each run's events go to its `ActiveRun` (panels follow them), its record to `session.add_run`. Whatever
    happens, the session hears "active_run" at the end, so the header never says "run in progress" after it.
    """
    try:
        baseline = base_kwargs = None
        if spec.baseline:  # made now, so it is in progress before the adapter run's record is in (no gap)
            baseline = ActiveRun(run.kind, RunControl(), thread=threading.current_thread())
            base_kwargs = {**spec.baseline_kwargs(), "output_dir": f"{spec.output_dir}-full"}
            baseline.planned_steps, baseline.name = run.planned_steps, base_kwargs["name"]
        kwargs = {**spec.train_kwargs(), "output_dir": spec.output_dir, "name": run.name}
        record = _run_one(session, run, model, spec.data, kwargs | _folder_options(spec.output_dir, mode), tokenizer,
                          callbacks, then=baseline)  # fmt: skip
        if record is None or baseline is None or session.active_run is not baseline:
            return
        run = baseline
        copied = copy.deepcopy(model)  # full fine-tuning changes every weight: keep the adapters' base model
        options = _folder_options(base_kwargs["output_dir"], mode)
        _run_one(session, baseline, copied, spec.data, base_kwargs | options, tokenizer, callbacks)
    except BaseException as err:  # shown by the panel that follows the run
        if run.record is None and run.error is None:
            run.error = err
    finally:
        session.notify("active_run")


def _run_one(session: Session, run: ActiveRun, model, data, kwargs: dict, tokenizer, callbacks: list, then=None):
    """One `train()` call for `run`; `then`, the run that follows it (the baseline), becomes the session's active
    run before this one's record is in, unless this one was stopped."""

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
    if then is not None and record.stop_reason != "stop_request":
        then.planned_steps = then.planned_steps or run.planned_steps
        session.active_run = then
    run.record = record
    session.runs[:] = [r for r in session.runs if r.output_dir != record.output_dir]  # resumed or replaced
    session.add_run(record, run.events)
    session.notify("active_run")
    return record


def _completed(held, runs) -> bool:
    """Whether the run in folder `held` reached its planned steps (nothing left to resume)."""
    record = next((r for r in reversed(runs) if r.output_dir == str(held.folder)), None)
    if record is not None:
        return record.stop_reason == "completed"
    return bool(held.planned_steps) and held.last_step >= held.planned_steps


SHARES = ("accuracy", "f1", "exact_match", "precision", "recall")  # metrics between 0 and 1, read as percent


def _metric_text(name: str, value: float) -> str:
    """A metric as Compare and the runs table show it: shares in percent, others with 4 significant digits."""
    return f"{name} {value:.1%}" if name in SHARES else f"{name} {value:.4g}"
