"""What the sidebar asks of `workbench.hub`: checked queries in, JSON-ready answers out. No tornado here.

Every value from the browser is checked (`parse_search`, `parse_info`) against an allowed set, a length limit or an
id pattern before it reaches the hub code, so nothing the client sends becomes a path or URL unchecked. The checks
are apart from the calls so that the server can answer a bad query (400) before it asks its busy Hub pool.
"""

from __future__ import annotations

import re

from workbench.hub import AdapterInfo, get_adapter_info, search_adapters
from workbench.hub.entries import check_ah_id, check_repo_id

MAX_TEXT = 200
MAX_LIMIT = 100
MAX_PAGE = 1000
SOURCES = {"": None, "ah": "ah", "hf": "hf"}
LIBRARIES = {"": None, "all": "all", "adapters": "adapters", "peft": "peft"}
SORTS = {"downloads", "likes", "last_modified", "recency"}
# A Hub name part: starts with a letter or digit, then letters, digits, "_", "-", "." ("..": refused below).
_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}"
MODEL_PATTERN = re.compile(rf"^{_PART}(/{_PART})?$")
ADAPTER_ID_PATTERN = re.compile(rf"^@?{_PART}/{_PART}$")
WORD_PATTERN = re.compile(r"^[A-Za-z0-9_.+\-]{1,64}$")  # task and method names
IGNORED = {"token", "_xsrf"}  # how the browser authenticates; not a query


class BadQuery(ValueError):
    """A query parameter that is missing, unknown, repeated or not allowed; the message names it."""


def search(query: dict) -> dict:
    """Search the Hub with the filters of the Hub panel; `query` from `parse_search`."""
    results = search_adapters(
        text=query["q"],
        model_name=query["model"],
        task=query["task"],
        method=query["method"],
        library=query["library"],
        source=query["source"],
        sort=query["sort"],
        page=query["page"],
        page_size=query["limit"],
    )
    return {
        "query": query,
        "total": results.total,
        "page": results.page,
        "pages": results.pages,
        "notice": getattr(results, "notice", None),
        "items": [adapter_json(info) for info in results.items],
    }


def info(query: dict) -> dict:
    """Details of one adapter, with its load code; `query` from `parse_info`."""
    return adapter_json(get_adapter_info(query["id"], source=query["source"]))


def parse_search(args: dict[str, list[str]]) -> dict:
    """The checked query of a search; `args` as tornado parses a query string. `BadQuery` names a bad parameter."""
    values = _single_values(args, {"q", "source", "model", "task", "method", "library", "sort", "page", "limit"})
    text = values.get("q", "")
    if len(text) > MAX_TEXT or not text.isprintable():
        raise BadQuery(f"q must be at most {MAX_TEXT} printable characters, got {_show(text)}")
    return {
        "q": text.strip() or None,
        "source": _choice(values, "source", SOURCES),
        "model": _pattern(values, "model", MODEL_PATTERN),
        "task": _pattern(values, "task", WORD_PATTERN),
        "method": _pattern(values, "method", WORD_PATTERN),
        "library": _choice(values, "library", LIBRARIES),
        "sort": _choice(values, "sort", {s: s for s in SORTS}, default="downloads"),
        "page": _number(values, "page", 1, MAX_PAGE, default=1),
        "limit": _number(values, "limit", 1, MAX_LIMIT, default=20),
    }


def parse_info(args: dict[str, list[str]]) -> dict:
    """The checked query for one adapter; an id the Hub would refuse is `InvalidRepoIdError`, before any request."""
    values = _single_values(args, {"id", "source"})
    adapter_id = _pattern(values, "id", ADAPTER_ID_PATTERN)
    if adapter_id is None:
        raise BadQuery("id is required (an AdapterHub id '@org/name' or a Hub repo 'org/name')")
    source = _choice(values, "source", SOURCES)
    if source == "ah" or adapter_id.startswith("@"):  # as `get_adapter_info` picks the source
        check_ah_id(adapter_id)
    else:
        check_repo_id(adapter_id)
    return {"id": adapter_id, "source": source}


def load_code(info: AdapterInfo) -> str:
    """Python that loads this adapter onto its base model with the workbench (AdapterHub's tutorial calls)."""
    model = info.model_name or "bert-base-uncased"
    lines = ["from workbench import AutoAdapterModel", ""]
    if not info.model_name:
        lines.append("# the listing names no base model: use the one the adapter was trained on")
    lines += [
        f"model = AutoAdapterModel.from_pretrained({model!r})",
        f"name = model.load_adapter({info.adapter_id!r}, source={info.source!r})",
        "model.active_adapters = name",
    ]
    return "\n".join(lines)


def adapter_json(info: AdapterInfo) -> dict:
    return {**info.to_dict(), "load_code": load_code(info)}


# ---- checks --------------------------------------------------------------------------------------------------------
def _single_values(args: dict[str, list[str]], allowed: set[str]) -> dict[str, str]:
    values = {}
    for key, given in args.items():
        if key in IGNORED or (key.isascii() and key.isdigit() and given == [""]):  # auth, JupyterLab's cache buster
            continue
        if key not in allowed:
            raise BadQuery(f"unknown parameter {_show(key)}; allowed: {', '.join(sorted(allowed))}")
        if len(given) != 1:
            raise BadQuery(f"parameter {key!r} given {len(given)} times; give it once")
        values[key] = given[0]
    return values


def _choice(values: dict, key: str, allowed: dict, default=None):
    value = values.get(key, "")
    if value == "":
        return default
    if value not in allowed:
        raise BadQuery(f"{key} must be one of {sorted(k for k in allowed if k)}, not {_show(value)}")
    return allowed[value]


def _pattern(values: dict, key: str, pattern: re.Pattern) -> str | None:
    value = values.get(key, "")
    if value == "":
        return None
    if not pattern.match(value) or ".." in value:
        raise BadQuery(f"{key} {_show(value)} is not a valid name (letters, digits, '_', '-', '.', one '/')")
    return value


def _number(values: dict, key: str, low: int, high: int, default: int) -> int:
    value = values.get(key, "")
    if value == "":
        return default
    if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
        raise BadQuery(f"{key} must be a whole number from {low} to {high}, not {_show(value)}")
    return int(value)


def _show(value: str) -> str:
    """The value for an error message: quoted, and cut short so a huge input does not fill the answer."""
    return repr(value if len(value) <= 60 else value[:60] + "...")
