"""What the engine keeps for one model: configs, fusions, the active setup, method objects, owned modules.

Nothing here changes during a forward pass: per-call state lives in `context.ForwardContext`. Each adapter's
modules are registered under their state-dict path when a method adds them, so collecting, moving, freezing,
saving or deleting one adapter touches only its own modules, however many others are loaded.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from dataclasses import dataclass

import torch
from torch import nn

from . import methods as method_registry
from .archs import LayerStack, get_module
from .composition import Block
from .context import (
    ForwardContext,
    batch_size_of,
    current_call,
    enter_call,
    leave_call,
    replicate_batch,
    scoped_setup,
)
from .families import spec_for
from .rows import BASE, current_plan, drop_dead_plans, enter_plan, leave_plan, row_names, setup_of
from .rows import check_names as check_row_names
from .runtime import check_batch, check_setup, task_rows
from .thread_slot import ThreadSlot

# A task model's call (init()-ed `...For<Task>`, CLIPTextModelWithProjection) that asked for fusion attentions or
# gating scores: the base model's call leaves them here, and the task model's output gets them (its own object).
_ROOT_EXTRAS = ThreadSlot("workbench_root_extras")
_EXTRA_FLAGS = ("output_adapter_fusion_attentions", "output_adapter_gating_scores")


@dataclass(frozen=True)
class LayerRef:
    """One transformer layer: its position in `layer_refs`, its path in the base model, the module, its stack's spec,
    and its AdapterHub layer id (`leave_out`, `skip_layers`, per-layer options): the index, except in stacks of a
    sub-model, numbered from 0 (`LayerStack.submodel`)."""

    index: int
    path: str
    module: nn.Module
    stack: LayerStack
    layer_id: int


class EngineState:
    """Per-model engine state (not per call)."""

    def __init__(self, root: nn.Module, base: nn.Module, spec=None):
        self.root = root
        self.base = base
        self.spec = spec or spec_for(base)
        if self.spec.prepare is not None:  # checks the configuration first, then makes the family's own changes
            self.spec.prepare(base)
        self._layer_refs: list[LayerRef] | None = None
        self._layer_paths: dict[str, LayerRef] | None = None
        # where the root model holds the base: usually its `base_model_prefix` ("bert"); CLIPTextModelWithProjection
        # holds its CLIPTextModel (whose own prefix is "clip") as `text_model`
        self.base_path = "" if root is base else _path_of(root, base)
        self.base_prefix = self.base_path + "." if self.base_path else ""
        self.configs: dict = {}
        self.fusions: dict[str, tuple[list[str], object]] = {}
        self.active_setup: Block | None = None
        self.skip_layers: set[int] = set()
        self.methods: dict[str, object] = {}
        self.interface = None  # the AdapterModelInterface the model was given, if any
        self.owned: dict[str, dict[str, nn.Module]] = {}  # adapter or fusion key -> {path in root: module}
        self.version = 0  # bumped whenever an adapter or fusion is added or removed (scoped setups re-check then)
        self._checked_scoped: tuple | None = None
        self.embeddings = None  # the named input embeddings (`embeddings.EmbeddingStore`), made on first use
        self._checked_rows: tuple | None = None
        self._undo: list[list] = []  # per open transaction: what undoes its changes made in place
        base.register_forward_pre_hook(self._begin, with_kwargs=True)
        base.register_forward_hook(self._end, always_call=True)
        # generate() runs an encoder-decoder model's encoder on its own, before the decoder steps; CLIP's
        # get_text_features/get_image_features run one tower
        for path in filter(None, (self.spec.encoder, *self.spec.entries)):
            entry = get_module(base, path)
            entry.register_forward_pre_hook(self._encoder_begin, with_kwargs=True)
            entry.register_forward_hook(self._encoder_end, always_call=True)
        if root is not base:  # `adapter_names` given to the task model holds for its head and head-side modules too
            root.register_forward_pre_hook(self._root_begin, with_kwargs=True)
            root.register_forward_hook(self._root_end, with_kwargs=True, always_call=True)

    # --- model facts -------------------------------------------------------------------------------------

    @property
    def layer_refs(self) -> list[LayerRef]:
        """Every layer of every stack, numbered across the stacks (AdapterHub's layer ids)."""
        if self._layer_refs is None:
            refs = []
            for stack in self.spec.stacks:
                for position, module in enumerate(get_module(self.base, stack.layers)):
                    layer_id = position if stack.submodel is not None else len(refs)
                    refs.append(LayerRef(len(refs), f"{stack.layers}.{position}", module, stack, layer_id))
            self._layer_refs = refs
        return self._layer_refs

    @property
    def saved_prefix(self) -> str:
        """The base model's prefix in files saved from a model with heads (`bert`): where the root holds the base,
        else (a bare base model) the base model's own `base_model_prefix`, which such files start with."""
        return self.base_path or self.base.base_model_prefix

    @property
    def layers(self) -> list[nn.Module]:
        return [ref.module for ref in self.layer_refs]

    def layer_at(self, path: str) -> tuple[LayerRef, str] | None:
        """The layer a module path of the root model lies in, and the path inside that layer (None: outside)."""
        if self._layer_paths is None:
            self._layer_paths = {self.base_prefix + ref.path: ref for ref in self.layer_refs}
        head, rest = path, ""
        while head:  # the longest path prefix that is a layer: a few dict lookups, however many layers
            if head in self._layer_paths:
                return self._layer_paths[head], rest
            head, _, tail = head.rpartition(".")
            rest = f"{tail}.{rest}" if rest else tail
        return None

    def hidden_size_of(self, stack) -> int:
        return stack.stack_config(self.base.config).hidden_size

    def reference_weight(self) -> torch.Tensor | None:
        """A weight of the base model whose device and dtype new adapters take (found in O(1))."""
        try:
            embeddings = self.base.get_input_embeddings() if hasattr(self.base, "get_input_embeddings") else None
        except NotImplementedError:  # a model of several towers (CLIPModel) has no one input embedding
            embeddings = None
        weight = getattr(embeddings, "weight", None)
        if weight is not None and weight.is_floating_point():
            return weight
        # a quantized model's int8/uint8 weights are no dtype for adapters: the first float weight is
        return next((p for p in self.base.parameters() if p.is_floating_point()), None)

    @property
    def hidden_size(self) -> int:
        return self.spec.model_config(self.base.config).hidden_size

    # --- methods -----------------------------------------------------------------------------------------

    def method(self, kind: str):
        """The method object of `kind` for this model, created on first use."""
        if kind not in self.methods:
            self.methods[kind] = method_registry.method_class(kind)(self)
        return self.methods[kind]

    def method_kinds(self, name: str) -> list[str]:
        if name == BASE:  # a row of `adapter_names` without an adapter
            return []
        return [kind for kind, _ in method_registry.method_parts(self.configs[name])]

    # --- owned modules -----------------------------------------------------------------------------------

    def register(self, owner: str, path: str, module: nn.Module, in_root: bool = False) -> None:
        """Record that `module`, at `path` in the base model, belongs to adapter (or fusion) `owner`.

        `in_root`: `path` is relative to the root model instead (a module outside the base, e.g. a task head that a
        PEFT adapter trains as a copy)."""
        self.owned.setdefault(owner, {})[path if in_root else self.base_prefix + path] = module
        self.version += 1

    def unregister(self, owner: str, path: str | None = None, in_root: bool = False) -> None:
        self.version += 1
        if path is None:
            self.owned.pop(owner, None)
        elif owner in self.owned:
            self.owned[owner].pop(path if in_root else self.base_prefix + path, None)

    def named_parameters_of(self, owner: str):
        """(state-dict key, parameter) of every weight of `owner`, shared ones under each of their paths."""
        for path, module in self.owned.get(owner, {}).items():
            yield from module.named_parameters(prefix=path, remove_duplicate=False)

    def state_dict_of(self, owner: str, keep_vars: bool = False) -> dict[str, torch.Tensor]:
        state = {}
        for path, module in self.owned.get(owner, {}).items():
            module.state_dict(destination=state, prefix=path + ".", keep_vars=keep_vars)
        return state

    # --- transactions ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, root):
        """Undo everything the block changed if it raises: the model ends as it was.

        Adapters and fusions the block deleted or replaced come back with their own tensors (values, dtype, device,
        requires_grad); what was changed in place is undone through `on_undo`."""
        before = {
            "configs": dict(self.configs),
            "fusions": dict(self.fusions),
            "owned": {owner: dict(modules) for owner, modules in self.owned.items()},
            "active": self.active_setup,
            "skip": set(self.skip_layers),
            "attn": getattr(self.base.config, "_attn_implementation", None),
            "heads": dict(root.heads) if hasattr(root, "heads") else None,
            "active_head": getattr(root, "_active_head", None),
            "labels": (copy.copy(root.config.id2label), copy.copy(root.config.label2id)),
        }
        self._undo.append([])
        try:
            yield
        except BaseException:
            for undo in reversed(self._undo.pop()):
                undo()
            self._roll_back(root, before)
            raise
        done = self._undo.pop()
        if self._undo:  # an enclosing transaction may still fail: it undoes these writes too
            self._undo[-1].extend(done)

    def on_undo(self, undo) -> None:
        """Call `undo()` if the enclosing transaction (or one around it) fails: for changes made in place (a load
        into an adapter's weights), which the roll-back cannot see."""
        self._undo[-1].append(undo)

    def _roll_back(self, root, before: dict) -> None:
        owned = before["owned"]

        def changed(owner: str) -> bool:  # deleted, or rebuilt (new modules) inside the block
            return self.owned.get(owner) != owned.get(owner)

        for fusion in list(self.fusions):
            if self.fusions[fusion] is not before["fusions"].get(fusion) or changed("fusion:" + fusion):
                self._drop_fusion(fusion)
        for name in list(self.configs):
            if self.configs[name] is not before["configs"].get(name) or changed(name):
                self._drop_adapter(name)
        for name, config in before["configs"].items():
            if name not in self.configs:
                self.configs[name] = config
                for kind, part in method_registry.method_parts(config):
                    self.method(kind).add(name, part)
                self.put_back(name, owned.get(name, {}))
        for fusion, entry in before["fusions"].items():
            if fusion not in self.fusions:
                self.fusions[fusion] = entry
                self.method("bottleneck").add_fusion(fusion, *entry)
                self.put_back("fusion:" + fusion, owned.get("fusion:" + fusion, {}))
        self.active_setup, self.skip_layers = before["active"], before["skip"]
        if before["heads"] is not None:
            for name in [h for h in root.heads if h not in before["heads"]]:
                del root.heads[name]
            for name, head in before["heads"].items():
                if name not in root.heads or root.heads[name] is not head:
                    root.heads[name] = head
            root._active_head = before["active_head"]
        root.config.id2label, root.config.label2id = before["labels"]
        attn = before["attn"]
        if attn is not None and self.base.config._attn_implementation != attn:
            self.base.set_attn_implementation(attn)

    def _drop_fusion(self, fusion: str) -> None:
        with contextlib.suppress(Exception):
            self.method("bottleneck").delete_fusion(fusion)
        self.fusions.pop(fusion, None)
        self.unregister("fusion:" + fusion)

    def _drop_adapter(self, name: str) -> None:
        for kind in self.method_kinds(name):
            with contextlib.suppress(Exception):
                self.method(kind).delete(name)
        self.configs.pop(name, None)
        self.unregister(name)

    def put_back(self, owner: str, modules: dict[str, nn.Module]) -> None:
        """Give `owner`'s modules, just rebuilt at the same paths, the tensors and train/eval mode of `modules` (its
        modules from before): the rebuilt parameters take the old ones' data and requires_grad, so tied weights
        stay tied. Raises ValueError, changing nothing, where the two do not hold the same weights."""
        now = self.owned.get(owner, {})
        new, old = _tensors_of(now), _tensors_of(modules)
        if set(new) != set(old) or any(new[k].shape != old[k].shape for k in new):
            raise ValueError(f"{owner!r} was rebuilt with other weights than it had: {sorted(set(new) ^ set(old))[:4]}")
        for path, module in now.items():
            if path in modules:
                module.train(modules[path].training)
        for key, tensor in new.items():
            tensor.data = old[key].data
            if isinstance(tensor, nn.Parameter):
                tensor.requires_grad = old[key].requires_grad

    # --- forward -----------------------------------------------------------------------------------------

    def _setup_for_call(self) -> Block | None:
        plan = current_plan()
        if plan is not None:  # per-row adapters; modules outside the base model run after its call set this
            return plan.setups.get(id(self))
        scoped = scoped_setup()
        if scoped is None:
            return self.active_setup
        setup = scoped.adapter_setup
        if torch.compiler.is_compiling():  # checked while tracing; a graph's guards hold the setup and model state
            check_setup(setup, self)  # (a cache keyed by the block's id would recompile for every new block)
            return setup
        key = (id(scoped), setup, self.version)
        if self._checked_scoped != key:  # checked once per block and model state, not per forward
            check_setup(setup, self)
            self._checked_scoped = key
        return setup

    def drop_stale_state(self) -> None:
        """Forget what an interrupted call of this model left in this thread.

        torch runs the `always_call` hooks that clean up after a call only when the forward raised an `Exception`:
        a KeyboardInterrupt (stopping a notebook cell), or an error in a compiled region after a graph break,
        leaves the call's context, row plan and extras holder behind, and the next call would read them. A model
        called at its root (or its `generate`) is never inside its own call, so anything of its own is stale."""
        ctx = current_call(self)
        if ctx is not None and "token" in ctx.scratch:
            leave_call(ctx.scratch.pop("token"))
        plan = current_plan()
        while plan is not None and plan.owner == id(self.root) and plan.token is not None:
            leave_plan(plan.token)
            plan = current_plan()
        if not torch.compiler.is_compiling():
            drop_dead_plans()  # another model's interrupted call
        holder = _ROOT_EXTRAS.get()
        while holder is not None and holder["owner"] == id(self.root):
            _ROOT_EXTRAS.reset(holder["token"])
            holder = _ROOT_EXTRAS.get()

    def _root_begin(self, module, args, kwargs):
        self.drop_stale_state()
        if any(kwargs.get(flag) for flag in _EXTRA_FLAGS):  # this call's own holder (an older one is shadowed)
            holder = {"owner": id(module), "extras": {}}
            holder["token"] = _ROOT_EXTRAS.set(holder)
        names = kwargs.pop("adapter_names", None)
        if names is None:
            return None
        caller = None if torch.compiler.is_compiling() else sys._getframe(1)  # the call running this hook
        enter_plan(names, owner=id(module), frame=caller)
        return args, kwargs

    def _root_end(self, module, args, kwargs, output):
        plan = current_plan()
        if plan is not None and plan.owner == id(module):
            leave_plan(plan.token)
        holder = _ROOT_EXTRAS.get()
        if holder is not None and holder["owner"] == id(module):
            _ROOT_EXTRAS.reset(holder["token"])
            if output is not None and hasattr(output, "keys"):
                for key, value in holder["extras"].items():
                    output[key] = value
        return None

    def _encoder_begin(self, module, args, kwargs):
        """A call into the encoder alone starts a forward pass; inside the whole model's call it is part of it."""
        if current_call(self) is not None:
            return None
        result = self._begin(module, args, kwargs)
        current_call(self).scratch["encoder_call"] = True
        return result

    def _encoder_end(self, module, args, output):
        ctx = current_call(self)
        if ctx is not None and ctx.scratch.get("encoder_call"):
            self._end(module, args, output)

    def _begin(self, module, args, kwargs):
        if module is self.root:
            self.drop_stale_state()
        elif not torch.compiler.is_compiling():  # the base model called on its own, or inside its root's call
            drop_dead_plans()
        own = kwargs.pop("adapter_names", None)
        plan = enter_plan(own) if own is not None else None
        try:
            return self._start(args, kwargs)
        finally:
            if plan is not None:
                leave_plan(plan.token)

    def _start(self, args, kwargs):
        batch = batch_size_of(args, kwargs)
        plan, rows = current_plan(), None
        if plan is not None:
            rows = row_names(plan, batch)
            check_row_names(self, rows)
            setup = plan.setups[id(self)] = setup_of(rows)
        else:
            setup = self._setup_for_call()
        names = frozenset(setup.names()) if setup is not None else frozenset()
        ctx = ForwardContext(
            setup,
            names,
            output_fusion_attentions=bool(kwargs.pop("output_adapter_fusion_attentions", False)),
            output_gating_scores=bool(kwargs.pop("output_adapter_gating_scores", False)),
            rows=rows,
        )
        ctx.batch_size = batch
        check_batch(setup, ctx.batch_size)
        ctx.inputs["task_rows"] = task_rows(setup, kwargs.pop("task_ids", None), ctx.batch_size)  # MultiTask
        for method in self.methods.values():
            method.check_call(setup)
        if setup is not None and setup.parallel_channels > 1 and ctx.batch_size is not None:
            args, kwargs = replicate_batch(args, kwargs, ctx.batch_size, setup.parallel_channels)
        for method in self.methods.values():
            result = method.begin(ctx, args, kwargs)
            if result is not None:
                args, kwargs = result
        ctx.scratch["token"] = enter_call(self, ctx)
        return args, kwargs

    def _end(self, module, args, output):
        ctx = current_call(self)
        if ctx is None or ctx.replaying or "token" not in ctx.scratch:
            return None
        leave_call(ctx.scratch.pop("token"))
        if output is None or not hasattr(output, "keys"):
            return None
        extras = {}
        if ctx.output_fusion_attentions:
            extras["adapter_fusion_attentions"] = ctx.fusion_attentions
        if ctx.output_gating_scores:
            extras["adapter_gating_scores"] = ctx.gating_scores
        for key, value in extras.items():
            output[key] = value
        holder = _ROOT_EXTRAS.get()
        if holder is not None:  # a task model's call: its own output gets them too
            holder["extras"].update(extras)
        return None


def record_gating(
    ctx: ForwardContext | None, adapter: str, layer: int, location: str, gate: torch.Tensor, columns: bool = True
) -> None:
    """Keep per-example gates as AdapterHub does (`[adapter][layer][location]`), if the forward asked for them.

    With `columns`, a second gate at the same place (LoRA's q/k/v, a prefix's key/value) becomes a new column.
    """
    if ctx is None or not ctx.output_gating_scores or ctx.replaying:
        return
    per_layer = ctx.gating_scores.setdefault(adapter, {}).setdefault(layer, {})
    if not columns:
        per_layer[location] = gate.detach().cpu()
        return
    score = gate.detach().squeeze().cpu()
    score = score.unsqueeze(0) if score.dim() == 0 else score
    previous = per_layer.get(location)
    per_layer[location] = score if previous is None else torch.column_stack((previous, score))


def _tensors_of(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `modules` (path -> module), keyed by its path; shared ones under each path."""
    tensors = {}
    for path, module in modules.items():
        tensors.update(module.named_parameters(prefix=path, remove_duplicate=False))
        tensors.update(module.named_buffers(prefix=path, remove_duplicate=False))
    return tensors


def _path_of(root: nn.Module, base: nn.Module) -> str:
    """The module path of `base` inside `root`."""
    prefix = getattr(root, "base_model_prefix", "")
    if prefix and getattr(root, prefix, None) is base:
        return prefix
    return next(name for name, module in root.named_modules() if module is base)
