"""Adapter setups as AdapterHub saves them, and sharing adapters on the Hugging Face Hub.

A setup folder (`save_adapter_setup`) holds `adapter_setup.json` (the composition and the heads, in the `adapters`
library's JSON form) and one sub-folder per adapter, per fusion (named like the fusion, e.g. `a,b`) and per head,
so `adapters`' `load_adapter_setup` reads ours and the other way round. The `push_*_to_hub` methods hand over to the
uploader `workbench.hub` registers (`register_hub_pusher`): the engine itself never imports the hub.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from . import files
from .composition import BLOCKS, Block, Fuse, parse_composition
from .errors import AdapterConfigError, AdapterLoadError, AdapterNameError, CompositionError, HeadError
from .names import check_fusion_name, check_head_name, check_name

SETUP_FORMAT_VERSION = "adapters.1.3.0"

# Uploads a model's adapter or setup; `workbench.hub` registers one (see `register_hub_pusher`).
_HUB_PUSHER = None


def register_hub_pusher(pusher) -> None:
    """Set the function the `push_*_to_hub` methods call: `pusher(model, repo_id, *, adapter_name=None,
    adapter_setup=None, head_setup=None, **options)` -> the commit's `CommitInfo`."""
    global _HUB_PUSHER
    _HUB_PUSHER = pusher


def setup_to_dict(setup) -> dict:
    """A composition in the `adapters` library's JSON form: `{"type", "children": [...], "kwargs"?}`, names as
    `{"type": "single", "children": [name]}`."""
    if isinstance(setup, str):
        return {"type": "single", "children": [setup]}
    data = {"type": type(setup).__name__, "children": [setup_to_dict(child) for child in setup]}
    options = setup._options()
    if options:
        data["kwargs"] = options
    return data


def setup_from_dict(data, where: str):
    """The composition a `setup_to_dict` dict describes (our own `Block.to_dict` form is read too); errors name
    `where`."""
    if isinstance(data, str):
        try:
            return check_name(data, "adapter", where)
        except AdapterNameError as err:
            raise AdapterLoadError(str(err)) from None
    if not isinstance(data, dict) or not isinstance(data.get("children"), list):
        raise AdapterLoadError(f"{where}: {data!r} is not a composition (a dict with 'type' and 'children')")
    kind, children = data.get("type"), data["children"]
    if kind == "single":
        if len(children) != 1:
            raise AdapterLoadError(f"{where}: a 'single' entry holds one adapter name, got {children!r}")
        return setup_from_dict(children[0], where)
    if kind not in BLOCKS:
        raise AdapterLoadError(f"{where}: unknown composition block type {kind!r} (known: {', '.join(BLOCKS)})")
    options = data.get("kwargs")
    if options is None:  # `Block.to_dict` keeps the options beside type and children
        options = {k: v for k, v in data.items() if k not in ("type", "children")}
    if not isinstance(options, dict):
        raise AdapterLoadError(f"{where}: 'kwargs' of a {kind} block must be a JSON object, got {options!r}")
    try:
        return BLOCKS[kind](*[setup_from_dict(child, where) for child in children], **options)
    except TypeError as err:  # an option this block does not take
        raise AdapterLoadError(f"{where}: bad {kind} block {data!r} ({err})") from None
    except CompositionError as err:
        raise AdapterLoadError(f"{where}: {err}") from None


def fuse_blocks(setup) -> list[Fuse]:
    """The Fuse blocks of a setup, outermost first, each once."""
    if not isinstance(setup, Block):
        return []
    found = [setup] if isinstance(setup, Fuse) else []
    for child in setup:
        found += [f for f in fuse_blocks(child) if f not in found]
    return found


def head_names(head_setup) -> list[str]:
    """The heads a head setup names: a name, a list of names or a block of names; [] for None/False."""
    if head_setup is None or head_setup is False:
        return []
    if isinstance(head_setup, str):
        return [head_setup]
    if isinstance(head_setup, Block):
        return head_setup.names()
    if isinstance(head_setup, (list, tuple)) and all(isinstance(h, str) for h in head_setup):
        return list(head_setup)
    raise HeadError(f"head_setup={head_setup!r}: use a head name, a list of head names or a BatchSplit of heads")


class AdapterSetupMixin:
    """`save_adapter_setup` / `load_adapter_setup` and the Hub uploads (AdapterHub's names and file layout)."""

    def _shareable_setup(self, adapter_setup, head_setup=None):
        """The parsed setup and head setup after checking that every adapter, fusion and head they name exists,
        so nothing is written (or uploaded) for a setup that cannot be saved whole."""
        setup = parse_composition(adapter_setup)
        if setup is None:
            raise CompositionError(f"adapter_setup={adapter_setup!r} names no adapters")
        for name in setup.names():
            self._require(name)
        for fusion in fuse_blocks(setup):
            if fusion.name not in self.adapter_fusions:
                raise AdapterConfigError(f"no AdapterFusion named {fusion.name!r} for {setup}")
        if head_setup is True:  # "the heads that are active", written out by name so any loader can read them
            head_setup = getattr(self, "active_head", None)
            if not head_setup:
                raise HeadError("head_setup=True saves the active head(s), but no head is active")
        if isinstance(head_setup, tuple):
            head_setup = list(head_setup)
        names = head_names(head_setup)
        if names and not hasattr(self, "heads"):
            raise HeadError(f"head_setup={head_setup!r}: this model has no flexible heads to save")
        for name in names:
            check_head_name(name)
            if name not in self.heads:
                raise HeadError(f"no head named {name!r} (heads: {', '.join(self.heads) or 'none'})")
        return setup, head_setup or None

    def save_adapter_setup(
        self,
        save_directory,
        adapter_setup,
        head_setup=None,
        meta_dict: dict | None = None,
        custom_weights_loaders=None,
        use_safetensors: bool = False,
    ) -> None:
        """Save a setup (adapters, the fusions it uses and, with `head_setup`, heads) for `load_adapter_setup`.

        `head_setup`: a head name, a list of names, a `BatchSplit` of heads, True for the active head(s), or None
        for none. Writes `adapter_setup.json` and a sub-folder per adapter, fusion and head.
        """
        if custom_weights_loaders:
            raise AdapterConfigError("custom_weights_loaders are not supported")
        setup, head_setup = self._shareable_setup(adapter_setup, head_setup)
        folder = Path(save_directory)
        heads = setup_to_dict(head_setup) if isinstance(head_setup, Block) else head_setup
        data = {"adapter_setup": setup_to_dict(setup), "head_setup": heads, "version": SETUP_FORMAT_VERSION}
        for name in setup.names():
            self.save_adapter(folder / name, name, meta_dict=meta_dict, use_safetensors=use_safetensors)
        for fusion in fuse_blocks(setup):
            self.save_adapter_fusion(folder / fusion.name, fusion.name, use_safetensors=use_safetensors)
        for name in head_names(head_setup):
            self.save_head(folder / name, name, use_safetensors=use_safetensors)
        files.write_json(folder / files.SETUP_CONFIG_NAME, data)

    def load_adapter_setup(
        self,
        adapter_setup_name_or_path,
        version: str | None = None,
        custom_weights_loaders=None,
        set_active: bool = False,
        use_safetensors: bool = False,
        **kwargs,
    ):
        """Load a setup saved by `save_adapter_setup` (a folder, or a Hub repo: `source=`, `token=` as for
        `load_adapter`) and return `(adapter_setup, head_setup)`; `set_active` activates both.

        All or nothing: if any adapter, fusion or head cannot be loaded (e.g. a name that is already taken), the
        model is left exactly as it was.
        """
        if custom_weights_loaders:
            raise AdapterConfigError("custom_weights_loaders are not supported")
        folder = self._resolve_adapter_folder(adapter_setup_name_or_path, version=version, **kwargs)
        config_path = folder / files.SETUP_CONFIG_NAME
        data = files.read_json(config_path)
        if "adapter_setup" not in data:
            raise AdapterLoadError(f"{config_path} has no 'adapter_setup' entry")
        setup = setup_from_dict(data["adapter_setup"], f"{config_path}, key 'adapter_setup'")
        try:
            setup = parse_composition(setup)
        except CompositionError as err:
            raise AdapterLoadError(f"{config_path}: {err}") from None
        head_setup = data.get("head_setup")
        if isinstance(head_setup, dict):
            head_setup = setup_from_dict(head_setup, f"{config_path}, key 'head_setup'")
        elif not (head_setup is None or isinstance(head_setup, (bool, str, list))):
            raise AdapterLoadError(f"{config_path}: head_setup={head_setup!r} is not a head name, list or block")
        try:  # names become folder names: none may be a path
            heads = [] if isinstance(head_setup, bool) else [check_head_name(h) for h in head_names(head_setup)]
            for fusion in fuse_blocks(setup):
                check_fusion_name(fusion.name)
        except (AdapterConfigError, HeadError) as err:
            raise AdapterLoadError(f"{config_path}: {err}") from None
        parts = setup.names() + [f.name for f in fuse_blocks(setup)] + heads
        missing = [name for name in parts if not (folder / name).is_dir()]
        if missing:
            raise AdapterLoadError(f"{config_path} names {missing}, but {folder} has no such sub-folder(s)")
        if head_setup and not hasattr(self, "heads"):
            warnings.warn(f"{config_path} names heads {head_setup!r}; this model has no flexible heads", stacklevel=2)
            head_setup, heads = None, []
        with self._engine.transaction(self):
            for name in setup.names():
                self.load_adapter(folder / name, load_as=name, use_safetensors=use_safetensors)
            for fusion in fuse_blocks(setup):
                self.load_adapter_fusion(folder / fusion.name, use_safetensors=use_safetensors)
            if head_setup is True:
                head_setup = self.load_head(folder, set_active=False)
            for name in heads:
                self.load_head(folder / name, load_as=name, set_active=False)
            if set_active:
                self.set_active_adapters(setup)
                if head_setup:
                    self.active_head = head_setup
        return setup, head_setup

    def push_adapter_to_hub(
        self,
        repo_id: str,
        adapter_name: str,
        datasets_tag: str | None = None,
        local_path: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        overwrite_adapter_card: bool = False,
        create_pr: bool = False,
        revision: str | None = None,
        commit_description: str | None = None,
        adapter_card_kwargs: dict | None = None,
    ):
        """Upload an adapter (and its head) to the Hugging Face Hub with a model card; returns the `CommitInfo`.

        As AdapterHub's: the repo is created if needed (`private`); files are written to `local_path` (a folder you
        name) or to a temporary folder that is removed afterwards; an existing card (README.md, in `local_path` or
        in the repo) is kept unless `overwrite_adapter_card`. `adapter_card_kwargs`: tags, language, license,
        metrics, architecture_training, results, citation, and base_model (when the model was loaded from a folder).
        """
        self._require(adapter_name)
        return _pusher()(
            self,
            repo_id,
            adapter_name=adapter_name,
            datasets_tag=datasets_tag,
            local_path=local_path,
            commit_message=commit_message,
            private=private,
            token=token,
            overwrite_adapter_card=overwrite_adapter_card,
            create_pr=create_pr,
            revision=revision,
            commit_description=commit_description,
            adapter_card_kwargs=adapter_card_kwargs,
        )

    def push_adapter_setup_to_hub(
        self,
        repo_id: str,
        adapter_setup,
        head_setup=None,
        datasets_tag: str | None = None,
        local_path: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        overwrite_adapter_card: bool = False,
        create_pr: bool = False,
        revision: str | None = None,
        commit_description: str | None = None,
        adapter_card_kwargs: dict | None = None,
    ):
        """Upload a setup (`save_adapter_setup`'s folder) with a model card; options as `push_adapter_to_hub`.
        Load it back with `load_adapter_setup("<repo_id>", source="hf")`."""
        setup, head_setup = self._shareable_setup(adapter_setup, head_setup)
        return _pusher()(
            self,
            repo_id,
            adapter_setup=setup,
            head_setup=head_setup,
            datasets_tag=datasets_tag,
            local_path=local_path,
            commit_message=commit_message,
            private=private,
            token=token,
            overwrite_adapter_card=overwrite_adapter_card,
            create_pr=create_pr,
            revision=revision,
            commit_description=commit_description,
            adapter_card_kwargs=adapter_card_kwargs,
        )


def _pusher():
    if _HUB_PUSHER is None:
        raise AdapterConfigError("uploading needs the hub package: `import workbench` (or workbench.hub) first")
    return _HUB_PUSHER
