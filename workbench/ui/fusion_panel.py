"""The Fusion panel: pick loaded adapters, train an AdapterFusion over them live, then see its attention.

    panel = FusionPanel(model=model, tokenizer=tokenizer, data=df)   # adapters already loaded on the model
    panel.attention                                                  # DataFrame [layer x adapter] after a run

The data, settings, Start / Stop, progress, curves and records are the Train panel's pieces; the heatmap comes
from `workbench.analysis.fusion_attention` on sample texts (by default the first texts of the data).
Creating a fusion layer is explicit: Start adds it and trains it, "Add fusion layer" adds an untrained one; the
panel says whether the picked adapters' fusion is on the model. Each row shows its errors right under it.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import display

from workbench.analysis import fusion_attention

from .code import RunSpec
from .common import ErrorBox, StaticSummary, explain_disabled, figure_output, guarded, show_figure
from .controls import ControlRow, change_refused, check_change_allowed
from .run_view import RunView
from .session import Session, default_session
from .train_inputs import DataPicker, HyperParams, TaskColumns, device_name

SAMPLE_TEXTS = 4  # texts taken from the data for the heatmap when none are typed in


class FusionPanel(widgets.VBox):
    """Train a fusion of loaded adapters (`kind="fusion"`) and show its attention per layer and adapter.

    Args:
        session: shared with the other panels; `model`/`tokenizer` given here become the session's model.
        data: a DataFrame, a CSV/TSV/JSON(L) path or a dataset id.
        texts: sample inputs for the attention heatmap.
        callbacks: extra `workbench.train` callbacks for every run started here.
    """

    def __init__(
        self, session: Session | None = None, model=None, tokenizer=None, data=None, texts=None, callbacks=None
    ):
        self.session = session or default_session()
        if model is not None and model is not self.session.model:
            self.session.set_model(model, tokenizer or self.session.tokenizer)
        self.adapters = widgets.SelectMultiple(description="adapters", rows=5)
        self.adapters.add_class("wb-fusion-adapters")
        self.adapters.observe(lambda _: self._update_state(), "value")
        self.fusion_state = widgets.HTML()
        self.fusion_state.add_class("wb-fusion-state")
        self.add_fusion_button = widgets.Button(description="Add fusion layer", icon="plus")
        self.add_fusion_button.add_class("wb-fusion-add")
        self.fusion_row = ControlRow([self.add_fusion_button, self.fusion_state], "wb-fusion-layer-row")
        self.add_fusion_button.on_click(guarded(self.fusion_row.error, "adding the fusion layer")(self._add_clicked))
        self.data_error = ErrorBox()
        self.data = DataPicker(self.data_error, data, prefix="wb-fusion")
        self.columns = TaskColumns(prefix="wb-fusion")
        self.data.listeners.append(self.columns.set_columns)
        if self.data.columns:
            self.columns.set_columns(self.data.columns)
        self.params = HyperParams(prefix="wb-fusion")
        self.params.fields["learning rate"].value = "5e-5"  # AdapterFusion's usual rate
        self.output_dir = widgets.Text(
            value="runs", description="output folder", style={"description_width": "initial"}
        )
        self.output_dir.add_class("wb-fusion-output")
        self.device = widgets.HTML(f"device: <b>{html.escape(device_name())}</b>")
        self.error = ErrorBox()  # the run's errors, right above its Start button
        self.error.add_class("wb-fusion-run-error")
        self.view = RunView(self.session, self.error, self.spec, kind="fusion", prefix="wb-fusion", callbacks=callbacks)
        self.texts = widgets.Textarea(
            value="\n".join(texts or []),
            placeholder="sample inputs, one per line (default: the first texts of the data)",
            layout=widgets.Layout(width="100%", height="6em"),
        )
        self.texts.add_class("wb-fusion-texts")
        self.attention_button = widgets.Button(description="Show fusion attention", icon="th")
        self.attention_button.add_class("wb-fusion-attention")
        self.attention_row = ControlRow([self.attention_button], "wb-fusion-attention-row")
        self.attention_error = self.attention_row.error
        self.attention_button.on_click(guarded(self.attention_error, "fusion attention")(self._attention_clicked))
        self.heatmap = figure_output()
        self.heatmap.add_class("wb-fusion-heatmap")
        self.attention = None  # the last fusion_attention DataFrame
        self.summary = StaticSummary()
        self.view.finished_listeners.append(self._run_finished)
        self.session.on_change(self._session_changed)
        self._refresh_adapters()
        settings = widgets.VBox([self.params, self.output_dir, self.device])
        super().__init__(
            [
                widgets.HTML("<b>Adapters to fuse</b>"),
                self.adapters,
                self.fusion_row,
                widgets.HTML("<b>Data</b>"),
                self.data,
                self.data_error,
                widgets.HBox([self.columns, settings]),
                self.error,
                self.view,
                widgets.HTML("<b>Fusion attention</b> (mean over tokens; each row sums to 1)"),
                self.texts,
                self.attention_row,
                self.heatmap,
            ]
        )
        self.add_class("wb-fusion")

    @property
    def record(self):
        """The RunRecord of the last fusion run this panel followed (None before)."""
        return self.view.record

    @property
    def curves(self):
        return self.view.curves

    def spec(self) -> RunSpec:
        """The fusion run as set in the panel; raises ValueError (shown in the panel) on a bad setting."""
        names = list(self.adapters.value)
        if len(names) < 2:
            raise ValueError(f"pick at least two loaded adapters to fuse (picked: {', '.join(names) or 'none'})")
        if self.data.data is None:
            raise ValueError("no data: type a path or dataset id and click Load, or pass data=...")
        return RunSpec(
            kind="fusion",
            data=self.data.data,
            adapter=names,
            task=self.columns.task.value,
            columns=self.columns.column_kwargs(),
            config=self.params.config(),
            output_dir=f"{self.output_dir.value.strip() or 'runs'}/fusion-{'-'.join(names)}",
            model_source=self.session.source,
        )

    def show_attention(self, names: list[str] | None = None) -> None:
        """Compute the attention of the fusion of `names` (default: the picked adapters) on the sample texts and
        draw the heatmap."""
        names = list(names or self.adapters.value)
        model = self.session.model
        if model is None:
            raise ValueError("no model: load one in the Model panel, or pass model=... and tokenizer=...")
        if self.session.tokenizer is None:
            raise ValueError("no tokenizer: pass tokenizer=... (or load the model in the Model panel)")
        self.attention = frame = fusion_attention(model, self.session.tokenizer, self._sample_texts(), names)
        figure = go.Figure(
            go.Heatmap(
                z=frame.values.tolist(),  # plain lists: any plotly renderer reads them
                x=list(frame.columns),
                y=[f"layer {layer}" for layer in frame.index],
                zmin=0,
                zmax=1,
                colorscale="Blues",
                text=frame.values.round(2).tolist(),
                texttemplate="%{text}",
            )
        )
        figure.update_layout(
            title={"text": f"fusion attention: {','.join(names)}"},
            xaxis={"title": {"text": "adapter"}},
            yaxis={"autorange": "reversed"},
            height=120 + 28 * len(frame),
            margin={"l": 70, "r": 20, "t": 40, "b": 40},
        )
        show_figure(self.heatmap, figure)
        self.summary.update(self.summary_html())

    def summary_html(self) -> str:
        parts = [self.view.summary_html()]
        if self.attention is not None:
            parts.append("<b>fusion attention</b>" + self.attention.round(3).to_html())
        return "\n".join(parts)

    def _sample_texts(self) -> list[str]:
        texts = [line for line in self.texts.value.splitlines() if line.strip()]
        if not texts and self.data.head is not None:
            column = self.columns.column_kwargs().get("text_column")
            if column in self.data.head:
                texts = [str(t) for t in self.data.head[column].head(SAMPLE_TEXTS)]
        if not texts:
            raise ValueError("type some sample inputs (one per line) for the attention heatmap")
        return texts

    def _attention_clicked(self, _=None) -> None:
        self.show_attention()

    def add_fusion(self, names: list[str] | None = None) -> str:
        """Add an untrained fusion layer over `names` (default: the picked adapters); nothing is activated."""
        names = list(names or self.adapters.value)
        model = self._model()
        check_change_allowed(self.session)
        if len(names) < 2:
            raise ValueError(f"pick at least two loaded adapters to fuse (picked: {', '.join(names) or 'none'})")
        model.add_adapter_fusion(names)
        fusion = ",".join(names)
        self.fusion_row.say(f"Added the untrained fusion layer {_quoted(fusion)}: Start trains it")
        self.session.notify("adapters")
        return fusion

    def _add_clicked(self, _=None) -> None:
        self.add_fusion()

    def _model(self):
        if self.session.model is None:
            raise ValueError("no model: load one in the Model panel, or pass model=... and tokenizer=...")
        return self.session.model

    def _update_state(self) -> None:
        """Say whether the picked adapters' fusion is on the model; disable what cannot act, with the reason."""
        model = self.session.model
        names = list(self.adapters.value)
        fusions = (getattr(model, "adapter_fusions", None) or {}) if model is not None else {}
        fusion = ",".join(names)
        exists = len(names) >= 2 and fusion in fusions
        if model is None:
            reason = "no model loaded"
        elif len(names) < 2:
            reason = "pick at least two adapters to fuse"
        else:
            reason = None
        if reason is None and not exists:
            self.fusion_state.value = (
                f"No fusion layer {_quoted(fusion)} on the model yet: Start adds and trains it, or add an untrained one"
            )
        elif exists:
            self.fusion_state.value = f"Fusion layer {_quoted(fusion)} is on the model."
        else:
            self.fusion_state.value = ""
        adding = reason or change_refused(self.session) or (f"{fusion!r} is already on the model" if exists else None)
        self.fusion_row.explain({self.add_fusion_button: adding})
        attention = reason or (None if exists else f"no fusion layer {fusion!r} yet: train it first (Start)")
        explain_disabled(self.attention_button, attention, self.attention_row.hint)

    def _run_finished(self) -> None:
        if self.view.record is not None and self.view.record.kind == "fusion" and self.view.spec is not None:
            guarded(self.attention_error, "fusion attention")(self.show_attention)(self.view.spec.adapter)
        self.summary.update(self.summary_html())

    def _refresh_adapters(self) -> None:
        model = self.session.model
        names = list(model.adapters) if model is not None and hasattr(model, "adapters") else []
        picked = [n for n in self.adapters.value if n in names]
        self.adapters.options = names
        self.adapters.value = picked
        self._update_state()

    def _session_changed(self, what: str) -> None:
        if what in ("model", "adapters"):
            self._refresh_adapters()
        elif what in ("active_run", "runs"):
            self._update_state()

    def _ipython_display_(self) -> None:
        display(self._repr_mimebundle_(), raw=True)
        self.summary.display()


def _quoted(name: str) -> str:
    return html.escape(repr(name), quote=False)
