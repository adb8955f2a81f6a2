"""`Session`: what the panels share (the model, its tokenizer, runs, the run in progress) and tell each other."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CHANGES = ("model", "adapters", "runs", "active_run")
# plotly's default qualitative palette, so a run keeps its colour across the panels' plots
RUN_COLOURS = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880", "#ff97ff")


@dataclass
class ActiveRun:
    """A training run in a worker thread: the panel that started it re-attaches to it after a cell re-run."""

    kind: str  # "train" or "fusion"
    control: Any  # workbench.train.RunControl
    thread: threading.Thread
    events: list = field(default_factory=list)  # every StepEvent / EvalEvent so far, for re-drawing the curves
    planned_steps: int = 0
    record: Any = None  # the RunRecord once finished
    error: BaseException | None = None
    name: str = ""  # the run's record name ("adapter:sst"), for its colour and legend

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    @property
    def in_progress(self) -> bool:
        """Whether the run is still training (its worker may live on briefly after the record is in)."""
        return self.running and self.record is None and self.error is None


class Session:
    """The state shared by the panels of one workbench.

    Panels read `model`/`tokenizer`, call `set_model` or `notify("adapters")` after changing the model, and
    subscribe with `on_change(callback)`; a callback gets the name of what changed (one of `CHANGES`).
    """

    def __init__(self, model=None, tokenizer=None, source: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.source = source  # hub id or folder the model came from
        self.runs: list = []  # RunRecords, oldest first
        self.run_curves: dict[str, list] = {}  # run name -> its events, for overlaying earlier runs
        self.full_checkpoint: str | None = None  # folder of a full fine-tuned model, for Compare
        self.active_run: ActiveRun | None = None
        self._colours: dict[str, str] = {}
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, callback: Callable[[str], None]) -> None:
        self._listeners.append(callback)

    def notify(self, what: str) -> None:
        if what not in CHANGES:
            raise ValueError(f"unknown change {what!r}: use one of {', '.join(CHANGES)}")
        for callback in list(self._listeners):
            callback(what)

    def run_in_progress(self) -> ActiveRun | None:
        """The run training now, or None: the model must not be replaced or its adapters deleted under it."""
        run = self.active_run
        return run if run is not None and run.in_progress else None

    def colour(self, run_name: str) -> str:
        """The colour of run `run_name` in every plot of every panel: given on first use, kept for the session."""
        if run_name not in self._colours:
            self._colours[run_name] = RUN_COLOURS[len(self._colours) % len(RUN_COLOURS)]
        return self._colours[run_name]

    def set_model(self, model, tokenizer, source: str | None = None) -> None:
        self.model, self.tokenizer, self.source = model, tokenizer, source
        self.notify("model")

    def add_run(self, record, events: list | None = None) -> None:
        """Add a finished run. Run names are unique in a session (the runs table, the curves, the colours and
        Compare pick runs by name): a second run named like an earlier one, from another folder, gets " (2)"."""
        taken = {r.name for r in self.runs}
        if record.name in taken:
            number = 2
            while f"{record.name} ({number})" in taken:
                number += 1
            record.name = f"{record.name} ({number})"
        self.runs.append(record)
        if events is not None:
            self.run_curves[record.name] = list(events)
        if record.kind == "full":
            self.full_checkpoint = record.saved_path
        self.notify("runs")

    def rename_run(self, old: str, new: str) -> None:
        """Rename run `old` to `new` everywhere the session keeps it: record, curves and colour."""
        if any(r.name == new for r in self.runs):
            raise ValueError(f"there is already a run named {new!r}")
        for record in self.runs:
            if record.name == old:
                record.name = new
        if old in self.run_curves:
            self.run_curves[new] = self.run_curves.pop(old)
        if old in self._colours:
            self._colours[new] = self._colours.pop(old)
        self.notify("runs")


_DEFAULT: Session | None = None


def default_session() -> Session:
    """The kernel's session: re-running `Workbench()` finds the same model and the run in progress."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Session()
    return _DEFAULT
