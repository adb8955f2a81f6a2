"""The Model panel's composition row: adapters picked in CLICK order, a block kind with its parameters, the
resulting expression shown before it is activated, and an explicit "Add fusion layer" for a Fuse.

Order matters: `Stack("en", "sst-2")` runs the language adapter first (MAD-X); `Stack("sst-2", "en")` does not.
"""

from __future__ import annotations

import html
import json

import ipywidgets as widgets

from .common import guarded
from .controls import ControlRow, change_refused, check_change_allowed
from .session import Session

# block kind -> (its parameter, the field's placeholder, required); None: the block takes no parameter
KINDS = {
    "Stack": None,
    "Parallel": None,
    "Fuse": None,
    "Average": ("weights", "weights, e.g. 0.7, 0.3 (default: equal)", False),
    "BatchSplit": ("batch_sizes", "batch rows per adapter, e.g. 2 (each) or 2, 6", True),
    "Split": ("splits", "tokens per adapter, e.g. 64 (each) or 32, 96", True),
}


def expression(block) -> str:
    """A block as the code that builds it: `Stack("en", "sst-2")`, `BatchSplit("a", "b", batch_sizes=[2, 2])`."""
    if isinstance(block, str):
        return json.dumps(block)
    data = block.to_dict()
    args = [expression(child) for child in block.children]
    args += [f"{key}={json.dumps(value)}" for key, value in data.items() if key not in ("type", "children")]
    return f"{type(block).__name__}({', '.join(args)})"


def missing_fusions(model, block) -> list:
    """The Fuse blocks of `block` whose fusion layer is not on the model."""
    from workbench import Fuse

    def fuses(node) -> list:
        if isinstance(node, str):
            return []
        return ([node] if isinstance(node, Fuse) else []) + [f for child in node for f in fuses(child)]

    have = getattr(model, "adapter_fusions", {}) or {}
    return [fuse for fuse in fuses(block) if fuse.name not in have] if block is not None else []


def _numbers(text: str, field: str, integers: bool) -> list:
    values = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        try:
            values.append(int(item) if integers else float(item))
        except ValueError:
            kind = "a whole number" if integers else "a number"
            raise ValueError(f"{field}: {item!r} is not {kind}") from None
    return values


class ComposeRow(widgets.VBox):
    """Pick adapters by clicking them in order, choose the block, see the expression, activate it."""

    def __init__(self, session: Session):
        self.session = session
        self.order: list[str] = []  # picked adapters, in click order
        self._auto_text = ""  # the expression last written into the text field from the pickers
        self.kind = widgets.Dropdown(options=list(KINDS), value="Stack", description="Block")
        self.option = widgets.Text(layout=widgets.Layout(width="18em", display="none"))
        self.picks = widgets.HBox([])
        self.clear_button = widgets.Button(description="Clear", icon="eraser", layout=widgets.Layout(width="auto"))
        self.text = widgets.Text(
            placeholder='e.g. Stack("en", "sst-2") or Fuse(a, b)',
            description="Setup",
            layout=widgets.Layout(width="32em"),
        )
        self.preview = widgets.HTML()
        self.activate_button = widgets.Button(description="Activate setup", icon="layer-group")
        self.fusion_button = widgets.Button(
            description="Add fusion layer", icon="plus", button_style="warning", layout=widgets.Layout(display="none")
        )
        for widget, name in (
            (self.kind, "compose-kind"),
            (self.option, "compose-option"),
            (self.picks, "compose-picks"),
            (self.clear_button, "compose-clear"),
            (self.text, "compose-text"),
            (self.preview, "compose-preview"),
            (self.activate_button, "compose"),
            (self.fusion_button, "add-fusion"),
        ):
            widget.add_class(f"wb-model-{name}")
        self.row = ControlRow([self.text, self.activate_button, self.fusion_button], "wb-model-compose-row")
        self.kind.observe(self._kind_changed, "value")
        self.option.observe(self._changed, "value")
        self.text.observe(lambda _: self.refresh(), "value")
        self.clear_button.on_click(lambda _: self.clear())
        self.activate_button.on_click(guarded(self.row.error, "activating the setup")(lambda _: self.activate()))
        self.fusion_button.on_click(guarded(self.row.error, "adding the fusion layer")(lambda _: self.add_fusion()))
        super().__init__(
            [
                widgets.HTML("<b>Composition</b>: click adapters in the order they apply"),
                widgets.HBox([self.kind, self.option]),
                widgets.HBox([self.picks, self.clear_button]),
                self.preview,
                self.row,
            ]
        )

    # --- picking ----------------------------------------------------------------------------------------

    def set_adapters(self, names: list[str]) -> None:
        """One toggle button per adapter of the model; picks of adapters that are gone are dropped."""
        if [b.description for b in self.picks.children] == list(names):
            self.refresh()
            return
        self.order = [n for n in self.order if n in names]
        buttons = []
        for name in names:
            button = widgets.ToggleButton(
                value=name in self.order, description=name, layout=widgets.Layout(width="auto")
            )
            button.add_class("wb-model-pick")
            button.observe(lambda change, name=name: self._toggled(name, change["new"]), "value")
            buttons.append(button)
        self.picks.children = buttons
        self._changed(rewrite=False)  # a typed setup stays

    def pick(self, *names: str) -> None:
        """Click the adapters `names` in this order (as the toggle buttons do)."""
        for name in names:
            self.button(name).value = True

    def button(self, name: str) -> widgets.ToggleButton:
        for button in self.picks.children:
            if button.description == name:
                return button
        raise ValueError(f"no adapter {name!r} to pick")

    def clear(self) -> None:
        for button in self.picks.children:
            button.value = False
        self.order = []
        self._changed()

    def _toggled(self, name: str, on: bool) -> None:
        if on and name not in self.order:
            self.order.append(name)
        elif not on and name in self.order:
            self.order.remove(name)
        self._changed()

    def _kind_changed(self, _change=None) -> None:
        self.option.value = ""  # weights, batch sizes and split positions mean different things
        self._changed()

    def _changed(self, _change=None, rewrite: bool = True) -> None:
        """The pickers changed: the text shows their expression (a click on them replaces a typed setup)."""
        spec = KINDS[self.kind.value]
        self.option.layout.display = "none" if spec is None else "flex"
        self.option.placeholder = spec[1] if spec else ""
        try:
            built = expression(self.picked_block()) if self.order else ""
        except ValueError:
            built = self._auto_text  # keep the text; refresh() says what is wrong
        if rewrite or self.text.value in ("", self._auto_text):
            self._auto_text = built
            self.text.value = built
        self.refresh()

    def picked_block(self):
        """The block the pickers describe (None when no adapter is picked); ValueError names a bad parameter."""
        import workbench

        if not self.order:
            return None
        kind, spec = self.kind.value, KINDS[self.kind.value]
        options = {}
        if spec is not None:
            key, _, required = spec
            values = _numbers(self.option.value, key, integers=key != "weights")
            if values:
                options[key] = values if len(values) > 1 or key == "weights" else values[0]
            elif required:
                raise ValueError(f"{kind} needs {key}: {spec[1]}")
        try:
            return getattr(workbench, kind)(*self.order, **options)
        except Exception as err:
            raise ValueError(str(err)) from None

    def block(self):
        """What Activate would activate: the picked block while the text shows it, else the typed setup."""
        from workbench.analysis import as_setup

        text = self.text.value.strip()
        if self.order and text == self._auto_text:
            return self.picked_block()
        return as_setup(text) if text else None

    # --- actions ----------------------------------------------------------------------------------------

    def activate(self, setup=None):
        """Activate `setup` (default: what the row shows). A Fuse needs its fusion layer on the model first."""
        from workbench.analysis import as_setup

        model = self._model()
        check_change_allowed(self.session)
        block = as_setup(setup) if setup is not None else self.block()
        if block is None:
            raise ValueError("pick adapters (click them in order) or type a setup such as Stack(a, b)")
        missing = missing_fusions(model, block)
        if missing:
            names = ", ".join(repr(f.name) for f in missing)
            raise ValueError(
                f"{expression(block)} needs the fusion layer {names}, which is not on the model: "
                "click Add fusion layer (untrained) or train one in the Fusion panel"
            )
        model.set_active_adapters(block)
        self.row.say(f"Active: <code>{html.escape(expression(block))}</code>")
        self.session.notify("adapters")
        return block

    def add_fusion(self) -> list[str]:
        """Add the (untrained) fusion layers the setup needs; nothing is activated."""
        model = self._model()
        check_change_allowed(self.session)
        block = self.block()
        added = []
        for fuse in missing_fusions(model, block):
            model.add_adapter_fusion(fuse, name=fuse.name)
            added.append(fuse.name)
        if added:
            names = ", ".join(repr(n) for n in added)
            self.row.say(
                f"Added an untrained fusion layer {html.escape(names)}: train it in the Fusion panel, "
                "or activate it as it is"
            )
            self.session.notify("adapters")
        return added

    # --- state ------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        model = self.session.model
        block, problem = None, None
        try:
            block = self.block()
        except Exception as err:
            problem = f"Setup: {err}"
        if block is not None:
            self.preview.value = f"Will activate: <code>{html.escape(expression(block))}</code>"
        else:
            self.preview.value = ""
        missing = missing_fusions(model, block) if model is not None and block is not None else []
        self.fusion_button.layout.display = "flex" if missing else "none"
        if model is None:
            reason = "no model loaded"
        else:
            reason = change_refused(self.session) or problem
            if reason is None and block is None:
                reason = "Activate: select adapters first (click them in order) or type a setup"
            if reason is None and missing:
                names = ", ".join(repr(f.name) for f in missing)
                reason = f"Fuse: no fusion layer {names} on the model yet; add it first (it starts untrained)"
        self.row.explain({self.activate_button: reason, self.fusion_button: change_refused(self.session)})

    def _model(self):
        if self.session.model is None:
            raise ValueError("no model loaded: load a base model first")
        return self.session.model
