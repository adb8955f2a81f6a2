"""Listings cached on disk with an expiry, used instead of the network when it is off or failing."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import httpx2
from huggingface_hub import constants

from ..core.errors import AdapterError
from ..core.files import write_json
from .info import AdapterInfo

DEFAULT_TTL_S = 3600


class HubUnavailableError(AdapterError, ConnectionError):
    """Neither the network nor a cached listing could answer."""


class Listing(list):
    """A list of `AdapterInfo` that says where it came from.

    `from_cache`: read from the on-disk cache rather than the network. `notice`: set when the network was off
    or failing and an older cached copy was used instead (the reason and the copy's age), else None.
    """

    def __init__(self, items=(), from_cache: bool = False, notice: str | None = None):
        super().__init__(items)
        self.from_cache = from_cache
        self.notice = notice


def cache_dir() -> Path:
    """`$WORKBENCH_CACHE`, else `<HF_HOME>/workbench/listings` (HF_HOME as huggingface_hub resolves it)."""
    override = os.environ.get("WORKBENCH_CACHE")
    return Path(override) if override else Path(constants.HF_HOME) / "workbench" / "listings"


def ttl_seconds() -> float:
    return float(os.environ.get("WORKBENCH_LISTING_TTL", DEFAULT_TTL_S))


def is_offline() -> bool:
    return constants.is_offline_mode()


def cached_listing(key: dict, fetch: Callable[[], list[AdapterInfo]], refresh: bool = False) -> Listing:
    """A fresh cached listing for `key`, else `fetch()` (and cache it); on failure, a stale copy with a warning
    (and the reason in the result's `notice`)."""
    path = cache_dir() / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest() + ".json")
    stored, damage = _read(path)
    if stored is not None and not refresh and time.time() - stored["time"] < ttl_seconds():
        age_min = (time.time() - stored["time"]) / 60
        notice = f"offline mode (HF_HUB_OFFLINE) is on; the cached listing is from {age_min:.0f} min ago"
        return Listing(stored["items"], from_cache=True, notice=notice if is_offline() else None)
    what = ", ".join(f"{k}={v!r}" for k, v in key.items() if v is not None)
    if is_offline():
        return _fallback(stored, f"offline mode (HF_HUB_OFFLINE) is on; listing {what}", damage)
    try:
        items = fetch()
    except (OSError, ValueError, httpx2.HTTPError) as err:  # network, malformed page, broken transfer
        from .reach import hub_unreachable  # reach builds on this module's error

        unreachable = hub_unreachable(err)
        if unreachable is not None and stored is None and damage is None:
            raise unreachable from err  # its message says what to do
        why = unreachable.short if unreachable is not None else f"could not list adapters ({what}): {err}"
        return _fallback(stored, why, damage)
    write_json(path, {"time": time.time(), "key": key, "items": [info.to_dict() for info in items]})
    return Listing(items)


def _read(path: Path) -> tuple[dict | None, str | None]:
    """The cached `{"time", "items"}` (items as `AdapterInfo`), else None; and why the file was discarded, if it
    was there but damaged (a damaged cache is removed with a warning, so the next fetch rewrites it)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError:
        return None, None
    try:
        data = json.loads(raw)
        stamp, items = data["time"], data["items"]
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or not isinstance(items, list):
            raise TypeError("'time' must be a number and 'items' a list")
        return {"time": float(stamp), "items": [AdapterInfo.from_dict(item) for item in items]}, None
    except (ValueError, TypeError, KeyError, AttributeError) as err:  # AttributeError: a non-dict item
        damage = f"the cached listing {path} was damaged ({type(err).__name__}: {err}) and was removed"
    path.unlink(missing_ok=True)
    warnings.warn(damage, stacklevel=3)
    return None, damage


def _fallback(stored: dict | None, reason: str, damage: str | None = None) -> Listing:
    if stored is None:
        missing = damage or "there is no cached listing to fall back on"
        raise HubUnavailableError(f"{reason}, and {missing}")
    age_min = (time.time() - stored["time"]) / 60
    notice = f"{reason}; showing the cached listing from {age_min:.0f} min ago"
    warnings.warn(notice, stacklevel=4)
    return Listing(stored["items"], from_cache=True, notice=notice)
