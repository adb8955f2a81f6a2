"""Switchable input embeddings (AdapterHub's `add_embeddings` API), e.g. a new vocabulary for a new language.

A model keeps named embeddings beside its own (named "default"); exactly one of them is the base model's input
embedding at a time, and `config.vocab_size` follows it. The others live in a plain dict, out of the state dict
and out of `model.to(...)`, as in AdapterHub (`loaded_embeddings`); an embedding gets the device and dtype of the
one it replaces when it is activated. Saved embeddings use AdapterHub's layout: `embedding.pt` (the weight
matrix; read back with `torch.load(weights_only=True)`, never unpickled freely) and an optional `tokenizer/`
folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import files
from .errors import AdapterConfigError, AdapterLoadError, UnsupportedModelError
from .names import check_name

DEFAULT = "default"  # the name of the model's own embedding


class EmbeddingStore:
    """The named embeddings of one model; `loaded` is AdapterHub's `loaded_embeddings` dict."""

    def __init__(self, base: nn.Module):
        self.base = base
        self.loaded: dict[str, nn.Embedding] = {}
        self.active = DEFAULT
        if not isinstance(getattr(type(base), "loaded_embeddings", None), property):  # not the mixin itself
            base.loaded_embeddings = self.loaded  # AdapterHub keeps the dict on the base model

    def current(self, name: str) -> nn.Embedding:
        """The embedding `name`; the active one is read from the model (it may have been replaced there)."""
        if name == self.active:
            return self.base.get_input_embeddings()
        if name not in self.loaded:
            known = ", ".join(sorted({*self.loaded, self.active}))
            raise AdapterConfigError(f"no embedding named {name!r} (embeddings: {known})")
        return self.loaded[name]

    def activate(self, name: str) -> None:
        embedding = self.current(name)
        old = self.base.get_input_embeddings()
        if embedding is not old:
            reference = old.weight
            embedding.to(device=reference.device, dtype=reference.dtype)
            self.loaded[self.active] = old
            self.base.set_input_embeddings(embedding)
        self.loaded[name] = embedding
        self.base.config.vocab_size = embedding.num_embeddings
        self.active = name

    def add(self, name: str, embedding: nn.Embedding) -> None:
        if name in self.loaded or name == self.active:
            raise AdapterConfigError(f"an embedding named {name!r} already exists")
        self.loaded[name] = embedding
        self.activate(name)

    def delete(self, name: str) -> None:
        if name == DEFAULT:
            raise AdapterConfigError("the model's own embedding ('default') cannot be deleted")
        self.current(name)  # raises for an unknown name
        if name == self.active:
            self.activate(DEFAULT)
        del self.loaded[name]


def store_of(engine) -> EmbeddingStore:
    """The engine's embedding store, created on first use."""
    store = getattr(engine, "embeddings", None)
    if store is None:
        store = engine.embeddings = EmbeddingStore(engine.base)
    return store


def new_embedding(
    store: EmbeddingStore, tokenizer, reference_embedding=None, reference_tokenizer=None, embedding_dim=None
) -> nn.Embedding:
    """An embedding with one row per token of `tokenizer`, initialised as the model's own; tokens that
    `reference_tokenizer` also knows start from their row in the embedding named `reference_embedding`."""
    if (reference_embedding is None) != (reference_tokenizer is None):
        raise AdapterConfigError("reference_embedding and reference_tokenizer must be given together")
    config = store.base.config
    size = embedding_dim or getattr(config, "embedding_size", None) or store.base.get_input_embeddings().embedding_dim
    embedding = nn.Embedding(len(tokenizer), size)
    with torch.no_grad():
        embedding.weight.normal_(mean=0.0, std=getattr(config, "initializer_range", 0.02))
        if reference_embedding is not None:
            source = store.current(reference_embedding).weight
            if source.shape[1] != size:
                raise AdapterConfigError(
                    f"reference embedding {reference_embedding!r} has dimension {source.shape[1]}, not {size}"
                )
            vocab, reference_vocab = tokenizer.get_vocab(), reference_tokenizer.get_vocab()
            shared = sorted(set(vocab) & set(reference_vocab))
            rows = torch.tensor([vocab[t] for t in shared], dtype=torch.long)
            reference_rows = torch.tensor([reference_vocab[t] for t in shared], dtype=torch.long)
            embedding.weight[rows] = source.detach()[reference_rows.to(source.device)].to(embedding.weight)
    return embedding.requires_grad_(False).train(False)


def save(store: EmbeddingStore, path, name: str, tokenizer=None) -> None:
    """Write `embedding.pt` (and `tokenizer/` if a tokenizer is given) to the folder `path`."""
    weight = store.current(name).weight.detach().cpu().clone()
    folder = Path(path)
    files.write_tensor(folder / files.EMBEDDING_FILE, weight)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder / files.TOKENIZER_PATH))


def read(path, hidden: int) -> tuple[torch.Tensor, object]:
    """The weight matrix in `path/embedding.pt` and the tokenizer in `path/tokenizer` (None if absent)."""
    folder = Path(path)
    weight_path = folder / files.EMBEDDING_FILE
    if not weight_path.is_file():
        raise AdapterLoadError(f"no embedding ({files.EMBEDDING_FILE}) in {folder}")
    files.check_inside(weight_path)
    weight = files.load_torch_file(weight_path, "embedding file")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
        raise AdapterLoadError(f"{weight_path} must hold one 2-D floating-point tensor (vocabulary x dimension)")
    if weight.shape[0] < 1 or weight.shape[1] != hidden:
        raise AdapterLoadError(
            f"{weight_path} holds a {tuple(weight.shape)} embedding; this model's embeddings have dimension {hidden}"
        )
    if not torch.isfinite(weight).all():
        raise AdapterLoadError(f"{weight_path} holds NaN or infinite values")
    tokenizer = None
    tokenizer_path = folder / files.TOKENIZER_PATH
    if tokenizer_path.is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), trust_remote_code=False)
    return weight.detach().clone(), tokenizer


class EmbeddingsMixin:
    """AdapterHub's embedding methods, for every workbench model (`ModelAdaptersMixin` inherits them)."""

    @property
    def _embeddings(self) -> EmbeddingStore:
        return store_of(self._engine)

    def _token_embeddings(self) -> EmbeddingStore:
        """The store, for the operations that need a token embedding (a vision model's patch embedding is none)."""
        base = self._engine.base
        try:
            embedding = base.get_input_embeddings()
        except NotImplementedError:  # several towers (CLIPModel): no one input embedding to switch
            embedding = None
        if not isinstance(embedding, nn.Embedding):
            kind = f"through a {type(embedding).__name__}" if embedding is not None else "through no one embedding"
            raise UnsupportedModelError(
                f"named embeddings replace a token embedding; this {base.config.model_type!r} model reads "
                f"{getattr(base, 'main_input_name', 'its inputs')} {kind}"
            )
        return self._embeddings

    @property
    def active_embeddings(self) -> str:
        """The name of the embedding the model currently reads its input ids with."""
        return self._embeddings.active

    @property
    def loaded_embeddings(self) -> dict[str, nn.Embedding]:
        """Name -> embedding; the active one is the model's input embedding."""
        return self._embeddings.loaded

    def add_embeddings(self, name, tokenizer, reference_embedding=None, reference_tokenizer=None, embedding_dim=None):
        """Add an embedding for `tokenizer`'s vocabulary and make it active.

        Args:
            reference_embedding: the name of an embedding whose rows initialise the tokens that
                `reference_tokenizer` (its vocabulary) shares with `tokenizer`.
            embedding_dim: the embedding size (default: `config.embedding_size`, else the current embedding's).
        """
        check_name(name, "embedding")
        store = self._token_embeddings()
        if name in store.loaded or name == store.active:
            raise AdapterConfigError(f"an embedding named {name!r} already exists")
        store.add(name, new_embedding(store, tokenizer, reference_embedding, reference_tokenizer, embedding_dim))

    def delete_embeddings(self, name: str) -> None:
        """Delete embedding `name`; if it is active, the model's own ("default") becomes active again."""
        self._embeddings.delete(name)

    def set_active_embeddings(self, name: str) -> None:
        """Make embedding `name` the model's input embedding (and `config.vocab_size` its size)."""
        self._embeddings.activate(name)

    def save_embeddings(self, path, name: str, tokenizer=None) -> None:
        """Save embedding `name` to the folder `path` (AdapterHub's `embedding.pt`), with `tokenizer` if given."""
        save(self._token_embeddings(), path, name, tokenizer)

    def load_embeddings(self, path, name: str):
        """Load an embedding saved by `save_embeddings` as `name` and make it active; returns the tokenizer saved
        with it, or None."""
        check_name(name, "embedding")
        store = self._token_embeddings()
        if name in store.loaded or name == store.active:
            raise AdapterConfigError(f"an embedding named {name!r} already exists")
        weight, tokenizer = read(path, self._engine.base.get_input_embeddings().embedding_dim)
        embedding = nn.Embedding.from_pretrained(weight, freeze=True)
        store.add(name, embedding)
        return tokenizer
