"""A control row that keeps its feedback beside it, and the rule that the model must not change under a run."""

from __future__ import annotations

import html

import ipywidgets as widgets

from .common import ErrorBox, explain_disabled
from .session import Session


class ControlRow(widgets.VBox):
    """One row of controls with, right beside it, a grey line saying why a button cannot act, and right under it
    its own ErrorBox (so feedback appears where the user clicked)."""

    def __init__(self, controls: list, css: str, below: list | None = None, label: str = ""):
        if label:  # a short name for the row, so rows of bare text fields read as what they do
            controls = [widgets.HTML(f"<b>{html.escape(label)}</b>", layout=widgets.Layout(width="5em")), *controls]
        for control in controls:  # buttons keep their label whole however long the hint beside them
            if isinstance(control, widgets.Button):
                control.layout.width = control.layout.width or "auto"
                control.layout.flex = "0 0 auto"
        self.hint = widgets.HTML()
        self.result = widgets.HTML()
        self.error = ErrorBox()
        self.error.shown_listeners.append(lambda: self.say(""))  # an old success must not sit above a new error
        self.hint.add_class(f"{css}-hint")
        self.result.add_class(f"{css}-result")
        self.error.add_class(f"{css}-error")
        super().__init__([widgets.HBox([*controls, self.hint]), *(below or []), self.result, self.error])
        self.add_class(css)

    def say(self, markup: str) -> None:
        """What the row's last action did, right under it ("" hides it)."""
        self.result.value = f'<span style="color:#1b5e20">{markup}</span>' if markup else ""

    def explain(self, reasons: dict) -> None:
        """`{button: reason or None}`: disable each button with its reason; the hint shows the reasons given."""
        for button, reason in reasons.items():
            explain_disabled(button, reason)
        shown = list(dict.fromkeys(r for r in reasons.values() if r))
        self.hint.value = (
            f'<span class="wb-hint" style="color:#666">{html.escape("; ".join(shown))}</span>' if shown else ""
        )


def change_refused(session: Session) -> str | None:
    """Why the model must not change now (a run trains on it), or None."""
    run = session.run_in_progress()
    if run is None:
        return None
    return f"a {run.kind} run is training on this model: stop it or wait for it to end"


def check_change_allowed(session: Session) -> None:
    reason = change_refused(session)
    if reason is not None:
        raise RuntimeError(reason)
