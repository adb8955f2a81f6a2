"""The Model panel's adapter management rows: add from a config, delete, merge/unmerge LoRA, average, save and
push to the Hub. Each row has its own hint (why a button cannot act) and ErrorBox right under it.

Everything that changes the model is refused while a run trains on it (`Session.run_in_progress()`), and deleting
asks first: a run must never continue on weights that changed under it.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable

import ipywidgets as widgets

from .common import Confirm, busy, guarded, start_worker
from .controls import ControlRow, change_refused, check_change_allowed
from .session import Session


def is_lora(config) -> bool:
    """Whether an adapter's config is of the LoRA family (LoRA, (IA)^3, DoRA, VeRA...): those can be merged."""
    from workbench import LoRAConfig

    return isinstance(config, LoRAConfig)


def parse_weights(text: str) -> list[str] | dict[str, float]:
    """ "a, b" (equal weights) or "a=0.7, b=0.3" -> what `average_adapter` takes; errors name the bad item."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    if len(items) < 2:
        raise ValueError(f"adapters to average: name at least two, e.g. 'a, b' or 'a=0.7, b=0.3' (got {text!r})")
    if not any("=" in item for item in items):
        return items
    weights = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(
                f"adapters to average: weight {value.strip()!r} of {name.strip()!r} is not a number"
            ) from None
    return weights


class AdapterActions(widgets.VBox):
    """Add, delete, merge, average, save and push the model's adapters; `selected()` gives the adapter picked in
    the panel's list; each row says what its last action did right under it."""

    def __init__(self, session: Session, selected: Callable[[], str | None]):
        from workbench.core.merging import STRATEGIES

        self.session, self.selected = session, selected
        self.merged: str | None = None  # the adapter merged from this panel (code may merge others)
        self.pusher: threading.Thread | None = None
        wide = widgets.Layout(width="16em")

        self.new_name = widgets.Text(placeholder="new adapter name", layout=widgets.Layout(width="12em"))
        self.new_config = widgets.Text(value="seq_bn", placeholder="config, e.g. lora or seq_bn[reduction_factor=8]")
        self.new_config.layout = wide
        self.add_button = widgets.Button(description="Add adapter", icon="plus")
        self.add_row = ControlRow([self.new_name, self.new_config, self.add_button], "wb-model-add-row", label="Add")
        self.add_button.on_click(guarded(self.add_row.error, "adding the adapter")(lambda _: self.add()))

        self.delete_button = widgets.Button(description="Delete adapter", icon="trash")
        self.delete_confirm = Confirm()
        self.delete_row = ControlRow(
            [self.delete_button], "wb-model-delete-row", below=[self.delete_confirm], label="Delete"
        )
        self.delete_button.on_click(guarded(self.delete_row.error, "deleting the adapter")(lambda _: self.delete()))

        self.merge_button = widgets.Button(description="Merge LoRA", icon="compress")
        self.unmerge_button = widgets.Button(description="Unmerge", icon="expand")
        self.merge_row = ControlRow([self.merge_button, self.unmerge_button], "wb-model-merge-row", label="LoRA")
        self.merge_button.on_click(guarded(self.merge_row.error, "merging")(lambda _: self.merge()))
        self.unmerge_button.on_click(guarded(self.merge_row.error, "unmerging")(lambda _: self.unmerge()))

        self.average_of = widgets.Text(placeholder="a, b  or  a=0.7, b=0.3", layout=wide)
        self.average_name = widgets.Text(placeholder="name of the average", layout=widgets.Layout(width="12em"))
        self.average_strategy = widgets.Dropdown(
            options=STRATEGIES, value="linear", layout=widgets.Layout(width="14em")
        )
        self.average_button = widgets.Button(description="Average", icon="balance-scale")
        self.average_row = ControlRow(
            [self.average_of, self.average_strategy, self.average_name, self.average_button],
            "wb-model-average-row",
            label="Average",
        )
        self.average_button.on_click(guarded(self.average_row.error, "averaging")(lambda _: self.average()))

        self.save_folder = widgets.Text(placeholder="folder to save the selected adapter to", layout=wide)
        self.save_button = widgets.Button(description="Save adapter", icon="save")
        self.save_row = ControlRow([self.save_folder, self.save_button], "wb-model-save-row", label="Save")
        self.save_button.on_click(guarded(self.save_row.error, "saving")(lambda _: self.save()))

        self.repo_id = widgets.Text(placeholder="Hub repo, e.g. your-name/bert-sst2", layout=wide)
        self.private = widgets.Checkbox(value=False, description="private", indent=False)
        self.private.layout.width = "6em"
        self.token = widgets.Password(placeholder="token (default: HF_TOKEN or hf auth login)")
        self.token.layout = wide
        self.push_button = widgets.Button(description="Push to Hub", icon="cloud-upload")
        self.push_row = ControlRow(
            [self.repo_id, self.private, self.token, self.push_button], "wb-model-push-row", label="Push"
        )
        self.push_button.on_click(guarded(self.push_row.error, "pushing to the Hub")(lambda _: self.push()))

        for widget, name in (
            (self.new_name, "new-name"),
            (self.new_config, "new-config"),
            (self.add_button, "add"),
            (self.delete_button, "delete"),
            (self.merge_button, "merge"),
            (self.unmerge_button, "unmerge"),
            (self.average_of, "average-of"),
            (self.average_name, "average-name"),
            (self.average_button, "average"),
            (self.save_folder, "save-folder"),
            (self.save_button, "save"),
            (self.repo_id, "repo-id"),
            (self.token, "token"),
            (self.push_button, "push"),
        ):
            widget.add_class(f"wb-model-{name}")
        self.delete_confirm.add_class("wb-model-delete-confirm")
        self.rows = (self.add_row, self.delete_row, self.merge_row, self.average_row, self.save_row, self.push_row)
        super().__init__(
            [
                widgets.HTML("<b>Manage adapters</b> (the selected adapter above)"),
                self.add_row,
                self.delete_row,
                self.merge_row,
                self.average_row,
                self.save_row,
                self.push_row,
            ]
        )

    # --- actions (each also callable from code) ---------------------------------------------------------

    def add(self, name: str | None = None, config: str | None = None) -> str:
        """Add a fresh adapter `name` from a config string ("lora", "seq_bn[reduction_factor=8]")."""
        model = self._model_to_change()
        name = (name if name is not None else self.new_name.value).strip()
        config = (config if config is not None else self.new_config.value).strip()
        if not name:
            raise ValueError("name: give the new adapter a name")
        if not config:
            raise ValueError("config: give a config, e.g. lora or seq_bn[reduction_factor=8]")
        model.add_adapter(name, config=config)
        self._done(self.add_row, f"Added adapter {_q(name)} ({html.escape(config)})")
        return name

    def delete(self, name: str | None = None, confirmed: bool = False) -> bool:
        """Delete adapter `name` (its fusions go with it) after a confirmation; True once deleted."""
        model = self._model_to_change()
        name = name or self.selected()
        if not name:
            raise ValueError("select an adapter to delete")
        if name not in model.adapters:
            raise ValueError(f"no adapter {name!r} on the model")
        if not confirmed:
            fusions = [f for f, names in model.adapter_fusions.items() if name in names]
            extra = f" and the fusion layer(s) {', '.join(fusions)}" if fusions else ""
            self.delete_confirm.ask(
                f"Delete adapter {name!r}{extra}? Its weights are lost unless saved.",
                guarded(self.delete_row.error, "deleting the adapter")(lambda: self.delete(name, confirmed=True)),
                "Delete",
            )
            return False
        model.delete_adapter(name)
        self._done(self.delete_row, f"Deleted adapter {_q(name)}")
        return True

    def merge(self, name: str | None = None) -> None:
        """Merge LoRA-family adapter `name` into the base weights (`Unmerge` restores them exactly)."""
        model = self._model_to_change()
        name = name or self.selected()
        reason = self._merge_refused(model, name)
        if reason:
            raise ValueError(reason)
        model.merge_adapter(name)
        self.merged = name
        self._done(self.merge_row, f"Merged {_q(name)} into the base weights (Unmerge restores them)")

    def unmerge(self) -> None:
        """Restore the base weights of a merged LoRA adapter (`reset_adapter`)."""
        self._model_to_change().reset_adapter()
        what = f"Unmerged {_q(self.merged)}" if self.merged else "Reset (reset_adapter)"
        self.merged = None
        self._done(self.merge_row, f"{what}: the base weights are exactly as before any merge")

    def average(self, name: str | None = None, adapters: str | None = None, strategy: str | None = None) -> str:
        """Add adapter `name` averaging the weights of `adapters` ("a, b" or "a=0.7, b=0.3")."""
        model = self._model_to_change()
        name = (name if name is not None else self.average_name.value).strip()
        spec = parse_weights(adapters if adapters is not None else self.average_of.value)
        if not name:
            raise ValueError("name: give the averaged adapter a name")
        model.average_adapter(name, spec, combine_strategy=strategy or self.average_strategy.value)
        parts = ", ".join(spec) if isinstance(spec, list) else ", ".join(f"{k}={v:g}" for k, v in spec.items())
        self._done(self.average_row, f"Added {_q(name)}: the average of {html.escape(parts)}")
        return name

    def save(self, name: str | None = None, folder: str | None = None) -> str:
        """Save adapter `name` (with its head, if it has one) in the AdapterHub format."""
        model = self._model()
        name = name or self.selected()
        if not name:
            raise ValueError("select an adapter to save")
        folder = (folder or self.save_folder.value or "").strip()
        if not folder:
            raise ValueError("folder: give a folder to save the adapter to")
        model.save_adapter(folder, name)
        self.save_row.say(f"Saved adapter {_q(name)} to {html.escape(folder)}")
        return folder

    def push(self, name: str | None = None, repo_id: str | None = None) -> threading.Thread:
        """Push adapter `name` (and its head) to the Hub repo `repo_id` in a worker thread; the token is the one
        typed, else huggingface_hub's (HF_TOKEN or a saved login)."""
        model = self._model()
        name = name or self.selected()
        repo_id = (repo_id if repo_id is not None else self.repo_id.value).strip()
        if not name:
            raise ValueError("select an adapter to push")
        if not repo_id:
            raise ValueError("repo: give a Hub repo id, e.g. your-name/bert-sst2")
        if self.pusher is not None and self.pusher.is_alive():
            raise RuntimeError("a push is still running; wait for it to finish")
        token = self.token.value.strip() or None
        private = self.private.value

        def work():
            with busy(self.push_button, "Pushing..."):
                try:
                    commit = model.push_adapter_to_hub(repo_id, name, private=private, token=token)
                except Exception as err:  # HubPushError names the repo and the reason
                    self.push_row.error.show(err, f"pushing {name!r} to {repo_id}")
                    return
            url = html.escape(str(commit))
            self.push_row.say(
                f'Pushed {_q(name)} to {html.escape(repo_id)} (<a href="{url}" target="_blank">commit</a>)'
            )

        self.push_row.error.clear()
        self.push_row.say(f"Pushing {_q(name)} to {html.escape(repo_id)} ...")
        self.pusher = start_worker(work, "workbench-push")
        return self.pusher

    # --- state ------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Enable what can act now; every disabled button says why."""
        model = self.session.model
        name = self.selected()
        changing = "no model loaded" if model is None else change_refused(self.session)
        picked = None if name else "select an adapter first"
        self.add_row.explain({self.add_button: changing})
        self.delete_row.explain({self.delete_button: changing or picked})
        loras = [n for n, c in (getattr(model, "adapters", {}) or {}).items() if is_lora(c)]
        self.merge_row.explain(
            {
                self.merge_button: changing or self._merge_refused(model, name),
                self.unmerge_button: changing or (None if loras else "Unmerge: no LoRA adapters on the model"),
            }
        )
        self.average_row.explain({self.average_button: changing})
        self.save_row.explain({self.save_button: "no model loaded" if model is None else picked})
        pushing = self.pusher is not None and self.pusher.is_alive()
        if not pushing:
            self.push_row.explain({self.push_button: "no model loaded" if model is None else picked})
        if self.delete_confirm.asking and change_refused(self.session):
            self.delete_confirm.dismiss()

    @staticmethod
    def _merge_refused(model, name: str | None) -> str | None:
        if model is None:
            return "no model loaded"
        if not name:
            return "Merge: select a LoRA adapter first"
        config = model.adapters.get(name)
        if config is None:
            return f"Merge: no adapter {name!r} on the model"
        if not is_lora(config):
            return f"Merge: only LoRA adapters can be merged ({name!r} is {config.architecture or 'bottleneck'})"
        return None

    def _model(self):
        if self.session.model is None:
            raise ValueError("no model loaded: load a base model first")
        return self.session.model

    def _model_to_change(self):
        model = self._model()
        check_change_allowed(self.session)
        return model

    def _done(self, row: ControlRow, message: str) -> None:
        row.say(message)
        self.session.notify("adapters")


def _q(name: str) -> str:
    return html.escape(repr(name), quote=False)
