"""Turn an adapter identifier into a local folder, downloading through the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import AdapterLoadError


def resolve_adapter(
    adapter_id: str, model=None, source: str | None = None, version: str | None = None, **kwargs
) -> Path:
    """Download `adapter_id` (a Hub repo such as `AdapterHub/bert-base-uncased-pf-imdb`) and return its folder.

    Honours HF_HUB_OFFLINE, HF_ENDPOINT, HF_HOME and tokens, because every request goes through huggingface_hub.
    """
    if source not in (None, "hf"):
        raise AdapterLoadError(f"adapter source {source!r} is not supported yet; use source='hf' or a local folder")
    looks_like_path = adapter_id.startswith(("/", ".", "~")) or adapter_id.count("/") != 1
    if looks_like_path:
        raise AdapterLoadError(f"{adapter_id!r} is neither a local folder nor a Hub repo id like 'org/name'")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = snapshot_download(adapter_id, revision=version, token=kwargs.get("token"))
    except LocalEntryNotFoundError as err:
        raise AdapterLoadError(
            f"{adapter_id!r} is not in the local cache and the Hub cannot be reached: {err}"
        ) from None
    except (HfHubHTTPError, OSError) as err:
        raise AdapterLoadError(f"could not download adapter {adapter_id!r}: {err}") from None
    return Path(folder)
