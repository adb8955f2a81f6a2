"""`Workbench()`: the Hub, Model, Compare, Train and Fusion panels in tabs, sharing one `Session`."""

from __future__ import annotations

import html
import importlib

import ipywidgets as widgets

from .common import ErrorBox, StaticSummary
from .session import Session, default_session

TITLE_ADAPTERS = 4  # adapter names shown in the title before "..."
# tab title, module in workbench.ui, panel class
TABS = (
    ("Hub", "hub_panel", "HubPanel"),
    ("Model", "model_panel", "ModelPanel"),
    ("Compare", "compare_panel", "ComparePanel"),
    ("Train", "train_panel", "TrainPanel"),
    ("Fusion", "fusion_panel", "FusionPanel"),
)


class Workbench(widgets.VBox):
    """A title bar and a `Tab` of the panels. A tab's panel is built the first time the tab is shown, so opening
    the workbench is quick; `workbench.panel("Train")` builds and returns one from code.

    `Workbench(model=m, tokenizer=t)` puts `m` into the session; without a session it uses the kernel's
    `default_session()`, so re-running the cell finds the same model and the run in progress.
    """

    def __init__(self, session: Session | None = None, model=None, tokenizer=None, tab: str = "Hub"):
        self.session = session or default_session()
        if model is not None:
            self.session.set_model(model, tokenizer, getattr(model.config, "name_or_path", None) or None)
        self.error = ErrorBox()
        self.panels: dict[str, widgets.Widget] = {}
        self.static = StaticSummary()
        self.title = widgets.HTML()
        self.title.add_class("wb-title")
        self.tabs = widgets.Tab(children=[widgets.VBox() for _ in TABS])
        self.tabs.titles = [title for title, _, _ in TABS]
        self.tabs.add_class("wb-tabs")
        self.tabs.observe(self._tab_selected, "selected_index")
        super().__init__([self.title, self.error, self.tabs])
        self.add_class("wb-workbench")
        self.session.on_change(self._session_changed)
        self._update_title()
        self.show(tab)

    def show(self, title: str) -> widgets.Widget:
        """Switch to the tab `title` (building its panel if needed) and return its panel."""
        index = self._index(title)
        panel = self.panel(title)
        self.tabs.selected_index = index
        return panel

    def panel(self, title: str) -> widgets.Widget:
        """The panel of tab `title`, built on first use (a placeholder that says why, if it cannot be built)."""
        index = self._index(title)
        if title not in self.panels:
            panel = self.panels[title] = self._build(index)
            self.tabs.children[index].children = [panel]
            for value in vars(panel).values():  # a panel's finished results refresh the workbench's summary
                if isinstance(value, StaticSummary):
                    value.listeners.append(lambda _markup: self.refresh_summary())
        return self.panels[title]

    def _build(self, index: int) -> widgets.Widget:
        title, module_name, class_name = TABS[index]
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
            panel_class = getattr(module, class_name)
        except (ImportError, AttributeError) as err:
            return _unavailable(title, f"{class_name} is not available in this version ({err})")
        try:
            return panel_class(self.session)
        except Exception as err:  # one readable message, details on demand
            box = ErrorBox()
            box.show(err, f"opening the {title} panel")
            return box

    def _tab_selected(self, change) -> None:
        index = change["new"]
        if index is not None:
            self.panel(TABS[index][0])

    def _index(self, title: str) -> int:
        titles = [t for t, _, _ in TABS]
        if title not in titles:
            raise ValueError(f"no tab {title!r}; tabs: {', '.join(titles)}")
        return titles.index(title)

    def _update_title(self) -> None:
        """The truth in one line: the model, its adapters, the active setup, and a run only while it trains."""
        from .model_compose import expression
        from .model_panel import model_label

        model = self.session.model
        adapters = list(getattr(model, "adapters", {}) or {}) if model is not None else []
        shown = ", ".join(adapters[:TITLE_ADAPTERS]) + (", ..." if len(adapters) > TITLE_ADAPTERS else "")
        active = getattr(model, "active_adapters", None) if model is not None else None
        setup = f" &middot; active: <code>{html.escape(expression(active))}</code>" if active is not None else ""
        run = self.session.run_in_progress()
        running = f" &middot; <b>{run.kind} run in progress</b>" if run is not None else ""
        self.title.value = (
            f'<div style="font-size:1.2em"><b>Adapter Workbench</b></div>'
            f'<div style="color:#555">Model: {html.escape(model_label(self.session))}'
            f" &middot; adapters: {len(adapters)}{f' ({html.escape(shown)})' if adapters else ''}{setup}"
            f" &middot; runs: {len(self.session.runs)}{running}</div>"
        )

    def _session_changed(self, _what: str) -> None:
        self._update_title()
        self.refresh_summary()

    def refresh_summary(self) -> None:
        """Re-write the static summary below the workbench (what a saved notebook shows without widgets)."""
        self.static.update(self.summary_html())

    def _ipython_display_(self) -> None:
        """Show the workbench and, below it, the static summary that a saved notebook keeps."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self.static.display()
        self.refresh_summary()

    def summary_html(self) -> str:
        """The static summaries of the panels built so far, one section each."""
        parts = [self.title.value]
        for title, panel in self.panels.items():
            if hasattr(panel, "summary_html"):
                markup = panel.summary_html()
                heading = f"<h4>{html.escape(title)}</h4>"
                parts.append(markup if heading in markup else heading + markup)
        return "".join(parts)


def _unavailable(title: str, reason: str) -> widgets.HTML:
    placeholder = widgets.HTML(f"<p><i>The {html.escape(title)} panel is not available: {html.escape(reason)}</i></p>")
    placeholder.add_class("wb-unavailable")
    return placeholder
