"""Adapter Workbench: AdapterHub-compatible adapters on transformers 5.

The public API keeps AdapterHub's names, so its tutorials run with only the import changed.
"""

from . import _requirements  # noqa: F401  (first: refuses a transformers the engine's hooks do not fit)
from .core.adapter_model import AdapterModel, AutoAdapterModel, AutoModelWithHeads, init, load_model
from .core.composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack, parse_composition
from .core.configs import (
    ADAPTER_CONFIG_MAP,
    ADAPTERFUSION_CONFIG_MAP,
    AdapterConfig,
    AdapterFusionConfig,
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    ConfigUnion,
    DiReftConfig,
    DoRAConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    DvoRAConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    MAMConfig,
    MTLLoRAConfig,
    MultiTaskConfig,
    NoReftConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
    SeqBnConfig,
    SeqBnInvConfig,
    UniPELTConfig,
    VeraConfig,
)
from .core.context import AdapterSetup
from .core.errors import (
    AdapterConfigError,
    AdapterError,
    AdapterLoadError,
    CompositionError,
    HeadError,
    UnsupportedModelError,
)
from .core.interface import AdapterModelInterface
from .core.model_adapters_config import ModelAdaptersConfig, get_adapter_config_hash
from .core.model_classes import *  # noqa: F403  (BertAdapterModel, ..., ADAPTER_MODEL_MAPPING)
from .core.model_classes import __all__ as _model_classes
from .core.model_files import ADAPTERS_API_VERSION
from .core.model_mixin import ModelAdaptersMixin
from .hub import AdapterInfo, get_adapter_info, list_adapters, search_adapters

__version__ = "0.1.0"

__all__ = [
    *_model_classes,
    "ADAPTER_CONFIG_MAP",
    "ADAPTERFUSION_CONFIG_MAP",
    "MAMConfig",
    "UniPELTConfig",
    "ModelAdaptersConfig",
    "ModelAdaptersMixin",
    "ADAPTERS_API_VERSION",
    "get_adapter_config_hash",
    "load_model",
    "AdapterConfig",
    "AdapterSetup",
    "AdapterInfo",
    "get_adapter_info",
    "list_adapters",
    "search_adapters",
    "AdapterConfigError",
    "AdapterError",
    "AdapterFusionConfig",
    "AdapterLoadError",
    "AdapterModel",
    "AdapterModelInterface",
    "AdapterPlusConfig",
    "AutoAdapterModel",
    "AutoModelWithHeads",
    "Average",
    "BatchSplit",
    "BnConfig",
    "CompacterConfig",
    "CompacterPlusPlusConfig",
    "CompositionError",
    "ConfigUnion",
    "DiReftConfig",
    "DoubleSeqBnConfig",
    "DoubleSeqBnInvConfig",
    "Fuse",
    "HeadError",
    "IA3Config",
    "DoRAConfig",
    "DvoRAConfig",
    "LoRAConfig",
    "MTLLoRAConfig",
    "MultiTask",
    "MultiTaskConfig",
    "VeraConfig",
    "LoReftConfig",
    "NoReftConfig",
    "ParBnConfig",
    "Parallel",
    "PrefixTuningConfig",
    "PromptTuningConfig",
    "ReftConfig",
    "SeqBnConfig",
    "SeqBnInvConfig",
    "Split",
    "Stack",
    "UnsupportedModelError",
    "init",
    "parse_composition",
    "AdapterTrainer",  # noqa: F405  (imported on first use, by __getattr__ below)
]


def __getattr__(name: str):
    """`AdapterTrainer` is imported on first use: transformers' Trainer is slow to import and the engine needs none."""
    if name == "AdapterTrainer":
        from .train.adapter_trainer import AdapterTrainer

        return AdapterTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
