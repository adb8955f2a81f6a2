"""`AutoAdapterModel`: a transformers base model plus named prediction heads, and `init()` for any model."""

from __future__ import annotations

import inspect
import sys
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PretrainedConfig, PreTrainedModel

from . import static_heads
from .add_heads import AddHeadMethods
from .composition import BatchSplit, Parallel, Stack
from .context import batch_size_of, replicate_batch, scoped_setup
from .errors import AdapterLoadError, CompositionError, HeadError
from .head_files import HeadFileMethods
from .heads import (
    HEAD_TYPES,
    BiaffineParsingHead,
    ClassificationHead,
    LMHead,
    PredictionHead,
    QuestionAnsweringHead,
    Seq2SeqLMHead,
    TaggingHead,
    head_from_config,
    label2id_for,
    seq2seq_output,
)
from .interface import AdapterModelInterface
from .model_init import init, saved_interface, share_adapter_api, spec_of
from .model_mixin import ModelAdaptersMixin
from .names import check_head_name
from .outputs import MultiHeadOutput
from .rows import BASE, current_plan, row_names, rows_scope, runs
from .runtime import row_bounds
from .transformers_api import cache_of
from .weight_checks import check_weights

_CONFIG_CLASS_TO_MODEL = {"XLMRobertaConfig": "XLMRoberta"}


class AdapterModel(AddHeadMethods, HeadFileMethods, ModelAdaptersMixin, PreTrainedModel, GenerationMixin):
    """A base transformers model (stored under its usual prefix, e.g. `bert`) with flexible named heads.

    It is a `PreTrainedModel`, so `generate()` works with a causal LM head and Trainer treats it as any model.
    """

    config_class = PretrainedConfig
    # Heads return their batch's mean loss and ignore `num_items_in_batch`: Trainer must scale for gradient
    # accumulation and several processes itself (its default for a forward taking **kwargs assumes otherwise).
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True  # the base model's layers checkpoint; see `_set_gradient_checkpointing`
    # The wrapper runs no attention itself: every implementation the base model supports is fine.
    _supports_sdpa = _supports_flash_attn = _supports_flex_attn = _supports_attention_backend = True

    head_types: tuple = tuple(HEAD_TYPES)  # narrowed by the per-family classes (`model_classes`)

    def __init__(self, base: PreTrainedModel | PretrainedConfig, interface=None, **kwargs):
        """Wrap a loaded base model, or build a freshly initialised one from its config (AdapterHub's
        `BertAdapterModel(config)`). `interface`: as for `init()` (an AdapterModelInterface, or "auto")."""
        if isinstance(base, PretrainedConfig):
            base = AutoModel.from_config(base, **kwargs)
        _, spec, interface = spec_of(base, base, interface)
        super().__init__(base.config)
        self.base_model_prefix = base.base_model_prefix
        self.add_module(self.base_model_prefix, base)
        # checkpointing runs through the base model's layers: a family whose layers cannot (ALBERT) says so
        self.supports_gradient_checkpointing = base.supports_gradient_checkpointing
        self.main_input_name = base.main_input_name  # generate(features) reads it (Whisper: input_features)
        if type(self) is AdapterModel:  # no per-family class (AdapterHub has none): the family's own head types
            from .model_classes import family_head_types

            self.head_types = tuple(family_head_types(base.config.model_type))
        self.heads = nn.ModuleDict()
        self._active_head: str | None = None
        self.custom_heads: dict[str, type] = {}  # AdapterHub's `register_custom_head` registry
        self._init_adapters(base, spec)
        self._engine.interface = interface  # saved by save_pretrained, read back by from_pretrained
        share_adapter_api(base, self._engine)
        self._set_decoder_start()
        self.train(base.training)  # from_pretrained gives an eval-mode base model; the wrapper follows it
        # AdapterHub keeps every head's config in `config.prediction_heads` (saved in config.json) and builds the
        # heads a config lists; their weights come from the checkpoint (or its heads/ folders)
        listed = getattr(self.config, "prediction_heads", None)
        self.config.prediction_heads = {}
        for name, head_config in (listed or {}).items() if isinstance(listed, dict) else ():
            try:
                self.add_prediction_head_from_config(name, dict(head_config), overwrite_ok=True, set_active=False)
            except (HeadError, TypeError, KeyError) as err:
                warnings.warn(f"config.prediction_heads: head {name!r} not rebuilt ({err})", stacklevel=2)

    # --- construction ------------------------------------------------------------------------------------

    def _set_decoder_start(self) -> None:
        """generate() starts decoding with the family's start token (T5: padding; its transformers 5 config has no
        `decoder_start_token_id`)."""
        generation = getattr(self, "generation_config", None)
        start = getattr(self.config, self._engine.spec.decoder_start, None)
        if getattr(self.config, "is_encoder_decoder", False) and generation is not None and start is not None:
            if generation.decoder_start_token_id is None:
                generation.decoder_start_token_id = start

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> AdapterModel:
        """Load the base model with `transformers.AutoModel` (never with remote code) and wrap it."""
        kwargs.pop("trust_remote_code", None)
        interface = kwargs.pop("interface", None)
        if interface is None:
            interface = saved_interface(pretrained_model_name_or_path)
        base = AutoModel.from_pretrained(pretrained_model_name_or_path, trust_remote_code=False, **kwargs)
        info = None
        if kwargs.get("output_loading_info"):
            base, info = base
        model = cls._family(base.config)(base, interface=interface)
        if info is not None and "missing_keys" in info:  # this model's keys; what the engine removed is not missing
            own = set(model.state_dict())
            keys = (k if k in own else f"{model.base_model_prefix}.{k}" for k in info["missing_keys"])
            info["missing_keys"] = type(info["missing_keys"])(k for k in keys if k in own)
        hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only") if k in kwargs}
        listed_heads = set(model.heads)  # rebuilt from config.prediction_heads: weights still to come
        model._convert_static_head(pretrained_model_name_or_path, info, hub)
        loaded_heads = model._load_saved_parts(pretrained_model_name_or_path)
        model._check_listed_parts_loaded(pretrained_model_name_or_path, listed_heads - set(loaded_heads))
        return (model, info) if info is not None else model

    def _check_listed_parts_loaded(self, name_or_path, heads_without_weights: set) -> None:
        """Heads that config.json lists but no heads/<name> folder holds would run with random weights.

        A model saved whole by the `adapters` library (its config.json has the library's `adapters` entry) keeps
        its adapters and heads inside its weights file, which workbench does not read: refused. Otherwise (e.g.
        `model.base_model.save_pretrained`, whose config still lists the heads) those heads are left out, with
        a warning; `load_adapter` or `load_head` brings them with their weights."""
        library = getattr(self.config, "adapters", None)  # the `adapters` library's ModelAdaptersConfig
        if isinstance(library, dict) and "config_map" in library:
            adapters = sorted(set(library.get("adapters") or ()) - set(self._engine.configs))
            parts = [f"head(s) {sorted(heads_without_weights)}"] if heads_without_weights else []
            parts += [f"adapter(s) {adapters}"] if adapters else []
            if parts:
                raise AdapterLoadError(
                    f"{name_or_path}: a model saved whole by the `adapters` library, whose {' and '.join(parts)} "
                    "are inside its weights file, which workbench does not read: save each adapter with its head "
                    "by `save_adapter` in the `adapters` library, load the base model, then `load_adapter` each"
                )
        if heads_without_weights:
            warnings.warn(
                f"{name_or_path}: config.json lists head(s) {sorted(heads_without_weights)} but the folder has no "
                "heads/<name> with their weights: left out (load them with load_adapter or load_head)",
                stacklevel=3,
            )
            for name in sorted(heads_without_weights):
                self.delete_head(name)

    def _convert_static_head(self, name_or_path, info: dict | None, hub_kwargs: dict) -> None:
        """A checkpoint of a `...For<Task>` class (`config.architectures`) brings its task layers as flex head
        "default", as AdapterHub does; their keys are then no longer unexpected in `info`."""
        architectures = getattr(self.config, "architectures", None) or []
        if not architectures or architectures[0] not in static_heads.STATIC_TO_FLEX:
            return
        base_names = {name for name, _ in self.base_model.named_children()}
        static = static_heads.checkpoint_head_state(name_or_path, self.base_model_prefix, base_names, **hub_kwargs)
        try:
            config, renames = static_heads.flex_config(architectures[0], self.config)
        except HeadError as err:  # a head no flex head equals (Gemma 2's soft-capped logits)
            warnings.warn(f"the {architectures[0]} head of {name_or_path} was not converted: {err}", stacklevel=3)
            return
        head = head_from_config(self.config, config)
        # transformers 5 forces T5's and mT5's tie flag: their checkpoints tie the LM head exactly when it is absent
        ties = isinstance(head, LMHead) and (self._ties_word_embeddings() or self._engine.spec.lm_tying != "config")
        if not static and not ties:
            return  # (a tied LM head has no weights of its own in the checkpoint)
        try:
            state, _ = static_heads.rename_to_flex(static, renames, "default", name_or_path)
            own = head.state_dict(prefix="heads.default.", keep_vars=True)
            decoder = f"heads.default.{len(head) - 1}.weight"
            if ties and decoder not in state:
                head[-1].weight = self.get_input_embeddings().weight  # saved once, as the input embedding
                del own[decoder]
            check_weights(state, {k: tuple(v.shape) for k, v in own.items()}, name_or_path, warn=False)
        except AdapterLoadError as err:
            warnings.warn(f"the {architectures[0]} head of {name_or_path} was not converted: {err}", stacklevel=3)
            return
        self.add_prediction_head("default", head, overwrite_ok=True)
        self._load_weights(state, own, name_or_path)
        if info is not None and "unexpected_keys" in info:
            info["unexpected_keys"] = type(info["unexpected_keys"])(
                k for k in info["unexpected_keys"] if static_heads.module_name(k) not in static
            )

    @classmethod
    def from_config(cls, config, interface=None, **kwargs) -> AdapterModel:
        return cls._family(config)(AutoModel.from_config(config, **kwargs), interface=interface)

    @classmethod
    def _family(cls, config) -> type[AdapterModel]:
        """The generic class builds the family's class (`BertAdapterModel`, ...), as AdapterHub's auto class does."""
        if cls is not AdapterModel:
            return cls
        from .model_classes import ADAPTER_MODEL_MAPPING

        return ADAPTER_MODEL_MAPPING.get(getattr(config, "model_type", None), cls)

    @property
    def base_model(self) -> PreTrainedModel:
        return getattr(self, self.base_model_prefix)

    @property
    def device(self) -> torch.device:
        return self.base_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.base_model.dtype

    def get_input_embeddings(self):
        return self.base_model.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module | list[nn.Module] | None:
        """The active head's output layer (an LM head's vocabulary projection), a list for several active heads,
        None when no active head has one (AdapterHub's rule)."""
        active = self._active_head_names()
        embeddings = [self.heads[n].get_output_embeddings() for n in active if n in self.heads]
        if len(embeddings) == 1:
            return embeddings[0]
        return None if all(e is None for e in embeddings) else embeddings

    def set_output_embeddings(self, new_embeddings) -> None:
        active = self._active_head_names()
        if not isinstance(new_embeddings, list):
            new_embeddings = [new_embeddings] * len(active)
        for name, embedding in zip(active, new_embeddings, strict=False):
            if name in self.heads and hasattr(self.heads[name], "set_output_embeddings"):
                self.heads[name].set_output_embeddings(embedding)

    def _active_head_names(self) -> list[str]:
        heads = self._active_head
        return [heads] if isinstance(heads, str) else list(heads or [])

    def _model_class_name(self) -> str:
        name = type(self.config).__name__
        return _CONFIG_CLASS_TO_MODEL.get(name, name.removesuffix("Config")) + "AdapterModel"

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch's, also taking the state of a task model that is its own base model (T5ForConditionalGeneration):
        keys of the base model's own modules (`encoder.`, `decoder.`, `shared.`) get the base model's prefix, as
        AdapterHub's flex models do. Its task head's keys (`lm_head.*`) stay unexpected: pass strict=False."""
        prefix = self.base_model_prefix + "."
        own = {name for name, _ in self.base_model.named_children()}

        def key(k: str) -> str:
            return prefix + k if k.split(".", 1)[0] in own else k

        if not any(k.startswith(prefix) for k in state_dict) and any(key(k) != k for k in state_dict):
            metadata = getattr(state_dict, "_metadata", None)
            state_dict = OrderedDict((key(k), v) for k, v in state_dict.items())
            if metadata is not None:  # per-module versions, keyed by module path ("" is the root)
                state_dict._metadata = {(key(k) if k else k): v for k, v in metadata.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Save the base model (transformers format) plus every adapter, fusion and head in subfolders."""
        folder = Path(save_directory)
        kwargs.pop("state_dict", None)  # Trainer passes the whole wrapper's; the base checkpoint is rebuilt here
        # a merged LoRA is saved as the adapter it is, never inside the base weights
        base_weights = self._base_weights(self.base_model.state_dict(), prefix=self._engine.base_prefix)
        PreTrainedModel.save_pretrained(self.base_model, folder, state_dict=base_weights, **kwargs)
        self._save_parts(folder)
        self._save_interface(folder)
        for name in self.heads:
            self.save_head(folder / "heads" / name, name)

    def _load_saved_parts(self, name_or_path) -> list[str]:
        """Load the adapters, fusions and heads `save_pretrained` wrote; returns the heads' names."""
        super()._load_saved_parts(name_or_path)
        heads = Path(str(name_or_path)) / "heads"
        subfolders = sorted(p for p in heads.iterdir() if p.is_dir()) if heads.is_dir() else []
        return [self.load_head(sub) for sub in subfolders]

    def generate(self, *args, adapter_names=None, **kwargs):
        """transformers' `generate` with the active (or scoped) setup: one batch through one head; with
        `adapter_names`, each row with its own adapter (`"__base__"`: none) and that adapter's head."""
        self._engine.drop_stale_state()  # its encoder may run before any call of the whole model
        if adapter_names is not None:
            with rows_scope(adapter_names, widen=True):
                return super().generate(*args, **kwargs)
        scoped = scoped_setup()
        setup = scoped.adapter_setup if scoped is not None else self._engine.active_setup
        heads = self._scoped_heads(scoped) or self._active_head
        if setup is not None and setup.parallel_channels > 1:
            return self._parallel_generate(setup, heads, args, kwargs)
        if not (heads is None or isinstance(heads, str)):
            raise CompositionError(
                f"generate() continues one batch with one LM head; the heads {heads} are several: generate with each "
                "head in turn"
            )
        return super().generate(*args, **kwargs)

    def _parallel_generate(self, setup, heads, args, kwargs):
        """`Parallel(a, b)` with heads [a, b]: the batch once per channel, each copy continued through its adapter and
        head (as AdapterHub replicates the prompt before generating). Runs as per-row adapters on the replicated
        batch, which is what each channel of the Parallel setup computes."""
        names = list(setup.children) if isinstance(setup, Parallel) else []
        head_list = list(heads) if isinstance(heads, (list, tuple)) else []
        if not names or not all(isinstance(n, str) for n in names) or head_list != names:
            raise CompositionError(
                f"generate() under {setup} with heads {heads}: only a Parallel of single adapters, each with its own "
                "LM head of the same name, can generate (replicate the prompt and pass adapter_names for others)"
            )
        given = [k for k in ("encoder_outputs", "past_key_values", "cache") if kwargs.get(k) is not None]
        if given:
            raise CompositionError(
                f"generate() under {setup}: {', '.join(given)} would have to be replicated per channel too; pass the "
                "inputs instead"
            )
        batch = batch_size_of(args, kwargs)
        if batch is None:
            raise CompositionError(f"generate() under {setup}: no batch-shaped input to replicate per channel")
        args, kwargs = replicate_batch(args, kwargs, batch, len(names))
        rows = [name for name in names for _ in range(batch)]
        with rows_scope(rows, widen=True):
            return super().generate(*args, **kwargs)

    # --- heads -------------------------------------------------------------------------------------------

    @property
    def active_head(self) -> str | list[str] | BatchSplit | None:
        """The active head: a name, a list of names (one per Parallel channel), or a `BatchSplit` of names."""
        heads = self._active_head
        if isinstance(heads, list) and len(heads) == 1:  # as AdapterHub: one head reads as its name
            return heads[0]
        return heads

    @active_head.setter
    def active_head(self, head_name) -> None:
        if isinstance(head_name, BatchSplit):
            names = list(head_name)
        else:
            names = head_name if isinstance(head_name, (list, tuple)) else [head_name] if head_name else []
        for name in names:
            if not isinstance(name, str) or name not in self.heads:
                raise HeadError(f"no head named {name!r} (heads: {', '.join(self.heads) or 'none'})")
        self._active_head = list(head_name) if isinstance(head_name, (list, tuple)) else head_name or None
        if isinstance(self.active_head, str):
            id2label = self.heads[self.active_head].id2label
            if id2label:
                self.config.id2label = id2label
                self.config.label2id = {v: k for k, v in id2label.items()}

    def add_prediction_head(self, head_name, head=None, overwrite_ok: bool = False, set_active: bool = True) -> None:
        """Add a built head under `head_name`; AdapterHub's form `add_prediction_head(head, overwrite_ok, set_active)`
        takes the name from `head.name`."""
        if isinstance(head_name, nn.Module):  # AdapterHub's signature: (head, overwrite_ok=False, set_active=True)
            head_name, head, overwrite_ok = head_name.name, head_name, bool(head or overwrite_ok)
        check_head_name(head_name)
        if not isinstance(head, PredictionHead):
            raise HeadError(f"head {head_name!r}: {type(head).__name__} is not a PredictionHead")
        if head_name in self.heads and not overwrite_ok:
            raise HeadError(f"a head named {head_name!r} already exists (pass overwrite_ok=True to replace it)")
        head.name = head_name
        head.to(self.base_model.device, dtype=self._float_dtype()).train(self.training)
        self.heads[head_name] = head
        self._tie_head(head_name)
        self._sync_prediction_heads()
        if set_active or self._active_head is None:
            self.active_head = head_name

    def _float_dtype(self) -> torch.dtype | None:
        """The dtype new heads take: the base model's float dtype (bf16 model, bf16 heads)."""
        reference = self._engine.reference_weight()
        return reference.dtype if reference is not None and reference.is_floating_point() else None

    def _sync_prediction_heads(self) -> None:
        """`config.prediction_heads`: head name -> the head's config, as AdapterHub keeps it (and saves it)."""
        self.config.prediction_heads = {name: head.config for name, head in self.heads.items()}

    def _tie_head(self, head_name: str) -> None:
        """An LM head's output layer shares the input embeddings' weight when the config ties them."""
        output = self.heads[head_name].get_output_embeddings()
        embeddings = self.get_input_embeddings()
        if output is not None and self._ties_word_embeddings() and embeddings is not None:
            if output.weight.shape == embeddings.weight.shape:
                output.weight = embeddings.weight

    def _ties_word_embeddings(self) -> bool:
        """Whether LM heads share the input embeddings, as the family's spec says (`ArchSpec.lm_tying`)."""
        rule = self._engine.spec.lm_tying
        if rule == "never":
            return False
        tied = getattr(self.config, "tie_word_embeddings", False)
        return bool(getattr(self.config, "scale_decoder_outputs", tied) if rule == "t5" else tied)

    def _output_scale(self) -> float | None:
        """A tied T5 scales its decoder output by d_model**-0.5 before the vocabulary projection; AdapterHub's
        T5AdapterModel does so before every head (classification excepted: it pools the unscaled states)."""
        if self._engine.spec.lm_tying == "t5" and self._ties_word_embeddings():
            return self.config.d_model**-0.5
        return None

    def get_prediction_heads_config(self) -> dict[str, dict]:
        """Every head's config by name (what `config.prediction_heads` holds)."""
        return {name: head.config for name, head in self.heads.items()}

    def get_labels_dict(self, head_name: str | None = None) -> dict[int, str] | None:
        """id -> label of a head (the active head by default); None for heads without labels."""
        head_name = head_name if head_name is not None else self.active_head
        if head_name is None:
            raise HeadError("no head name given and no active head")
        if not isinstance(head_name, str) or head_name not in self.heads:
            raise HeadError(f"no head named {head_name!r} (heads: {', '.join(self.heads) or 'none'})")
        return self.heads[head_name].id2label

    def get_labels(self, head_name: str | None = None) -> list[str] | None:
        """The labels a head predicts, in id order (the active head by default)."""
        labels = self.get_labels_dict(head_name)
        return None if labels is None else list(labels.values())

    def register_custom_head(self, identifier: str, head) -> None:
        """Register a `PredictionHead` subclass under a head type (AdapterHub's custom heads): it is built as
        `head(model, head_name, **options)` by `add_custom_head` and when a saved head of that type is loaded."""
        self.custom_heads[identifier] = head

    def add_custom_head(
        self, head_type: str, head_name: str, overwrite_ok: bool = False, set_active: bool = True, **kwargs
    ) -> None:
        if head_type not in self.custom_heads:
            raise HeadError(f"head type {head_type!r} is not registered: call register_custom_head({head_type!r}, cls)")
        check_head_name(head_name)
        head = self.custom_heads[head_type](self, head_name, **kwargs)
        head.config.setdefault("head_type", head_type)
        self.add_prediction_head(head_name, head, overwrite_ok, set_active)

    def add_prediction_head_from_config(
        self, head_name: str, config: dict, overwrite_ok: bool = False, set_active: bool = True
    ) -> None:
        """Build and add a head from a head config (`config.prediction_heads` or a head_config.json)."""
        self.add_prediction_head(head_name, self._head_from_config(head_name, config), overwrite_ok, set_active)

    def _head_from_config(self, head_name: str, config) -> PredictionHead:
        if not isinstance(config, Mapping):
            raise HeadError(f"head {head_name!r}: config={config!r} must be a JSON object with a 'head_type'")
        head_type = config.get("head_type")
        custom = self.custom_heads.get(head_type) if isinstance(head_type, str) else None
        if custom is not None and custom is not HEAD_TYPES.get(head_type):
            options = {k: v for k, v in config.items() if k != "head_type"}
            label2id = options.pop("label2id", None)
            if label2id and "id2label" not in options:
                options["id2label"] = {int(i): label for label, i in label2id.items()}
            head = custom(self, head_name, **options)
            head.config.setdefault("head_type", head_type)
            return head
        return head_from_config(self.config, dict(config))

    def _add_head(self, head_type: str, head_name, overwrite_ok, set_active, id2label=None, **options):
        if head_type not in self.head_types:
            offered = ", ".join(self.head_types) or "none"
            raise HeadError(
                f"model type {self.config.model_type!r} does not support head type {head_type!r} (its head types: "
                f"{offered})"
            )
        check_head_name(head_name)
        count = options.get("num_labels", options.get("num_choices"))
        if count is not None:
            options["label2id"] = label2id_for(id2label, count, head_name)
        head = HEAD_TYPES[head_type](self, head_name, **options)
        self.add_prediction_head(head_name, head, overwrite_ok, set_active)

    def delete_head(self, head_name: str) -> None:
        if head_name not in self.heads:
            raise HeadError(f"no head named {head_name!r}")
        del self.heads[head_name]
        self._sync_prediction_heads()
        if head_name in self._active_head_names():
            self._active_head = None

    def average_head(
        self,
        head_name: str,
        head_list: list[str] | dict[str, float],
        weights: list[float] | None = None,
        normalize_weights: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> None:
        """Add head `head_name` whose weights are the weighted average of `head_list`'s (AdapterHub's semantics:
        same head class and config except `dropout_prob`; weights `1/n` if None, normalised unless told not)."""
        from . import merging

        merging.average_head(self, head_name, head_list, weights, normalize_weights, overwrite_ok, set_active)

    def _unfreeze_heads(self, setup) -> None:
        heads = head_setup_of(setup)
        for name in [heads] if isinstance(heads, str) else list(heads or []):
            if name in self.heads:
                self.unfreeze_head(name)

    def unfreeze_head(self, head_name: str) -> None:
        """Make a head trainable, except weights it shares with the base model (an LM head tied to the
        input embeddings), which keep the base model's setting."""
        base = {id(p) for p in self.base_model.parameters()}
        for param in self.heads[head_name].parameters():
            if id(param) not in base:
                param.requires_grad = True

    def train_adapter(self, adapter_setup, train_embeddings: bool = False) -> None:
        """As the base method; then, as AdapterHub, the active heads' output embeddings (an LM head's vocabulary
        projection) are trained only with `train_embeddings=True`."""
        super().train_adapter(adapter_setup, train_embeddings)
        if not train_embeddings:
            self.freeze_embeddings()

    def train_adapter_fusion(self, adapter_setup, unfreeze_adapters: bool = False) -> None:
        super().train_adapter_fusion(adapter_setup, unfreeze_adapters)
        self.freeze_embeddings()

    def freeze_embeddings(self, freeze: bool = True) -> None:
        """Freeze (or unfreeze) the active heads' output embeddings."""
        output = self.get_output_embeddings()
        for module in output if isinstance(output, list) else [output]:
            for param in module.parameters() if module is not None else ():
                param.requires_grad = not freeze

    def set_active_adapters(self, adapter_setup, skip_layers=None) -> None:
        """Activate a setup and, as AdapterHub does, the heads it implies when they all exist (`head_setup_of`)."""
        super().set_active_adapters(adapter_setup, skip_layers)
        heads = head_setup_of(self._engine.active_setup)
        names = [heads] if isinstance(heads, str) else list(heads or [])
        if names and all(name in self.heads for name in names):
            self.active_head = heads

    # --- forward -----------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        head: str | None = None,
        output_adapter_fusion_attentions: bool = False,
        labels=None,
        start_positions=None,
        end_positions=None,
        pixel_values=None,
        input_features=None,
        **kwargs,
    ):
        """Run the base model, then the head(s): `head=`, else the enclosing `AdapterSetup`'s `head_setup`, else
        `active_head`. Without a head, the base model's output. The first positional argument is the base model's
        main input: `input_ids`, or `pixel_values` for an image model (as AdapterHub's `ViTAdapterModel(pixel_values)`).
        `pixel_values` and `input_features` are named so that Trainer keeps those dataset columns (it drops the
        columns the forward signature does not name)."""
        for name, value in (("pixel_values", pixel_values), ("input_features", input_features)):
            if value is not None:
                kwargs[name] = value
        main_input = getattr(self.base_model, "main_input_name", "input_ids")
        if main_input != "input_ids" and input_ids is not None:
            if main_input in kwargs:
                raise TypeError(f"{type(self).__name__}.forward got {main_input} twice (positionally and by name)")
            kwargs[main_input], input_ids = input_ids, None
        scoped = scoped_setup()
        setup = scoped.adapter_setup if scoped is not None else self._engine.active_setup
        plan = current_plan()  # per-row adapters: `adapter_names` (taken from the call by the engine's hook)
        if plan is not None and head is None:
            setup = None  # the rows' own adapters replace the setup; `_row_heads` picks each row's head
        heads = head or (None if plan is not None else self._scoped_heads(scoped) or self._active_head)
        explicit = head is not None
        for name in [heads] if isinstance(heads, str) else list(heads or []):
            if name not in self.heads:
                raise HeadError(f"no head named {name!r} (heads: {', '.join(self.heads) or 'none'})")
        channels = setup.parallel_channels if setup is not None else 1
        if isinstance(heads, str) and channels > 1 and not explicit:
            raise HeadError(
                f"the active setup {setup} runs {channels} parallel channels, but only head {heads!r} is active: "
                f"add a head for each channel, or pass head= to run one head on every row"
            )
        head_kwargs = {k: kwargs.pop(k) for k in _HEAD_ONLY_KWARGS if k in kwargs}
        if start_positions is not None:
            head_kwargs["start_positions"] = start_positions
        if end_positions is not None:
            head_kwargs["end_positions"] = end_positions
        if isinstance(heads, str) and isinstance(self.heads[heads], HEAD_TYPES["multiple_choice"]):
            if input_ids is not None and input_ids.dim() == 3:  # (batch, choices, tokens)
                head_kwargs["choices"] = input_ids.shape[1]
            input_ids, attention_mask, token_type_ids = (
                t.view(-1, t.shape[-1]) if t is not None else None for t in (input_ids, attention_mask, token_type_ids)
            )
        if labels is not None and self._runs_seq2seq_head(heads) and "decoder_input_ids" not in kwargs:
            kwargs["decoder_input_ids"] = self._shift_right(labels)  # teacher forcing, as transformers' seq2seq models
        elif self._decodes_own_input(input_ids, kwargs):
            kwargs["decoder_input_ids"] = self._shift_right(input_ids)  # as BART does itself (and AdapterHub for T5)
        model_inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "inputs_embeds": inputs_embeds,
            "position_ids": position_ids,
            **kwargs,
        }
        if token_type_ids is not None:
            model_inputs["token_type_ids"] = token_type_ids
        if output_adapter_fusion_attentions:
            model_inputs["output_adapter_fusion_attentions"] = True
        outputs = self.base_model(**{k: v for k, v in model_inputs.items() if v is not None})
        call = _HeadCall(outputs, input_ids, attention_mask, setup, head_kwargs)
        scale = self._output_scale()
        if scale is not None and isinstance(outputs, Mapping) and outputs.get("last_hidden_state") is not None:
            call.sequence = outputs["last_hidden_state"]
            outputs["last_hidden_state"] = call.sequence * scale
        if plan is not None and head is None:
            result = self._row_heads(plan, call, labels)
        elif not heads:
            result = outputs
        elif isinstance(heads, str):
            result = self._run_head(heads, call, labels)
        else:
            result = self._multi_head(heads, call, channels, labels)
        if result is not outputs and isinstance(result, Mapping):
            for extra in ("adapter_fusion_attentions", "adapter_gating_scores"):
                if extra in outputs:
                    result[extra] = outputs[extra]
        return result

    def _runs_seq2seq_head(self, heads) -> bool:
        names = [heads] if isinstance(heads, str) else list(heads or [])
        return any(isinstance(self.heads[n], Seq2SeqLMHead) for n in names if n in self.heads)

    @property
    def prepare_decoder_input_ids_from_labels(self):
        """`labels -> decoder inputs` of an encoder-decoder model. transformers' `DataCollatorForSeq2Seq` calls it when
        the model has it (`hasattr`), so other models do not have it."""
        if not getattr(self.config, "is_encoder_decoder", False):
            raise AttributeError(f"{type(self).__name__} of a {self.config.model_type!r} model has no decoder inputs")
        return self._shift_right

    def _decodes_own_input(self, input_ids, kwargs: dict) -> bool:
        """An encoder-decoder model called without decoder inputs decodes its shifted input (a classification or
        QA head reads the decoder's states)."""
        given = kwargs.get("decoder_input_ids") is not None or kwargs.get("decoder_inputs_embeds") is not None
        return bool(getattr(self.config, "is_encoder_decoder", False)) and input_ids is not None and not given

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for `labels`, as the family's transformers seq2seq model makes them: its own
        `shift_tokens_right` where it has one (mBART and PLBart wrap each row's last token, the language id, to the
        front), else the decoder start token (`spec.decoder_start`: T5 starts with its pad token), then the labels
        without their last token (-100, the loss's ignore marker, becomes padding)."""
        attribute = self._engine.spec.decoder_start
        start, pad = getattr(self.config, attribute, None), self.config.pad_token_id
        shift = getattr(sys.modules.get(type(self.base_model).__module__), "shift_tokens_right", None)
        if shift is not None and len(inspect.signature(shift).parameters) == 2:
            return shift(labels, pad)
        if start is None:
            raise HeadError(f"{self.config.model_type!r}: config.{attribute} is not set; pass decoder_input_ids")
        shifted = labels.new_full(labels.shape, start)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def _scoped_heads(self, scoped):
        """An `AdapterSetup`'s heads: its `head_setup`, else (as AdapterHub) the heads its composition implies,
        when they all exist."""
        if scoped is None:
            return None
        if scoped.head_setup:
            return scoped.head_setup
        heads = head_setup_of(scoped.adapter_setup)
        names = [heads] if isinstance(heads, str) else list(heads or [])
        return heads if names and all(name in self.heads for name in names) else None

    def _row_head(self, name: str) -> str | None:
        """The head of a row of `adapter_names`: the head named like its adapter, else the active head."""
        if name in self.heads:
            return name
        if self._active_head is not None and not isinstance(self._active_head, str):
            raise HeadError(
                f"adapter_names: rows of {name!r} have no head of that name, and the active head "
                f"{self._active_head} is not a single head"
            )
        return self._active_head

    def _row_heads(self, plan, call: _HeadCall, labels):
        """Per-row adapters: each run of rows through its adapter's head, outputs and labels in row order. One head
        for every row runs once on the whole batch; otherwise the loss is the row-weighted mean of the runs' losses."""
        parts = [(self._row_head(n), n, a, b) for n, a, b in runs(row_names(plan, call.outputs[0].shape[0]))]
        heads = {h for h, _, _, _ in parts}
        if heads == {None}:
            return call.outputs
        if None in heads:
            name = next(n for h, n, _, _ in parts if h is None)
            raise HeadError(f"adapter_names: rows of {name!r} have no head of that name and no head is active")
        inverts = getattr(self._engine.methods.get("invertible"), "_handle", None) is not None
        if len(heads) == 1 and not inverts:
            return self._run_head(parts[0][0], call, labels)
        results = []
        for head, name, a, b in parts:
            rows = call.rows(a, b)
            rows.setup = None if name == BASE else Stack(name)  # an LM head inverts the run's own adapter
            results.append(self._run_head(head, rows, _cut(labels, a, b)))
        return _join_rows(results, [b - a for _, _, a, b in parts], call.outputs)

    def _multi_head(self, heads, call: _HeadCall, channels: int, labels) -> MultiHeadOutput:
        """Several heads: a BatchSplit of heads or a Parallel setup give each head its rows; a plain list of
        heads runs each on every row (AdapterHub's rules)."""
        rows = call.outputs[0].shape[0]
        if isinstance(heads, BatchSplit):
            bounds = row_bounds(heads, rows)
            sliced_labels = True
        elif channels > 1:
            if len(heads) != channels:
                raise HeadError(f"{channels} parallel channels but {len(heads)} active heads {list(heads)}")
            bounds = row_bounds(Parallel(*heads), rows)
            sliced_labels = False  # each channel is a copy of the batch: the labels apply to every copy
        else:
            bounds = [(0, rows)] * len(heads)
            sliced_labels = False
        results = []
        for name, (a, b) in zip(heads, bounds, strict=True):
            part_labels = labels[a:b] if labels is not None and sliced_labels else labels
            results.append(self._run_head(name, call.rows(a, b), part_labels))
        losses = [r.get("loss") if isinstance(r, Mapping) else None for r in results]
        loss = torch.stack(losses).sum() if losses and all(x is not None for x in losses) else None
        return MultiHeadOutput(head_outputs=results, loss=loss)

    def _cover_prompt_positions(self, labels, mask, hidden, setup):
        """Token-level labels and mask of a call whose prompt tuning put prompt positions in front of the tokens:
        labels of the input's length get the ignore index there, the mask ones, as AdapterHub's LM and tagging heads
        extend them (labels that already cover the prompt stay as they are)."""
        names = setup.names() if setup is not None else ()
        if not any("prompt_tuning" in self._engine.method_kinds(n) for n in names):
            return labels, mask
        if mask is not None and mask.dim() == 2 and mask.shape[1] < hidden.shape[1]:
            mask = torch.cat([mask.new_ones((mask.shape[0], hidden.shape[1] - mask.shape[1])), mask], dim=1)
        if labels is not None and labels.dim() == 2 and labels.shape[1] < hidden.shape[1]:
            labels = torch.cat([labels.new_full((labels.shape[0], hidden.shape[1] - labels.shape[1]), -100), labels], 1)
        return labels, mask

    def _run_head(self, name, call: _HeadCall, labels):
        """One head on the call's rows, called as AdapterHub calls heads:
        `head(outputs, cls_output, attention_mask, return_dict, labels=..., pooled_output=..., **head kwargs)`."""
        head = self.heads[name]
        hidden = call.outputs[0]
        kwargs = dict(call.head_kwargs)
        mask = call.attention_mask
        if isinstance(head, (LMHead, TaggingHead)):
            labels, mask = self._cover_prompt_positions(labels, mask, hidden, call.setup)
        if labels is not None:
            kwargs["labels"] = labels
        pooled = call.outputs.get("pooler_output") if isinstance(call.outputs, Mapping) else None
        if pooled is not None:
            kwargs["pooled_output"] = pooled
        if isinstance(head, LMHead):
            invert = self._engine.methods.get("invertible")
            if invert:
                kwargs["invert"] = lambda h: invert.invert(h, call.setup)
            result = head(call.outputs, None, mask, True, **kwargs)
            key, cache = cache_of(call.outputs)
            if cache is not None:  # generate() continues from the cache
                result[key] = cache
            return result
        if pooled is not None and (head.config.get("use_pooler") or self._engine.spec.pooling == "pooler"):
            cls = pooled
        elif isinstance(head, (TaggingHead, QuestionAnsweringHead, BiaffineParsingHead)):
            cls = None  # token-level heads read the hidden states
        else:  # pooled from the unscaled states where the model scales its output (T5, as AdapterHub)
            cls = self._cls_token(call.sequence if call.sequence is not None else hidden, call.input_ids)
        return seq2seq_output(head(call.outputs, cls, mask, True, **kwargs), call.outputs)

    def _cls_token(self, hidden: torch.Tensor, input_ids) -> torch.Tensor:
        """The sequence representation a classification head reads, as the architecture spec says to pool."""
        pooling = self._engine.spec.pooling
        # "pooler" without a pooler output (a base model built without one) reads [CLS], as AdapterHub's heads do
        if pooling in ("first", "pooler") and not getattr(self.config, "is_decoder", False):
            return hidden[:, 0]
        if pooling == "eos":
            return self._last_eos(hidden, input_ids)
        pad = self.config.pad_token_id
        if input_ids is None or pad is None:
            return hidden[:, -1]
        if input_ids.shape[0] != hidden.shape[0]:  # Parallel replicated the batch
            input_ids = input_ids.repeat(hidden.shape[0] // input_ids.shape[0], 1)
        last = (input_ids != pad).sum(-1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def _last_eos(self, hidden: torch.Tensor, input_ids) -> torch.Tensor:
        """The decoder state at each row's last `<eos>` (BART's sentence representation)."""
        if input_ids is None:
            raise HeadError("a classification head of an encoder-decoder model reads the last <eos>: pass input_ids")
        if input_ids.shape[0] != hidden.shape[0]:  # Parallel replicated the batch
            input_ids = input_ids.repeat(hidden.shape[0] // input_ids.shape[0], 1)
        eos = input_ids.eq(self.config.eos_token_id)
        counts = eos.sum(1)
        if (counts != counts[0]).any() or counts[0] == 0:
            raise HeadError(
                f"every row must hold the same number (at least one) of <eos> tokens (id {self.config.eos_token_id}); "
                f"the rows hold {counts.tolist()}"
            )
        return hidden[eos].view(hidden.shape[0], -1, hidden.shape[-1])[:, -1]


class _HeadCall:
    """The base model's outputs and inputs of one call, sliceable by rows for per-head parts."""

    def __init__(self, outputs, input_ids, attention_mask, setup, head_kwargs=None, sequence=None):
        self.outputs, self.input_ids, self.attention_mask, self.setup = outputs, input_ids, attention_mask, setup
        self.head_kwargs = head_kwargs or {}
        self.sequence = sequence  # the unscaled last hidden states, when the model scales its output (T5)

    def rows(self, a: int, b: int) -> _HeadCall:
        part = type(self.outputs)(
            **{k: v[a:b] for k, v in self.outputs.items() if isinstance(v, torch.Tensor) and v.dim() > 0}
        )
        kwargs = {
            k: _cut(v, a, b) if isinstance(v, torch.Tensor) and v.dim() > 0 else v for k, v in self.head_kwargs.items()
        }
        ids, mask, sequence = (_cut(t, a, b) for t in (self.input_ids, self.attention_mask, self.sequence))
        return _HeadCall(part, ids, mask, self.setup, kwargs, sequence)


# forward() arguments meant for a head, never for the base model (AdapterHub's parsing head, eos pooling)
_HEAD_ONLY_KWARGS = ("word_starts", "labels_arcs", "labels_rels", "eos_mask", "get_cls_from_eos_tokens")


def _join_rows(results: list, sizes: list[int], outputs):
    """One output from the runs' head outputs, rows in order (the heads must give outputs of one shape)."""
    joined = type(results[0])()
    for key in results[0].keys():
        values = [r.get(key) for r in results]
        if key == "loss":
            if all(v is not None for v in values):
                weights = torch.tensor(sizes, dtype=values[0].dtype, device=values[0].device) / sum(sizes)
                joined[key] = (torch.stack(values) * weights).sum()
        elif all(isinstance(v, torch.Tensor) and v.dim() > 0 for v in values):
            if len({v.shape[1:] for v in values}) > 1:
                shapes = [tuple(v.shape) for v in values]
                raise HeadError(
                    f"adapter_names: the rows' heads give {key} of different shapes {shapes}; per-row heads must "
                    "have one output shape (use a BatchSplit setup for heads of different sizes)"
                )
            joined[key] = torch.cat(values)
    key, cache = cache_of(outputs)
    if cache is not None and "logits" in joined:  # generate() continues
        joined[key] = cache
    return joined


def _cut(tensor, a: int, b: int):
    """Rows [a, b) of an input; inputs of a Parallel call are not replicated here, so they wrap around."""
    if tensor is None:
        return None
    if b <= tensor.shape[0]:
        return tensor[a:b]
    rows = torch.arange(a, b, device=tensor.device) % tensor.shape[0]
    return tensor[rows]


def head_setup_of(setup):
    """The heads a setup implies, as AdapterHub's `parse_heads_from_composition`: a Stack's last child; a name;
    a Parallel's children (their last adapter); a BatchSplit of the children's heads; None for Fuse, Split, Average.
    """
    final = setup.children[-1] if isinstance(setup, Stack) else setup
    if isinstance(final, str):
        return final
    if isinstance(final, Parallel):
        return [c if isinstance(c, str) else c.last() for c in final]
    if isinstance(final, BatchSplit):
        return BatchSplit(*[c if isinstance(c, str) else c.last() for c in final], batch_sizes=final.batch_sizes)
    return None


class AutoAdapterModel:
    """Factory with AdapterHub's name: `AutoAdapterModel.from_pretrained(id_or_path)`."""

    @staticmethod
    def from_pretrained(pretrained_model_name_or_path, **kwargs) -> AdapterModel:
        return AdapterModel.from_pretrained(pretrained_model_name_or_path, **kwargs)

    @staticmethod
    def from_config(config, **kwargs) -> AdapterModel:
        return AdapterModel.from_config(config, **kwargs)


AutoModelWithHeads = AutoAdapterModel


def load_model(model_name_or_path, model_class, interface: AdapterModelInterface | None = None, *args, **kwargs):
    """Load a model saved with `save_pretrained` after `init()` (or an AdapterModel), with its adapters and fusions.

    `model_class` is the transformers class to load it with (e.g. `BertForSequenceClassification`, `AutoModel`)
    or an AdapterModel class. `output_loading_info=True` also returns transformers' loading info for the base
    weights (adapter weights are checked key by key and refused on a mismatch).
    """
    if isinstance(model_class, type) and issubclass(model_class, AdapterModel) or model_class is AutoAdapterModel:
        return model_class.from_pretrained(model_name_or_path, *args, **kwargs)
    if interface is None:
        interface = saved_interface(model_name_or_path)
    kwargs.pop("trust_remote_code", None)
    loaded = model_class.from_pretrained(model_name_or_path, *args, trust_remote_code=False, **kwargs)
    model, info = loaded if kwargs.get("output_loading_info") else (loaded, None)
    init(model, interface=interface)
    if info is not None:  # weights the family's preparation removed (X-MOD's language adapters) are not missing
        present = set(model.state_dict())
        info["missing_keys"] = type(info["missing_keys"])(k for k in info["missing_keys"] if k in present)
    model._load_saved_parts(model_name_or_path)
    return (model, info) if info is not None else model


__all__ = ["AdapterModel", "AutoAdapterModel", "AutoModelWithHeads", "init", "load_model", "ClassificationHead"]
