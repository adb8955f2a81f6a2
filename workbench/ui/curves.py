"""Live loss and metric curves of a training run (plotly, redrawn on a throttle).

The x-axis is fixed to the run's planned steps while it trains (so progress reads off the plot) and to its last
step once it ended (a stopped run fills the plot); the loss is drawn raw and smoothed (EMA), eval metrics are
points (loss on the left axis with plain ticks, accuracy/F1/... on the right, as percent when they are
fractions), and runs picked in the runs table are overlaid as dotted smoothed-loss lines. Each run has its
session colour (`Session.colour`) and the legend names it. A "log scale" toggle switches the loss axis.
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

    def __init__(self, interval: float = 0.7, colour=None):
        self.out = figure_output()
        self.log_scale = widgets.Checkbox(description="log scale", value=False, indent=False)
        self.log_scale.add_class("wb-curves-log")
        self.log_scale.observe(lambda _: self.redraw(), "value")
        self.steps: list[int] = []
        self.losses: list[float] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.planned_steps = 0
        self.title = "training"
        self.run_name = ""
        self.colour = colour or (lambda _name: None)  # run name -> its colour in every panel
        self.overlays: dict[str, list] = {}
        self._lock = threading.Lock()
        self._throttle = Throttle(self.redraw, interval)
        super().__init__([self.log_scale, self.out])
        self.add_class("wb-curves")

    def reset(
        self,
        planned_steps: int = 0,
        overlays: dict[str, list] | None = None,
        title: str = "training",
        run_name: str = "",
    ):
        """Start a new run's curves; `overlays` maps earlier run names to their events."""
        with self._lock:
            self.steps, self.losses, self.evals = [], [], []
            self.planned_steps, self.title, self.run_name = planned_steps, title, run_name
            self.overlays = {name: events for name, events in (overlays or {}).items() if name != run_name}
        self.redraw()

    def set_overlays(self, overlays: dict[str, list]) -> None:
        """Draw these runs (name -> events) under the current one."""
        with self._lock:
            self.overlays = {name: events for name, events in overlays.items() if name != self.run_name}
        self.redraw()

    def finish(self) -> None:
        """The run ended: the x-axis ends at its last step (a stopped run no longer shows the planned total)."""
        with self._lock:
            last = max([self.steps[-1] if self.steps else 0] + [step for step, _ in self.evals])
            self.planned_steps = last or self.planned_steps
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
            overlays, planned, run = dict(self.overlays), self.planned_steps, self.run_name
        fig = go.Figure()
        for name, events in overlays.items():
            old_steps, old_losses = _loss_points(events)
            if old_steps:
                x, y = thin(old_steps, ema(old_losses))
                line = {"dash": "dot", "color": self.colour(name)}
                fig.add_scatter(x=x, y=y, name=f"{name} (earlier)", mode="lines", line=line)
        colour = self.colour(run) if run else None
        group = {"legendgroup": run or "run", "legendgrouptitle": {"text": run}} if run else {}
        x, y = thin(steps, losses)
        fig.add_scatter(x=x, y=y, name="loss", mode="lines", line={"color": colour or "#1f77b4"}, opacity=0.35, **group)
        x, y = thin(steps, ema(losses))
        fig.add_scatter(x=x, y=y, name="loss (smoothed)", mode="lines", line={"color": colour or "#1f77b4"}, **group)
        fractions = True
        for metric in _metric_names(evals):
            points = [(step, m[metric]) for step, m in evals if metric in m]
            on_loss_axis = metric.endswith("loss") or metric.endswith("perplexity")
            fractions = fractions and (on_loss_axis or all(0 <= v <= 1 for _, v in points))
            fig.add_scatter(
                x=[s for s, _ in points],
                y=[v for _, v in points],
                name=metric.replace("eval_", "eval ", 1),
                mode="markers+lines",
                marker={"size": 9, "symbol": _symbol(metric)},
                line={"color": colour, "dash": "solid" if on_loss_axis else "dash"} if colour else {},
                yaxis="y" if on_loss_axis else "y2",
                **group,
            )
        upper = max(planned, steps[-1] if steps else 0, 1)
        log = self.log_scale.value
        metric_axis = {"title": {"text": "metric"}, "overlaying": "y", "side": "right", "rangemode": "tozero"}
        if fractions:  # accuracy, F1, ... as percent on a fixed 0-100% axis
            metric_axis.update(
                title={"text": "metric (%)"}, tickformat=".0%", range=[0, 1.02], autorange=False, dtick=0.25
            )
            metric_axis.pop("rangemode")
        fig.update_layout(
            title={"text": self.title},
            height=400,
            margin={"l": 55, "r": 55, "t": 40, "b": 40},
            xaxis={"title": {"text": "step"}, "range": [0, upper]}
            | ({"dtick": 1} if upper <= 10 else {}),  # whole steps
            # plain numbers (0.69, not 690m); on a log axis labels at 1, 2 and 5 of each decade only
            yaxis={"title": {"text": "loss"}, "type": "log" if log else "linear", "tickformat": ".3~g"}
            | ({"dtick": "D2"} if log else {}),
            yaxis2=metric_axis,
            # below the axis title ("step"), clear of it: the plot keeps its height and the legend takes its own
            legend={"orientation": "h", "y": -0.3, "yanchor": "top"},
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


def _symbol(metric: str) -> str:
    """One marker shape per metric, so two metrics of the same run (one colour) stay apart."""
    shapes = {"loss": "circle", "accuracy": "diamond", "f1": "square", "perplexity": "triangle-up"}
    return next((shape for key, shape in shapes.items() if metric.endswith(key)), "x")


def _metric_names(evals: list[tuple[int, dict[str, float]]]) -> list[str]:
    skip = ("_runtime", "_per_second", "epoch")
    names: list[str] = []
    for _, metrics in evals:
        names += [k for k in metrics if k not in names and not k.endswith(skip)]
    return names
