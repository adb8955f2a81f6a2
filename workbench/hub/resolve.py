"""Turn an adapter identifier into a local folder, downloading through the Hugging Face cache."""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import AdapterLoadError
from .ah import is_ah_id, resolve_ah_id
from .entries import check_repo_id
from .partials import drop_stale_partials
from .reach import HubUnreachable, check_hub, hub_unreachable, local_copy


def resolve_adapter(
    adapter_id: str,
    model=None,
    source: str | None = None,
    version: str | None = None,
    config=None,
    model_name: str | None = None,
    progress: Callable[[DownloadProgress], None] | None = None,
    **kwargs,
) -> Path:
    """Download an adapter and return its folder.

    `adapter_id` is a Hub repo (`AdapterHub/bert-base-uncased-pf-imdb`) or, from the archived AdapterHub index,
    `@org/name` or `task/subtask@org` (source "ah"). `version` is the git revision (archive versions are
    branches). Downloads go through `snapshot_download`, with its cache, progress bar, HF_HUB_OFFLINE,
    HF_ENDPOINT, HF_HOME and token handling. `progress`, if given, is called (from the download threads) with a
    `DownloadProgress` as files and bytes arrive (`model.load_adapter(..., progress=...)` passes it on).
    """
    if source not in (None, "hf", "ah"):
        raise AdapterLoadError(f"adapter source {source!r} is not supported; use 'hf', 'ah' or a local folder")
    if is_ah_id(adapter_id) or (source == "ah" and "@" in adapter_id):
        name = model_name or _model_name(model)
        adapter_id = resolve_ah_id(adapter_id, model_name=name, config=config)
    looks_like_path = adapter_id.startswith(("/", ".", "~")) or adapter_id.count("/") != 1
    if looks_like_path:
        raise AdapterLoadError(f"{adapter_id!r} is neither a local folder nor a Hub repo id like 'org/name'")
    check_repo_id(adapter_id)  # before any request: huggingface_hub's own check fails deep inside
    import httpx2
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        check_hub(endpoint)
    except HubUnreachable as unreachable:  # fail in seconds; a copy downloaded earlier still loads
        folder = local_copy(adapter_id, version)
        if folder is None or not (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))):
            raise unreachable from None  # never downloaded, or only its config (read for a listing or a card)
        return folder
    try:
        folder = snapshot_download(
            adapter_id,
            revision=version,
            token=kwargs.get("token"),
            endpoint=endpoint,
            tqdm_class=progress_bar_class(progress) if progress else None,
        )
    except LocalEntryNotFoundError as err:
        reason = f"{adapter_id!r} is not in the local cache and the Hub cannot be reached"
        raise AdapterLoadError(f"{reason}: {err}") from None
    except (HfHubHTTPError, OSError, ValueError, httpx2.HTTPError) as err:  # huggingface_hub removed its partial file
        unreachable = hub_unreachable(err, endpoint)
        if unreachable is not None:
            raise unreachable from None
        raise AdapterLoadError(f"could not download adapter {adapter_id!r}: {err}") from None
    drop_stale_partials(adapter_id)
    return Path(folder)


@dataclass(frozen=True)
class DownloadProgress:
    """How far a download is: files finished of all files, bytes written of the bytes expected so far."""

    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0

    @property
    def fraction(self) -> float:
        """0..1, by bytes when their total is known, else by files."""
        if self.bytes_total:
            return min(1.0, self.bytes_done / self.bytes_total)
        return min(1.0, self.files_done / self.files_total) if self.files_total else 0.0


def progress_bar_class(callback: Callable[[DownloadProgress], None]):
    """A `tqdm` class for huggingface_hub's `tqdm_class=` that reports to `callback` instead of printing.

    `snapshot_download` opens one bar counting files and bars counting bytes (summed over its download threads);
    the class merges them into one `DownloadProgress`.
    """
    from tqdm.std import tqdm

    lock, bars = threading.Lock(), []

    class ReportingBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs.update(file=io.StringIO(), disable=False, mininterval=0)
            super().__init__(*args, **kwargs)
            with lock:
                bars.append(self)

        def update(self, n=1):
            shown = super().update(n)
            self._report()
            return shown

        def refresh(self, *args, **kwargs):
            super().refresh(*args, **kwargs)
            self._report()

        def _report(self):
            with lock:
                counted = [(b.n, b.total or 0) for b in bars if b.unit != "B"]
                sized = [(b.n, b.total or 0) for b in bars if b.unit == "B"]
            files = max(counted, key=lambda c: c[1], default=(0, 0))
            size = max(sized, key=lambda c: (c[0], c[1]), default=(0, 0))
            callback(DownloadProgress(int(files[0]), int(files[1]), int(size[0]), int(size[1])))

    return ReportingBar


def _model_name(model) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "name_or_path", None) or None
