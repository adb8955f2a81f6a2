"""`RunsTable`: the session's runs with readable columns, and what to do with them (plot, rename, delete, export
CSV, open the folder).

The "% of base model" column is the trained adapter's own parameters over the base model's, by the definition
of `adapter_summary()` (the Model panel's "%param"), so other adapters the model holds never change it.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from pathlib import Path

import ipywidgets as widgets
import pandas as pd

from workbench.train import clear_run, compare_runs, run_in_folder
from workbench.train.checkpoints import STAGING_PREFIX

from .common import Confirm, ErrorBox, explain_disabled, guarded, html_table, human_bytes
from .session import Session

STATUS = {"completed": "completed", "stop_request": "stopped", "early_stopping": "stopped early"}
KINDS = {"adapter": "adapter", "fusion": "fusion", "full": "full fine-tuning"}
# the table's columns: heading and how a record's cell reads
COLUMNS: dict[str, Callable] = {  # what people compare first comes first: the table scrolls for the rest
    "type": lambda r: KINDS.get(r.kind, r.kind),
    "method": lambda r: r.method,
    "status": lambda r: STATUS.get(r.stop_reason, r.stop_reason),
    "accuracy": lambda r: _percent(r.final_metrics.get("eval_accuracy")),
    "% of base model": lambda r: f"{r.adapter_percent:.3f}%" if r.base_params or r.kind == "full" else "unknown",
    "size on disk": lambda r: human_bytes(r.saved_bytes),
    "training time": lambda r: f"{r.wall_time_s:.1f} s",
    "steps": lambda r: _steps(r),
    "samples/s": lambda r: f"{r.train_samples_per_second:.1f}",
    "eval loss": lambda r: _number(r.final_metrics.get("eval_loss")),
    "trainable parameters": lambda r: f"{r.trainable_params:,}",
}
# readable names for the exported CSV (compare_runs' columns)
CSV_NAMES = {
    "kind": "type",
    "global_step": "steps",
    "stop_reason": "status",
    "trainable_params": "trainable parameters",
    "total_params": "all parameters",
    "base_params": "base model parameters",
    "adapter_params": "adapter parameters",
    "adapter_percent": "% of base model",
    "trainable_percent": "% of all parameters",
    "saved_bytes": "size on disk (bytes)",
    "saved_path": "saved to",
    "output_dir": "run folder",
    "wall_time_s": "training time (s)",
    "train_samples_per_second": "samples/s",
    "peak_memory_bytes": "peak memory (bytes)",
    "memory_kind": "memory measured",
    "best_checkpoint": "best checkpoint",
}
_NAME = re.compile(r"^[\w.,:+ -]+$")


class RunsTable(widgets.VBox):
    """The runs of `session` as a table that fits its box (it scrolls sideways inside it), a "plot" tick per run
    (`on_overlay(names)` listeners hear the picked runs), and actions on the run chosen in `choice`."""

    def __init__(self, session: Session, prefix: str = "wb-runs"):
        self.session = session
        self.overlay_listeners: list[Callable[[list[str]], None]] = []
        self.ticks: dict[str, widgets.Checkbox] = {}
        self._picked: set[str] = set()
        self.grid = widgets.GridBox(layout=widgets.Layout(grid_gap="2px 12px", width="max-content"))
        self.grid.add_class(f"{prefix}-grid")
        self.frame = widgets.Box([self.grid], layout=widgets.Layout(overflow="auto", max_width="100%"))
        self.choice = widgets.Dropdown(description="run", layout=widgets.Layout(width="22em"))
        self.new_name = widgets.Text(placeholder="new name", layout=widgets.Layout(width="14em"))
        self.rename = widgets.Button(description="Rename", icon="pencil")
        self.delete = widgets.Button(description="Delete", icon="trash", button_style="danger")
        self.open_folder = widgets.Button(description="Open folder", icon="folder-open")
        self.csv_path = widgets.Text(value="runs.csv", description="CSV file", layout=widgets.Layout(width="22em"))
        self.export = widgets.Button(description="Export CSV", icon="download")
        self.hint = widgets.HTML()
        self.error = ErrorBox()
        self.confirm = Confirm()
        self.message = widgets.HTML()
        self.link = widgets.HTML()  # the folder's path, to copy or to find in the file browser
        for widget, name in (
            (self.choice, "choice"),
            (self.new_name, "new-name"),
            (self.rename, "rename"),
            (self.delete, "delete"),
            (self.open_folder, "open"),
            (self.csv_path, "csv-path"),
            (self.export, "export"),
            (self.message, "message"),
            (self.link, "link"),
        ):
            widget.add_class(f"{prefix}-{name}")
        self.rename.on_click(guarded(self.error, "renaming the run")(self._rename_clicked))
        self.delete.on_click(guarded(self.error, "deleting the run")(self._delete_clicked))
        self.open_folder.on_click(guarded(self.error, "opening the folder")(self._open_clicked))
        self.export.on_click(guarded(self.error, "exporting the runs")(self._export_clicked))
        self.actions = widgets.VBox(
            [
                widgets.HBox([self.choice, self.new_name, self.rename, self.delete, self.open_folder, self.hint]),
                widgets.HBox([self.csv_path, self.export]),
                self.error,
                self.confirm,
                self.message,
                self.link,
            ]
        )
        super().__init__([widgets.HTML("<b>Runs</b> <i>(tick &ldquo;plot&rdquo; to draw a run on the curves)</i>"),
                          self.frame, self.actions])  # fmt: skip
        self.add_class(prefix)
        session.on_change(self._session_changed)
        self.refresh()

    # --- the table ---------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rebuild the rows from `session.runs` (ticks and the chosen run are kept)."""
        runs = list(self.session.runs)
        headings = ["plot", "run", *COLUMNS]
        cells: list[widgets.Widget] = [_cell(f"<b>{html.escape(h)}</b>") for h in headings]
        ticks = {}
        for record in runs:
            tick = widgets.Checkbox(value=record.name in self._picked, indent=False, layout={"width": "2em"})
            tick.observe(lambda change, name=record.name: self._ticked(name, change["new"]), "value")
            tick.add_class("wb-runs-tick")
            ticks[record.name] = tick
            swatch = f'<span style="color:{self.session.colour(record.name)}">&#9632;</span> '
            cells += [tick, _cell(swatch + html.escape(record.name))]
            cells += [_cell(html.escape(str(cell(record)))) for cell in COLUMNS.values()]
        self.ticks = ticks
        self._picked &= set(ticks)
        self.grid.layout.grid_template_columns = f"repeat({len(headings)}, auto)"
        self.grid.children = cells if runs else [_cell("<i>no runs yet</i>")]
        names = [r.name for r in runs]
        chosen = self.choice.value if self.choice.value in names else (names[-1] if names else None)
        self.choice.options = names
        self.choice.value = chosen
        self._explain()

    def overlaid(self) -> list[str]:
        """The runs ticked to be drawn on the curves, in table order."""
        return [name for name in self.ticks if name in self._picked]

    def record(self, name: str | None = None):
        name = name or self.choice.value
        return next((r for r in self.session.runs if r.name == name), None)

    def _ticked(self, name: str, on: bool) -> None:
        (self._picked.add if on else self._picked.discard)(name)
        for listener in self.overlay_listeners:
            listener(self.overlaid())

    def _explain(self) -> None:
        busy = self.session.run_in_progress()
        reason = None
        if not self.session.runs:
            reason = "no runs yet"
        elif busy is not None:
            reason = "a run is training: rename and delete wait until it ends"
        for button in (self.rename, self.delete):
            explain_disabled(button, reason, self.hint)
        self.open_folder.disabled = not self.session.runs
        self.export.disabled = not self.session.runs

    def _session_changed(self, what: str) -> None:
        if what == "active_run" and self.session.run_in_progress() is not None:
            self.confirm.dismiss()  # the question no longer applies while a run trains
        if what in ("runs", "active_run"):
            self.refresh()

    # --- actions -----------------------------------------------------------------------------------------

    def _chosen(self):
        record = self.record()
        if record is None:
            raise ValueError("choose a run in the list first")
        if self.session.run_in_progress() is not None:
            raise RuntimeError("a run is training: wait for it to end or stop it first")
        return record

    def _rename_clicked(self, _=None) -> None:
        record, new = self._chosen(), self.new_name.value.strip()
        if not new or not _NAME.match(new):
            raise ValueError(f"new name {new!r}: use letters, digits, spaces and . , : + - _")
        if any(r.name == new for r in self.session.runs):
            raise ValueError(f"there is already a run named {new!r}")
        old_folder = Path(record.output_dir)
        new_folder = old_folder.with_name(re.sub(r"[^\w.,+-]", "-", new))
        moved = old_folder.is_dir() and new_folder != old_folder and _holds_only_the_run(old_folder)
        if moved and new_folder.exists():
            raise FileExistsError(f"the folder {new_folder} exists already: choose another name")
        if moved:
            old_folder.rename(new_folder)
            _move_paths(record, self.session, old_folder, new_folder)
        old = record.name
        self.session.rename_run(old, new)
        if old in self._picked:
            self._picked = (self._picked - {old}) | {new}
        self.new_name.value = ""
        where = f"folder {new_folder}" if moved else f"its folder {old_folder} holds other files too and keeps its name"
        self.message.value = f"renamed {html.escape(old)} to {html.escape(new)} ({html.escape(where)})"
        self.choice.value = new

    def _delete_clicked(self, _=None) -> None:
        record = self._chosen()
        folder = Path(record.output_dir)
        size = human_bytes(sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())) if folder.is_dir() else ""
        what = f" and its checkpoints in {folder} ({size})" if size else ""
        self.confirm.ask(
            f"Delete run {record.name}{what}? This cannot be undone.", lambda: self._delete(record), "Delete"
        )

    def _delete(self, record) -> None:
        try:
            if self.session.run_in_progress() is not None:  # a run may have started since the question was asked
                raise RuntimeError("a run is training: wait for it to end or stop it first")
            folder = Path(record.output_dir)
            clear_run(folder)  # the run's checkpoints and final/ only: other files in the folder stay
            kept = folder.is_dir() and any(folder.iterdir())
            if folder.is_dir() and not kept:
                folder.rmdir()
            self.session.runs.remove(record)
            self.session.run_curves.pop(record.name, None)
            self._picked.discard(record.name)
            if self.session.full_checkpoint == record.saved_path:
                self.session.full_checkpoint = None
            note = f"; {folder} keeps files that are not the run's" if kept else ""
            self.message.value = f"deleted {html.escape(record.name)}{html.escape(note)}"
            self.session.notify("runs")
        except Exception as err:  # from the confirm button: show it here too
            self.error.show(err, "deleting the run")

    def _open_clicked(self, _=None) -> None:
        record = self.record()
        if record is None:
            raise ValueError("choose a run in the list first")
        folder = Path(record.output_dir).resolve()
        if not folder.is_dir():
            raise FileNotFoundError(f"the folder {folder} no longer exists")
        try:
            relative = Path(os.path.relpath(folder, Path.cwd())).as_posix()
        except ValueError:  # another drive
            relative = ".."
        # a path to copy (a click selects it all); JupyterLab cannot open a folder from a link in an output
        beside = (
            f" (from this notebook: <code>{html.escape(relative)}/</code>)" if not relative.startswith("..") else ""
        )
        self.link.value = f'folder: <code style="user-select:all">{html.escape(str(folder))}</code>{beside}'
        held = run_in_folder(folder)
        self.message.value = f"{html.escape(record.name)}: {html.escape(held.describe()) if held else 'no checkpoints'}"

    def _export_clicked(self, _=None) -> None:
        path = Path(self.csv_path.value.strip() or "runs.csv")
        if path.suffix.lower() != ".csv":
            raise ValueError(f"CSV file {str(path)!r}: give a file name ending in .csv")
        frame = readable_frame(self.session.runs)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path)
        self.message.value = f"wrote {len(frame)} run(s) to {html.escape(str(path.resolve()))}"

    def summary_html(self) -> str:
        """The table as static HTML (for a saved notebook)."""
        rows = [{"run": r.name, **{h: cell(r) for h, cell in COLUMNS.items()}} for r in self.session.runs]
        return html_table(rows, ["run", *COLUMNS]) if rows else "<p><i>no runs yet</i></p>"


def readable_frame(records: list) -> pd.DataFrame:
    """`compare_runs(records)` with readable column names (what Export CSV writes)."""
    frame = compare_runs(records)
    frame.index.name = "run"
    frame["stop_reason"] = frame["stop_reason"].map(lambda v: STATUS.get(v, v))
    renamed = {c: CSV_NAMES.get(c) or _metric_column(c) for c in frame.columns}
    return frame.rename(columns=renamed)


def _metric_column(column: str) -> str:
    for prefix, word in (("final_", "final"), ("best_", "best")):
        if column.startswith(prefix):
            return f"{word} {column.removeprefix(prefix).replace('_', ' ')}"
    return column.replace("_", " ")


def _move_paths(record, session: Session, old: Path, new: Path) -> None:
    def moved(path):
        if not path:
            return path
        p = Path(path)
        return str(new / p.relative_to(old)) if p == old or old in p.parents else path

    was_full = session.full_checkpoint == record.saved_path
    record.output_dir, record.saved_path = str(new), moved(record.saved_path)
    record.best_checkpoint = moved(record.best_checkpoint)
    if was_full:
        session.full_checkpoint = record.saved_path


def _steps(record) -> str:
    held = run_in_folder(record.output_dir)
    planned = held.planned_steps if held is not None else 0
    if record.stop_reason != "completed" and planned > record.global_step:
        return f"{record.global_step} of {planned}"
    return str(record.global_step)


def _percent(value) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _number(value) -> str:
    return "" if value is None else f"{value:.4g}"


def _cell(markup: str) -> widgets.HTML:
    return widgets.HTML(f'<span style="white-space:nowrap">{markup}</span>')


def _holds_only_the_run(folder: Path) -> bool:
    """Whether `folder` holds nothing but a run's checkpoints, `final/` and half-written folders: only then does
    renaming the run move the folder (a folder the user keeps other files in is never moved)."""
    run_parts = ("checkpoint-", STAGING_PREFIX)
    return all(p.is_dir() and (p.name == "final" or p.name.startswith(run_parts)) for p in folder.iterdir())
