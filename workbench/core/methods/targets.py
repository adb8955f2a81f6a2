"""Where a module named by its path sits in a model, and which setup applies to it during a call.

LoRA targets and PEFT's `modules_to_save` copies can sit on any named module, inside the layer stack or not.
"""

from __future__ import annotations

from ..context import current_call


def locate(engine, path: str) -> tuple[int | None, str | None, bool]:
    """For a module path in the root model: its AdapterHub layer id (None outside the layer stacks), its LoRA place key
    ("q", "intermediate", ...; None for other modules), and whether it lies inside the base model (where the forward
    context is set)."""
    prefix = engine.base_prefix
    if prefix and not path.startswith(prefix):
        return None, None, False
    at = engine.layer_at(path)
    if at is None:
        return None, None, True
    ref, place = at
    key = next((k for k, p in lora_places(ref.stack) if p == place), None)
    return ref.layer_id, key, True


def lora_places(stack) -> list[tuple[str, str]]:
    """(LoRA key, path in the layer) of every AdapterHub LoRA place of a stack's layers, cross-attention included."""
    return [*stack.lora.items(), *stack.cross_lora.items()]


def call_setup(engine, inside: bool):
    """(setup, names, ctx) of the running forward. Modules outside the base model (a task head) run after the base
    model's forward has left its context, so they read the setup the engine would use for a call."""
    ctx = current_call(engine)
    if ctx is not None:
        return ctx.setup, ctx.names, ctx
    if inside:
        return None, frozenset(), None
    setup = engine._setup_for_call()
    return setup, frozenset(setup.names()) if setup is not None else frozenset(), None
