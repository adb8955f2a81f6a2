"""Adapters on the Hugging Face Hub, listed with server-side filters through `huggingface_hub`.

AdapterHub repos carry the library tag `adapter-transformers` and their base model under
`config.adapter_transformers.model_name`; PEFT repos carry `peft` and the tag `base_model:adapter:<id>`.
Filtering on the server keeps the number of requests proportional to the results, not to the Hub.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import httpx2
from huggingface_hub import HfApi, hf_hub_download

from .entries import HubEntryError, check_repo_id, mapping, skip, text
from .families import model_type_of
from .info import AdapterInfo
from .methods import method_name
from .partials import drop_stale_partials
from .reach import check_hub

ADAPTERHUB_LIBRARY = "adapter-transformers"
PEFT_LIBRARY = "peft"


def hub_api() -> HfApi:
    """An HfApi on HF_ENDPOINT as set now (huggingface_hub itself reads it only at import)."""
    return HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)


# What a listing asks for: `expand` returns these fields for every repo in the same request; `usedStorage` (bytes
# the repo takes on the Hub) is the one size the listing endpoint gives (file sizes need a request per repo).
LISTING_FIELDS = [
    "author",
    "cardData",
    "config",
    "downloads",
    "lastModified",
    "library_name",
    "likes",
    "sha",
    "siblings",
    "tags",
    "usedStorage",
]
CONFIG_READS = 200  # at most this many adapter_config.json reads per listing, for methods the listing lacks


def list_hf_adapters(
    model_name: str | None = None,
    search: str | None = None,
    libraries=("adapters", "peft"),
    sort: str | None = "downloads",
    limit: int | None = None,
) -> list[AdapterInfo]:
    """AdapterHub-format (and PEFT) adapter repos, optionally for one base model.

    The Hub's listing says nothing of an adapter's method: where neither the tags nor AdapterHub's naming tell it,
    the repo's adapter_config.json is read (a few KB, in parallel, then from huggingface_hub's cache)."""
    api = hub_api()
    check_hub(api.endpoint)
    results: list[AdapterInfo] = []
    if "adapters" in libraries:
        seen: set[str] = set()
        for query in _adapterhub_queries(model_name, search):
            for model in api.list_models(sort=sort, limit=limit, expand=LISTING_FIELDS, **query):
                if model.id in seen:
                    continue
                seen.add(model.id)
                try:
                    info = _adapterhub_info(model)
                    if model_name and info.model_name is None:
                        info.model_name = _model_name_from_files(api, model.id)
                        info.model_type = info.model_type or model_type_of(info.model_name)
                except HubEntryError as err:  # one malformed repo must not hide the others
                    skip(err)
                    continue
                if not model_name or info.model_name == model_name:
                    if not search or search.lower() in info.adapter_id.lower():
                        results.append(info)
    if "peft" in libraries:
        tags = [PEFT_LIBRARY] + ([f"base_model:adapter:{model_name}"] if model_name else [])
        for model in api.list_models(filter=tags, search=search, sort=sort, limit=limit, expand=LISTING_FIELDS):
            try:
                results.append(_peft_info(model))
            except HubEntryError as err:
                skip(err)
    malformed = _read_methods(api, [info for info in results if info.method is None][:CONFIG_READS])
    return [info for info in results if info.adapter_id not in malformed]


def _read_methods(api: HfApi, infos: list[AdapterInfo]) -> set[str]:
    """Fill `method` (and the config, and a missing base model) from each repo's adapter_config.json.

    Returns the ids of the repos whose adapter_config.json is malformed (each warned about once)."""
    if not infos:
        return set()
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="workbench-config") as pool:
        configs = list(pool.map(lambda info: _config_or_error(api, info.adapter_id), infos))
    malformed = set()
    for info, config in zip(infos, configs, strict=True):
        if isinstance(config, HubEntryError):
            skip(config)
            malformed.add(info.adapter_id)
            continue
        if config is None:
            continue
        inner = config if info.library == "peft" else config.get("config")
        info.method = method_name(inner if isinstance(inner, dict) else None)
        if info.library == "adapters" and isinstance(inner, dict):
            info.adapter_config = inner
        base = config.get("base_model_name_or_path") if info.library == "peft" else config.get("model_name")
        info.model_name = info.model_name or (base if isinstance(base, str) else None)
        info.model_type = info.model_type or model_type_of(info.model_name, config.get("model_type"))
    return malformed


def _adapterhub_queries(model_name: str | None, search: str | None) -> list[dict]:
    """Server-side filters for AdapterHub repos of one model.

    AdapterHub's repo ids contain the model's name (`AdapterHub/bert-base-uncased-pf-imdb`), so a search on it
    finds them; repos whose card declares the base model carry `base_model:adapter:<model>` and are found by tag
    even under a free-form name. Each query's cost grows with its results, never with the size of the Hub.
    """
    if not model_name:
        return [{"filter": ADAPTERHUB_LIBRARY, "search": search}]
    return [
        {"filter": ADAPTERHUB_LIBRARY, "search": search or model_name.split("/")[-1]},
        {"filter": [ADAPTERHUB_LIBRARY, f"base_model:adapter:{model_name}"], "search": search},
    ]


def hf_adapter_info(repo_id: str) -> AdapterInfo:
    """Details of one Hub repo (AdapterHub or PEFT format); `HubEntryError` names a malformed field."""
    check_repo_id(repo_id)
    api = hub_api()
    check_hub(api.endpoint)
    model = api.model_info(repo_id, files_metadata=True)
    tags = model.tags or []
    info = _peft_info(model) if PEFT_LIBRARY in tags and ADAPTERHUB_LIBRARY not in tags else _adapterhub_info(model)
    if info.library == "adapters" and info.adapter_config is None:
        config = _adapter_config(api, repo_id) or {}
        info.adapter_config = mapping(config.get("config"), repo_id, "adapter_config.json 'config'") or None
        info.method = method_name(info.adapter_config)
        info.model_name = info.model_name or text(config.get("model_name"), repo_id, "adapter_config.json 'model_name'")
        info.model_type = model_type_of(info.model_name, config.get("model_type") or info.model_type)
    elif info.method is None:  # a PEFT repo without a method tag: its adapter_config.json has peft_type
        _adapter_config(api, repo_id)  # a malformed file raises here, naming the repo, instead of being skipped
        _read_methods(api, [info])
    return info


def _common(model, **fields) -> AdapterInfo:
    siblings = model.siblings or []
    sizes = [s.size for s in siblings if getattr(s, "size", None)]
    stored = getattr(model, "used_storage", None)  # listings give the repo's storage, not file sizes
    return AdapterInfo(
        source="hf",
        adapter_id=model.id,
        username=model.id.split("/")[0] if "/" in model.id else None,
        sha1_checksum=model.sha,
        downloads=model.downloads,
        likes=model.likes,
        last_modified=model.last_modified,
        tags=list(model.tags or []),
        size_bytes=sum(sizes) if sizes else (stored or None),
        hf_repo=model.id,
        files={s.rfilename: getattr(s, "size", None) for s in siblings},
        **fields,
    )


def _adapterhub_info(model) -> AdapterInfo:
    config = mapping(model.config, model.id, "config")
    key = "adapter_transformers" if config.get("adapter_transformers") else "adapters"
    meta = mapping(config.get(key), model.id, f"config.{key}")
    text(meta.get("model_name"), model.id, f"config.{key}.model_name")
    task = subtask = None
    for tag in model.tags or []:
        if tag.startswith("adapterhub:") and "/" in tag:
            task, subtask = tag.removeprefix("adapterhub:").split("/", 1)
    return _common(
        model,
        model_name=meta.get("model_name"),
        task=task,
        subtask=subtask,
        library="adapters",
        method=_method_from_name(model.id),
        model_type=model_type_of(meta.get("model_name"), config.get("model_type")),
    )


def _method_from_name(repo_id: str) -> str | None:
    """A cheap guess before adapter_config.json is read: AdapterHub's naming conventions."""
    name = repo_id.split("/")[-1]
    if name.endswith("_houlsby"):
        return "double_seq_bn"
    if name.endswith("_pfeiffer") or "-pf-" in name:
        return "seq_bn"
    return None


PEFT_METHOD_TAGS = ("lora", "ia3", "prefix-tuning", "prompt-tuning", "p-tuning", "adalora", "loha", "lokr", "vera")


def _peft_info(model) -> AdapterInfo:
    base = None
    for tag in model.tags or []:
        if tag.startswith("base_model:adapter:"):
            base = tag.removeprefix("base_model:adapter:")
    card = model.card_data.to_dict() if getattr(model, "card_data", None) else {}
    peft_meta = mapping(mapping(model.config, model.id, "config").get("peft"), model.id, "config.peft")
    base = base or card.get("base_model") or peft_meta.get("base_model_name_or_path")
    method = next((t.replace("-", "_") for t in PEFT_METHOD_TAGS if t in (model.tags or [])), None)
    return _common(model, model_name=base if isinstance(base, str) else None, library="peft", method=method)


def _adapter_config(api: HfApi, repo_id: str) -> dict | None:
    """The repo's adapter_config.json; None when it is missing or unreadable, `HubEntryError` when not an object."""
    try:
        path = hf_hub_download(repo_id, "adapter_config.json", endpoint=api.endpoint)
        drop_stale_partials(repo_id)
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError, httpx2.HTTPError):
        return None
    return mapping(config, repo_id, "adapter_config.json")


def _config_or_error(api: HfApi, repo_id: str) -> dict | HubEntryError | None:
    try:
        return _adapter_config(api, repo_id)
    except HubEntryError as err:
        return err


def _model_name_from_files(api: HfApi, repo_id: str) -> str | None:
    """Older repos have no `config.adapter_transformers`: read the model name from adapter_config.json."""
    config = _adapter_config(api, repo_id) or {}
    return text(config.get("model_name"), repo_id, "adapter_config.json 'model_name'")
