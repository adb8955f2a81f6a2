"""The contract every adapter method implements (see `runtime` for how composition drives its layers)."""

from __future__ import annotations

from ..composition import Stack
from ..configs import AdapterConfig
from ..errors import UnsupportedMethodError


class AdapterMethod:
    """Adds and removes one method's modules for one adapter across a model.

    `supports` lists the composition blocks the method's adapters may stand in; `check_setup` adds checks that
    depend on the adapters themselves (both run when a setup is activated, never during a forward).
    `rowwise`: whether rows of one batch may each run their own adapter (`adapter_names`); the engine then runs a
    BatchSplit over runs of rows, so a method with `rowwise` must take part in BatchSplit.
    `add` must either complete or leave nothing behind (the engine also rolls back on error).
    """

    kind: str = ""
    supports: frozenset = frozenset({Stack})
    rowwise: bool = True  # its adapters can run row by row in one batch (`adapter_names`, `rows.py`)

    def __init__(self, engine):
        spec = engine.spec
        model_type = getattr(engine.base.config, "model_type", type(engine.base).__name__)
        if self.kind not in spec.methods:
            raise UnsupportedMethodError(
                f"{self.kind} adapters are not available for model type {model_type!r} "
                f"(its architecture spec supports: {', '.join(sorted(spec.methods)) or 'none'})"
                + self.refusal_hint(engine)
            )
        config = spec.model_config(engine.base.config)
        for kind, attribute, reason in spec.refuse_if:
            value = getattr(config, attribute, False)
            if kind == self.kind and value:
                raise UnsupportedMethodError(
                    f"{self.kind} adapters are not available for this {model_type!r} model ({attribute}={value!r}): "
                    f"{reason}"
                )
        self.engine = engine

    @classmethod
    def refusal_hint(cls, engine) -> str:
        """Why the method does not apply to a model whose spec leaves it out, if the method can say (else "")."""
        return ""

    def add(self, name: str, config: AdapterConfig) -> None:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def check_setup(self, setup) -> None:
        """Raise CompositionError if `setup` asks something of this method's adapters that it cannot do."""

    def check_call(self, setup) -> None:
        """Raise CompositionError if a forward running `setup` would not compute it (checked at every call)."""

    def begin(self, ctx, args: tuple, kwargs: dict):
        """Called when a forward starts, after the setup is known: may return new (args, kwargs) for the model."""
        return None
