"""Saving and loading a flex model's prediction heads in AdapterHub's format (head_config.json + weights).

A mixin of `AdapterModel`: alone, beside adapters (`_save_matching_head`) and beside a fusion (`_save_fusion_head`).
A static head (saved from an init()-ed `...For<Task>` model) loads as the flex head that computes the same.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import files, static_heads
from .errors import AdapterLoadError, HeadError
from .heads import HEAD_TYPES, head_from_config, label2id_for
from .keys import rename_prefixed
from .names import check_head_name
from .weight_checks import check_weights


class HeadFileMethods:
    """`save_head` / `load_head` and the hooks the adapter and fusion files call for the heads beside them."""

    def save_head(self, save_directory, head_name: str, use_safetensors: bool = False) -> None:
        if head_name not in self.heads:
            raise HeadError(f"no head named {head_name!r}")
        folder = Path(save_directory)
        head = self.heads[head_name]
        config = dict(head.config)
        data = {"config": config, **self._file_meta(head_name)}
        files.write_json(folder / files.HEAD_CONFIG_NAME, data)
        weights = head.state_dict(prefix=f"heads.{head_name}.")
        weights_name = files.SAFE_HEAD_WEIGHTS_NAME if use_safetensors else files.HEAD_WEIGHTS_NAME
        files.write_weights(folder / weights_name, weights)

    def load_head(
        self,
        save_directory,
        load_as: str | None = None,
        id2label=None,
        set_active: bool = True,
        loading_info: dict | None = None,
        **_,
    ) -> str:
        """Load a head saved by `save_head` (AdapterHub's head_config.json + weights); returns its name.

        A static head (saved from an init()-ed `...For<Task>` model) is converted to the flex head that computes
        the same (`static_heads`); it has no name, so `load_as` is needed. `loading_info` receives
        `missing_keys` (always empty: missing weights raise) and `unexpected_keys` (a static head's aliases of
        tied weights, such as BERT's `cls.predictions.bias`, which are not loaded)."""
        folder = Path(save_directory)
        config_path = folder / files.HEAD_CONFIG_NAME
        data = files.read_saved_meta(config_path, "head")
        self._check_compatible(data, config_path)
        renames = None
        if data["config"] is None:  # a transformers task model's head (`...ForSequenceClassification`)
            if load_as is None:
                raise HeadError(f"{config_path} is a static head, which has no name: pass load_as=")
            model_class = data.get("model_class") or ""
            label2id = {v: int(k) for k, v in id2label.items()} if id2label else data.get("label2id")
            try:
                config, renames = static_heads.flex_config(model_class, self.config, label2id, data.get("num_labels"))
            except HeadError as err:
                raise HeadError(f"{config_path}: config=None marks a static head, but {err}") from None
            scaled = config["head_type"] not in ("seq2seq_lm", "classification", "multilabel_classification")
            if scaled and self._output_scale() is not None:  # the LM head scales itself; classifiers pool unscaled
                raise HeadError(
                    f"{config_path}: the head of {model_class} reads the decoder's states as they are, but this tied "
                    "T5 model scales them by d_model**-0.5 before every head (as AdapterHub's T5AdapterModel): the "
                    "converted head would compute something else"
                )
        else:
            config = dict(data["config"])
            if config.get("head_type") in (None, ""):
                raise HeadError(f"{config_path}: config={data['config']!r} is not a flex head config (no 'head_type')")
            if id2label is not None:
                count = config.get("num_labels", config.get("num_choices"))
                config["label2id"] = label2id_for(id2label, count, str(config_path))
        saved_name = data.get("name")
        name = load_as or saved_name or folder.name
        check_head_name(name, str(config_path))
        weights_path = files.find_weights(folder, files.HEAD_WEIGHTS_NAME, files.SAFE_HEAD_WEIGHTS_NAME)
        if weights_path is None:
            raise HeadError(f"no head weights ({files.HEAD_WEIGHTS_NAME}) in {folder}")
        dropped = []
        if renames is not None:
            state, dropped = static_heads.rename_to_flex(files.read_weights(weights_path), renames, name, weights_path)
        else:
            state = rename_prefixed(files.read_weights(weights_path), "heads", saved_name or name, name)
        try:
            custom = config.get("head_type") not in HEAD_TYPES or self.custom_heads.get(config["head_type"]) not in (
                None,
                HEAD_TYPES.get(config["head_type"]),
            )
            if not custom:
                with torch.device("meta"):  # sizes checked against the file before anything is allocated
                    probe = head_from_config(self.config, config)
                shapes = {k: tuple(v.shape) for k, v in probe.state_dict(prefix=f"heads.{name}.").items()}
                check_weights(state, shapes, weights_path)
            head = self._head_from_config(name, config)
            if custom:
                shapes = {k: tuple(v.shape) for k, v in head.state_dict(prefix=f"heads.{name}.").items()}
                check_weights(state, shapes, weights_path)
        except (TypeError, ValueError, HeadError) as err:
            if isinstance(err, AdapterLoadError):
                raise
            raise HeadError(f"{config_path}: {err}") from None
        with self._engine.transaction(self):
            head.name = name
            self.heads[name] = head.to(self.base_model.device, dtype=self._float_dtype()).train(self.training)
            self._tie_head(name)
            own = own_all = self.heads[name].state_dict(prefix=f"heads.{name}.", keep_vars=True)
            shared = {id(p) for p in self.base_model.parameters()}
            if renames is not None:  # a tied decoder weight is the embeddings' (whether or not the file has it)
                own = {k: v for k, v in own.items() if id(v) not in shared}
                state = {k: v for k, v in state.items() if k in own or k not in own_all}
            self._load_weights(state, own, weights_path)
            self._sync_prediction_heads()
            if set_active:
                self.active_head = name
        if loading_info is not None:
            ignored = self._keys_to_ignore_on_load_unexpected or ()
            loading_info.update(missing_keys=[], unexpected_keys=[k for k in dropped if k not in ignored])
        return name

    def _save_matching_head(self, folder: Path, name: str, use_safetensors: bool) -> None:
        if name in self.heads:
            self.save_head(folder, name, use_safetensors)

    def _load_matching_head(self, folder: Path, name: str, id2label, set_active: bool) -> None:
        if (folder / files.HEAD_CONFIG_NAME).is_file():
            self.load_head(folder, load_as=name, id2label=id2label, set_active=set_active)

    def _save_fusion_head(self, folder: Path, head_name: str, use_safetensors: bool) -> None:
        if head_name not in self.heads:
            raise HeadError(f"no head named {head_name!r} to save with the fusion")
        self.save_head(folder, head_name, use_safetensors)

    def _load_fusion_head(self, folder: Path, set_active: bool) -> None:
        if (folder / files.HEAD_CONFIG_NAME).is_file():  # under the name saved in its head_config.json, as AdapterHub
            self.load_head(folder, set_active=set_active)
