"""Pieces every panel uses: inline errors, busy buttons, confirmations, throttled updates, worker threads and the
static summary."""

from __future__ import annotations

import contextlib
import functools
import html
import threading
import time
import traceback
from collections.abc import Callable

import ipywidgets as widgets
from IPython.display import HTML, display


class ErrorBox(widgets.VBox):
    """Plain-language feedback placed right under the control that caused it: one line (or the list of every
    problem found), the exception and its traceback on demand, never a raw traceback in the panel.

    Give each control row its own box, so the message appears where the user just clicked."""

    def __init__(self):
        self.message = widgets.HTML()
        self.details = widgets.Textarea(disabled=True, layout=widgets.Layout(width="100%", height="12em"))
        self.toggle = widgets.ToggleButton(  # never squeezed by a long message beside it
            description="Details", icon="info", layout=widgets.Layout(width="auto", flex="0 0 auto")
        )
        self.toggle.observe(self._toggled, "value")
        super().__init__([], layout=widgets.Layout(display="none"))
        self.add_class("wb-error")
        self.shown_listeners: list[Callable[[], None]] = []  # e.g. a row clearing its last success message

    def show(self, error: BaseException, context: str = "") -> None:
        """`error` as one readable sentence ("Loading the model failed: ..."), its type and traceback in Details;
        an error that carries `problems` (every invalid field, every data check) lists them all."""
        problems = getattr(error, "problems", None)
        if problems:
            intro = f"{context[:1].upper()}{context[1:]} needs these fixed first" if context else "Fix these first"
            self.show_problems([str(p) for p in problems], intro)
            return
        prefix = f"{context[:1].upper()}{context[1:]} failed: " if context else ""
        self._show(
            f"{html.escape(prefix)}{html.escape(plain_message(error))}",
            "".join(traceback.format_exception(error)),
        )

    def show_problems(self, problems: list[str], context: str = "") -> None:
        """Every problem found at once (invalid fields, data checks), one bullet each."""
        if not problems:
            self.clear()
            return
        intro = f"<div>{html.escape(context)}:</div>" if context else ""
        items = "".join(f"<li>{html.escape(problem)}</li>" for problem in problems)
        self._show(f'{intro}<ul style="margin:0.2em 0">{items}</ul>', "\n".join(problems), details_button=False)

    def _show(self, markup: str, details: str, details_button: bool = True) -> None:
        self.message.value = f'<div style="color:#b00020">{markup}</div>'
        self.details.value = details
        self.toggle.value = False
        self.children = [widgets.HBox([self.message, self.toggle] if details_button else [self.message])]
        self.layout.display = "flex"
        for listener in list(self.shown_listeners):
            listener()

    def clear(self) -> None:
        self.children = []
        self.layout.display = "none"

    @property
    def text(self) -> str:
        """The message shown, as plain text (empty when there is none)."""
        return html.unescape(_strip_tags(self.message.value)) if self.children else ""

    def _toggled(self, change) -> None:
        if self.children:
            self.children = [self.children[0], self.details] if change["new"] else [self.children[0]]


def plain_message(error: BaseException) -> str:
    """What a person reads for `error`: its own message without the exception's class name (that goes to the
    details); the first line of a multi-line message; the class name only when the message is empty."""
    text = str(error).strip()
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    first = text.splitlines()[0] if text else ""
    return first or type(error).__name__


def _strip_tags(markup: str) -> str:
    out, inside = [], False
    for char in markup:
        if char == "<":
            inside = True
        elif char == ">":
            inside = False
        elif not inside:
            out.append(char)
    return "".join(out)


def guarded(error_box: ErrorBox, context: str = ""):
    """Decorate a widget handler: its exceptions go to `error_box` instead of the kernel log."""

    def wrap(handler: Callable) -> Callable:
        @functools.wraps(handler)
        def run(*args, **kwargs):
            error_box.clear()
            try:
                return handler(*args, **kwargs)
            except Exception as err:  # shown in the panel, with details on demand
                error_box.show(err, context)
                return None

        return run

    return wrap


def set_busy(button: widgets.Button, busy: bool, label: str | None = None) -> None:
    """Show `button` as working (disabled, a spinning icon, `label` as its text) or restore it."""
    if busy:
        if not hasattr(button, "_wb_idle"):
            button._wb_idle = (button.description, button.icon, button.disabled)
        button.disabled, button.icon = True, "spinner spin"
        button.description = label or button.description
        button.add_class("wb-busy")
    elif hasattr(button, "_wb_idle"):
        button.description, button.icon, button.disabled = button._wb_idle
        del button._wb_idle
        button.remove_class("wb-busy")


@contextlib.contextmanager
def busy(button: widgets.Button, label: str | None = None):
    """`with busy(button, "Loading..."):` shows the button as working for the block's duration."""
    set_busy(button, True, label)
    try:
        yield
    finally:
        set_busy(button, False)


def explain_disabled(button: widgets.Button, reason: str | None, hint: widgets.HTML | None = None) -> None:
    """Disable `button` while `reason` says why it cannot act (as its tooltip and in `hint`, a line beside it);
    enable it when `reason` is None."""
    button.disabled = reason is not None
    button.tooltip = reason or ""
    if hint is not None:
        hint.value = f'<span class="wb-hint" style="color:#666">{html.escape(reason)}</span>' if reason else ""


class Confirm(widgets.HBox):
    """An inline "are you sure?" beside the control: the consequence, a confirm button and Cancel.

    `confirm.ask("Replace the model? 3 adapters will be lost.", on_yes, "Replace")` shows it; a click on the
    confirm button hides it and runs `on_yes`, Cancel only hides it."""

    def __init__(self):
        self.message = widgets.HTML()
        self.yes = widgets.Button(description="Confirm", button_style="warning")
        self.no = widgets.Button(description="Cancel")
        self._action: Callable[[], None] | None = None
        self.yes.on_click(self._confirmed)
        self.no.on_click(lambda _: self.dismiss())
        self.yes.add_class("wb-confirm-yes")
        self.no.add_class("wb-confirm-no")
        super().__init__([self.message, self.yes, self.no], layout=widgets.Layout(display="none"))
        self.add_class("wb-confirm")

    def ask(self, message: str, on_yes: Callable[[], None], confirm_label: str = "Confirm") -> None:
        self.message.value = f'<span style="color:#8a4b00">{html.escape(message)}</span>'
        self.yes.description = confirm_label
        self._action = on_yes
        self.layout.display = "flex"

    @property
    def asking(self) -> bool:
        return self.layout.display != "none"

    def dismiss(self) -> None:
        self._action = None
        self.layout.display = "none"

    def _confirmed(self, _=None) -> None:
        action = self._action
        self.dismiss()
        if action is not None:
            action()


class Throttle:
    """Calls `action` at most every `interval` seconds; `flush()` runs the pending call now."""

    def __init__(self, action: Callable[[], None], interval: float = 0.5):
        self.action, self.interval = action, interval
        self._last = 0.0
        self._pending = False
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last < self.interval:
                self._pending = True
                return
            self._last, self._pending = now, False
        self.action()

    def flush(self) -> None:
        with self._lock:
            self._last, self._pending = time.monotonic(), False
        self.action()


def start_worker(target: Callable[[], None], name: str) -> threading.Thread:
    """Run `target` in a daemon thread, so the notebook stays responsive (widget updates from it are safe on
    ipykernel >= 7.1)."""
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


class StaticSummary:
    """An HTML output beside a panel that a saved notebook keeps: updated with the results when a task ends.

    `listeners` are called after each update (the `Workbench` refreshes its own summary from them)."""

    def __init__(self):
        self._handle = None
        self.listeners: list[Callable[[str], None]] = []

    def display(self) -> None:
        self._handle = display(HTML(""), display_id=True)

    def update(self, markup: str) -> None:
        if self._handle is not None:
            self._handle.update(HTML(markup))
        for listener in list(self.listeners):
            listener(markup)


def html_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """A small escaped HTML table, for static summaries and read-only result lists."""
    if not rows:
        return "<p><i>nothing yet</i></p>"
    columns = columns or list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f'<table class="wb-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


SI_PREFIXES = ("", "k", "M", "G", "T")


def human_bytes(n: float) -> str:
    """`n` bytes with an SI prefix, as every panel shows sizes: 950 B, 20 kB, 1.5 MB, 2.1 GB."""
    n = float(n)
    power = 0
    while abs(n) >= 1000 and power < len(SI_PREFIXES) - 1:
        n /= 1000
        power += 1
    text = f"{n:.0f}" if power == 0 or abs(n) >= 100 else f"{n:.3g}"
    return f"{text} {SI_PREFIXES[power]}B"


def figure_output() -> widgets.Output:
    """An `Output` widget to show plotly figures in (see `show_figure`)."""
    return widgets.Output(layout=widgets.Layout(width="100%"))


def show_figure(out: widgets.Output, fig) -> None:
    """Replace what `out` shows with the plotly figure `fig`, safely from a worker thread.

    The figure goes out as plotly's MIME bundle (rendered by plotly's JupyterLab / Notebook 7 extension, offline)
    with an HTML fallback for Colab, set on the widget's `outputs` directly: no `FigureWidget` (plotly 6+ needs
    anywidget for it) and no `with out:` capture (which races across threads).
    """
    data = {
        "application/vnd.plotly.v1+json": fig.to_plotly_json(),
        "text/html": fig.to_html(include_plotlyjs="cdn", full_html=False),
        "text/plain": f"<plotly figure: {fig.layout.title.text or 'untitled'}>",
    }
    out.outputs = ({"output_type": "display_data", "data": _jsonable(data), "metadata": {}},)


def _jsonable(data: dict) -> dict:
    import json

    from plotly.utils import PlotlyJSONEncoder

    return json.loads(json.dumps(data, cls=PlotlyJSONEncoder))
