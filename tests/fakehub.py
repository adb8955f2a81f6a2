"""A fake Hugging Face Hub (model and dataset repos) on 127.0.0.1, spoken to by huggingface_hub 2.4.0 unchanged.

Serves what the tests give it and nothing else: repos (`add_repo` / `add_folder`, each with extra branches if wanted;
`repo_type="dataset"` for a dataset repo, served under `/api/datasets/...` and `/datasets/...` as `datasets`'s
`load_dataset("org/name")` asks for it) and the files of the archived AdapterHub index (`add_ah_file`, under
`ah_url`). Every file is a plain git file:
`200` with `ETag: "<git blob sha1>"`, `X-Repo-Commit` and `Content-Length`; no LFS redirect and never an Xet header.
Errors carry `X-Error-Code` (RepoNotFound / RevisionNotFound / EntryNotFound), which is what the client maps to
its exception types. `fail()` injects faults; `requests` logs every request, in order of arrival.
Use it through the `fake_hub` fixture (tests/conftest.py), which also points huggingface_hub at it (`use_fake_hub`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode

AH_PREFIX = "/ah/dist/v2"
SORT_KEYS = ("downloads", "likes", "lastModified", "createdAt")
FAULT_KINDS = ("status", "timeout", "truncate", "malformed_json")
HUB_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")  # the client rejects isoformat()'s "+00:00"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Reply(Exception):
    """An error answer, raised anywhere in the routing."""

    def __init__(self, status: int, message: str, error_code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.error_code, self.headers = status, error_code, headers or {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a truncated body ends with a close
    server_version = "FakeHub/1.0"

    def do_GET(self):
        self.server.hub._serve(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def log_message(self, *args):  # quiet
        pass


class FakeHub:
    page_size: int = 50

    def __init__(self, page_size: int = 50):
        self.page_size = page_size
        self.requests: list[dict] = []
        self.retry_sleeps: list[float] = []  # what huggingface_hub asked to sleep (filled by `use_fake_hub`)
        self._repos: dict[str, dict] = {}
        self._datasets: dict[str, dict] = {}  # dataset repos, in the same layout as model repos
        self._ah: dict[str, tuple[bytes, str]] = {}
        self._faults: list[dict] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.ah_url = self.url + AH_PREFIX
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), name="fakehub", daemon=True)
        self._thread.start()

    # ---- content -------------------------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        tags=(),
        library_name=None,
        config=None,
        card_data=None,
        pipeline_tag=None,
        downloads=0,
        likes=0,
        last_modified="2024-01-01T00:00:00.000Z",
        author=None,
        revisions: dict[str, dict[str, bytes]] | None = None,
        created_at=None,
        repo_type: str = "model",
    ) -> str:
        """Add (or replace) a model repo (or a dataset repo with `repo_type="dataset"`); `files` is its `main`,
        `revisions` extra branches. Returns main's sha.

        File names are stored verbatim (even `../../evil.txt`: it shows in the tree, but resolving it answers 400).
        The tags served are `tags` plus `library_name` and `pipeline_tag` (as the Hub does)."""
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
        if repo_type not in ("model", "dataset"):
            raise ValueError(f"repo_type must be 'model' or 'dataset', got {repo_type!r}")
        created_at = created_at or last_modified
        for date in (last_modified, created_at):
            if not HUB_DATE.fullmatch(date):
                raise ValueError(f"Hub dates look like 2024-01-01T00:00:00.000Z, got {date!r}")
        all_tags = list(tags) + [t for t in (library_name, pipeline_tag) if t and t not in tags]
        meta = {
            "author": author or repo_id.split("/")[0],
            "tags": all_tags,
            "library_name": library_name,
            "pipeline_tag": pipeline_tag,
            "config": config,
            "cardData": card_data,
            "downloads": downloads,
            "likes": likes,
            "lastModified": last_modified,
            "createdAt": created_at,
        }
        revs = {}
        for name, rev_files in {"main": files, **(revisions or {})}.items():
            blobs = {p: d.encode() if isinstance(d, str) else bytes(d) for p, d in rev_files.items()}
            listing = json.dumps([repo_id, name, sorted((p, git_blob_sha(d)) for p, d in blobs.items())])
            revs[name] = {"sha": hashlib.sha1(listing.encode()).hexdigest(), "files": blobs}
        with self._lock:
            store = self._datasets if repo_type == "dataset" else self._repos
            store[repo_id] = {"id": repo_id, "meta": meta, "revs": revs}
        return revs["main"]["sha"]

    def add_folder(self, repo_id: str, folder, **meta) -> str:
        """`add_repo` with every file under a local folder (paths relative to it, with `/`)."""
        root = Path(folder)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add_repo(repo_id, files, **meta)

    def add_ah_file(self, path: str, data) -> None:
        """Serve `data` (a dict/list as JSON, or bytes) at `ah_url + "/" + path`."""
        if isinstance(data, (dict, list)):
            self._ah[path.strip("/")] = (json.dumps(data).encode(), "application/json")
        else:
            self._ah[path.strip("/")] = (bytes(data), "application/octet-stream")

    # ---- faults and log ------------------------------------------------------------------------------------------
    def fail(self, path_regex: str, kind: str, times: int | None = None, **options) -> None:
        """Make requests whose decoded path (no query) matches `path_regex` (re.search) misbehave.

        kind "status": answer `code` (500) with `error_code` as X-Error-Code; "timeout": wait `seconds` (1.0), then
        answer normally; "truncate": send the full Content-Length but only `bytes` (0) body bytes, then close (GET
        only); "malformed_json": answer 200 with a body that is not JSON (GET only). `times`: how many requests
        (None: all). Extra options for any kind: `method` ("HEAD"/"GET"/...), `skip` (let that many matches pass)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        with self._lock:
            self._faults.append(
                {
                    "regex": re.compile(path_regex),
                    "kind": kind,
                    "times": times,
                    "method": options.pop("method", None),
                    "skip": options.pop("skip", 0),
                    **options,
                }
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def close(self) -> None:
        self._closing.set()  # ends "timeout" waits
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _take_fault(self, method: str, path: str) -> dict | None:
        with self._lock:
            for fault in self._faults:
                if not fault["regex"].search(path) or fault["method"] not in (None, method):
                    continue
                if fault["kind"] in ("truncate", "malformed_json") and method != "GET":
                    continue
                if fault["skip"] > 0:
                    fault["skip"] -= 1
                    continue
                if fault["times"] is not None:
                    fault["times"] -= 1
                    if fault["times"] <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # ---- HTTP ----------------------------------------------------------------------------------------------------
    def _serve(self, h: _Handler) -> None:
        raw_path, _, raw_query = h.path.partition("?")
        entry = {
            "method": h.command,
            "path": unquote(raw_path),
            "query": parse_qs(raw_query, keep_blank_values=True),
            "status": None,
            "bytes": 0,
            "headers": {k.lower(): v for k, v in h.headers.items()},
        }
        with self._lock:
            self.requests.append(entry)
        fault = self._take_fault(h.command, entry["path"])
        if fault and fault["kind"] == "timeout":
            self._closing.wait(fault.get("seconds", 1.0))
        try:
            if fault and fault["kind"] == "status":
                raise _Reply(fault.get("code", 500), "injected fault", fault.get("error_code"))
            status, headers, body = self._route(h.command, raw_path, raw_query, h.headers.get("Range"))
        except _Reply as err:
            status, body = err.status, json.dumps({"error": str(err)}).encode()
            headers = {"Content-Type": "application/json", **err.headers}
            if err.error_code:
                headers["X-Error-Code"] = err.error_code
                headers["X-Error-Message"] = str(err)
        if fault and fault["kind"] == "malformed_json":
            body = b'[{"id": "this is not json'
        sent = body if h.command != "HEAD" else b""
        if fault and fault["kind"] == "truncate":
            sent = body[: fault.get("bytes", 0)]
        entry["status"], entry["bytes"] = status, len(sent)  # before writing: the client may look at the log at once
        try:
            h.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                h.send_header(name, value)
            h.end_headers()
            h.wfile.write(sent)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # a client that gave up (timeout faults)
            pass
        h.close_connection = True

    def _route(self, method: str, raw_path: str, raw_query: str, range_header: str | None):
        segments = raw_path.split("/")[1:]
        parts = [unquote(s) for s in segments]  # one segment may hold a quoted "/" (revision "refs%2Fpr%2F1")
        for part in parts:
            if any(c in ("", ".", "..") or "\\" in c or "\0" in c for c in part.split("/")):
                raise _Reply(400, f"Invalid path {unquote(raw_path)!r}")
        if method not in ("GET", "HEAD"):
            raise _Reply(404, f"{method} is not served by the fake Hub")
        query = parse_qs(raw_query, keep_blank_values=True)
        if raw_path.startswith(AH_PREFIX + "/"):
            key = "/".join(parts[3:])
            if key not in self._ah:
                raise _Reply(404, f"{key} not found in the AdapterHub index")
            data, ctype = self._ah[key]
            return 200, {"Content-Type": ctype}, data
        if parts[:2] == ["api", "models"]:
            if len(parts) == 2:
                return self._list_models(raw_path, raw_query, query)
            if len(parts) >= 4:
                repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                if not rest:
                    return self._model_info(repo_id, "main", query)
                if rest[0] == "revision" and len(rest) == 2:
                    return self._model_info(repo_id, rest[1], query)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]), raw_path, raw_query, query)
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                return self._model_info(repo_id, rest[1] if rest else "main", query, self._datasets)
            if rest[0] == "tree" and len(rest) >= 2:
                under = "/".join(rest[2:])
                return self._tree(repo_id, rest[1], under, raw_path, raw_query, query, self._datasets)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            repo_id = f"{parts[1]}/{parts[2]}"
            return self._resolve(repo_id, parts[4], "/".join(parts[5:]), range_header, self._datasets)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), range_header)
        raise _Reply(404, f"{unquote(raw_path)} is not served by the fake Hub")

    # ---- endpoints -----------------------------------------------------------------------------------------------
    def _revision(self, repo_id: str, rev: str, repos: dict | None = None) -> tuple[dict, dict]:
        repo = (self._repos if repos is None else repos).get(repo_id)
        if repo is None:
            raise _Reply(404, f"Repository {repo_id} not found", "RepoNotFound")
        for name, r in repo["revs"].items():
            if rev in (name, r["sha"]):
                return repo, r
        raise _Reply(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _full_item(self, repo: dict, rev: dict, sizes: bool = True) -> dict:
        meta = {k: v for k, v in repo["meta"].items() if v is not None}
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": git_blob_sha(d)} if sizes else {})}
            for p, d in sorted(rev["files"].items())
        ]
        return {
            "_id": rev["sha"][:24],
            "id": repo["id"],
            "modelId": repo["id"],
            "sha": rev["sha"],
            "private": False,
            "gated": False,
            "disabled": False,
            **meta,
            "siblings": siblings,
        }

    @staticmethod
    def _expanded(item: dict, expand: list[str]) -> dict:
        return {k: v for k, v in item.items() if k in ("_id", "id") or k in expand}

    def _model_info(self, repo_id: str, rev_name: str, query: dict, repos: dict | None = None):
        repo, rev = self._revision(repo_id, rev_name, repos)
        item = self._full_item(repo, rev)
        if query.get("expand"):
            item = self._expanded(item, query["expand"])
        return 200, {"Content-Type": "application/json"}, json.dumps(item).encode()

    def _list_models(self, raw_path: str, raw_query: str, query: dict):
        one = {k: v[-1] for k, v in query.items()}
        with self._lock:
            repos = list(self._repos.values())
        wanted_tags = query.get("filter", [])
        repos = [r for r in repos if all(t in r["meta"]["tags"] for t in wanted_tags)]
        if "author" in one:
            repos = [r for r in repos if r["meta"]["author"].lower() == one["author"].lower()]
        if "search" in one:
            repos = [r for r in repos if one["search"].lower() in r["id"].lower()]
        if "pipeline_tag" in one:
            repos = [r for r in repos if r["meta"]["pipeline_tag"] == one["pipeline_tag"]]
        if "sort" in one:
            if one["sort"] not in SORT_KEYS:
                raise _Reply(400, f"sort must be one of {SORT_KEYS}")
            repos.sort(key=lambda r: r["meta"][one["sort"]], reverse=True)
        items = []
        for repo in repos:
            full = self._full_item(repo, repo["revs"]["main"], sizes=False)
            if query.get("expand"):
                items.append(self._expanded(full, query["expand"]))
                continue
            keys = [
                "_id",
                "id",
                "modelId",
                "likes",
                "downloads",
                "private",
                "tags",
                "pipeline_tag",
                "library_name",
                "createdAt",
            ]
            if one.get("full") == "true":
                keys += ["author", "sha", "lastModified", "gated", "disabled", "siblings"]
            keys += [k for k, p in (("config", "config"), ("cardData", "cardData")) if one.get(p) == "true"]
            items.append({k: full[k] for k in keys if k in full})
        return self._page(items, raw_path, raw_query, query)

    def _page(self, items: list, raw_path: str, raw_query: str, query: dict):
        """One page of `items`, with a `Link: <absolute URL>; rel="next"` carrying every param plus a cursor."""
        try:
            size = min(int(query["limit"][-1]), self.page_size) if "limit" in query else self.page_size
            cursor = query.get("cursor", [""])[-1]
            offset = json.loads(base64.urlsafe_b64decode(cursor))["offset"] if cursor else 0
        except (ValueError, KeyError, TypeError) as err:
            raise _Reply(400, f"bad limit or cursor: {err}") from err
        headers = {"Content-Type": "application/json"}
        if offset + size < len(items):
            token = base64.urlsafe_b64encode(json.dumps({"offset": offset + size}).encode()).decode()
            params = [(k, v) for k, v in parse_qsl(raw_query, keep_blank_values=True) if k != "cursor"]
            headers["Link"] = f'<{self.url}{raw_path}?{urlencode(params + [("cursor", token)])}>; rel="next"'
        return 200, headers, json.dumps(items[offset : offset + size]).encode()

    def _tree(self, repo_id, rev_name, under, raw_path, raw_query, query, repos: dict | None = None):
        _, rev = self._revision(repo_id, rev_name, repos)
        recursive = query.get("recursive", ["false"])[-1] == "true"
        prefix = under.strip("/") + "/" if under.strip("/") else ""
        dirs = set()
        for path in rev["files"]:
            parts = path.split("/")[:-1]
            if not any(p in ("", ".", "..") for p in parts):  # no folder entries for malicious names
                dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        if prefix and prefix[:-1] not in dirs:
            raise _Reply(404, f"{under} not found at {rev_name}", "EntryNotFound", {"X-Repo-Commit": rev["sha"]})
        entries = [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d} for d in dirs]
        entries += [
            {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": p}
            for p, data in rev["files"].items()
        ]
        entries = [
            e for e in entries if e["path"].startswith(prefix) and (recursive or "/" not in e["path"][len(prefix) :])
        ]
        entries.sort(key=lambda e: (e["type"] != "directory", e["path"]))
        return self._page(entries, raw_path, raw_query, query)

    def _resolve(self, repo_id: str, rev_name: str, path: str, range_header: str | None, repos: dict | None = None):
        _, rev = self._revision(repo_id, rev_name, repos)
        if path not in rev["files"]:
            raise _Reply(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": rev["sha"]})
        data = rev["files"][path]
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{git_blob_sha(data)}"',
            "X-Repo-Commit": rev["sha"],
            "Accept-Ranges": "bytes",
        }
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if match and int(match[1]) < len(data):  # resumed download after a truncated one
            start, end = int(match[1]), min(int(match[2] or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, headers, data[start : end + 1]
        return 200, headers, data


class _RecordingTime:
    """Stands in for the `time` module inside huggingface_hub: `sleep` returns at once and is recorded."""

    def __init__(self, sleeps: list[float]):
        self._sleeps = sleeps

    def sleep(self, seconds: float) -> None:
        self._sleeps.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


def use_fake_hub(monkeypatch, hub: FakeHub, hf_home) -> None:
    """Point huggingface_hub (already imported, so env vars alone are too late) at `hub`; see the `fake_hub` fixture."""
    import huggingface_hub.constants as c
    from huggingface_hub import file_download, hf_api
    from huggingface_hub.utils import _cache_assets, _cache_manager, _http

    home = Path(hf_home)
    home.mkdir(parents=True, exist_ok=True)
    for var in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_ASSETS_CACHE",
        "HUGGINGFACE_ASSETS_CACHE",
        "HF_XET_CACHE",
        "HF_TOKEN_PATH",
    ):
        monkeypatch.delenv(var, raising=False)
    for var, value in {
        "HF_ENDPOINT": hub.url,
        "WORKBENCH_AH_INDEX_URL": hub.ah_url,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }.items():
        monkeypatch.setenv(var, value)
    cache, assets = str(home / "hub"), str(home / "assets")
    for name, value in {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": cache,
        "HUGGINGFACE_HUB_CACHE": cache,
        "HF_ASSETS_CACHE": assets,
        "HUGGINGFACE_ASSETS_CACHE": assets,
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }.items():
        monkeypatch.setattr(c, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)  # huggingface_hub.model_info, file_exists, ... use it
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", cache)  # imported by value
    monkeypatch.setattr(_cache_assets, "HF_ASSETS_CACHE", assets)
    for module in (_http, file_download):  # retry back-off (1 s, 2 s, ... 8 s) and download resume (1 s)
        monkeypatch.setattr(module, "time", _RecordingTime(hub.retry_sleeps))
    _use_for_datasets(monkeypatch, hub, home)
    _http.close_session()  # a fresh httpx client, built under this environment


def _use_for_datasets(monkeypatch, hub: FakeHub, home: Path) -> None:
    """`datasets` read the endpoint, offline mode and its caches at import: point them at `hub` and `home` too."""
    import datasets.config as dc

    datasets_cache = home / "datasets"
    for name, value in {
        "HF_ENDPOINT": hub.url,
        "HUB_DATASETS_URL": hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_HUB_OFFLINE": False,
        "HF_DATASETS_OFFLINE": False,
        "HF_DATASETS_CACHE": datasets_cache,
        "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
        "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
        "HF_MODULES_CACHE": home / "modules",
    }.items():
        monkeypatch.setattr(dc, name, value)
