"""Every transformers internal the workbench relies on, in one place.

The rest of the package imports these names from here and only from here; public transformers API used the
documented way (AutoModel, PreTrainedModel, Trainer, TrainingArguments, output classes) is imported directly.
Each item below says what the workbench uses it for; tests/test_transformers_api.py has one test per item that
fails, naming the item, when a transformers release moves or changes it.

Some internals are attributes rather than importable names (`config._attn_implementation`, GPT-2's
`_upcast_and_reordered_attn`, the per-model `eager_attention_forward`, `_set_gradient_checkpointing`, class
flags). Those are described here by name (constants and small accessors); their call sites are listed with each.

Not an import, but also an internal: the module paths in `workbench.core.families.ARCHITECTURES` (where each adapter
method hooks into each model type). `test_arch_paths` checks every path of every architecture on a tiny model.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping

from transformers import AttentionInterface
from transformers.activations import ACT2FN, get_activation
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import ModelOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

__all__ = [  # plus the names in TRAINER_INTERNALS, imported on first use
    "ACT2FN",
    "ALL_ATTENTION_FUNCTIONS",
    "ALL_MASK_ATTENTION_FUNCTIONS",
    "ATTN_IMPLEMENTATION_ATTR",
    "CACHE_ARGUMENTS",
    "AttentionInterface",
    "AttentionMaskInterface",
    "Conv1D",
    "EAGER_ATTENTION_FUNCTION",
    "GPT2_UPCAST_FLAG",
    "GPT2_UPCAST_METHOD",
    "GRADIENT_CHECKPOINTING_PARAMS",
    "GradientCheckpointingLayer",
    "MODEL_CLASS_FLAGS",
    "RELATIVE_BIAS_METHOD",
    "ModelOutput",
    "SET_ATTN_IMPLEMENTATION",
    "TRAINER_INTERNALS",
    "TRAINER_HOOKS",
    "attn_implementation",
    "cache_length",
    "eager_attention_of",
    "eager_mask",
    "get_activation",
    "gpt2_upcast_attention",
    "relative_position_bias",
    "sdpa_attention_forward",
    "sdpa_mask",
]

# --- attention functions and masks (prefix tuning, fast dropout) ------------------------------------------------

AttentionInterface = AttentionInterface
"""Registers named attention functions, called as `fn(module, query, key, value, attention_mask, *, dropout,
scaling, **kwargs) -> (output (N, Q, H, D), weights)` with query/key/value as (N, H, L, D). Prefix tuning registers
`workbench_prefix:<impl>` (methods/prefix_tuning.py), fast dropout `workbench_fast_sdpa` (train/fast_dropout.py)."""

ALL_ATTENTION_FUNCTIONS = ALL_ATTENTION_FUNCTIONS
"""The global name -> attention function registry (`in`, `[]`): prefix tuning checks that a name is registered and
calls the implementation it wraps through it; "eager" is not in it (see `EAGER_ATTENTION_FUNCTION`)."""

AttentionMaskInterface = AttentionMaskInterface
"""Registers the mask builder for a named attention implementation: prefix tuning and fast dropout register one for
their own implementation names (otherwise transformers would not build a mask for them)."""

ALL_MASK_ATTENTION_FUNCTIONS = ALL_MASK_ATTENTION_FUNCTIONS
"""The global implementation name -> mask builder registry (`.get`): prefix tuning reuses the wrapped
implementation's builder and tells from it whether masks are bool (sdpa) or additive float (eager)."""

eager_mask = eager_mask
"""Builds additive float masks (0 / dtype min); prefix tuning compares against it by identity and uses it as the
default builder, extending such masks with float blocks."""

sdpa_mask = sdpa_mask
"""Builds bool masks (True attends); prefix tuning compares against it by identity (bool prefix blocks) and fast
dropout registers it as the mask builder of its attention function."""

sdpa_attention_forward = sdpa_attention_forward
"""transformers' sdpa attention function `(module, query, key, value, attention_mask, dropout, scaling, is_causal,
...)`: fast dropout calls it for every call its explicit path does not cover."""

EAGER_ATTENTION_FUNCTION = "eager_attention_forward"
"""Each model's modeling module defines its own module-level eager attention function under this name, with the
attention-function calling convention. Prefix tuning wrapping "eager" calls it, looked up as
`sys.modules[type(module).__module__].eager_attention_forward` (methods/prefix_tuning.py)."""


def eager_attention_of(module):
    """The eager attention function of the modeling module that defines `module`'s class."""
    return getattr(sys.modules[type(module).__module__], EAGER_ATTENTION_FUNCTION)


GPT2_UPCAST_FLAG = "reorder_and_upcast_attn"
"""GPT-2 attention modules carry this flag (from the config); when set, their eager path is their own method
`GPT2_UPCAST_METHOD` instead of `eager_attention_forward`, and prefix tuning's eager wrapper does the same."""

GPT2_UPCAST_METHOD = "_upcast_and_reordered_attn"
"""GPT-2's `_upcast_and_reordered_attn(query, key, value, attention_mask)`, called by prefix tuning's eager wrapper
on modules whose `GPT2_UPCAST_FLAG` is set (methods/prefix_tuning.py)."""


def gpt2_upcast_attention(module):
    """GPT-2's upcast-and-reorder eager attention bound to `module` when its flag is set, else None."""
    return getattr(module, GPT2_UPCAST_METHOD) if getattr(module, GPT2_UPCAST_FLAG, False) else None


RELATIVE_BIAS_METHOD = "compute_bias"
"""T5-style attentions with a relative position bias (`relative_attention_bias`, only in a stack's first block)
compute it as `compute_bias(query_length, key_length, device=None, past_seen_tokens=0) -> (1, H, Q, K)`, with
queries at positions past..past+Q-1 and keys at 0..K-1. Prefix tuning recomputes it over the prefixed keys
(methods/prefix_tuning.py)."""


def relative_position_bias(attention, queries: int, keys: int, past: int, device=None):
    """`attention`'s relative position bias `(1, H, queries, keys)` for queries starting at position `past`."""
    return getattr(attention, RELATIVE_BIAS_METHOD)(queries, keys, device=device, past_seen_tokens=past)


ATTN_IMPLEMENTATION_ATTR = "_attn_implementation"
"""`config._attn_implementation`: the name of the attention implementation a model runs (a key of
`ALL_ATTENTION_FUNCTIONS`, or "eager"). Read by prefix tuning (which to wrap), the engine's transactions (to restore
it) and fast dropout (core/methods/prefix_tuning.py, core/engine.py, train/fast_dropout.py)."""


def attn_implementation(config) -> str | None:
    """The attention implementation name a config's model runs (None when the config has none)."""
    return getattr(config, ATTN_IMPLEMENTATION_ATTR, None)


SET_ATTN_IMPLEMENTATION = "set_attn_implementation"
"""`PreTrainedModel.set_attn_implementation(name)`: switches a loaded model to any registered implementation name,
custom ones included. Prefix tuning, the engine's transaction rollback and fast dropout switch with it."""

# --- models ----------------------------------------------------------------------------------------------------

Conv1D = Conv1D
"""GPT-2's projection layer: a linear layer with the weight stored transposed, (in_features, out_features). LoRA
wraps it next to `nn.Linear` (methods/lora.py) and PEFT conversion transposes its weights (peft_format.py)."""

ModelOutput = ModelOutput
"""The base of model outputs (ordered dict plus attributes, `None` fields dropped): `MultiHeadOutput` subclasses it
(outputs.py) and heads get row slices of the base model's outputs built as plain `ModelOutput` (adapter_model.py)."""

ACT2FN = ACT2FN
"""Activation name -> module class: AdapterHub configs name activations by these keys (plus "leakyrelu"), so the
set of known names checked in configs comes from it (methods/activations.py)."""

get_activation = get_activation
"""Builds the activation module for an `ACT2FN` name (methods/activations.py)."""

GradientCheckpointingLayer = GradientCheckpointingLayer
"""The base of transformer layers that checkpoint: when enabled in training, a layer's call runs as
`self._gradient_checkpointing_func(partial(forward, self, **kwargs), *args)`. `keep_call_context` (context.py)
relies on that: the checkpoint function gets the layer call first, and runs it again on replay."""

GRADIENT_CHECKPOINTING_PARAMS = ("enable", "gradient_checkpointing_func", "every_n_layers")
"""`PreTrainedModel._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)`, called by
`activation_checkpointing_enable` (and its deprecated alias `gradient_checkpointing_enable`) with these keywords:
`ModelAdaptersMixin` overrides it to wrap the checkpoint function with `keep_call_context` and passes the rest on
(model_mixin.py)."""

MODEL_CLASS_FLAGS = (
    "supports_gradient_checkpointing",
    "_supports_sdpa",
    "_supports_flash_attn",
    "_supports_flex_attn",
    "_supports_attention_backend",
)
"""`PreTrainedModel` class flags that `AdapterModel` (a PreTrainedModel wrapping a base model) sets to True so
transformers lets it checkpoint and switch to every attention implementation the base model supports
(adapter_model.py)."""

# --- training ---------------------------------------------------------------------------------------------------
# Imported on first use (module `__getattr__`): `transformers.trainer_callback` pulls in `TrainingArguments`, which
# the engine alone never needs.

TRAINER_INTERNALS = {
    "PREFIX_CHECKPOINT_DIR": (
        "transformers.trainer_utils",
        'Trainer\'s checkpoint folder prefix ("checkpoint" -> `checkpoint-<step>`): the trainer names its checkpoints '
        "with it so Trainer's resume and rotation find them (train/runner.py).",
    ),
    "get_last_checkpoint": (
        "transformers.trainer_utils",
        "`get_last_checkpoint(folder)`: the newest `checkpoint-<step>` folder in a run folder, for resuming "
        "(train/runner.py).",
    ),
    "rotate_checkpoints": (
        "transformers.trainer_utils",
        "`rotate_checkpoints(output_dir, save_total_limit, best_model_checkpoint, use_mtime)`: deletes old "
        "checkpoints after the trainer saves one its own way (train/runner.py).",
    ),
    "ExportableState": (
        "transformers.trainer_callback",
        "Callbacks with `state()` / `from_state()` (early stopping's patience): the trainer stores their state into "
        "`TrainerState.stateful_callbacks` when it saves a checkpoint (train/runner.py).",
    ),
}
"""Name -> (transformers module, what the workbench uses it for) of the training internals."""


def __getattr__(name: str):
    if name in TRAINER_INTERNALS:
        value = getattr(importlib.import_module(TRAINER_INTERNALS[name][0]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


TRAINER_HOOKS = (
    "_save",
    "_save_checkpoint",
    "_get_output_dir",
    "_save_optimizer_and_scheduler",
    "_save_scaler",
    "_save_rng_state",
    "_load_from_checkpoint",
    "_load_best_model",
    "_push_from_checkpoint",
)
"""Private `Trainer` methods that `AdapterTrainer` overrides or calls to save and restore only adapters, fusions and
heads (train/adapter_trainer.py, train/runner.py)."""


CACHE_ARGUMENTS = ("cache", "past_key_values")
"""The key/value cache argument of a base model's forward: `cache` in transformers 5, `past_key_values` before.
Read by `cache_length` (ReFT tells a prompt forward from a decoding step by it, methods/reft.py)."""


def cache_of(outputs) -> tuple[str | None, object]:
    """(key, cache) of the key/value cache a model output carries, read without transformers 5's deprecation
    warning for `outputs.past_key_values`; (None, None) when it carries none."""
    if isinstance(outputs, Mapping):
        for key in CACHE_ARGUMENTS:
            if key in outputs.keys() and outputs[key] is not None:  # keys(): no renaming, so no warning
                return key, outputs[key]
    return None, None


def cache_length(cache) -> int:
    """How many positions a key/value cache already holds (0 for None or an empty cache)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:  # a legacy tuple of (key, value) pairs
        return int(cache[0][0].shape[-2])
    return 0
