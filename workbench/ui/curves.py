"""Live loss and metric curves of a training run (plotly, redrawn on a throttle).

The x-axis is fixed to the run's planned steps (so progress reads off the plot), the loss is drawn raw and
smoothed (EMA), eval metrics are points (loss on the left axis, accuracy/F1/... on the right), and earlier runs
are overlaid as dotted smoothed-loss lines. A "log scale" toggle switches the loss axis.
"""

from __future__ import annotations

import threading

import ipywidgets as widgets
import plotly.graph_objects as go

from workbench.train import EvalEvent, StepEvent

from .common import Throttle, figure_output, show_figure

SMOOTHING = 0.9  # weight of the past in the exponential moving average of the loss
MAX_POINTS = 1500  # per line: longer curves are thinned, so a redraw stays small (plotly #1288)


def ema(values: list[float], weight: float = SMOOTHING) -> list[float]:
    """Exponential moving average, bias-corrected so the first points are not pulled towards 0."""
    smoothed, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight**i))
    return smoothed


class LiveCurves(widgets.VBox):
    """The curves of the run being followed: `reset(planned_steps, overlays)`, then `add(event)` per event."""

    def __init__(self, interval: float = 0.7):
        self.out = figure_output()
        self.log_scale = widgets.Checkbox(description="log scale", value=False, indent=False)
        self.log_scale.add_class("wb-curves-log")
        self.log_scale.observe(lambda _: self.redraw(), "value")
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.planned_steps = 0
        self.title = "training"
        self.overlays: dict[str, list] = {}
        self._lock = threading.Lock()
        self._throttle = Throttle(self.redraw, interval)
        super().__init__([self.log_scale, self.out])
        self.add_class("wb-curves")

    def reset(self, planned_steps: int = 0, overlays: dict[str, list] | None = None, title: str = "training"):
        """Start a new run's curves; `overlays` maps earlier run names to their events."""
        with self._lock:
            self.steps, self.losses, self.evals = [], [], []
            self.planned_steps, self.title = planned_steps, title
            self.overlays = dict(overlays or {})
        self.redraw()

    def add(self, event) -> None:
        """Take one `StepEvent` or `EvalEvent` (others are ignored); the plot follows within the throttle."""
        with self._lock:
            if isinstance(event, StepEvent):
                self.planned_steps = max(self.planned_steps, event.max_steps)
                if event.loss is not None:
                    self.steps.append(event.step)
                    self.losses.append(event.loss)
            elif isinstance(event, EvalEvent):
                self.evals.append((event.step, dict(event.metrics)))
            else:
                return
        self._throttle()

    def flush(self) -> None:
        self._throttle.flush()

    def redraw(self) -> None:
        show_figure(self.out, self.figure())

    def figure(self) -> go.Figure:
        with self._lock:
            steps, losses, evals = list(self.steps), list(self.losses), list(self.evals)
            overlays, planned = dict(self.overlays), self.planned_steps
        fig = go.Figure()
        for name, events in overlays.items():
            old_steps, old_losses = _loss_points(events)
            if old_steps:
                x, y = thin(old_steps, ema(old_losses))
                fig.add_scatter(x=x, y=y, name=f"{name} (earlier)", mode="lines", line={"dash": "dot"})
        x, y = thin(steps, losses)
        fig.add_scatter(x=x, y=y, name="loss", mode="lines", line={"color": "rgba(31,119,180,0.35)"})
        x, y = thin(steps, ema(losses))
        fig.add_scatter(x=x, y=y, name="loss (smoothed)", mode="lines", line={"color": "#1f77b4"})
        for metric in _metric_names(evals):
            points = [(step, m[metric]) for step, m in evals if metric in m]
            on_loss_axis = metric.endswith("loss") or metric.endswith("perplexity")
            fig.add_scatter(
                x=[s for s, _ in points],
                y=[v for _, v in points],
                name=metric.replace("eval_", "eval ", 1),
                mode="markers+lines",
                marker={"size": 9},
                yaxis="y" if on_loss_axis else "y2",
            )
        upper = max(planned, steps[-1] if steps else 0, 1)
        fig.update_layout(
            title={"text": self.title},
            height=340,
            margin={"l": 50, "r": 50, "t": 40, "b": 40},
            xaxis={"title": {"text": "step"}, "range": [0, upper]},
            yaxis={"title": {"text": "loss"}, "type": "log" if self.log_scale.value else "linear"},
            yaxis2={"title": {"text": "metric"}, "overlaying": "y", "side": "right", "rangemode": "tozero"},
            legend={"orientation": "h", "y": -0.2},
        )
        return fig

    @property
    def point_count(self) -> int:
        """How many loss points the current run has (for tests and the progress line)."""
        return len(self.steps)


def thin(xs: list, ys: list, limit: int = MAX_POINTS) -> tuple[list, list]:
    """Every k-th point (and always the last) so that at most about `limit` points remain."""
    if len(xs) <= limit:
        return xs, ys
    stride = -(-len(xs) // limit)
    keep = list(range(0, len(xs), stride))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _loss_points(events: list) -> tuple[list[int], list[float]]:
    pairs = [(e.step, e.loss) for e in events if isinstance(e, StepEvent) and e.loss is not None]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _metric_names(evals: list[tuple[int, dict[str, float]]]) -> list[str]:
    skip = ("_runtime", "_per_second", "epoch")
    names: list[str] = []
    for _, metrics in evals:
        names += [k for k in metrics if k not in names and not k.endswith(skip)]
    return names
