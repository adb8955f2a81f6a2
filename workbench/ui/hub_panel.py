"""`HubPanel`: search the Hub and the AdapterHub archive, read an adapter's card, load it, try it on text."""

from __future__ import annotations

import html
import json
import threading

import ipywidgets as widgets

from .common import (
    ErrorBox,
    StaticSummary,
    Throttle,
    explain_disabled,
    guarded,
    html_table,
    human_bytes,
    plain_message,
    set_busy,
    start_worker,
)
from .controls import check_change_allowed
from .hub_grid import Column, ResultsGrid
from .model_panel import base_model_source, family_label, load_base_model, model_label
from .session import Session, default_session

NUMERIC_SORTS = ("downloads", "likes", "size_bytes")
PAGE_SIZE = 12  # rows are made once (a widget per cell): more rows render slowly in a busy browser
BOTH, ANY = "both", "any"  # the dropdowns' "no filter" values (a None value would show as a blank dropdown)
SIZE_UNKNOWN = "unknown"
FETCHING = '<p class="wb-hub-fetching"><i class="fa fa-spinner fa-spin"></i> reading the details from the Hub ...</p>'


def _task(info) -> str:
    return "/".join(p for p in (info.task, info.subtask) if p)


def _number(value) -> str:
    return "" if value is None else f"{value:,}"


def _origin(info) -> str:
    """Where it is listed, and its file format when not AdapterHub's: "Hub", "Hub (peft)", "archive"."""
    where = {"hf": "Hub", "ah": "archive"}.get(info.source, info.source)
    return where if info.library == "adapters" else f"{where} ({info.library})"


COLUMNS = (
    Column("adapter", "19em", lambda i: i.adapter_id, "adapter_id", tail=True),
    Column("base model", "9em", lambda i: i.model_name or "", "model_name", tail=True),
    Column("family", "4.5em", lambda i: i.model_type or "", "model_type"),
    Column("task", "7.5em", _task, "task"),
    Column("method", "6.5em", lambda i: i.method or "?", "method"),
    Column("from", "6.5em", _origin),
    Column("downloads", "8.5em", lambda i: _number(i.downloads), "downloads"),
    Column("likes", "4em", lambda i: _number(i.likes), "likes"),
    Column("size", "5.5em", lambda i: human_bytes(i.size_bytes) if i.size_bytes else SIZE_UNKNOWN, "size_bytes"),
)


def load_code(info, base: str | None = None) -> str:
    """The Python that loads this adapter, for the card's copyable snippet: onto its own base model (a Hub id, so
    the snippet runs anywhere), else onto `base`."""
    base = info.model_name or base or "bert-base-uncased"
    source = "ah" if info.source == "ah" else "hf"
    return (
        "from workbench import AutoAdapterModel\n\n"
        f"model = AutoAdapterModel.from_pretrained({base!r})\n"
        f"adapter_name = model.load_adapter({info.adapter_id!r}, source={source!r}, set_active=True)\n"
    )


def on_enter(text: widgets.Text, action) -> None:
    """Run `action()` when Enter is pressed in `text` (the frontend's "submit" event; ipywidgets 8 deprecated
    `on_submit` but still sends the event, and a value observer would also fire on every blur)."""

    def handle(_widget, content, _buffers):
        if isinstance(content, dict) and content.get("event") == "submit":
            action()

    text.on_msg(handle)


class HubPanel(widgets.VBox):
    """Search, sort and filter adapters in one clickable grid; the selected adapter's card; Load (with progress)
    and "Try it". Each action row has its own error line right below it.

    After a load, `panel.loaded_name` is the adapter's name on `panel.session.model`.
    """

    def __init__(self, session: Session | None = None, model=None, tokenizer=None):
        self.session = session or default_session()
        if model is not None:
            self.session.set_model(model, tokenizer, getattr(model.config, "name_or_path", None) or None)
        self.search_error, self.load_error, self.try_error = ErrorBox(), ErrorBox(), ErrorBox()
        self.results = None  # the last `SearchResults`
        self._searches = 0  # searches started: a slower earlier one must not overwrite a later one's results
        self.selected = None  # the `AdapterInfo` shown in the card
        self.loaded_name: str | None = None
        self.prediction = None  # the last "Try it" `Prediction`
        self.workers: list[threading.Thread] = []
        self.loaded_ids: dict[str, tuple[int, str]] = {}  # adapter id -> (id of the model, adapter name)
        self.sort_key, self.descending = "downloads", True
        self.static = StaticSummary()
        self._build()
        super().__init__(self._layout())
        self.add_class("wb-hub")
        self.session.on_change(self._session_changed)

    @property
    def error(self) -> ErrorBox:
        """The error line that shows a message now (the search's when none does)."""
        shown = [box for box in (self.search_error, self.load_error, self.try_error) if box.text]
        return shown[0] if shown else self.search_error

    # --- widgets -------------------------------------------------------------------------------------

    def _build(self) -> None:
        from workbench.core.support import model_families

        self.search_text = widgets.Text(placeholder="search adapters, e.g. sst-2 or sentiment; Enter searches")
        self.search_text.layout = widgets.Layout(width="30em")
        self.search_button = widgets.Button(description="Search", icon="search", button_style="primary")
        self.search_text.add_class("wb-hub-search")
        self.search_button.add_class("wb-hub-search-button")
        self.search_button.on_click(lambda _: self._search_clicked())

        narrow = widgets.Layout(width="15em")
        self.source = widgets.Dropdown(
            options=[("both sources", BOTH), ("Hugging Face Hub", "hf"), ("AdapterHub archive", "ah")],
            value=BOTH,
            description="Source",
            layout=narrow,
        )
        self.library = widgets.Dropdown(options=["all", "adapters", "peft"], value="all", description="Library")
        self.library.layout = narrow
        self.model_filter = widgets.Text(placeholder="base model id", description="Model", layout=narrow)
        # the families the engine has a spec for, from its registry: a family added there is offered here too
        self.family_filter = widgets.Dropdown(
            options=[("any family", ANY), *model_families()], value=ANY, description="Family", layout=narrow
        )
        self.task_filter = widgets.Text(placeholder="e.g. sentiment", description="Task", layout=narrow)
        self.method_filter = widgets.Text(placeholder="e.g. lora", description="Method", layout=narrow)
        for name, widget in (
            ("source", self.source),
            ("library", self.library),
            ("model", self.model_filter),
            ("family", self.family_filter),
            ("task", self.task_filter),
            ("method", self.method_filter),
        ):
            widget.add_class(f"wb-hub-{name}")
        for text in (self.search_text, self.model_filter, self.task_filter, self.method_filter):
            on_enter(text, self._search_clicked)

        self.offline = widgets.HTML(layout=widgets.Layout(display="none"))
        self.offline.add_class("wb-hub-offline")
        self.count = widgets.HTML()
        self.count.add_class("wb-hub-count")
        self.grid = ResultsGrid(list(COLUMNS), PAGE_SIZE, self._row_selected, self._sort_chosen, NUMERIC_SORTS)
        self.grid.add_class("wb-hub-results")
        self.grid.layout = widgets.Layout(overflow="auto", width="100%")
        self.prev_button = widgets.Button(description="Previous", icon="chevron-left", disabled=True)
        self.next_button = widgets.Button(description="Next", icon="chevron-right", disabled=True)
        self.page_error = ErrorBox()
        self.prev_button.on_click(lambda _: self._search_clicked(self._page() - 1, self.page_error, self.prev_button))
        self.next_button.on_click(lambda _: self._search_clicked(self._page() + 1, self.page_error, self.next_button))

        self.card = widgets.HTML("<i>Select an adapter in the results to see its card.</i>")
        self.card.add_class("wb-hub-card")
        self.code = widgets.Textarea(layout=widgets.Layout(width="100%", height="6em"))
        self.code.add_class("wb-hub-code")
        self.load_button = widgets.Button(description="Load", icon="download", button_style="success")
        self.load_button.add_class("wb-hub-load")
        self.load_hint = widgets.HTML()
        self.load_button.on_click(guarded(self.load_error, "loading the adapter")(lambda _: self.load()))
        explain_disabled(self.load_button, "select an adapter in the results first", self.load_hint)
        self.progress = widgets.FloatProgress(
            value=0.0, min=0.0, max=1.0, description="Download", style={"description_width": "initial"}
        )
        self.progress.add_class("wb-hub-progress")
        self.status = widgets.HTML()
        self.status.add_class("wb-hub-status")
        self.try_text = widgets.Text(placeholder="type a sentence to try the loaded adapter on; Enter runs it")
        self.try_text.layout = widgets.Layout(width="30em")
        self.try_button = widgets.Button(description="Try it", icon="play")
        self.try_hint = widgets.HTML()
        self.try_output = widgets.HTML()
        self.try_text.add_class("wb-hub-try-text")
        self.try_button.add_class("wb-hub-try-button")
        self.try_output.add_class("wb-hub-try-output")
        self.try_button.on_click(lambda _: self._try_clicked())
        on_enter(self.try_text, self._try_clicked)
        explain_disabled(self.try_button, "load an adapter first", self.try_hint)
        self.details = widgets.VBox(
            [
                self.card,
                widgets.HTML("<b>Load it from code</b>"),
                self.code,
                widgets.HBox([self.load_button, self.progress, self.load_hint]),
                self.load_error,
                self.status,
                widgets.HTML("<b>Try it</b>"),
                widgets.HBox([self.try_text, self.try_button, self.try_hint]),
                self.try_error,
                self.try_output,
            ],
            layout=widgets.Layout(border="1px solid #ddd", padding="6px"),
        )
        self.details.add_class("wb-hub-details")

    def _layout(self) -> list:
        return [
            widgets.HBox([self.search_text, self.search_button]),
            self.search_error,
            widgets.HBox([self.source, self.library, self.model_filter]),
            widgets.HBox([self.family_filter, self.task_filter, self.method_filter]),
            self.offline,
            self.count,
            self.grid,
            widgets.HBox([self.prev_button, self.next_button]),
            self.page_error,
            self.details,
        ]

    # --- searching -----------------------------------------------------------------------------------

    def _search_clicked(self, page: int = 1, box: ErrorBox | None = None, button=None) -> threading.Thread | None:
        box = box or self.search_error
        box.clear()
        try:
            return self.search(page, box, button)
        except Exception as err:
            box.show(err, "search")
            return None

    def search(self, page: int = 1, box: ErrorBox | None = None, button=None) -> threading.Thread:
        """Search with the current text, filters and sort, in a worker thread; fills the grid. Errors go to `box`
        (the line under the control that asked), the button that asked spins meanwhile."""
        box = box or self.search_error
        button = button or self.search_button
        query = {
            "text": self.search_text.value.strip() or None,
            "model_name": self.model_filter.value.strip() or None,
            "model_type": None if self.family_filter.value == ANY else self.family_filter.value,
            "task": self.task_filter.value.strip() or None,
            "method": self.method_filter.value.strip() or None,
            "library": self.library.value,
            "source": None if self.source.value == BOTH else self.source.value,
            "sort": self.sort_key,
            "descending": self.descending,
            "page": max(1, page),
            "page_size": PAGE_SIZE,
        }
        set_busy(button, True, "Searching...")
        self.count.value = "<i>Searching ...</i>"
        self._searches += 1
        generation = self._searches  # only the latest search fills the grid, whichever answers last

        def work():
            import warnings

            from workbench import search_adapters

            try:
                with warnings.catch_warnings():  # the notice says it in the panel instead
                    warnings.simplefilter("ignore")
                    results = search_adapters(**query)
                if generation == self._searches:
                    self._show_results(results)
            except Exception as err:
                if generation == self._searches:
                    self.count.value = ""
                    box.show(err, "search")
            finally:
                set_busy(button, False)

        return self._start(work, "workbench-hub-search")

    def _show_results(self, results) -> None:
        self.results = results
        notice = results.notice  # set only when the Hub failed or offline mode is on: the cache answered instead
        self.offline.value = (
            f'<div style="background:#fff4ce;padding:4px 8px;border-left:4px solid #f0ad00">'
            f"<b>Showing cached results</b>: {html.escape(notice)}</div>"
            if notice
            else ""
        )
        self.offline.layout.display = "block" if notice else "none"
        first = (results.page - 1) * results.page_size
        shown = f"{first + 1}-{first + len(results)}" if len(results) else "0"
        self.count.value = f"{shown} of {results.total} adapters, page {results.page} of {results.pages}"
        unsortable = {} if results.has_sizes else {"size_bytes": "sizes are unknown for these results"}
        chosen = self.selected.adapter_id if self.selected is not None else None
        on_page = next((i for i, info in enumerate(results.items) if info.adapter_id == chosen), None)
        self.grid.show(results.items, self.sort_key, self.descending, unsortable, selected=on_page)
        self.prev_button.disabled = results.page <= 1
        self.next_button.disabled = results.page >= results.pages
        self.static.update(self.summary_html())

    def _page(self) -> int:
        return self.results.page if self.results is not None else 1

    def _sort_chosen(self, key: str, descending: bool) -> None:
        """A header was clicked: sort by it (the engine sorts every page, not only the one shown)."""
        self.sort_key, self.descending = key, descending
        if self.results is not None:
            self._search_clicked(1, self.search_error)  # Search spins (the header's arrow is redrawn after)

    def _row_selected(self, index: int) -> None:
        if self.results is not None and index < len(self.results.items):
            self.select(self.results.items[index])

    # --- the card ------------------------------------------------------------------------------------

    def select(self, info) -> threading.Thread | None:
        """Show `info`'s card now, then its full details (config, files with sizes) from the Hub."""
        self.selected = info
        self._show_card(info)
        self.card.value += FETCHING
        if not self.load_button.description.startswith("Loading"):
            explain_disabled(self.load_button, None, self.load_hint)
        self.progress.value = 0.0

        def work():
            from workbench import get_adapter_info

            try:
                full = get_adapter_info(info.adapter_id, source=info.source)
            except Exception as err:  # the listing's card stays; say what is missing
                if self.selected is info:
                    self._show_card(info)
                    self.card.value += f"<p><i>Full details unavailable: {html.escape(plain_message(err))}</i></p>"
                return
            if self.selected is info:
                for field in ("adapter_config", "files", "size_bytes", "tags", "method", "model_name", "model_type"):
                    if getattr(full, field):  # the details know more (file sizes, the config)
                        setattr(info, field, getattr(full, field))
                self._show_card(info)

        return self._start(work, "workbench-hub-details")

    def _show_card(self, info) -> None:
        facts = {
            "id": info.adapter_id,
            "base model": info.model_name or "?",
            "family": family_label(info.model_type),
            "task": "/".join(p for p in (info.task, info.subtask) if p) or "?",
            "method": info.method or "? (not in the listing)",
            "library": info.library,
            "source": {"ah": "AdapterHub archive", "hf": "Hugging Face Hub"}.get(info.source, info.source),
            "downloads": info.downloads if info.downloads is not None else "?",
            "likes": info.likes if info.likes is not None else "?",
            "size": human_bytes(info.size_bytes) if info.size_bytes else SIZE_UNKNOWN,
        }
        if info.hf_repo and info.hf_repo != info.adapter_id:
            facts["files from"] = info.hf_repo
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
        tags = " ".join(f"<code>{html.escape(t)}</code>" for t in info.tags) or "<i>none</i>"
        files = (
            html_table([{"file": n, "size": human_bytes(s) if s else "?"} for n, s in sorted(info.files.items())])
            if info.files
            else "<i>not listed</i>"
        )
        config = json.dumps(info.adapter_config, indent=1) if info.adapter_config else "not listed"
        self.card.value = (
            f"<h4>{html.escape(info.adapter_id)}</h4><table>{rows}</table>"
            f"<p><b>Tags</b>: {tags}</p><details><summary><b>Files</b></summary>{files}</details>"
            f"<details><summary><b>Config</b></summary><pre>{html.escape(config)}</pre></details>"
        )
        self.code.value = load_code(info, self.session.source if self.session.model is not None else None)

    # --- loading -------------------------------------------------------------------------------------

    def load(self) -> threading.Thread:
        """Download the selected adapter and load it onto the session's model (loading a base model first when the
        session has none: the installed MiniLM for MiniLM adapters, else the adapter's base model from the Hub)."""
        info = self.selected
        if info is None:
            raise ValueError("select an adapter in the results first")
        check_change_allowed(self.session)  # loading onto a model a run trains on would change that run
        set_busy(self.load_button, True, "Loading...")
        explain_disabled(self.try_button, "wait until the adapter is loaded", self.try_hint)
        self.progress.value = 0.0
        self.progress.bar_style = ""
        latest = {}
        throttle = Throttle(lambda: self._show_progress(latest.get("progress")), interval=0.3)

        def report(progress) -> None:
            latest["progress"] = progress
            throttle()

        def work():
            try:
                check_change_allowed(self.session)  # again in the worker: a run may have started since the click
                if self.session.model is None:
                    source = base_model_source(info.model_name)
                    self.status.value = f"No model in the session: loading its base model {_text(source)} ..."
                    model, tokenizer = load_base_model(source)
                    self.session.set_model(model, tokenizer, source)
                model, target = self.session.model, model_label(self.session)
                earlier = self.loaded_ids.get(info.adapter_id)
                if earlier and earlier[0] == id(model) and earlier[1] in model.adapters:
                    name, how = earlier[1], "it was already on"
                    model.set_active_adapters(name)
                else:
                    self.status.value = f"Downloading {_text(info.adapter_id)} ..."
                    check_change_allowed(self.session)
                    name = model.load_adapter(
                        info.adapter_id,
                        source=info.source,
                        model_name=info.model_name,
                        progress=report,
                        set_active=True,
                    )
                    how = "onto"
                    throttle.flush()
                self.loaded_ids[info.adapter_id] = (id(model), name)
                self.progress.value, self.progress.bar_style = 1.0, "success"
                self.loaded_name = name
                self.session.notify("adapters")
                where = f"{how} {_text(target)}" if how == "onto" else f"({how} {_text(target)})"
                self.status.value = f"Loaded adapter {_text(repr(name))} {where}, now active."
                self.static.update(self.summary_html())
            except Exception as err:
                self.progress.bar_style = "danger"
                self.status.value = "Loading failed."
                self.load_error.show(err, f"loading {info.adapter_id}")
            finally:
                set_busy(self.load_button, False)
                explain_disabled(self.try_button, None if self.loaded_name else "load an adapter first", self.try_hint)

        return self._start(work, "workbench-hub-load")

    def _session_changed(self, what: str) -> None:
        model = self.session.model
        if self.loaded_name and self.loaded_name not in getattr(model, "adapters", {}):
            self.loaded_name = None  # that adapter went with the model it was loaded onto
            explain_disabled(self.try_button, "load an adapter first", self.try_hint)
        if what == "model" and self.selected is not None:
            self.code.value = load_code(self.selected, self.session.source if model is not None else None)

    def _show_progress(self, progress) -> None:
        if progress is not None:
            self.progress.value = progress.fraction
            if progress.bytes_total:
                done, total = human_bytes(progress.bytes_done), human_bytes(progress.bytes_total)
                self.progress.description = f"{done} / {total}"

    # --- trying --------------------------------------------------------------------------------------

    def try_it(self, text: str):
        """Run the loaded adapter (with its head) on `text`; show the labels with scores and the head's labels."""
        from workbench.analysis import predict

        if not self.loaded_name or self.session.model is None:
            raise ValueError("load an adapter first")
        if self.session.tokenizer is None:
            raise ValueError("the session's model has no tokenizer: load the base model in the Model panel")
        if not text.strip():
            raise ValueError("type a text to try the adapter on")
        model, name = self.session.model, self.loaded_name
        prediction = predict(model, self.session.tokenizer, [text], setup=name)[0]
        self.prediction = prediction
        self.try_output.value = _prediction_html(prediction, _label_mapping(model, name))
        self.static.update(self.summary_html())
        return prediction

    def _try_clicked(self) -> threading.Thread | None:
        """The button (or Enter): run `try_it` in a worker, the button spinning, errors on the line below."""
        self.try_error.clear()
        if self.try_button.disabled and not self.loaded_name:
            self.try_error.show(ValueError("load an adapter first"), "trying the adapter")
            return None
        text = self.try_text.value
        set_busy(self.try_button, True, "Running...")

        def work():
            try:
                self.try_it(text)
            except Exception as err:
                self.try_error.show(err, "trying the adapter")
            finally:
                set_busy(self.try_button, False)

        return self._start(work, "workbench-hub-try")

    def _start(self, work, name: str) -> threading.Thread:
        thread = start_worker(work, name)
        self.workers = [t for t in self.workers if t.is_alive()] + [thread]
        return thread

    def _ipython_display_(self) -> None:
        """Show the panel and, below it, the static summary that a saved notebook keeps."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self.static.display()

    def summary_html(self) -> str:
        """A static summary: the last search and the loaded adapter (for a saved notebook)."""
        parts = ["<h4>Hub</h4>"]
        if self.results is not None:  # folded: below the live grid it would show every result twice
            table = html_table([_row(i) for i in self.results.items])
            parts.append(f"<details><summary>Search results: {self.count.value}</summary>{table}</details>")
        if self.loaded_name:
            parts.append(f"<p>{self.status.value}</p>")
        if self.prediction is not None:
            parts.append(self.try_output.value)
        return "".join(parts) if len(parts) > 1 else "<h4>Hub</h4><p><i>no search yet</i></p>"


def _text(value: str) -> str:
    """Escaped for HTML, quotes kept as they are (status lines read as plain text)."""
    return html.escape(value, quote=False)


def _row(info) -> dict:
    return {column.title: column.text(info) for column in COLUMNS}


def _label_mapping(model, name: str) -> dict:
    heads = getattr(model, "heads", {})
    head = heads[name] if name in heads else None
    return dict(head.id2label or {}) if head is not None else {}


def _prediction_html(prediction, mapping: dict) -> str:
    parts = [f"<p><b>{html.escape(prediction.summary)}</b></p>"]
    if prediction.scores:
        rows = [{"label": label, "score": f"{score:.3f}"} for label, score in prediction.scores.items()]
        parts.append(html_table(sorted(rows, key=lambda r: r["score"], reverse=True), ["label", "score"]))
    if mapping:
        pairs = ", ".join(f"{i} &rarr; {html.escape(str(label))}" for i, label in sorted(mapping.items()))
        parts.append(f"<p>Head's label mapping (id2label): {pairs}</p>")
    else:
        parts.append("<p><i>This adapter has no prediction head with labels.</i></p>")
    return "".join(parts)
