"""The archived AdapterHub index (source "ah"): `all.json`, `index/<model>.json`, `adapters/<org>/<name>.json`.

The archive is frozen; its adapters are served from the Hugging Face Hub as `AdapterHub/<name>`, where `<name>`
is the basename of the `adapters/<org>/<name>.json` entry. Requests go through huggingface_hub's HTTP session,
so proxies, retries and offline mode behave as for every other Hub request.
"""

from __future__ import annotations

import os
import re

from huggingface_hub.utils import hf_raise_for_status, http_backoff

from ..core.configs import AdapterConfig
from ..core.errors import AdapterLoadError
from .entries import HubEntryError, check_ah_id, mapping, skip, text
from .families import model_type_of
from .info import AdapterInfo
from .methods import method_name
from .reach import check_hub

DEFAULT_INDEX_URL = "https://raw.githubusercontent.com/Adapter-Hub/Hub/master/dist/v2"
HF_ORG = "AdapterHub"
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def index_url() -> str:
    return os.environ.get("WORKBENCH_AH_INDEX_URL", DEFAULT_INDEX_URL).rstrip("/")


def fetch_json(path: str):
    """GET `<index>/<path>` as JSON; the path is checked so no caller input can leave the index."""
    if not _SAFE_PATH.match(path) or ".." in path.split("/"):
        raise AdapterLoadError(f"refusing AdapterHub index path {path!r}")
    check_hub(index_url())
    response = http_backoff("GET", f"{index_url()}/{path}", max_retries=2, base_wait_time=0.5, timeout=20)
    hf_raise_for_status(response)
    try:
        return response.json()
    except ValueError as err:
        raise ValueError(f"{index_url()}/{path} is not valid JSON: {err}") from None


def list_ah_adapters(model_name: str | None = None) -> list[AdapterInfo]:
    """Every adapter of the archive (one request for `all.json`), optionally for one base model."""
    entries = fetch_json("all.json")
    if not isinstance(entries, list):
        raise ValueError(f"{index_url()}/all.json must hold a list of adapters")
    infos = []
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("adapter_id"):
            continue
        try:
            infos.append(_info(entry))
        except HubEntryError as err:  # one malformed entry must not hide the others
            skip(err, "AdapterHub archive listing")
    return [i for i in infos if model_name is None or i.model_name == model_name]


def _info(entry: dict) -> AdapterInfo:
    """The archive entry as an `AdapterInfo`; `HubEntryError` names a field of the wrong type."""
    adapter_id = entry["adapter_id"]
    if not isinstance(adapter_id, str):
        raise HubEntryError(repr(adapter_id), "adapter_id", "a string", adapter_id)
    for key in ("model_name", "task", "subtask", "username", "sha1_checksum", "model_type"):
        text(entry.get(key), adapter_id, key)
    mapping(entry.get("adapter_config"), adapter_id, "adapter_config")
    return AdapterInfo(
        source="ah",
        adapter_id=adapter_id,
        model_name=entry.get("model_name"),
        task=entry.get("task"),
        subtask=entry.get("subtask"),
        username=entry.get("username"),
        adapter_config=entry.get("adapter_config"),
        sha1_checksum=entry.get("sha1_checksum"),
        method=method_name(entry.get("adapter_config")),
        hf_repo=f"{HF_ORG}/{adapter_id.split('/')[-1]}" if adapter_id.startswith("@") else None,
        tags=[f"adapterhub:{entry.get('task')}/{entry.get('subtask')}"] if entry.get("task") else [],
        model_type=model_type_of(entry.get("model_name"), entry.get("model_type")),
    )


def is_ah_id(adapter_id: str) -> bool:
    """`@org/name` or `task/subtask[@org]` (the latter only with the "ah" source)."""
    return adapter_id.startswith("@")


def resolve_ah_id(adapter_id: str, model_name: str | None = None, config=None) -> str:
    """The Hub repo (`AdapterHub/<name>`) serving an archived adapter id."""
    if adapter_id.startswith("@"):
        return f"{HF_ORG}/{check_ah_id(adapter_id)[1]}"
    task, _, rest = adapter_id.partition("/")
    subtask, _, org = rest.partition("@")
    if not task or not subtask:
        raise AdapterLoadError(f"AdapterHub id {adapter_id!r} must look like '@org/name' or 'task/subtask@org'")
    if not model_name:
        raise AdapterLoadError(f"resolving {adapter_id!r} needs the model's name (model_name / the loaded model)")
    where = f"{index_url()}/index/{model_name}.json"
    index = mapping(fetch_json(f"index/{model_name}.json"), where, "the index")
    options = mapping(mapping(index.get(task), where, repr(task)).get(subtask), where, f"{task!r}: {subtask!r}")
    if not options:
        raise AdapterLoadError(f"the AdapterHub index has no adapter {task}/{subtask} for {model_name!r}")
    entry = _pick(options, config, org, adapter_id)
    text(entry, where, f"the file of {task}/{subtask}")
    return f"{HF_ORG}/{entry.rsplit('/', 1)[-1].split('.')[0]}"


def _pick(options: dict, config, org: str, adapter_id: str) -> str:
    """Choose the index entry by config (name or hash) and organisation, else the default."""
    hashes = {k: v for k, v in options.items() if isinstance(v, dict) and isinstance(v.get("versions", {}), dict)}
    if config is not None:
        wanted = method_name(AdapterConfig.load(config).to_dict())
        hashes = {k: v for k, v in hashes.items() if _entry_method(v) in (wanted, None)} or hashes
    for versions in (v.get("versions", {}) for v in hashes.values()):
        if org and org in versions:
            return versions[org]
    for entry in hashes.values():
        if not org and entry.get("default"):
            return entry["default"]
    if not org and isinstance(options.get("default"), str):
        return options["default"]
    for entry in hashes.values():
        if entry.get("versions"):
            return next(iter(entry["versions"].values()))
    raise AdapterLoadError(f"the AdapterHub index lists no files for {adapter_id!r}")


def _entry_method(entry: dict) -> str | None:
    path = entry.get("default") or next(iter(entry.get("versions", {}).values()), "")
    if not isinstance(path, str):
        return None
    name = path.rsplit("/", 1)[-1].split(".")[0]
    return "double_seq_bn" if name.endswith("_houlsby") else "seq_bn" if name.endswith("_pfeiffer") else None


def ah_adapter_info(adapter_id: str) -> AdapterInfo:
    """Details of one `@org/name` adapter from `adapters/<org>/<name>.json`."""
    org, name = check_ah_id(adapter_id)
    data = fetch_json(f"adapters/{org}/{name}.json")
    info = data.get("info") if isinstance(data, dict) else None
    if not isinstance(info, dict):
        raise AdapterLoadError(f"{index_url()}/adapters/{org}/{name}.json has no 'info'")
    return _info({**info, "adapter_id": info.get("adapter_id", adapter_id)})
