"""Finding and downloading adapters: the Hugging Face Hub and the archived AdapterHub index.

Every request goes through `huggingface_hub`; listings are cached on disk (see `cache.py`).
"""

from ..core.model_mixin import register_adapter_resolver
from .cache import HubUnavailableError, Listing
from .info import AdapterInfo
from .listing import SearchResults, get_adapter_info, list_adapters, search_adapters
from .resolve import DownloadProgress, resolve_adapter

# `model.load_adapter("<hub id>")` resolves through the hub; the engine itself never imports this package.
register_adapter_resolver(resolve_adapter)

__all__ = [
    "AdapterInfo",
    "DownloadProgress",
    "HubUnavailableError",
    "Listing",
    "SearchResults",
    "get_adapter_info",
    "list_adapters",
    "resolve_adapter",
    "search_adapters",
]
