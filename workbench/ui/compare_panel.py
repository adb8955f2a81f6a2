"""`ComparePanel`: training runs (an adapter run and its full fine-tuning baseline), adapters, compositions and
the base model on the same typed texts, in one table with what each costs, and accuracy against size on disk.

Each run is compared with the weights it saved (`workbench.analysis.run_model`): a full run's folder loads as its
own model with its classification head (safetensors only), an adapter run's adapter and head run on the session's
model. All numbers come from `workbench.analysis` and the runs' records; the panel only shows them.
"""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets
import pandas as pd

from workbench.analysis import (
    BASE,
    CheckpointCache,
    checkpoint_head,
    costs,
    evaluate_run,
    inference_speed,
    predict,
    run_predictions,
    run_speed,
    run_table,
    setup_label,
)

from .common import (
    ErrorBox,
    StaticSummary,
    Throttle,
    busy,
    explain_disabled,
    figure_output,
    guarded,
    html_table,
    human_bytes,
    plain_message,
    set_busy,
    show_figure,
    start_worker,
)
from .compare_plots import accuracy_cost_figure, confusion_figure, costs_figure, speed_figure
from .session import Session, default_session

FULL = "full fine-tuned"
DEFAULT_TEXTS = "a wonderful, moving film\nthe plot was dull and far too long"
GREY = "#999999"


class ComparePanel(widgets.VBox):
    """Compare runs and setups on typed texts. Results stay on attributes for code: `results` (the one table, a
    row per run or setup), `outputs` (a row per text, a column per run or setup), `predictions` (name ->
    `Prediction`s), `runs_table`, `cost_table`, `speed_table` (DataFrames) and `evaluation` (`Evaluation`).

    Runs come from the session (the Train panel adds them); runs trained from code join with `runs=[...]` or
    `panel.add_runs(...)`.
    """

    def __init__(self, session=None, model=None, tokenizer=None, full_checkpoint=None, runs=None):
        self.session: Session = session or default_session()
        if model is not None:
            self.session.set_model(model, tokenizer, getattr(model.config, "name_or_path", None) or None)
        if full_checkpoint is not None:
            self.session.full_checkpoint = str(full_checkpoint)
        self.predictions: dict[str, list] = {}
        self.outputs: pd.DataFrame | None = None
        self.results: pd.DataFrame | None = None
        self.runs_table: pd.DataFrame | None = None
        self.cost_table: pd.DataFrame | None = None
        self.speed_table: pd.DataFrame | None = None
        self.evaluation = None
        self.speed_worker: threading.Thread | None = None
        self._speed_done: threading.Thread | None = None
        self.checkpoints = CheckpointCache()
        self.static = StaticSummary()
        self._basis: dict | None = None  # what the shown results were computed for (see `_current_basis`)
        self._adapter_changes = 0  # "adapters" notices heard: results of adapters computed before one are stale
        self._build()
        super().__init__(self._layout())
        self.add_class("wb-compare")
        self.session.on_change(self._session_changed)
        if runs:
            self.add_runs(*runs)
        self.refresh()

    # --- widgets -------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.texts = widgets.Textarea(
            value=DEFAULT_TEXTS,
            placeholder="one text per line (question-answering heads: question ||| context)",
            layout=widgets.Layout(width="100%", height="6em"),
        )
        self.runs = widgets.SelectMultiple(options=[], rows=4, description="Runs")
        self.adapters = widgets.SelectMultiple(options=[], rows=4, description="Adapters")
        self.composition = widgets.Text(
            placeholder="e.g. Stack(lang, task)", description="Composition", style={"description_width": "initial"}
        )
        self.include_base = widgets.Checkbox(value=False, description="base model", indent=False)
        self.include_full = widgets.Checkbox(value=True, description=FULL, indent=False)
        self.run_button = widgets.Button(description="Compare", icon="play", button_style="primary")
        self.run_hint = widgets.HTML()
        self.error = ErrorBox()  # right under the Compare button
        self.speed_button = widgets.Button(description="Measure speed", icon="stopwatch")
        self.repeats = widgets.BoundedIntText(value=5, min=1, max=100, description="Repeats")
        self.speed_hint = widgets.HTML()
        self.speed_error = ErrorBox()  # right under the speed row
        self.status = widgets.HTML()
        self.stale = widgets.HTML()
        self.table = widgets.HTML()
        self.plot = figure_output()
        self.costs_html = widgets.HTML()
        self.costs_figure = figure_output()
        self.speed_html = widgets.HTML()
        self.speed_figure = figure_output()
        self.eval_run = widgets.Dropdown(options=[], description="Run")
        self.eval_button = widgets.Button(description="Evaluate", icon="table")
        self.eval_hint = widgets.HTML()
        self.eval_error = ErrorBox()
        self.eval_html = widgets.HTML()
        self.eval_figure = figure_output()
        for widget, css in (
            (self.texts, "wb-compare-texts"),
            (self.runs, "wb-compare-runs"),
            (self.adapters, "wb-compare-adapters"),
            (self.composition, "wb-compare-composition"),
            (self.include_base, "wb-compare-base"),
            (self.include_full, "wb-compare-full"),
            (self.run_button, "wb-compare-run"),
            (self.run_hint, "wb-compare-run-hint"),
            (self.error, "wb-compare-error"),
            (self.speed_button, "wb-compare-speed"),
            (self.speed_hint, "wb-compare-speed-hint"),
            (self.speed_error, "wb-compare-speed-error"),
            (self.status, "wb-compare-status"),
            (self.stale, "wb-compare-stale"),
            (self.table, "wb-compare-table"),
            (self.plot, "wb-compare-plot"),
            (self.costs_html, "wb-compare-costs"),
            (self.costs_figure, "wb-compare-costs-chart"),
            (self.speed_html, "wb-compare-speed-table"),
            (self.speed_figure, "wb-compare-speed-chart"),
            (self.eval_run, "wb-compare-eval-run"),
            (self.eval_button, "wb-compare-eval"),
            (self.eval_error, "wb-compare-eval-error"),
            (self.eval_html, "wb-compare-eval-details"),
            (self.eval_figure, "wb-compare-confusion"),
        ):
            widget.add_class(css)
        self.run_button.on_click(guarded(self.error, "Compare")(self._compare_clicked))
        self.speed_button.on_click(guarded(self.speed_error, "Speed")(self._speed_clicked))
        self.eval_button.on_click(guarded(self.eval_error, "Evaluation")(self._evaluate_clicked))
        for widget in (self.runs, self.adapters, self.include_base, self.include_full):
            widget.observe(lambda _: self._update_buttons(), "value")
        self.composition.observe(lambda _: self._update_buttons(), "value")

    def _layout(self) -> list:
        choose = widgets.HBox(
            [self.runs, self.adapters, widgets.VBox([self.composition, self.include_base, self.include_full])]
        )
        return [
            widgets.HTML("<b>Input texts</b> (one per line)"),
            self.texts,
            choose,
            widgets.HBox([self.run_button, self.run_hint]),
            self.error,
            widgets.HBox([self.speed_button, self.repeats, self.speed_hint]),
            self.speed_error,
            self.status,
            self.stale,
            widgets.HTML("<b>Results</b>: predictions on the texts, validation metrics, costs and speed"),
            self.table,
            self.plot,
            self.costs_html,
            self.costs_figure,
            self.speed_html,
            self.speed_figure,
            widgets.HTML("<b>Evaluation details</b>: confusion matrix and misclassified validation examples"),
            widgets.HBox([self.eval_run, self.eval_button, self.eval_hint]),
            self.eval_error,
            self.eval_html,
            self.eval_figure,
        ]

    def _ipython_display_(self) -> None:
        """Show the panel and, below it, the static summary that a saved notebook keeps."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self.static.display()

    # --- session -------------------------------------------------------------------------------------

    def add_runs(self, *records) -> None:
        """Add runs trained from code (`workbench.train.train`) to the session, so they can be compared."""
        for record in records:
            if record.name in {r.name for r in self.session.runs}:
                raise ValueError(f"a run named {record.name!r} is already in the session: give train() a new name=")
            self.session.add_run(record)

    def _session_changed(self, what: str) -> None:
        if what in ("model", "adapters", "runs", "active_run"):
            self.refresh()
        if what == "model" and self._basis is not None:
            self._clear_results("The model changed: results for the previous model were cleared.")
        elif what in ("adapters", "runs"):
            self._adapter_changes += what == "adapters"  # an adapter may be re-trained or replaced under its name
            self._mark_stale()

    def refresh(self) -> None:
        """Re-read runs, adapters and the full checkpoint from the session; update which buttons can act."""
        model = self.session.model
        names = list(getattr(model, "adapters", {})) if model is not None else []
        self.adapters.options = names
        self.adapters.value = tuple(v for v in self.adapters.value if v in names)
        known = list(self.runs.options)
        run_names = [r.name for r in self.session.runs]
        chosen = [n for n in self.runs.value if n in run_names] + [n for n in run_names if n not in known]
        self.runs.options = run_names
        self.runs.value = tuple(n for n in run_names if n in chosen)  # new runs join the comparison
        evaluable = [r.name for r in self.session.runs if r.validation]
        self.eval_run.options = evaluable
        if evaluable and self.eval_run.value not in evaluable:
            self.eval_run.value = evaluable[-1]
        checkpoint = self._extra_checkpoint()
        self.include_full.layout.display = None if checkpoint else "none"
        self.include_full.description = f"{FULL} ({checkpoint})" if checkpoint else FULL
        self.checkpoints.keep_only([r.saved_path for r in self.session.runs if r.kind == "full"] + [checkpoint or ""])
        self._update_buttons()

    def _extra_checkpoint(self) -> str | None:
        """The session's full checkpoint when no run in the session saved it (one given as a folder)."""
        path = self.session.full_checkpoint
        if not path or any(r.saved_path == path for r in self.session.runs):
            return None
        return path

    def _blocked(self) -> str | None:
        """Why nothing can be computed now, or None."""
        if self.session.run_in_progress() is not None:
            return "a run is training on this model: compare when it finishes"
        if self.measuring:
            return "measuring inference speed..."
        return None

    def _update_buttons(self) -> None:
        reason = self._blocked() or self._nothing_chosen()
        explain_disabled(self.run_button, reason, self.run_hint)
        explain_disabled(self.speed_button, reason, self.speed_hint)
        eval_reason = self._blocked()
        if eval_reason is None and not self.eval_run.options:
            eval_reason = "no classification run yet: train one in the Train panel (with a full baseline to compare)"
        explain_disabled(self.eval_button, eval_reason, self.eval_hint)

    def _nothing_chosen(self) -> str | None:
        if self.session.model is None and not self.session.runs and not self._extra_checkpoint():
            return "nothing to compare yet: load a model (Model panel) or train a run (Train panel)"
        if not self._chosen_runs() and not self._setups() and self._full() is None:
            return "nothing chosen: pick runs or adapters, type a composition or tick the base model"
        return None

    # --- what to compare -----------------------------------------------------------------------------

    def _texts(self) -> list[str]:
        texts = [line.strip() for line in self.texts.value.splitlines() if line.strip()]
        if not texts:
            raise ValueError("no input texts: type one text per line")
        return texts

    def _chosen_runs(self) -> list:
        chosen = set(self.runs.value)
        return [r for r in self.session.runs if r.name in chosen]

    def _setups(self) -> list:
        setups = [None] if self.include_base.value else []
        setups += list(self.adapters.value)
        if self.composition.value.strip():
            setups.append(self.composition.value.strip())
        return setups

    def _full(self) -> str | None:
        """The extra full checkpoint folder to compare, or None."""
        checkpoint = self._extra_checkpoint()
        return checkpoint if checkpoint and self.include_full.value else None

    def _model(self):
        if self.session.model is None or self.session.tokenizer is None:
            raise ValueError("no model in the session: load one in the Model panel or pass model= and tokenizer=")
        return self.session.model, self.session.tokenizer

    def _current_basis(self) -> dict:
        return {
            "model": id(self.session.model),
            "runs": [r.name for r in self.session.runs],
            "records": {r.name: id(r) for r in self.session.runs},  # a resumed or re-run run is a new record
            "adapters": list(getattr(self.session.model, "adapters", {}) or []),
            "adapter_changes": self._adapter_changes,
        }

    def _check_can_act(self, verb: str) -> None:
        reason = self._blocked()
        if reason is not None:
            raise RuntimeError(reason)
        if not self._chosen_runs() and not self._setups() and self._full() is None:
            raise ValueError(f"nothing to {verb}: pick runs or adapters, type a composition or tick the base model")

    # --- compare -------------------------------------------------------------------------------------

    def _compare_clicked(self, _=None) -> None:
        if self.measuring:
            raise RuntimeError("the speed measurement is still running on this model: wait for it to finish")
        self._check_can_act("compare")
        texts, runs, setups, full = self._texts(), self._chosen_runs(), self._setups(), self._full()
        model, tokenizer = self._model() if setups else (self.session.model, self.session.tokenizer)
        with busy(self.run_button, "Comparing..."):
            self.status.value = "Running the texts through each run and setup..."
            predictions, problems = {}, []
            for record in runs:  # one run that cannot be compared does not hide the others
                try:
                    predictions.update(run_predictions(model, tokenizer, [record], texts, self.checkpoints))
                except Exception as err:
                    problems.append(f"{record.name}: {plain_message(err)}")
            runs = [r for r in runs if r.name in predictions]
            for setup in setups:
                predictions[setup_label(setup)] = predict(model, tokenizer, texts, setup=setup)
            if full is not None:
                full_model, full_tok = self.checkpoints.get(full, tokenizer)
                predictions[FULL] = predict(full_model, full_tok, texts, head=checkpoint_head(full_model, full))
            chosen = [s for s in setups if s]
            self.cost_table = costs(model, chosen, full) if model is not None and (setups or full) else None
        self.predictions = predictions
        self.outputs = pd.DataFrame(
            {name: [p.summary for p in preds] for name, preds in predictions.items()}, index=pd.Index(texts)
        )
        self.outputs.index.name = "text"
        self.runs_table = run_table(runs)
        self.speed_table = None
        self._basis = {**self._current_basis(), "shown": list(predictions)}
        self._show_results(runs)
        self.status.value = f"Compared {len(predictions)} runs and setups on {len(texts)} texts."
        self.error.show_problems(problems, "Some runs could not be compared")
        self.stale.value = ""
        self.static.update(self.summary_html())

    def _show_results(self, runs) -> None:
        self.results = self._results_frame()
        self.table.value = _results_html(self.results, list(self.outputs.index))
        if runs:
            show_figure(self.plot, accuracy_cost_figure(self.runs_table, self.session.colour))
        else:
            self.plot.outputs = ()
        if self.cost_table is not None:
            self.costs_html.value = "<b>Costs of the adapters and setups</b> (their saved files; the model for scale)"
            show_figure(self.costs_figure, costs_figure(self.cost_table))
        else:
            self.costs_html.value, self.costs_figure.outputs = "", ()
        self.speed_html.value, self.speed_figure.outputs = "", ()

    def _results_frame(self) -> pd.DataFrame:
        """The one table: a row per run or setup, predictions per text, then metrics, costs and speed."""
        rows = []
        by_run = {r.run: r for r in self.runs_table.itertuples()}
        by_setup = {r.setup: r for r in self.cost_table.itertuples()} if self.cost_table is not None else {}
        speed = {r.setup: r for r in self.speed_table.itertuples()} if self.speed_table is not None else {}
        for name, preds in self.predictions.items():
            row = {"name": name}
            row.update({text: p.summary for text, p in zip(self.outputs.index, preds, strict=True)})
            run, cost = by_run.get(name), by_setup.get("full model" if name == BASE else name)
            row["kind"] = run.kind if run else (cost.kind if cost else "base model")
            row["metrics"] = run.metrics if run else {}
            row["trainable_params"] = run.trainable_params if run else (cost.trainable_params if cost else None)
            row["pct_params"] = run.pct_params if run else (cost.pct_params if cost else None)
            row["bytes_on_disk"] = run.bytes_on_disk if run else (cost.bytes_on_disk if cost else None)
            row["train_time_s"] = run.train_time_s if run else None
            row["train_samples_per_s"] = run.train_samples_per_s if run else None
            row["peak_memory_bytes"] = run.peak_memory_bytes if run else None
            row["memory_kind"] = run.memory_kind if run else None
            row["ms_per_batch"] = 1000 * speed[name].median_s if name in speed else None
            row["texts_per_s"] = speed[name].texts_per_s if name in speed else None
            rows.append(row)
        return pd.DataFrame(rows)

    # --- stale results -------------------------------------------------------------------------------

    def _clear_results(self, why: str) -> None:
        self.predictions, self.outputs, self.results = {}, None, None
        self.runs_table = self.cost_table = self.speed_table = None
        self.evaluation, self._basis = None, None
        for html_widget in (self.table, self.costs_html, self.speed_html, self.eval_html):
            html_widget.value = ""
        for out in (self.plot, self.costs_figure, self.speed_figure, self.eval_figure):
            out.outputs = ()
        self.stale.value = ""
        self.status.value = html.escape(why) + " Press Compare again."

    def _mark_stale(self) -> None:
        """Say above the results what changed since they were computed (a run or adapter gone or added)."""
        if self._basis is None:
            return
        now = self._current_basis()
        gone = [n for n in self._basis["shown"] if n in self._basis["runs"] + self._basis["adapters"]]
        gone = [n for n in gone if n not in now["runs"] + now["adapters"]]
        new_runs = [n for n in now["runs"] if n not in self._basis["runs"]]
        notes = []
        if gone:
            notes.append(f"no longer in the session: {', '.join(gone)}")
        if new_runs:
            notes.append(f"new runs not compared yet: {', '.join(new_runs)}")
        redone = [n for n in self._basis["shown"] if self._basis["records"].get(n, id(None)) != now["records"].get(n)]
        redone = [n for n in redone if n in now["records"]]
        if redone:
            notes.append(f"trained again since: {', '.join(redone)}")
        shown_adapters = [n for n in self._basis["shown"] if n not in self._basis["records"]]
        if now["adapter_changes"] != self._basis["adapter_changes"] and shown_adapters:
            notes.append("the model's adapters changed")
        if self.evaluation is not None and self.evaluation.run not in now["runs"]:
            self.evaluation, self.eval_html.value, self.eval_figure.outputs = None, "", ()
        self.stale.value = (
            '<div class="wb-stale-note" style="color:#8a4b00"><b>Stale:</b> these results were computed before '
            f"the session changed ({html.escape('; '.join(notes))}). Press Compare to refresh.</div>"
            if notes
            else ""
        )

    # --- speed ---------------------------------------------------------------------------------------

    @property
    def measuring(self) -> bool:
        worker = self.speed_worker
        return worker is not None and worker.is_alive() and worker is not self._speed_done

    def _speed_clicked(self, _=None) -> None:
        if self.measuring:
            raise RuntimeError("a speed measurement is already running")
        self._check_can_act("time")
        texts, runs, setups, full = self._texts(), self._chosen_runs(), self._setups(), self._full()
        model, tokenizer = self._model() if setups else (self.session.model, self.session.tokenizer)
        repeats = int(self.repeats.value)
        set_busy(self.speed_button, True, "Measuring...")
        self.run_button.disabled = True  # one forward pass at a time on the model
        progress = {"text": "Measuring inference speed..."}
        throttle = Throttle(lambda: setattr(self.status, "value", progress["text"]), interval=0.5)
        throttle.flush()

        def report(done: int, total: int, label: str) -> None:
            progress["text"] = f"Measuring inference speed: {done}/{total} setups done (last: {html.escape(label)})"
            throttle()

        def work() -> None:
            try:
                tables = [run_speed(model, tokenizer, runs, texts, repeats, self.checkpoints)] if runs else []
                if setups:
                    tables.append(inference_speed(model, tokenizer, texts, setups, repeats=repeats, progress=report))
                if full is not None:
                    full_model, full_tok = self.checkpoints.get(full, tokenizer)
                    tables.append(
                        inference_speed(full_model, full_tok, texts, [None], repeats=repeats).assign(setup=FULL)
                    )
                table = pd.concat(tables, ignore_index=True)
                self.speed_table = table
                self.speed_html.value = "<b>Inference speed</b>" + html_table(_speed_rows(table))
                show_figure(self.speed_figure, speed_figure(table, self._colour))
                if self.outputs is not None and set(table["setup"]) <= set(self.predictions):
                    self._show_speed_in_results()
                progress["text"] = f"Timed {len(table)} runs and setups, {repeats} repeats each (median shown)."
                self.static.update(self.summary_html())
            except Exception as err:  # shown under the speed button, not as a traceback
                self.speed_error.show(err, "Speed")
                progress["text"] = "Speed measurement failed."
            finally:
                self._speed_done = threading.current_thread()  # its last lines below free the buttons
                throttle.flush()
                set_busy(self.speed_button, False)
                self._update_buttons()

        self.speed_worker = start_worker(work, "workbench-compare-speed")
        self._update_buttons()

    def _show_speed_in_results(self) -> None:
        self.results = self._results_frame()
        self.table.value = _results_html(self.results, list(self.outputs.index))

    def _colour(self, name: str) -> str:
        return self.session.colour(name) if name in {r.name for r in self.session.runs} else GREY

    # --- evaluation details --------------------------------------------------------------------------

    def _evaluate_clicked(self, _=None) -> None:
        reason = self._blocked()
        if reason is not None:
            raise RuntimeError(reason)
        record = next((r for r in self.session.runs if r.name == self.eval_run.value), None)
        if record is None:
            raise ValueError("choose a run to evaluate (classification runs keep their validation examples)")
        with busy(self.eval_button, "Evaluating..."):
            evaluation = evaluate_run(self.session.model, self.session.tokenizer, record, self.checkpoints)
        self.evaluation = evaluation
        wrong = evaluation.misclassified
        shown = wrong.head(50).assign(score=lambda f: f["score"].map(lambda s: f"{s:.2f}"))
        self.eval_html.value = (
            f"<p><b>{html.escape(evaluation.run)}</b>: {evaluation.accuracy:.1%} correct on "
            f"{evaluation.examples} validation examples; {len(wrong)} misclassified"
            + (" (first 50 shown)" if len(wrong) > 50 else "")
            + "</p>"
            + "<b>Confusion matrix</b> (rows: true label, columns: predicted)"
            + html_table([{"true \\ predicted": i, **row} for i, row in evaluation.confusion.iterrows()])
            + "<b>Misclassified examples</b>"
            + (html_table(shown.to_dict("records")) if len(wrong) else "<p><i>none</i></p>")
        )
        show_figure(self.eval_figure, confusion_figure(evaluation.confusion, f"Confusion matrix: {evaluation.run}"))
        self.static.update(self.summary_html())

    # --- static summary ------------------------------------------------------------------------------

    def summary_html(self) -> str:
        parts = ["<h4>Compare</h4>"]
        if self.results is not None:
            parts += ["<b>Results</b>", self.table.value]
            if self.plot.outputs:
                parts.append(
                    accuracy_cost_figure(self.runs_table, self.session.colour).to_html(
                        include_plotlyjs="cdn", full_html=False
                    )
                )
        if self.speed_table is not None:
            parts += [self.speed_html.value]
        if self.evaluation is not None:
            parts += ["<b>Evaluation details</b>", self.eval_html.value]
        if len(parts) == 1:
            parts.append("<p><i>nothing compared yet</i></p>")
        return "\n".join(parts)


RESULTS_STYLE = (
    "<style>.wb-compare-results{overflow-x:auto}.wb-compare-results th,.wb-compare-results td"
    "{padding:2px 6px;text-align:left;vertical-align:bottom}.wb-compare-results td{white-space:nowrap}"
    ".wb-compare-results tbody tr:nth-child(odd){background:rgba(0,0,0,0.04)}"
    ".wb-compare-results td:first-child{font-weight:600}</style>"
)


def _results_html(results: pd.DataFrame, texts: list[str]) -> str:
    """The one results table with a column per run or setup (a few) and a row per prediction, metric and cost
    (many), so it fits the panel's width."""
    per_run = _display_rows(results, texts)
    names = [row.pop("run / setup") for row in per_run]
    fields = list(per_run[0]) if per_run else []
    rows = [{"": field, **{name: row[field] for name, row in zip(names, per_run, strict=True)}} for field in fields]
    return f'{RESULTS_STYLE}<div class="wb-compare-results">{html_table(rows, ["", *names])}</div>'


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _display_rows(results: pd.DataFrame, texts: list[str]) -> list[dict]:
    """The results table as people read it: predictions under the (shortened) texts, percent, SI sizes."""
    rows = []
    for row in results.to_dict("records"):
        shown = {"run / setup": row["name"], "kind": row["kind"]}
        shown.update({f"on “{_short(t)}”": row[t] for t in texts})
        metrics = row["metrics"] or {}
        shown["accuracy"] = f"{metrics['accuracy']:.1%}" if "accuracy" in metrics else "–"
        others = {k: v for k, v in metrics.items() if k != "accuracy"}
        shown["eval metrics"] = ", ".join(f"{k} {v:.3g}" for k, v in others.items()) or "–"
        shown["trainable params"] = _num(row["trainable_params"], "{:,.0f}")
        shown["% of base model"] = _num(row["pct_params"], "{:.3g}%")
        shown["bytes on disk"] = human_bytes(row["bytes_on_disk"]) if _present(row["bytes_on_disk"]) else "–"
        shown["training time"] = _num(row["train_time_s"], "{:.1f} s")
        shown["samples/s"] = _num(row["train_samples_per_s"], "{:.1f}")
        peak = row["peak_memory_bytes"]
        kind = {"rss": "RSS", "cuda": "GPU"}.get(row["memory_kind"], row["memory_kind"])
        shown["peak memory"] = f"{human_bytes(peak)} {kind}" if _present(peak) else "–"
        not_yet = "press Measure speed"
        shown["ms / batch"] = _num(row["ms_per_batch"], "{:.2f}") if _present(row["ms_per_batch"]) else not_yet
        shown["texts/s"] = _num(row["texts_per_s"], "{:.1f}") if _present(row["texts_per_s"]) else not_yet
        rows.append(shown)
    return rows


def _present(value) -> bool:
    return value is not None and not pd.isna(value)


def _num(value, fmt: str) -> str:
    return fmt.format(value) if _present(value) else "–"


def _speed_rows(table: pd.DataFrame) -> list[dict]:
    return [
        {
            "run / setup": r.setup,
            "batch": r.batch_size,
            "median ms / batch": f"{1000 * r.median_s:.2f}",
            "texts / s": f"{r.texts_per_s:.1f}",
            "device": r.device,
        }
        for r in table.itertuples()
    ]
