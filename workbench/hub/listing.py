"""`list_adapters`, `get_adapter_info` and `search_adapters`: the hub as a user browses it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from .ah import ah_adapter_info, list_ah_adapters
from .cache import HubUnavailableError, Listing, cached_listing
from .entries import check_repo_id
from .hf import hf_adapter_info, list_hf_adapters
from .info import AdapterInfo

SOURCES = (None, "ah", "hf")
NUMERIC_SORT_KEYS = {"downloads", "likes", "last_modified", "recency", "size_bytes"}
TEXT_SORT_KEYS = {"adapter_id", "model_name", "model_type", "task", "method"}
SORT_KEYS = NUMERIC_SORT_KEYS | TEXT_SORT_KEYS


LIBRARIES = {"adapters": ("adapters",), "peft": ("peft",), "all": ("adapters", "peft")}


def list_adapters(
    source: str | None = None, model_name: str | None = None, library: str = "adapters", refresh: bool = False
) -> Listing:
    """Adapters from the archived AdapterHub index ("ah"), the Hugging Face Hub ("hf"), or both (None).

    `library`: "adapters" (AdapterHub format, the default), "peft", or "all". With both sources, an archived
    adapter that is also on the Hub appears once, with the Hub's statistics and the archive's task and subtask.
    The result is a list that also says whether it came from the cache (`from_cache`) and, when the Hub could not
    be reached and older cached listings were used or a source was left out, why (`notice`).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be None, 'ah' or 'hf', not {source!r}")
    if library not in LIBRARIES:
        raise ValueError(f"library must be one of {sorted(LIBRARIES)}, not {library!r}")
    libraries = LIBRARIES[library]
    fetchers = {"hf": lambda: list_hf_adapters(model_name=model_name, libraries=libraries)}
    if "adapters" in libraries:  # the archive holds AdapterHub adapters only
        fetchers["ah"] = lambda: list_ah_adapters(model_name=model_name)
    chosen = [name for name in fetchers if source in (None, name)]
    found, failures = {"hf": Listing(), "ah": Listing()}, []
    for name in chosen:
        key = {"source": name, "model_name": model_name, "library": library}
        try:
            found[name] = cached_listing(key, fetchers[name], refresh)
        except HubUnavailableError as err:
            if len(chosen) == 1:
                raise
            failures.append(err)
    if failures and len(failures) == len(chosen):
        raise failures[0]
    notices = [found[name].notice for name in chosen if found[name].notice]
    for err in failures:  # one source down: show the other, and say so
        warnings.warn(f"{err}; showing the other source only", stacklevel=2)
        notices.append(f"{err}; showing the other source only")
    from_cache = any(found[name].from_cache for name in chosen) or bool(failures)
    return Listing(_merge(found["hf"], found["ah"]), from_cache=from_cache, notice="; ".join(notices) or None)


def _merge(hf: list[AdapterInfo], ah: list[AdapterInfo]) -> list[AdapterInfo]:
    by_repo = {info.adapter_id: info for info in hf}
    merged = list(hf)
    for info in ah:
        twin = by_repo.get(info.hf_repo or "")
        if twin is None:
            merged.append(info)
            continue
        twin.task = twin.task or info.task
        twin.subtask = twin.subtask or info.subtask
        twin.adapter_config = twin.adapter_config or info.adapter_config
        twin.method = twin.method or info.method
        twin.model_type = twin.model_type or info.model_type
    return merged


def get_adapter_info(adapter_id: str, source: str | None = None) -> AdapterInfo:
    """Details of one adapter: `@org/name` (archive) or a Hub repo id.

    An id that is neither raises `InvalidRepoIdError` before any request; a repo whose listing or
    adapter_config.json has a field of the wrong shape raises `HubEntryError` naming the repo and the field."""
    if not isinstance(adapter_id, str):
        check_repo_id(adapter_id)
    if source == "ah" or adapter_id.startswith("@"):
        return ah_adapter_info(adapter_id)
    return hf_adapter_info(adapter_id)


@dataclass
class SearchResults:
    """One page of search results; `to_dataframe()` for a table. `from_cache`/`notice` as for `list_adapters`."""

    items: list[AdapterInfo]
    total: int
    page: int
    page_size: int
    query: dict = field(default_factory=dict)
    from_cache: bool = False
    notice: str | None = None
    has_sizes: bool = False  # some result (on any page) has a known size: sorting by size means something

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))

    def to_dataframe(self):
        import pandas as pd

        columns = [
            "adapter_id",
            "model_name",
            "model_type",
            "task",
            "subtask",
            "method",
            "library",
            "source",
            "downloads",
            "likes",
            "last_modified",
            "size_bytes",
            "username",
        ]
        return pd.DataFrame([{c: getattr(i, c) for c in columns} for i in self.items], columns=columns)


def search_adapters(
    text: str | None = None,
    model_name: str | None = None,
    task: str | None = None,
    method: str | None = None,
    library: str | None = None,
    source: str | None = None,
    sort: str = "downloads",
    page: int = 1,
    page_size: int = 20,
    refresh: bool = False,
    descending: bool | None = None,
    model_type: str | None = None,
) -> SearchResults:
    """Free-text search with filters, sorted and paged, over the (cached) listings.

    `model_type` keeps the adapters of one model family (transformers' model_type, e.g. "bert", "bart").

    `sort`: one of `SORT_KEYS`; `descending` defaults to True for numbers and dates, False for text. Adapters
    without a value for the sort key come last either way.
    """
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {sorted(SORT_KEYS)}, not {sort!r}")
    if page < 1 or page_size < 1:
        raise ValueError(f"page and page_size must be positive, got page={page}, page_size={page_size}")
    items = list_adapters(source=source, model_name=model_name, library=library or "all", refresh=refresh)
    words = (text or "").lower().split()

    def matches(info: AdapterInfo) -> bool:
        haystack = " ".join(
            str(v)
            for v in (
                info.adapter_id,
                info.model_name,
                info.model_type,
                info.task,
                info.subtask,
                info.method,
                " ".join(info.tags),
            )
            if v
        ).lower()
        return (
            all(w in haystack for w in words)
            and (task is None or info.task == task)
            and (method is None or info.method == method)
            and (model_type is None or info.model_type == model_type)
            and (library in (None, "all") or info.library == library)
        )

    found = [i for i in items if matches(i)]
    key = "last_modified" if sort == "recency" else sort
    if descending is None:
        descending = sort in NUMERIC_SORT_KEYS
    known = [i for i in found if getattr(i, key) is not None]
    known.sort(key=lambda i: getattr(i, key).lower() if sort in TEXT_SORT_KEYS else getattr(i, key), reverse=descending)
    found = known + [i for i in found if getattr(i, key) is None]
    start = (page - 1) * page_size
    query = {
        "text": text,
        "model_name": model_name,
        "model_type": model_type,
        "task": task,
        "method": method,
        "library": library,
        "source": source,
        "sort": sort,
        "descending": descending,
    }
    page_items = found[start : start + page_size]
    has_sizes = any(i.size_bytes for i in found)
    return SearchResults(page_items, len(found), page, page_size, query, items.from_cache, items.notice, has_sizes)
