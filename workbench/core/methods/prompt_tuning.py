"""Prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691) on unmodified encoder models.

P trainable vectors are inserted into the output of the embeddings module (after position embeddings,
LayerNorm and dropout), before [CLS], so the model's output has T+P positions. The 2-D attention mask is
widened with P ones when the forward starts, so every token attends to the prompt and padding still holds.
Models whose spec names a `prompt_mask` module (DeBERTa) get the widened attention matrix there instead: their
embeddings read the input mask too. Only the first adapter of the active setup contributes a prompt, as in
AdapterHub.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from ..archs import get_module
from ..configs import PromptTuningConfig
from ..context import current_call
from ..errors import AdapterConfigError, CompositionError, UnsupportedModelError
from ..rows import runs
from ..runtime import ALL_BLOCKS, check_channels_start_alike
from .base import AdapterMethod


class PromptTuning(nn.Module):
    """`prompt_embedding`: an embedding table of `prompt_length` positions."""

    def __init__(self, config: PromptTuningConfig, embedding_size: int):
        super().__init__()
        if config.init_weights_seed:
            torch.manual_seed(config.init_weights_seed)
        self.combine = config.combine
        self.prompt_embedding = nn.Embedding(config.prompt_length, embedding_size)
        scale = PromptTuningConfig.random_uniform_scale
        nn.init.uniform_(self.prompt_embedding.weight, -scale, scale)

    @property
    def length(self) -> int:
        return self.prompt_embedding.num_embeddings

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        prompt = self.prompt_embedding.weight.to(embeddings.dtype)
        prompt = prompt.unsqueeze(0).expand(embeddings.shape[0], -1, -1)
        if self.combine == "prefix_after_bos":
            return torch.cat([embeddings[:, :1], prompt, embeddings[:, 1:]], dim=1)
        return torch.cat([prompt, embeddings], dim=1)


class _RowPrompts:
    """Runs of rows, each with its own prompt (all of one length): `(prompt, start, stop)`."""

    def __init__(self, parts):
        self.parts = parts
        self.length = parts[0][0].length

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.cat([prompt(embeddings[a:b]) for prompt, a, b in self.parts])


class PromptTuningLayer(nn.Module):
    """`prompt_tunings.<name>` on the base model."""

    def __init__(self):
        super().__init__()
        self.prompt_tunings = nn.ModuleDict()


class PromptTuningMethod(AdapterMethod):
    """Adds and removes prompts, inserts the active one after the embeddings and widens the mask."""

    kind = "prompt_tuning"
    supports = ALL_BLOCKS  # only the first adapter of the setup contributes a prompt, whatever the blocks

    def __init__(self, engine):
        super().__init__(engine)  # the spec says whether prompts apply (not to decoders, as in AdapterHub)
        params = list(inspect.signature(engine.base.forward).parameters)
        self.mask_position = params.index("attention_mask") if "attention_mask" in params else None
        self._handle = None
        self._mask_handle = None
        self.attached = False  # a plain flag for the hooks: torch.compile cannot trace a hook handle

    def _attach(self) -> None:
        base = self.engine.base
        if self.engine.spec.embeddings_input:  # the mask is built before that module runs: no room for a prompt
            raise UnsupportedModelError("prompt tuning needs an embedding module whose output it can extend")
        base.prompt_tuning = PromptTuningLayer()
        self._handle = get_module(base, self.engine.spec.embeddings).register_forward_hook(self._on_embeddings)
        if self.engine.spec.prompt_mask:
            module = get_module(base, self.engine.spec.prompt_mask)
            self._mask_handle = module.register_forward_pre_hook(self._on_mask_module, with_kwargs=True)
        self.attached = True

    def _detach(self) -> None:
        self._handle.remove()
        self._handle = None
        self.attached = False
        if self._mask_handle is not None:
            self._mask_handle.remove()
            self._mask_handle = None
        del self.engine.base.prompt_tuning

    def add(self, name: str, config: PromptTuningConfig) -> None:
        if config.prompt_init == "from_string":
            raise AdapterConfigError(
                "prompt_init='from_string' is not supported yet (it needs a tokenizer); use 'random_uniform'"
            )
        if not self.attached:
            self._attach()
        size = getattr(self.engine.base.config, "embedding_size", None) or self.engine.hidden_size
        layer = self.engine.base.prompt_tuning
        layer.prompt_tunings[name] = PromptTuning(config, size).train(layer.training)
        self.engine.register(name, f"prompt_tuning.prompt_tunings.{name}", layer.prompt_tunings[name])

    def delete(self, name: str) -> None:
        layer = getattr(self.engine.base, "prompt_tuning", None)
        if layer is not None and name in layer.prompt_tunings:
            del layer.prompt_tunings[name]
        if layer is not None and not len(layer.prompt_tunings):
            self._detach()
        self.engine.unregister(name)

    def check_setup(self, setup) -> None:
        """Channels that start with different prompt tunings (or none) are refused: one prompt is prepended to
        the whole batch, before Parallel/BatchSplit/MultiTask split it."""
        layer = getattr(self.engine.base, "prompt_tuning", None)
        prompts = layer.prompt_tunings if layer is not None else {}
        check_channels_start_alike(setup, lambda name: name if name in prompts else None, "prompt tuning")

    def active(self, ctx) -> PromptTuning | None:
        if ctx is None or ctx.setup is None:
            return None
        prompts = self.engine.base.prompt_tuning.prompt_tunings
        if ctx.rows is not None:
            return self._row_prompts(ctx.rows, prompts)
        name = ctx.setup.first()
        return prompts[name] if name in prompts else None

    def _row_prompts(self, rows, prompts) -> _RowPrompts | None:
        """Per-row adapters: well defined when every row has a prompt of one length, inserted the same way (a row
        without one would have a different sequence length); one adapter for all rows is the usual prompt."""
        parts = [(prompts[n] if n in prompts else None, a, b) for n, a, b in runs(rows)]
        if all(p is None for p, _, _ in parts):
            return None
        if len(parts) == 1:
            return parts[0][0]
        shapes = {(p.length, p.combine) if p is not None else None for p, _, _ in parts}
        if len(shapes) > 1:
            raise CompositionError(
                f"adapter_names {list(dict.fromkeys(rows))}: prompt tuning runs row by row only when every row has "
                "a prompt of the same length and combine mode (the prompt changes the sequence length)"
            )
        return _RowPrompts(parts)

    def _on_embeddings(self, module, args, output):
        prompt = self.active(current_call(self.engine))
        return prompt(output) if prompt is not None else None

    def _on_mask_module(self, module, args, kwargs):
        """The `prompt_mask` module's `(N, T)` mask becomes the `(N, P+T, P+T)` attention matrix AdapterHub builds:
        token rows and columns as the model would make them (`m_i * m_j`), prompt rows and columns all ones."""
        prompt = self.active(current_call(self.engine))
        in_args = "attention_mask" not in kwargs and len(args) > 1
        mask = args[1] if in_args else kwargs.get("attention_mask")
        if prompt is None or mask is None:
            return None
        if mask.dim() != 2:
            raise UnsupportedModelError(f"prompt tuning needs a 2-D attention_mask, not {tuple(mask.shape)}")
        length = prompt.length
        rows, tokens = mask.shape
        matrix = mask.new_ones(rows, length + tokens, length + tokens)
        matrix[:, length:, length:] = mask[:, :, None] * mask[:, None, :]
        if in_args:
            return (args[0], matrix, *args[2:]), kwargs
        return args, {**kwargs, "attention_mask": matrix}

    def begin(self, ctx, args, kwargs):
        """Prepend P ones to a 2-D attention mask (positional or keyword)."""
        prompt = self.active(ctx) if self.attached else None
        if prompt is None or self.engine.spec.prompt_mask:
            return None
        position = self.mask_position
        in_args = "attention_mask" not in kwargs and position is not None and len(args) > position
        mask = args[self.mask_position] if in_args else kwargs.get("attention_mask")
        if mask is None:
            return None
        if mask.dim() != 2:
            raise UnsupportedModelError(f"prompt tuning needs a 2-D attention_mask, not {tuple(mask.shape)}")
        mask = torch.cat([torch.ones_like(mask[:, :1]).expand(-1, prompt.length), mask], dim=1)
        if in_args:
            args = (*args[: self.mask_position], mask, *args[self.mask_position + 1 :])
        else:
            kwargs = {**kwargs, "attention_mask": mask}
        return args, kwargs
