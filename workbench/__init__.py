"""Adapter Workbench: AdapterHub-compatible adapters on transformers 5.

The public API keeps AdapterHub's names, so its tutorials run with only the import changed.
"""

from .core.adapter_model import AdapterModel, AutoAdapterModel, AutoModelWithHeads, init
from .core.composition import Average, BatchSplit, Fuse, Parallel, Split, Stack, parse_composition
from .core.configs import (
    ADAPTER_CONFIG_MAP,
    AdapterConfig,
    AdapterFusionConfig,
    AdapterPlusConfig,
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    ConfigUnion,
    DiReftConfig,
    DoubleSeqBnConfig,
    DoubleSeqBnInvConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    NoReftConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    ReftConfig,
    SeqBnConfig,
    SeqBnInvConfig,
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
from .hub import AdapterInfo, get_adapter_info, list_adapters, search_adapters

__version__ = "0.1.0"

__all__ = [
    "ADAPTER_CONFIG_MAP",
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
    "LoRAConfig",
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
]
