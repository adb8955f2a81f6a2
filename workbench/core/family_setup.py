"""What a few model families need beyond their `ArchSpec` places: configuration checks and AdapterHub's changes.

Each function is an `ArchSpec.prepare`: it is called with the base model when the engine attaches, checks first
(raising UnsupportedModelError with the model unchanged) and only then changes anything.
"""

from __future__ import annotations

import functools

from torch import nn

from .errors import UnsupportedModelError


def check_albert(base: nn.Module) -> None:
    """ALBERT runs its layer groups' layers again and again (weights shared across depth); adapters there act on
    every pass, as in AdapterHub."""
    _check_no_chunking(base.config, "ALBERT")


def _check_no_chunking(config, family: str) -> None:
    """A chunked FFN calls its projections once per chunk, but the post-FFN norm once: the residual site would see
    only the last chunk."""
    chunk = getattr(config, "chunk_size_feed_forward", 0)
    if chunk:
        raise UnsupportedModelError(
            f"{family} with chunk_size_feed_forward={chunk} is not supported by the adapter engine (its FFN residual "
            "site needs the whole sequence in one call); use chunk_size_feed_forward=0"
        )


# X-MOD options under which transformers' `XmodOutput` computes `LayerNorm(h + r)` as a module call whose result is
# the output (no language adapter left to add), which is where AdapterHub puts its output adapters.
_XMOD_LAYOUT = {
    "pre_norm": False,
    "ln_before_adapter": True,
    "adapter_layer_norm": False,
    "adapter_reuse_layer_norm": True,
}


def prepare_xmod(base: nn.Module) -> None:
    """AdapterHub's X-MOD (`XmodAdapterModel`): the built-in language adapters are removed and AdapterHub adapters
    take their place after the FFN; `lang_ids` is refused (choose adapters with `set_active_adapters` instead).

    The language adapters become empty (a `ModuleDict` without entries: transformers' forward still runs, adds
    nothing, and their weights leave the state dict as in AdapterHub). X-MOD checkpoints use the default layout; the
    other options place the norms where hooks cannot reproduce AdapterHub's output and are refused.
    """
    config = base.config
    wrong = {k: getattr(config, k, v) for k, v in _XMOD_LAYOUT.items() if getattr(config, k, v) != v}
    if wrong:
        raise UnsupportedModelError(
            f"X-MOD with {', '.join(f'{k}={v!r}' for k, v in wrong.items())} is not supported by the adapter engine; "
            f"it supports X-MOD's default layout ({', '.join(f'{k}={v!r}' for k, v in _XMOD_LAYOUT.items())})"
        )
    _check_no_chunking(config, "X-MOD")
    if getattr(base, "_xmod_prepared", False):  # a second engine on the same model (its hook would see our `1`)
        return
    base._xmod_prepared = True
    for layer in base.encoder.layer:
        layer.output.adapter_modules = nn.ModuleDict()
    base.register_forward_pre_hook(_refuse_lang_ids, with_kwargs=True)
    # transformers' versions would switch or freeze language adapters that are gone: AdapterHub's replace them
    base.set_default_language = _no_default_language
    base.freeze_embeddings_and_language_adapters = functools.partial(_freeze_embeddings_and_adapters, base)


def _no_default_language(language: str) -> None:
    raise ValueError(
        "`set_default_language` is not implemented for models using adapters. Use `set_active_adapters` instead."
    )


def _freeze_embeddings_and_adapters(base: nn.Module) -> None:
    """AdapterHub's X-MOD: freeze the embeddings and every adapter (its adapters are the language adapters now)."""
    for param in base.embeddings.parameters():
        param.requires_grad = False
    engine = base._engine
    for name in engine.configs:
        for _, param in engine.named_parameters_of(name):
            param.requires_grad = False


def _refuse_lang_ids(module, args, kwargs):
    """AdapterHub's X-MOD refuses `lang_ids` and passes a placeholder (no language adapter reads it any more)."""
    if (len(args) > 1 and args[1] is not None) or kwargs.get("lang_ids") is not None:
        raise ValueError(
            "XmodModel with adapters does not support `lang_ids` as an argument. Use `set_active_adapters` instead."
        )
    if len(args) > 1:
        return (args[0], 1, *args[2:]), kwargs
    return args, {**kwargs, "lang_ids": 1}
