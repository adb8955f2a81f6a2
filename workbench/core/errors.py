"""Exception types of the engine. Every message names the file, key or value that is wrong."""


class AdapterError(Exception):
    """Base class for every error the engine raises on purpose."""


class AdapterConfigError(AdapterError, ValueError):
    """An unknown config name, an unknown key or a bad value in an adapter or fusion config."""


class AdapterConfigTypeError(AdapterConfigError, TypeError):
    """A value of the wrong kind where a config is expected (AdapterHub raises TypeError there)."""


class AdapterConfigKeyError(AdapterConfigError, KeyError):
    """A per-layer setting (e.g. a `reduction_factor` dict) without an entry for a layer (AdapterHub: KeyError)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class AdapterLoadError(AdapterError, OSError):
    """A missing, corrupt or incompatible adapter, head or fusion file."""


class CompositionError(AdapterError, ValueError):
    """A composition that names unknown adapters or nests blocks in an unsupported way."""


class BatchSizeError(CompositionError, IndexError):
    """A batch whose size does not fit the setup's BatchSplit sizes (AdapterHub: IndexError)."""


class HeadError(AdapterError, ValueError):
    """A head that is unknown, misconfigured or disagrees with the data (e.g. label count)."""


class UnsupportedModelError(AdapterError, TypeError):
    """A base model whose architecture (or an architecture/method pair) the engine does not support."""


class UnsupportedMethodError(UnsupportedModelError, ValueError):
    """An adapter method the model's architecture (or interface) does not offer (AdapterHub: ValueError)."""


class AdapterNameError(AdapterConfigError):
    """An adapter, head or fusion name that cannot be used (a path, a dot, a torch attribute, ...)."""
