"""The Train panel: data, task and columns, method and hyper-parameters; Start / Stop; live curves; run records.

    panel = TrainPanel(model=model, tokenizer=tokenizer, data=df)   # or a path / dataset id typed in the panel
    panel                                                           # Start, watch, Stop; panel.record afterwards

Training runs in a worker thread through `workbench.train.train` (the notebook stays responsive); the run lives
in `session.active_run`, so a panel built while it runs re-attaches to it. Its pieces
(`train_inputs`, `run_view`) are shared with the Fusion panel.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
from IPython.display import display

import workbench

from .code import RunSpec
from .common import ErrorBox, StaticSummary
from .curves import LiveCurves
from .run_view import RunView
from .session import Session, default_session
from .train_inputs import DataPicker, HyperParams, TaskColumns, device_name

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
        # error None: the view's own box, right under Start, takes the run's errors (self.error: the data's)
        self.view = RunView(self.session, None, self.spec, kind="train", callbacks=callbacks, rename=self._use_name)
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

    def _use_name(self, name: str) -> None:
        """The run view's "Use <free name>": a new adapter under that name (its folder follows)."""
        self.adapter.value = name

    def _ipython_display_(self) -> None:
        display(self._repr_mimebundle_(), raw=True)
        self.summary.display()
