"""Finding and downloading adapters: the Hugging Face Hub and the archived AdapterHub index.

Every request goes through `huggingface_hub`; listings are cached on disk (see `cache.py`).
"""

from ..core.model_files import register_adapter_resolver
from ..core.setups import register_hub_pusher
from .cache import HubUnavailableError, Listing
from .entries import HubEntryError, InvalidRepoIdError
from .info import AdapterInfo
from .listing import SearchResults, get_adapter_info, list_adapters, search_adapters
from .push import HubPushError, adapter_card, push_to_hub
from .reach import HubUnreachable, check_hub, hub_unreachable, local_copy
from .resolve import DownloadProgress, resolve_adapter

# `model.load_adapter("<hub id>")` resolves through the hub; the engine itself never imports this package.
register_adapter_resolver(resolve_adapter)
register_hub_pusher(push_to_hub)  # `model.push_adapter_to_hub(...)` / `push_adapter_setup_to_hub(...)` upload here

__all__ = [
    "AdapterInfo",
    "DownloadProgress",
    "HubEntryError",
    "HubPushError",
    "HubUnavailableError",
    "HubUnreachable",
    "InvalidRepoIdError",
    "check_hub",
    "hub_unreachable",
    "local_copy",
    "Listing",
    "adapter_card",
    "SearchResults",
    "get_adapter_info",
    "list_adapters",
    "push_to_hub",
    "resolve_adapter",
    "search_adapters",
]
