"""Checks on what the Hub and the archive answer, and on the ids a caller asks about.

A listing holds thousands of entries written by many people: one whose field has the wrong shape is skipped with a
warning naming the repo and the field, so the rest of the listing still shows. An id that cannot name a repo is
refused before any request is made.
"""

from __future__ import annotations

import re
import warnings

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..core.errors import AdapterError, AdapterLoadError

_AH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")


class HubEntryError(AdapterError, ValueError):
    """A Hub repo or archive entry whose field has the wrong shape (e.g. a string where an object belongs)."""

    def __init__(self, repo: str, field: str, expected: str, value):
        self.repo, self.field = repo, field
        super().__init__(f"{repo}: {field} should be {expected}, not {type(value).__name__} {_short(value)}")


class InvalidRepoIdError(AdapterLoadError, ValueError):
    """An adapter id that is not a Hub repo id (`org/name`) or AdapterHub id (`@org/name`)."""


def mapping(value, repo: str, field: str) -> dict:
    """`value` if it is an object, {} if it is missing, else `HubEntryError` naming the repo and field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HubEntryError(repo, field, "an object", value)
    return value


def text(value, repo: str, field: str) -> str | None:
    """`value` if it is a string or missing, else `HubEntryError`."""
    if value is not None and not isinstance(value, str):
        raise HubEntryError(repo, field, "a string", value)
    return value


def skip(err: HubEntryError, what: str = "listing") -> None:
    """The one warning a skipped entry gets."""
    warnings.warn(f"skipping a malformed entry of the {what}: {err}", stacklevel=3)


def check_repo_id(repo_id) -> str:
    """`repo_id` if the Hub would accept it as a repo id, else `InvalidRepoIdError` naming it."""
    if not isinstance(repo_id, str) or not repo_id:
        raise InvalidRepoIdError(f"adapter id {_short(repo_id)} is not a Hub repo id like 'org/name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise InvalidRepoIdError(f"adapter id {_short(repo_id)} is not a Hub repo id like 'org/name': {err}") from None
    return repo_id


def check_ah_id(adapter_id) -> tuple[str, str]:
    """(org, name) of an archive id `@org/name`, else `InvalidRepoIdError` naming it."""
    org, _, name = str(adapter_id).removeprefix("@").partition("/")
    if not isinstance(adapter_id, str) or not _AH_PART.match(org) or not _AH_PART.match(name) or ".." in adapter_id:
        raise InvalidRepoIdError(f"AdapterHub id {_short(adapter_id)} must look like '@org/name'")
    return org, name


def _short(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."
