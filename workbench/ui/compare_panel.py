"""`ComparePanel`: the same texts through the base model, adapters, compositions and a full fine-tuned model.

Outputs side by side, what each costs (parameters, bytes on disk, % of the full model) and how fast each runs.
All numbers come from `workbench.analysis`; the panel only shows them.
"""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets
import pandas as pd

from workbench.analysis import costs, inference_speed, load_checkpoint, predict, setup_label

from .common import (
    ErrorBox,
    StaticSummary,
    Throttle,
    figure_output,
    guarded,
    html_table,
    human_bytes,
    show_figure,
    start_worker,
)
from .session import Session, default_session

FULL = "full fine-tuned"
DEFAULT_TEXTS = "a wonderful, moving film\nthe plot was dull and far too long"


class ComparePanel(widgets.VBox):
    """Compare setups on typed texts. Results stay on attributes for code: `outputs` (DataFrame, a row per text and
    a column per setup), `predictions` (setup label -> `Prediction`s), `cost_table` and `speed_table` (DataFrames).
    """

    def __init__(self, session: Session | None = None, model=None, tokenizer=None, full_checkpoint=None):
        self.session = session or default_session()
        if model is not None:
            self.session.set_model(model, tokenizer, getattr(model.config, "name_or_path", None) or None)
        if full_checkpoint is not None:
            self.session.full_checkpoint = str(full_checkpoint)
        self.error = ErrorBox()
        self.predictions: dict[str, list] = {}
        self.outputs: pd.DataFrame | None = None
        self.cost_table: pd.DataFrame | None = None
        self.speed_table: pd.DataFrame | None = None
        self.speed_worker: threading.Thread | None = None
        self._full_model = None  # (path, model, tokenizer) of the loaded full checkpoint
        self.static = StaticSummary()
        self._build()
        super().__init__(self._layout())
        self.add_class("wb-compare")
        self.session.on_change(self._session_changed)
        self.refresh()

    # --- widgets -------------------------------------------------------------------------------------

    def _build(self) -> None:
        self.texts = widgets.Textarea(
            value=DEFAULT_TEXTS,
            placeholder="one text per line (question-answering heads: question ||| context)",
            layout=widgets.Layout(width="100%", height="7em"),
        )
        self.adapters = widgets.SelectMultiple(options=[], rows=4, description="Adapters")
        self.composition = widgets.Text(placeholder="e.g. Stack(lang, task)", description="Composition")
        self.include_base = widgets.Checkbox(value=True, description="base model", indent=False)
        self.include_full = widgets.Checkbox(value=True, description=FULL, indent=False)
        self.run_button = widgets.Button(description="Compare", icon="play", button_style="primary")
        self.speed_button = widgets.Button(description="Measure speed", icon="stopwatch")
        self.repeats = widgets.BoundedIntText(value=5, min=1, max=100, description="Repeats")
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.costs_html = widgets.HTML()
        self.costs_figure = figure_output()
        self.speed_html = widgets.HTML()
        self.speed_figure = figure_output()
        for widget, css in (
            (self.texts, "wb-compare-texts"),
            (self.adapters, "wb-compare-adapters"),
            (self.composition, "wb-compare-composition"),
            (self.include_base, "wb-compare-base"),
            (self.include_full, "wb-compare-full"),
            (self.run_button, "wb-compare-run"),
            (self.speed_button, "wb-compare-speed"),
            (self.status, "wb-compare-status"),
            (self.table, "wb-compare-table"),
            (self.costs_html, "wb-compare-costs"),
            (self.costs_figure, "wb-compare-costs-chart"),
            (self.speed_html, "wb-compare-speed-table"),
            (self.speed_figure, "wb-compare-speed-chart"),
        ):
            widget.add_class(css)
        self.run_button.on_click(guarded(self.error, "Compare")(self._compare_clicked))
        self.speed_button.on_click(guarded(self.error, "Speed")(self._speed_clicked))

    def _layout(self) -> list:
        choose = widgets.HBox([self.adapters, widgets.VBox([self.composition, self.include_base, self.include_full])])
        return [
            widgets.HTML("<b>Input texts</b> (one per line)"),
            self.texts,
            choose,
            widgets.HBox([self.run_button, self.speed_button, self.repeats]),
            self.status,
            self.error,
            widgets.HTML("<b>Outputs</b>"),
            self.table,
            widgets.HTML("<b>Costs</b>"),
            self.costs_html,
            self.costs_figure,
            widgets.HTML("<b>Inference speed</b>"),
            self.speed_html,
            self.speed_figure,
        ]

    def _ipython_display_(self) -> None:
        """Show the panel and, below it, the static summary that a saved notebook keeps."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self.static.display()

    # --- session -------------------------------------------------------------------------------------

    def _session_changed(self, what: str) -> None:
        if what in ("model", "adapters", "runs"):
            self.refresh()

    def refresh(self) -> None:
        """Re-read the loaded adapters and the full checkpoint from the session."""
        model = self.session.model
        names = list(getattr(model, "adapters", {})) if model is not None else []
        self.adapters.options = names
        self.adapters.value = tuple(v for v in self.adapters.value if v in names)
        checkpoint = self.session.full_checkpoint
        self.include_full.disabled = not checkpoint
        self.include_full.description = f"{FULL} ({checkpoint})" if checkpoint else f"{FULL} (none yet)"

    # --- what to compare -----------------------------------------------------------------------------

    def _model(self):
        if self.session.model is None or self.session.tokenizer is None:
            raise ValueError("no model in the session: load one in the Model panel or pass model= and tokenizer=")
        return self.session.model, self.session.tokenizer

    def _texts(self) -> list[str]:
        texts = [line.strip() for line in self.texts.value.splitlines() if line.strip()]
        if not texts:
            raise ValueError("no input texts: type one text per line")
        return texts

    def _setups(self) -> list:
        setups = [None] if self.include_base.value else []
        setups += list(self.adapters.value)
        if self.composition.value.strip():
            setups.append(self.composition.value.strip())
        return setups

    def _adapter_setups(self) -> list:
        return [s for s in self._setups() if s is not None]

    def _full(self):
        """The full fine-tuned model and its tokenizer, loaded once per checkpoint folder; None when not compared."""
        path = self.session.full_checkpoint
        if not path or not self.include_full.value:
            return None
        if self._full_model is None or self._full_model[0] != path:
            model, tokenizer = load_checkpoint(path, tokenizer=self.session.tokenizer)
            self._full_model = (path, model, tokenizer)
        return self._full_model[1:]

    # --- compare -------------------------------------------------------------------------------------

    def _compare_clicked(self, _=None) -> None:
        if self.measuring:
            raise RuntimeError("the speed measurement is still running on this model: wait for it to finish")
        model, tokenizer = self._model()
        texts, setups = self._texts(), self._setups()
        full = self._full()
        if not setups and full is None:
            raise ValueError("nothing to compare: tick the base model, pick adapters or type a composition")
        self.status.value = "Running the texts through each setup..."
        predictions = {setup_label(s): predict(model, tokenizer, texts, setup=s) for s in setups}
        if full is not None:
            predictions[FULL] = predict(full[0], full[1], texts)
        self.predictions = predictions
        self.outputs = pd.DataFrame(
            {label: [p.summary for p in preds] for label, preds in predictions.items()}, index=pd.Index(texts)
        )
        self.outputs.index.name = "text"
        self.table.value = html_table(self.outputs.reset_index().to_dict("records"))
        self._show_costs(model)
        self.status.value = f"Compared {len(predictions)} setups on {len(texts)} texts."
        self.static.update(self.summary_html())

    def _show_costs(self, model) -> None:
        checkpoint = self.session.full_checkpoint if self.include_full.value else None
        table = costs(model, self._adapter_setups(), full_checkpoint=checkpoint or None)
        self.cost_table = table
        rows = [
            {
                "setup": r.setup,
                "kind": r.kind,
                "trainable params": f"{r.trainable_params:,}",
                "bytes on disk": human_bytes(r.bytes_on_disk),
                "% of full params": f"{r.pct_params:.3g}%",
                "% of full bytes": f"{r.pct_bytes:.3g}%",
            }
            for r in table.itertuples()
        ]
        self.costs_html.value = html_table(rows)
        show_figure(self.costs_figure, costs_figure(table))

    # --- speed ---------------------------------------------------------------------------------------

    @property
    def measuring(self) -> bool:
        return self.speed_worker is not None and self.speed_worker.is_alive()

    def _speed_clicked(self, _=None) -> None:
        if self.measuring:
            raise RuntimeError("a speed measurement is already running")
        model, tokenizer = self._model()
        texts, setups, full = self._texts(), self._setups(), self._full()
        if not setups and full is None:
            raise ValueError("nothing to time: tick the base model, pick adapters or type a composition")
        repeats = int(self.repeats.value)
        self.run_button.disabled = self.speed_button.disabled = True  # one forward pass at a time on the model
        progress = {"text": "Measuring inference speed..."}
        throttle = Throttle(lambda: setattr(self.status, "value", progress["text"]), interval=0.5)
        throttle.flush()

        def report(done: int, total: int, label: str) -> None:
            progress["text"] = f"Measuring inference speed: {done}/{total} setups done (last: {html.escape(label)})"
            throttle()

        def work() -> None:
            try:
                table = inference_speed(model, tokenizer, texts, setups, repeats=repeats, progress=report)
                if full is not None:
                    row = inference_speed(full[0], full[1], texts, [None], repeats=repeats).assign(setup=FULL)
                    table = pd.concat([table, row], ignore_index=True)
                self.speed_table = table
                self.speed_html.value = html_table(_speed_rows(table))
                show_figure(self.speed_figure, speed_figure(table))
                progress["text"] = f"Timed {len(table)} setups, {repeats} repeats each (median shown)."
                self.static.update(self.summary_html())
            except Exception as err:  # shown in the panel, not as a traceback
                self.error.show(err, "Speed")
                progress["text"] = "Speed measurement failed."
            finally:
                throttle.flush()
                self.run_button.disabled = self.speed_button.disabled = False

        self.speed_worker = start_worker(work, "workbench-compare-speed")

    # --- static summary ------------------------------------------------------------------------------

    def summary_html(self) -> str:
        parts = ["<h4>Compare</h4>"]
        if self.outputs is not None:
            parts += ["<b>Outputs</b>", html_table(self.outputs.reset_index().to_dict("records"))]
        if self.cost_table is not None:
            parts += ["<b>Costs</b>", self.costs_html.value]
        if self.speed_table is not None:
            parts += ["<b>Inference speed</b>", self.speed_html.value]
        if len(parts) == 1:
            parts.append("<p><i>nothing compared yet</i></p>")
        return "\n".join(parts)


def _speed_rows(table: pd.DataFrame) -> list[dict]:
    return [
        {
            "setup": r.setup,
            "batch": r.batch_size,
            "median ms / batch": f"{1000 * r.median_s:.2f}",
            "texts / s": f"{r.texts_per_s:.1f}",
            "vs base": "" if pd.isna(r.slowdown) else f"{r.slowdown:.2f}x",
            "device": r.device,
        }
        for r in table.itertuples()
    ]


def costs_figure(table: pd.DataFrame):
    """Bar charts of trainable parameters, bytes on disk and % of the full model, one bar per setup."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, subplot_titles=("Trainable parameters", "Bytes on disk", "% of full model"))
    fig.add_bar(x=table["setup"], y=table["trainable_params"], name="trainable params", row=1, col=1)
    fig.add_bar(x=table["setup"], y=table["bytes_on_disk"], name="bytes on disk", row=1, col=2)
    fig.add_bar(x=table["setup"], y=table["pct_params"], name="% params", row=1, col=3)
    fig.add_bar(x=table["setup"], y=table["pct_bytes"], name="% bytes", row=1, col=3)
    for col in (1, 2):
        fig.update_yaxes(type="log", row=1, col=col)  # adapters are orders of magnitude smaller than the model
    fig.update_yaxes(type="log", row=1, col=3)
    fig.update_layout(title="Costs of each setup", height=380, barmode="group", showlegend=True)
    return fig


def speed_figure(table: pd.DataFrame):
    """Bar chart of the median milliseconds per batch of each setup."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Bar(x=table["setup"], y=1000 * table["median_s"], name="ms per batch"))
    fig.update_layout(title="Inference time per batch (median)", yaxis_title="ms", height=340)
    return fig
