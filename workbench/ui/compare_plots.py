"""The Compare panel's figures: accuracy against bytes on disk (one point per run), costs and inference speed.

Axes read as people say the numbers: accuracy in percent, sizes in SI bytes (20 kB, 1.5 MB) on a log axis with
ticks at 1, 2 and 5 of each power of ten, and every run in its session colour.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from .common import human_bytes


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values at 1, 2 and 5 times each power of ten from `low` to `high` (just 1x when that is too many)."""
    low, high = max(low, 1.0), max(high, 1.0)
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    steps = (1, 2, 5) if last - first <= 3 else (1,)
    ticks = [m * 10**p for p in range(first, last + 1) for m in steps]
    inside = [t for t in ticks if low / 1.5 <= t <= high * 1.5]
    return inside or [10**first]


def accuracy_cost_figure(table: pd.DataFrame, colour: Callable[[str], str]):
    """Score (accuracy) against bytes on disk, one point (and legend entry) per run of `run_table(...)`."""
    import plotly.graph_objects as go

    scored = table[table["score"].notna() & (table["bytes_on_disk"] > 0)]
    fig = go.Figure()
    for row in scored.itertuples():
        fig.add_scatter(
            x=[row.bytes_on_disk],
            y=[row.score],
            mode="markers",
            name=row.run,
            marker={"size": 14, "color": colour(row.run)},
            hovertemplate=(
                f"<b>{row.run}</b><br>{row.metric} %{{y:.1%}}<br>{human_bytes(row.bytes_on_disk)} on disk<br>"
                f"{row.trainable_params:,} trainable parameters<extra></extra>"
            ),
        )
    metric = scored["metric"].iloc[0] if len(scored) and scored["metric"].nunique() == 1 else "score"
    ticks = log_ticks(scored["bytes_on_disk"].min(), scored["bytes_on_disk"].max()) if len(scored) else [1]
    fig.update_xaxes(
        type="log", title="bytes on disk (log scale)", tickvals=ticks, ticktext=[human_bytes(t) for t in ticks]
    )
    fig.update_yaxes(title=f"validation {metric}", tickformat=".0%", range=[0, 1.05])
    fig.update_layout(
        title=f"{metric.capitalize()} against size on disk", height=380, legend_title_text="run", showlegend=True
    )
    return fig


def confusion_figure(confusion: pd.DataFrame, title: str):
    """The confusion matrix as a heatmap with counts, true labels as rows and predicted ones as columns."""
    import plotly.graph_objects as go

    labels_x, labels_y = [str(c) for c in confusion.columns], [str(i) for i in confusion.index]
    fig = go.Figure(
        go.Heatmap(
            z=confusion.values,
            x=labels_x,
            y=labels_y,
            text=confusion.values,
            texttemplate="%{text}",
            colorscale="Blues",
            showscale=False,
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_xaxes(title="predicted", type="category")
    fig.update_yaxes(title="true", type="category", autorange="reversed")
    size = 160 + 40 * len(labels_y)
    fig.update_layout(title=title, height=min(size, 600), width=min(220 + 60 * len(labels_x), 800))
    return fig


def costs_figure(table: pd.DataFrame):
    """Trainable parameters and bytes on disk of each setup, on log axes (adapters are orders of magnitude
    smaller than the model)."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Trainable parameters", "Bytes on disk"))
    fig.add_bar(x=table["setup"], y=table["trainable_params"], name="trainable params", row=1, col=1)
    fig.add_bar(x=table["setup"], y=table["bytes_on_disk"], name="bytes on disk", row=1, col=2)
    fig.update_yaxes(type="log", tickformat="~s", row=1, col=1)
    ticks = log_ticks(table["bytes_on_disk"].min(), table["bytes_on_disk"].max())
    fig.update_yaxes(type="log", tickvals=ticks, ticktext=[human_bytes(t) for t in ticks], row=1, col=2)
    fig.update_layout(title="Costs of each setup", height=360, showlegend=False)
    return fig


def speed_figure(table: pd.DataFrame, colour: Callable[[str], str] | None = None):
    """Median milliseconds per batch of each setup or run (runs in their session colour)."""
    import plotly.graph_objects as go

    colours = [colour(s) if colour else None for s in table["setup"]]
    fig = go.Figure(
        go.Bar(x=table["setup"], y=1000 * table["median_s"], name="ms per batch", marker={"color": colours})
    )
    fig.update_layout(title="Inference time per batch (median)", yaxis_title="ms", height=340)
    return fig
