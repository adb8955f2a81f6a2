"""Is the Hub reachable? A fast answer, and a message that says what to do when it is not.

huggingface_hub retries a failed connection five times (1 + 2 + 4 + 8 + 8 s) and waits without limit for a server
that accepts but never answers, so an offline search took 25 s and a model load 47 s to fail. Before a Hub call,
`check_hub()` asks once, with a short timeout and no retries; a negative answer becomes `HubUnreachable`, whose
message names the remedies (offline mode, a mirror, a local folder). `hub_unreachable(err)` maps a connection error
raised by huggingface_hub or transformers to the same error, for callers that went to the network anyway.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import constants

from ..core.errors import AdapterError, AdapterLoadError
from .cache import HubUnavailableError

DEFAULT_TIMEOUT_S = 4.0  # `WORKBENCH_HUB_TIMEOUT` overrides it
REACHABLE_FOR_S = 30.0  # a positive answer is trusted this long: one HEAD per half minute at most
UNREACHABLE_FOR_S = 10.0  # a negative one this long: the next call (e.g. the other source) fails at once
ADVICE = (
    "Check the network connection, or work without the Hub: set HF_HUB_OFFLINE=1 to use what is already "
    "downloaded, set HF_ENDPOINT to a Hub mirror you can reach, or load the model or adapter from a local folder."
)

# errors that mean no server answered (a truncated or malformed answer is a server's answer: not these)
_NO_ANSWER = (httpx2.ConnectError, httpx2.TimeoutException, socket.gaierror, ConnectionRefusedError, TimeoutError)

_reachable: dict[str, float] = {}  # origin -> time of the last successful check
_unreachable: dict[str, tuple[float, str]] = {}  # origin -> (time of the last failed check, its reason)
_lock = threading.Lock()


class HubUnreachable(HubUnavailableError, AdapterLoadError):
    """The Hub (or the AdapterHub index) did not answer: the message says why, in plain words, and what to do.

    A `ConnectionError` (and an `AdapterLoadError` for `load_adapter` callers); `.url` is the address tried."""

    def __init__(self, url: str, reason: str):
        self.url, self.reason = url, reason
        super().__init__(f"{self.short}. {ADVICE}")

    @property
    def short(self) -> str:
        """The problem without the advice, for notices: "The Hub at <url> cannot be reached (<reason>)"."""
        return f"The Hub at {self.url} cannot be reached ({self.reason})"


def endpoint() -> str:
    """The Hub's address as huggingface_hub uses it now (HF_ENDPOINT, read again: it may change after import)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def timeout_s() -> float:
    try:
        return max(0.1, float(os.environ.get("WORKBENCH_HUB_TIMEOUT", DEFAULT_TIMEOUT_S)))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def check_hub(url: str | None = None) -> None:
    """Raise `HubUnreachable` unless the server behind `url` (default: the Hub's endpoint) answers within
    `timeout_s()`; any HTTP answer counts, even an error status. Does nothing in offline mode (HF_HUB_OFFLINE),
    where callers use their caches and never ask the network."""
    if constants.is_offline_mode():
        return
    parts = urlsplit(url or endpoint())
    origin = f"{parts.scheme}://{parts.netloc}"
    now = time.monotonic()
    with _lock:
        if now - _reachable.get(origin, -REACHABLE_FOR_S) < REACHABLE_FOR_S:
            return
        failed_at, reason = _unreachable.get(origin, (-UNREACHABLE_FOR_S, ""))
        if now - failed_at < UNREACHABLE_FOR_S:
            raise HubUnreachable(origin, reason)
    try:
        with httpx2.Client(timeout=timeout_s(), follow_redirects=False) as client:
            client.head(origin + "/")
    except (httpx2.HTTPError, OSError) as err:
        with _lock:
            _unreachable[origin] = (time.monotonic(), _reason(err))
        raise HubUnreachable(origin, _reason(err)) from err
    with _lock:
        _reachable[origin] = time.monotonic()
        _unreachable.pop(origin, None)


def forget_checks() -> None:
    """Ask the network again at the next `check_hub` (e.g. after HF_ENDPOINT changed or the network came back)."""
    with _lock:
        _reachable.clear()
        _unreachable.clear()


def hub_unreachable(error: BaseException, url: str | None = None) -> HubUnreachable | None:
    """`error` (or an exception it was raised from) as `HubUnreachable` when it means the network or the server
    did not answer; None for anything else (a missing repo, a bad file, an HTTP error status).

    For callers that reach the Hub through another library, e.g. a model load through transformers:
    `except Exception as err: raise (hub_unreachable(err) or err) from err`."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, HubUnreachable):
            return error
        if isinstance(error, AdapterError):  # the engine's own errors say what they mean; look at their cause
            pass
        elif isinstance(error, _NO_ANSWER):
            return HubUnreachable(url or endpoint(), _reason(error))
        error = error.__cause__ or error.__context__
    return None


def local_copy(repo_id: str, revision: str | None = None) -> Path | None:
    """The folder of `repo_id` as downloaded earlier into huggingface_hub's cache (None when it never was), for
    loading without the Hub after `check_hub` failed. It may hold only the files fetched so far."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, endpoint=endpoint(), local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def _reason(error: BaseException) -> str:
    """A short plain reason instead of `[Errno -2] Name or service not known`."""
    text = str(error).lower()
    if isinstance(error, socket.gaierror) or "name or service" in text or "nodename" in text or "resolve" in text:
        return "its host name could not be looked up: no network or no DNS"
    if "refused" in text:
        return "nothing answers at that address: connection refused"
    if isinstance(error, (httpx2.TimeoutException, TimeoutError)) or "timed out" in text:
        return f"no answer within {timeout_s():g} s"
    if "unreachable" in text:
        return "the network is unreachable"
    return "the connection failed"
