"""A fake Hugging Face Hub (model and dataset repos) on 127.0.0.1, spoken to by huggingface_hub 2.4.0 unchanged.

Serves what the tests give it and nothing else: repos (`add_repo` / `add_folder`, each with extra branches if wanted;
`repo_type="dataset"` for a dataset repo, served under `/api/datasets/...` and `/datasets/...` as `datasets`'s
`load_dataset("org/name")` asks for it) and the files of the archived AdapterHub index (`add_ah_file`, under
`ah_url`). Every file is a plain git file:
`200` with `ETag: "<git blob sha1>"`, `X-Repo-Commit` and `Content-Length`; no LFS redirect and never an Xet header.
Errors carry `X-Error-Code` (RepoNotFound / RevisionNotFound / EntryNotFound), which is what the client maps to
its exception types. `fail()` injects faults; `requests` logs every request, in order of arrival.

Writes, as huggingface_hub 2.4.0 sends them (see "writing" below): `create_repo` (`POST /api/repos/create`),
`create_branch`, the README metadata check (`POST /api/validate-yaml`), `preupload` (every file is answered
"regular", so the client sends it inline: no LFS or Xet) and the NDJSON `commit` (to a branch, or a new pull request
`refs/pr/<n>` with `create_pr`). A commit to `main` re-derives what listings show, as the Hub does: `library_name`,
`pipeline_tag` and `cardData` from README.md's YAML, tags from its `tags`, library, pipeline tag, `datasets`,
`language`, `license` and `base_model` (plus `base_model:adapter:<id>` for adapter libraries), and `config`
(`adapter_transformers.model_name`/`model_class`, or PEFT's base model) from adapter_config.json, matching the real
listings quoted in HUB_FACTS section 4 (how the Hub computes `config` is inferred, not documented).
Tokens (`add_user`) matter where access depends on them: writes need a known token whose user or organisation owns
the namespace, and private repos are invisible (401/404 RepoNotFound) to anyone else; public reads accept any token.
Use it through the `fake_hub` fixture (tests/conftest.py), which also points huggingface_hub at it (`use_fake_hub`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode

import yaml

AH_PREFIX = "/ah/dist/v2"
SORT_KEYS = ("downloads", "likes", "lastModified", "createdAt")
FAULT_KINDS = ("status", "timeout", "truncate", "malformed_json")
ADAPTER_LIBRARIES = ("adapter-transformers", "peft")  # libraries whose `base_model` means "an adapter of it"
REPO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
HUB_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")  # the client rejects isoformat()'s "+00:00"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Reply(Exception):
    """An error answer, raised anywhere in the routing."""

    def __init__(
        self, status: int, message: str, error_code: str | None = None, headers: dict | None = None, body=None
    ):
        super().__init__(message)
        self.status, self.error_code, self.headers, self.body = status, error_code, headers or {}, body or {}


class _Request(NamedTuple):
    method: str
    body: bytes
    auth: str | None  # the Authorization header


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
        self._users: dict[str, dict] = {}  # token -> {"name", "orgs", "write"}
        self._commits = 0
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
        private: bool = False,
    ) -> str:
        """Add (or replace) a model repo (or a dataset repo with `repo_type="dataset"`); `files` is its `main`,
        `revisions` extra branches. Returns main's sha.

        File names are stored verbatim (even `../../evil.txt`: it shows in the tree, but resolving it answers 400).
        The tags served are `tags` plus `library_name` and `pipeline_tag` (as the Hub does). A `private` repo is
        served only to tokens of its namespace's user or organisation members (`add_user`)."""
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
            "private": private,
        }
        revs = {}
        for name, rev_files in {"main": files, **(revisions or {})}.items():
            blobs = {p: d.encode() if isinstance(d, str) else bytes(d) for p, d in rev_files.items()}
            listing = json.dumps([repo_id, name, sorted((p, git_blob_sha(d)) for p, d in blobs.items())])
            revs[name] = {"sha": hashlib.sha1(listing.encode()).hexdigest(), "files": blobs}
        with self._lock:
            store = self._datasets if repo_type == "dataset" else self._repos
            store[repo_id] = {"id": repo_id, "meta": meta, "revs": revs, "prs": 0, "commits": []}
        return revs["main"]["sha"]

    def add_user(self, name: str, token: str, orgs=(), write: bool = True) -> str:
        """A token the Hub accepts: it belongs to user `name`, member of `orgs`; `write=False` for a read token."""
        with self._lock:
            self._users[token] = {"name": name, "orgs": set(orgs), "write": write}
        return token

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repo at a branch, PR ref (`refs/pr/1`) or commit sha (as pushed)."""
        store = self._datasets if repo_type == "dataset" else self._repos
        return dict(self._revision(repo_id, revision, store, auth=None, check_access=False)[1]["files"])

    def commits(self, repo_id: str, repo_type: str = "model") -> list[dict]:
        """The commits made through the API, oldest first: `{"ref", "sha", "summary", "description", "paths"}`."""
        store = self._datasets if repo_type == "dataset" else self._repos
        return list(store[repo_id]["commits"])

    def info(self, repo_id: str, repo_type: str = "model") -> dict:
        """What the Hub lists for a repo (tags, library_name, cardData, config, private, ...), as served."""
        store = self._datasets if repo_type == "dataset" else self._repos
        repo = store[repo_id]
        return self._full_item(repo, repo["revs"]["main"])

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
        length = int(h.headers.get("Content-Length") or 0)
        entry["body"] = h.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(entry)
        fault = self._take_fault(h.command, entry["path"])
        if fault and fault["kind"] == "timeout":
            self._closing.wait(fault.get("seconds", 1.0))
        try:
            if fault and fault["kind"] == "status":
                raise _Reply(fault.get("code", 500), "injected fault", fault.get("error_code"))
            request = _Request(h.command, entry["body"], h.headers.get("Authorization"))
            status, headers, body = self._route(request, raw_path, raw_query, h.headers.get("Range"))
        except _Reply as err:
            status, body = err.status, json.dumps({"error": str(err), **err.body}).encode()
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

    def _route(self, request: _Request, raw_path: str, raw_query: str, range_header: str | None):
        method, auth = request.method, request.auth
        segments = raw_path.split("/")[1:]
        parts = [unquote(s) for s in segments]  # one segment may hold a quoted "/" (revision "refs%2Fpr%2F1")
        for part in parts:
            if any(c in ("", ".", "..") or "\\" in c or "\0" in c for c in part.split("/")):
                raise _Reply(400, f"Invalid path {unquote(raw_path)!r}")
        query = parse_qs(raw_query, keep_blank_values=True)
        if method == "POST":
            return self._route_write(request, parts, query)
        if method not in ("GET", "HEAD"):
            raise _Reply(404, f"{method} is not served by the fake Hub")
        if raw_path.startswith(AH_PREFIX + "/"):
            key = "/".join(parts[3:])
            if key not in self._ah:
                raise _Reply(404, f"{key} not found in the AdapterHub index")
            data, ctype = self._ah[key]
            return 200, {"Content-Type": ctype}, data
        if parts[:2] == ["api", "models"]:
            if len(parts) == 2:
                return self._list_models(raw_path, raw_query, query, auth)
            if len(parts) >= 4:
                repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
                if not rest:
                    return self._model_info(repo_id, "main", query, auth=auth)
                if rest[0] == "revision" and len(rest) == 2:
                    return self._model_info(repo_id, rest[1], query, auth=auth)
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, rest[1], "/".join(rest[2:]), raw_path, raw_query, query, auth=auth)
        if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                return self._model_info(repo_id, rest[1] if rest else "main", query, self._datasets, auth)
            if rest[0] == "tree" and len(rest) >= 2:
                under = "/".join(rest[2:])
                return self._tree(repo_id, rest[1], under, raw_path, raw_query, query, self._datasets, auth)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
            repo_id = f"{parts[1]}/{parts[2]}"
            return self._resolve(repo_id, parts[4], "/".join(parts[5:]), range_header, self._datasets, auth)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), range_header, auth=auth)
        raise _Reply(404, f"{unquote(raw_path)} is not served by the fake Hub")

    # ---- endpoints -----------------------------------------------------------------------------------------------
    def _revision(
        self, repo_id: str, rev: str, repos: dict | None = None, auth: str | None = None, check_access: bool = True
    ) -> tuple[dict, dict]:
        repo = (self._repos if repos is None else repos).get(repo_id)
        if repo is None:
            raise _Reply(404, f"Repository {repo_id} not found", "RepoNotFound")
        if check_access and not self._can_read(repo, auth):
            # The Hub answers as if the repo did not exist: 401 without a known token, 404 with someone else's.
            status = 404 if self._user(auth) else 401
            raise _Reply(status, f"Repository {repo_id} not found", "RepoNotFound")
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
            # bytes the repo takes on the Hub, every branch's files counted once: the Hub answers it to `expand`
            "usedStorage": sum(
                len(d)
                for d in {git_blob_sha(d): d for r in repo["revs"].values() for d in r["files"].values()}.values()
            ),
        }

    @staticmethod
    def _expanded(item: dict, expand: list[str]) -> dict:
        return {k: v for k, v in item.items() if k in ("_id", "id") or k in expand}

    def _model_info(self, repo_id: str, rev_name: str, query: dict, repos: dict | None = None, auth=None):
        repo, rev = self._revision(repo_id, rev_name, repos, auth)
        item = self._full_item(repo, rev)
        if query.get("expand"):
            item = self._expanded(item, query["expand"])
        else:
            item.pop("usedStorage")  # only when asked for, as on the Hub
        return 200, {"Content-Type": "application/json"}, json.dumps(item).encode()

    def _list_models(self, raw_path: str, raw_query: str, query: dict, auth=None):
        one = {k: v[-1] for k, v in query.items()}
        with self._lock:
            repos = [r for r in self._repos.values() if self._can_read(r, auth)]
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

    def _tree(self, repo_id, rev_name, under, raw_path, raw_query, query, repos: dict | None = None, auth=None):
        _, rev = self._revision(repo_id, rev_name, repos, auth)
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

    def _resolve(self, repo_id, rev_name: str, path: str, range_header, repos: dict | None = None, auth=None):
        _, rev = self._revision(repo_id, rev_name, repos, auth)
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

    # ---- access --------------------------------------------------------------------------------------------------
    def _user(self, auth: str | None) -> dict | None:
        token = auth.removeprefix("Bearer ").strip() if auth and auth.startswith("Bearer ") else None
        return self._users.get(token) if token else None

    def _can_read(self, repo: dict, auth: str | None) -> bool:
        if not repo["meta"].get("private"):
            return True
        user = self._user(auth)
        return user is not None and self._owns(user, repo["id"].split("/")[0])

    @staticmethod
    def _owns(user: dict, namespace: str) -> bool:
        return namespace == user["name"] or namespace in user["orgs"]

    def _writer(self, auth: str | None, namespace: str) -> dict:
        """The user behind `auth` if they may write to `namespace`, else the Hub's 401/403."""
        if not auth:
            raise _Reply(401, "Invalid username or password.")
        user = self._user(auth)
        if user is None:
            raise _Reply(401, "Invalid credentials in Authorization header")
        if not user["write"] or not self._owns(user, namespace):
            raise _Reply(403, f"You don't have the rights to write to the namespace {namespace!r}")
        return user

    # ---- writing -------------------------------------------------------------------------------------------------
    def _route_write(self, request: _Request, parts: list[str], query: dict):
        if parts == ["api", "repos", "create"]:
            return self._create_repo(request)
        if parts == ["api", "validate-yaml"]:
            return self._validate_yaml(request)
        if len(parts) == 6 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            store = self._datasets if parts[1] == "datasets" else self._repos
            repo_id, action, rev = f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            if action in ("preupload", "commit", "branch"):
                repo = store.get(repo_id)
                if repo is None or not self._can_read(repo, request.auth):
                    status = 401 if repo is not None and self._user(request.auth) is None else 404
                    raise _Reply(status, f"Repository {repo_id} not found", "RepoNotFound")
                self._writer(request.auth, parts[2])
                with self._lock:
                    if action == "preupload":
                        return self._preupload(repo, rev, request)
                    if action == "branch":
                        return self._create_branch(repo, rev, request)
                    return self._commit(repo, rev, request, query.get("create_pr", [""])[-1] == "1", parts[1])
        raise _Reply(404, f"POST /{'/'.join(parts)} is not served by the fake Hub")

    @staticmethod
    def _json_body(request: _Request):
        try:
            return json.loads(request.body or b"{}")
        except ValueError as err:
            raise _Reply(400, f"the request body is not JSON: {err}") from None

    def _create_repo(self, request: _Request):
        payload = self._json_body(request)
        name, org, kind = payload.get("name"), payload.get("organization"), payload.get("type") or "model"
        if kind not in ("model", "dataset"):
            raise _Reply(400, f"the fake Hub serves model and dataset repos, not {kind!r}")
        user = self._user(request.auth)
        namespace = org or (user["name"] if user else "")
        self._writer(request.auth, namespace)
        if not isinstance(name, str) or not REPO_NAME.fullmatch(name) or ".." in name:
            raise _Reply(400, f"Invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}"
        url = f"{self.url}/{'datasets/' if kind == 'dataset' else ''}{repo_id}"
        with self._lock:
            store = self._datasets if kind == "dataset" else self._repos
            if repo_id in store:
                raise _Reply(409, "You already created this repo", headers={"X-Repo-Url": url}, body={"url": url})
            now = _now()
            initial = {".gitattributes": b"*.bin filter=lfs diff=lfs merge=lfs -text\n"}
            sha = self._new_sha(repo_id, "main", initial)
            meta = {
                "author": namespace,
                "tags": [],
                "library_name": None,
                "pipeline_tag": None,
                "config": None,
                "cardData": None,
                "downloads": 0,
                "likes": 0,
                "lastModified": now,
                "createdAt": now,
                "private": payload.get("visibility") == "private",
            }
            store[repo_id] = {
                "id": repo_id,
                "meta": meta,
                "revs": {"main": {"sha": sha, "files": initial}},
                "prs": 0,
                "commits": [],
            }
        return _json(200, {"url": url, "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})

    def _validate_yaml(self, request: _Request):
        content = self._json_body(request).get("content", "")
        try:
            _front_matter(content)
        except ValueError as err:
            return _json(400, {"errors": [{"message": str(err)}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _branch(self, repo: dict, rev: str) -> dict:
        if rev not in repo["revs"]:
            raise _Reply(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo["revs"][rev]

    def _preupload(self, repo: dict, rev: str, request: _Request):
        files = self._branch(repo, rev)["files"]
        answers = []
        for item in self._json_body(request).get("files", []):
            path = item.get("path")
            old = files.get(path)
            answers.append(
                {
                    "path": path,
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha(old) if old is not None else None,
                }
            )
        return _json(200, {"files": answers, "commitOid": self._branch(repo, rev)["sha"]})

    def _create_branch(self, repo: dict, branch: str, request: _Request):
        start = self._json_body(request).get("startingPoint") or "main"
        if branch in repo["revs"]:
            raise _Reply(409, f"Reference already exists: {branch}")
        source = next((r for n, r in repo["revs"].items() if start in (n, r["sha"])), None)
        if source is None:
            raise _Reply(404, f"Invalid rev id: {start}", "RevisionNotFound")
        repo["revs"][branch] = {"sha": source["sha"], "files": dict(source["files"])}
        return _json(200, {})

    def _commit(self, repo: dict, rev: str, request: _Request, create_pr: bool, kind: str):
        base = self._branch(repo, rev)
        try:
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        except ValueError as err:
            raise _Reply(400, f"the commit body is not NDJSON: {err}") from None
        if not lines or lines[0].get("key") != "header":
            raise _Reply(400, "a commit starts with a header line")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != base["sha"]:
            raise _Reply(412, f"A commit has happened since {header['parentCommit']}")
        files, paths = dict(base["files"]), []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = value.get("path", "")
            if not path or any(p in ("", ".", "..") for p in path.split("/")) or "\\" in path:
                raise _Reply(400, f"Invalid path {path!r}")
            if key == "file":
                files[path] = base64.b64decode(value.get("content", ""))
            elif key == "deletedFile":
                files.pop(path, None)
            elif key == "deletedFolder":
                files = {p: d for p, d in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:  # lfsFile: never asked for, since preupload answers "regular"
                raise _Reply(400, f"the fake Hub takes files inline only, not {key!r} ({path})")
            paths.append(path)
        ref = rev
        if create_pr:
            repo["prs"] += 1
            ref = f"refs/pr/{repo['prs']}"
        sha = self._new_sha(repo["id"], ref, files)
        repo["revs"][ref] = {"sha": sha, "files": files}
        repo["commits"].append(
            {
                "ref": ref,
                "sha": sha,
                "summary": header.get("summary"),
                "description": header.get("description"),
                "paths": paths,
            }
        )
        if ref == "main":
            repo["meta"].update(_derived_meta(files), lastModified=_now())
        prefix = f"{self.url}/{'datasets/' if kind == 'datasets' else ''}{repo['id']}"
        pr_url = f"{prefix}/discussions/{repo['prs']}" if create_pr else None
        return _json(
            200, {"success": True, "commitOid": sha, "commitUrl": f"{prefix}/commit/{sha}", "pullRequestUrl": pr_url}
        )

    def _new_sha(self, repo_id: str, ref: str, files: dict[str, bytes]) -> str:
        self._commits += 1
        listing = json.dumps([repo_id, ref, self._commits, sorted((p, git_blob_sha(d)) for p, d in files.items())])
        return hashlib.sha1(listing.encode()).hexdigest()


def _json(status: int, data) -> tuple[int, dict, bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(data).encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _front_matter(text: str) -> dict:
    """The YAML metadata block of a README (`---` ... `---`), as a dict; {} without one. ValueError if invalid."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match[1])
    except yaml.YAMLError as err:
        raise ValueError(f"Invalid YAML in README.md metadata: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return data


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else [v for v in value or [] if isinstance(v, str)]


def _derived_meta(files: dict[str, bytes]) -> dict:
    """What the Hub shows for a repo with these files on main: card metadata, tags, library and config."""
    try:
        card = _front_matter(files.get("README.md", b"").decode("utf-8", "replace"))
    except ValueError:
        card = {}
    library, pipeline = card.get("library_name"), card.get("pipeline_tag")
    tags = _as_list(card.get("tags")) + [t for t in (library, pipeline) if isinstance(t, str)]
    tags += [f"dataset:{d}" for d in _as_list(card.get("datasets"))] + _as_list(card.get("language"))
    if isinstance(card.get("license"), str):
        tags.append(f"license:{card['license']}")
    relation = card.get("base_model_relation") or ("adapter" if library in ADAPTER_LIBRARIES else None)
    for base in _as_list(card.get("base_model")):
        tags += [f"base_model:{base}"] + ([f"base_model:{relation}:{base}"] if relation else [])
    config = None
    try:
        saved = json.loads(files["adapter_config.json"]) if "adapter_config.json" in files else None
    except ValueError:
        saved = None
    if isinstance(saved, dict) and library == "adapter-transformers":
        config = {
            "model_type": saved.get("model_type"),
            "adapter_transformers": {"model_name": saved.get("model_name"), "model_class": saved.get("model_class")},
        }
    elif isinstance(saved, dict) and library == "peft":
        config = {
            "peft": {
                "base_model_name_or_path": saved.get("base_model_name_or_path"),
                "task_type": saved.get("task_type"),
            }
        }
    return {
        "tags": list(dict.fromkeys(tags)),
        "library_name": library if isinstance(library, str) else None,
        "pipeline_tag": pipeline if isinstance(pipeline, str) else None,
        "cardData": card or None,
        "config": config,
    }


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
