"""The fake Hub (tests/fakehub.py) as huggingface_hub 2.4.0 sees it, through the `fake_hub` fixture."""

import http.client
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import httpx2
import huggingface_hub
import pytest
from fakehub import FakeHub
from huggingface_hub import HfApi, constants, file_exists, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

CONFIG = {"model_type": "bert", "adapter_transformers": {"model_name": "bert-base-uncased"}}


def raw_request(hub: FakeHub, method: str, target: str) -> tuple[int, dict, bytes]:
    """A request sent byte for byte (no URL normalisation, unlike httpx)."""
    conn = http.client.HTTPConnection(urlsplit(hub.url).netloc, timeout=5)
    try:
        conn.request(method, target)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@pytest.fixture
def catalog(fake_hub):
    fake_hub.add_repo(
        "AdapterHub/bert-base-uncased-pf-imdb",
        {"adapter_config.json": b"{}"},
        tags=["bert", "adapterhub:sentiment/imdb", "en"],
        library_name="adapter-transformers",
        pipeline_tag="text-classification",
        config=CONFIG,
        card_data={"language": ["en"]},
        downloads=30,
        likes=1,
        last_modified="2021-11-24T13:47:27.000Z",
    )
    fake_hub.add_repo(
        "AdapterHub/roberta-base-pf-sick",
        {"adapter_config.json": b"{}"},
        tags=["roberta", "dataset:sick"],
        library_name="adapter-transformers",
        downloads=10,
        likes=5,
        last_modified="2022-01-01T00:00:00.000Z",
    )
    fake_hub.add_repo(
        "calpt/adapter-BERT-base-squad1",
        {"adapter_config.json": b"{}"},
        tags=["bert", "adapterhub:qa/squad1"],
        library_name="adapter-transformers",
        downloads=20,
        likes=3,
        last_modified="2020-06-01T00:00:00Z",
    )
    fake_hub.add_repo("someone/peft-lora", {"adapter_config.json": b"{}"}, library_name="peft", downloads=99)
    return fake_hub


def ids(models) -> list[str]:
    return [m.id for m in models]


def test_fixture_points_huggingface_hub_at_the_fake(fake_hub, tmp_path):
    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"] == fake_hub.url
    assert os.environ["WORKBENCH_AH_INDEX_URL"] == fake_hub.ah_url == fake_hub.url + "/ah/dist/v2"
    assert not constants.is_offline_mode() and "HF_HUB_OFFLINE" not in os.environ and "HF_TOKEN" not in os.environ
    assert Path(constants.HF_HUB_CACHE) == tmp_path / "hf_home" / "hub"
    assert HfApi().endpoint == fake_hub.url
    assert huggingface_hub.hf_hub_url("o/n", "a b.json").startswith(fake_hub.url + "/o/n/resolve/main/a%20b.json")


def test_list_models_filters_search_author_sort(catalog):
    api = HfApi()
    assert ids(api.list_models(filter="adapter-transformers")) == [
        "AdapterHub/bert-base-uncased-pf-imdb",
        "AdapterHub/roberta-base-pf-sick",
        "calpt/adapter-BERT-base-squad1",
    ]
    assert ids(api.list_models(filter=["adapter-transformers", "bert"])) == [  # repeated filter = AND
        "AdapterHub/bert-base-uncased-pf-imdb",
        "calpt/adapter-BERT-base-squad1",
    ]
    assert ids(api.list_models(filter="adapterhub:sentiment/imdb")) == ["AdapterHub/bert-base-uncased-pf-imdb"]
    assert ids(api.list_models(filter="text-classification")) == ["AdapterHub/bert-base-uncased-pf-imdb"]
    assert ids(api.list_models(filter="adapters")) == []
    assert ids(api.list_models(search="bert")) == [
        "AdapterHub/bert-base-uncased-pf-imdb",
        "AdapterHub/roberta-base-pf-sick",
        "calpt/adapter-BERT-base-squad1",
    ]
    assert ids(api.list_models(search="BERT-base", author="calpt")) == ["calpt/adapter-BERT-base-squad1"]
    assert ids(api.list_models(author="AdapterHub", sort="downloads")) == [
        "AdapterHub/bert-base-uncased-pf-imdb",
        "AdapterHub/roberta-base-pf-sick",
    ]
    assert ids(api.list_models(sort="likes"))[:2] == [
        "AdapterHub/roberta-base-pf-sick",
        "calpt/adapter-BERT-base-squad1",
    ]
    assert ids(api.list_models(sort="last_modified", filter="adapter-transformers"))[0] == (
        "AdapterHub/roberta-base-pf-sick"
    )
    catalog.reset_log()
    top2 = ids(api.list_models(sort="downloads", limit=2))
    assert top2 == ["someone/peft-lora", "AdapterHub/bert-base-uncased-pf-imdb"]
    assert len(catalog.requests) == 1 and catalog.requests[0]["query"] == {"sort": ["downloads"], "limit": ["2"]}


def test_list_models_fields_full_config_carddata_expand(catalog):
    api = HfApi()
    (plain,) = api.list_models(search="pf-imdb")
    assert plain.modelId == plain.id and plain.library_name == "adapter-transformers" and plain.downloads == 30
    assert plain.pipeline_tag == "text-classification" and plain.created_at.year == 2021
    assert plain.sha is None and plain.siblings is None and plain.config is None and plain.card_data is None
    (full,) = api.list_models(search="pf-imdb", full=True, fetch_config=True, cardData=True)
    assert full.sha and full.author == "AdapterHub" and full.last_modified.isoformat() == "2021-11-24T13:47:27+00:00"
    assert [s.rfilename for s in full.siblings] == ["adapter_config.json"]
    assert full.config == CONFIG and full.card_data.language == ["en"]
    assert "adapterhub:sentiment/imdb" in full.tags and "adapter-transformers" in full.tags
    (expanded,) = api.list_models(search="pf-imdb", expand=["config", "downloads"])
    assert expanded.config == CONFIG and expanded.downloads == 30 and expanded.tags is None
    assert catalog.requests[-1]["query"] == {"search": ["pf-imdb"], "expand": ["config", "downloads"]}


def test_list_models_paginates_with_absolute_link_headers(fake_hub):
    for i in range(120):
        fake_hub.add_repo(f"org/m{i:03d}", {"x": b"1"}, library_name="adapter-transformers", downloads=i)
    fake_hub.add_repo("org/other", {"x": b"1"})
    models = list(HfApi().list_models(filter="adapter-transformers", full=True, fetch_config=True))
    assert len(models) == 120 and len({m.id for m in models}) == 120
    assert [r["path"] for r in fake_hub.requests] == ["/api/models"] * 3  # 50 + 50 + 20
    for req in fake_hub.requests[1:]:  # the next URL carries every parameter, plus the cursor
        assert req["query"]["filter"] == ["adapter-transformers"] and req["query"]["full"] == ["true"]
        assert req["query"]["config"] == ["true"] and len(req["query"]["cursor"]) == 1
    fake_hub.reset_log()
    top = list(HfApi().list_models(sort="downloads", limit=60))  # client-side islice stops after the 2nd page
    assert [m.downloads for m in top] == list(range(119, 59, -1)) and len(fake_hub.requests) == 2
    fake_hub.page_size = 7
    fake_hub.reset_log()
    assert len(list(HfApi().list_models(author="org"))) == 121 and len(fake_hub.requests) == 18


def test_model_info_revisions_and_not_found(fake_hub):
    sha = fake_hub.add_repo(
        "AdapterHub/a",
        {"adapter_config.json": b"{}", "sub/w.bin": b"12345"},
        revisions={"v1": {"adapter_config.json": b"[]"}, "refs/pr/1": {"README.md": b"# pr"}},
    )
    info = HfApi().model_info("AdapterHub/a")
    assert info.sha == sha and len(sha) == 40 and info.modelId == "AdapterHub/a" and info.private is False
    assert {s.rfilename: s.size for s in info.siblings} == {"adapter_config.json": 2, "sub/w.bin": 5}
    v1 = HfApi().model_info("AdapterHub/a", revision="v1")
    assert v1.sha != sha and [s.rfilename for s in v1.siblings] == ["adapter_config.json"]
    assert HfApi().model_info("AdapterHub/a", revision=v1.sha).sha == v1.sha  # a commit sha is a revision too
    pr = HfApi().model_info("AdapterHub/a", revision="refs/pr/1")
    assert [s.rfilename for s in pr.siblings] == ["README.md"]
    assert fake_hub.requests[-1]["path"] == "/api/models/AdapterHub/a/revision/refs/pr/1"  # sent as refs%2Fpr%2F1
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("AdapterHub/missing")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info("AdapterHub/a", revision="v9")
    assert [r["status"] for r in fake_hub.requests[-2:]] == [404, 404]


def test_snapshot_download_lands_in_the_isolated_cache(fake_hub, tmp_path):
    files = {"adapter_config.json": b'{"a": 1}', "head_config.json": b"{}", "weights/pytorch_adapter.bin": b"\0\1\2"}
    sha = fake_hub.add_repo("AdapterHub/x", files, revisions={"1": {"adapter_config.json": b'{"v": 1}'}})
    folder = Path(snapshot_download("AdapterHub/x"))
    assert folder == tmp_path / "hf_home/hub/models--AdapterHub--x/snapshots" / sha
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    assert (tmp_path / "hf_home/hub/models--AdapterHub--x/refs/main").read_text() == sha
    assert (Path(snapshot_download("AdapterHub/x", revision="1")) / "adapter_config.json").read_bytes() == b'{"v": 1}'
    first = fake_hub.requests[:8]  # main: info, tree, then HEAD + GET per file (in parallel)
    assert [(r["method"], r["path"]) for r in first[:2]] == [
        ("GET", "/api/models/AdapterHub/x/revision/main"),
        ("GET", f"/api/models/AdapterHub/x/tree/{sha}"),
    ]
    assert first[1]["query"] == {"recursive": ["true"], "expand": ["false"]}
    assert sorted(r["method"] for r in first[2:]) == ["GET"] * 3 + ["HEAD"] * 3
    assert all(r["status"] == 200 and "authorization" not in r["headers"] for r in fake_hub.requests)
    assert all("hf_hub/" in r["headers"]["user-agent"] for r in fake_hub.requests)
    assert not any("agent-harnesses" in r["path"] for r in fake_hub.requests)  # telemetry is off
    assert sum(r["bytes"] for r in first) > sum(map(len, files.values()))


def test_tree_listing_is_paginated_and_lists_folders(fake_hub):
    fake_hub.add_repo("o/t", {f"d/f{i}.txt": b"x" for i in range(5)} | {"top.txt": b"t"})
    fake_hub.page_size = 2
    entries = list(HfApi().list_repo_tree("o/t", recursive=True))
    assert [e.path for e in entries] == ["d", "d/f0.txt", "d/f1.txt", "d/f2.txt", "d/f3.txt", "d/f4.txt", "top.txt"]
    assert len(fake_hub.requests) == 4
    assert [e.path for e in HfApi().list_repo_tree("o/t")] == ["d", "top.txt"]
    assert [e.path for e in HfApi().list_repo_tree("o/t", path_in_repo="d")][:1] == ["d/f0.txt"]


def test_missing_file_is_an_entry_not_found(fake_hub, tmp_path):
    sha = fake_hub.add_repo("o/peft", {"adapter_config.json": b"{}"})
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("o/peft", "adapter_model.safetensors")
    assert fake_hub.requests[-1]["status"] == 404
    assert (tmp_path / f"hf_home/hub/models--o--peft/.no_exist/{sha}/adapter_model.safetensors").exists()
    assert file_exists("o/peft", "adapter_config.json") and not file_exists("o/peft", "adapter_model.bin")
    assert not file_exists("o/nope", "adapter_config.json")  # RepoNotFound


def test_malicious_tree_entry_is_served_verbatim_but_never_resolved(fake_hub, tmp_path):
    sha = fake_hub.add_repo("evil/repo", {"../../evil.txt": b"pwned", "ok.txt": b"ok"})
    assert "../../evil.txt" in [e.path for e in HfApi().list_repo_tree("evil/repo", recursive=True)]
    with pytest.raises(ValueError, match="'..'"):  # huggingface_hub 2.4.0 refuses it itself
        snapshot_download("evil/repo")
    assert not list(tmp_path.rglob("evil.txt"))
    for target in (
        f"/evil/repo/resolve/{sha}/../../evil.txt",
        f"/evil/repo/resolve/{sha}/..%2F..%2Fevil.txt",
        "/evil/repo/resolve/main//etc/passwd",
        "/ah/dist/v2/../../secret",
    ):
        status, _, body = raw_request(fake_hub, "GET", target)
        assert status == 400 and "error" in json.loads(body)


def test_resolve_headers_and_unknown_routes(fake_hub):
    sha = fake_hub.add_repo("o/r", {"a.json": b"abc"})
    status, headers, body = raw_request(fake_hub, "HEAD", "/o/r/resolve/main/a.json")
    assert status == 200 and body == b"" and headers["X-Repo-Commit"] == sha and headers["Content-Length"] == "3"
    assert headers["ETag"].startswith('"') and not any(h.lower().startswith("x-xet") for h in headers)
    status, headers, body = raw_request(fake_hub, "GET", "/o/r/resolve/main/nope")
    assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", sha)
    for method, target in [("GET", "/api/agent-harnesses"), ("GET", "/api/datasets"), ("POST", "/api/models")]:
        status, headers, body = raw_request(fake_hub, method, target)
        assert status == 404 and "error" in json.loads(body) and "X-Error-Code" not in headers


def test_ah_files_and_add_folder(fake_hub, tmp_path):
    fake_hub.add_ah_file("all.json", [{"source": "ah", "adapter_id": "@ukp/x"}])
    fake_hub.add_ah_file("index/facebook/bart-base.json", {"sentiment": {}})
    fake_hub.add_ah_file("adapters/ukp/x.bin", b"\x00raw")
    assert raw_request(fake_hub, "GET", "/ah/dist/v2/all.json")[2] == b'[{"source": "ah", "adapter_id": "@ukp/x"}]'
    assert json.loads(raw_request(fake_hub, "GET", "/ah/dist/v2/index/facebook/bart-base.json")[2]) == {"sentiment": {}}
    assert raw_request(fake_hub, "GET", "/ah/dist/v2/adapters/ukp/x.bin")[2] == b"\x00raw"
    assert raw_request(fake_hub, "GET", "/ah/dist/v2/index/missing.json")[0] == 404
    (tmp_path / "src/sub").mkdir(parents=True)
    (tmp_path / "src/adapter_config.json").write_bytes(b"{}")
    (tmp_path / "src/sub/w.bin").write_bytes(b"w")
    fake_hub.add_folder("o/folder", tmp_path / "src", library_name="adapter-transformers")
    info = HfApi().model_info("o/folder")
    assert sorted(s.rfilename for s in info.siblings) == ["adapter_config.json", "sub/w.bin"]
    assert info.tags == ["adapter-transformers"]
    with pytest.raises(ValueError, match="2024-01-01T00:00:00.000Z"):
        fake_hub.add_repo("o/bad-date", {}, last_modified="2024-01-01T00:00:00+00:00")


def test_fault_status_is_retried_quickly_or_mapped(fake_hub):
    fake_hub.add_repo("o/a", {"x": b"1"})
    fake_hub.fail(r"^/api/models$", "status", times=2)  # 500: http_backoff retries it
    assert ids(HfApi().list_models()) == ["o/a"]
    assert [r["status"] for r in fake_hub.requests] == [500, 500, 200]
    assert fake_hub.retry_sleeps == [1, 2]  # asked for, but returned at once
    fake_hub.fail(r"^/api/models$", "status", code=503)  # every time: gives up after 5 retries
    with pytest.raises(HfHubHTTPError) as err:
        list(HfApi().list_models())
    assert err.value.response.status_code == 503 and fake_hub.retry_sleeps[2:] == [1, 2, 4, 8, 8]
    fake_hub.clear_faults()
    fake_hub.fail("/api/models/o/a", "status", times=1, code=404, error_code="RepoNotFound")
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("o/a")
    assert HfApi().model_info("o/a").id == "o/a"


def test_fault_timeout_on_head_and_on_download(fake_hub, monkeypatch):
    fake_hub.add_repo("o/a", {"cfg.json": b'{"x": 1}'})
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 0.5)  # the HEAD (retried once, with 60 s, if not cached)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 0.5)  # the GET (resumed after a 1 s sleep, skipped)
    fake_hub.fail("/resolve/", "timeout", times=1, seconds=3, method="HEAD")
    path = hf_hub_download("o/a", "cfg.json")
    assert [r["method"] for r in fake_hub.requests] == ["HEAD", "HEAD", "GET"]
    fake_hub.fail("/resolve/", "timeout", seconds=3, method="HEAD")
    assert hf_hub_download("o/a", "cfg.json") == path  # the HEAD timed out: the cached copy is used
    with pytest.raises(ValueError, match="Force download failed"):
        hf_hub_download("o/a", "cfg.json", force_download=True)
    fake_hub.clear_faults()
    fake_hub.reset_log()
    fake_hub.fail("/resolve/", "timeout", times=1, seconds=3, method="GET")
    assert Path(hf_hub_download("o/a", "cfg.json", force_download=True)).read_bytes() == b'{"x": 1}'
    assert [r["method"] for r in fake_hub.requests] == ["HEAD", "GET", "GET"] and fake_hub.retry_sleeps == [1]
    assert fake_hub.requests[1]["path"] == "/o/a/resolve/main/cfg.json"


def test_fault_truncate_and_malformed_json(fake_hub):
    fake_hub.add_repo("o/a", {"w.bin": b"0123456789"})
    fake_hub.fail("/resolve/", "truncate", times=1, bytes=4)
    assert Path(hf_hub_download("o/a", "w.bin")).read_bytes() == b"0123456789"  # the client resumes / retries
    assert [(r["method"], r["bytes"]) for r in fake_hub.requests] == [("HEAD", 0), ("GET", 4), ("GET", 10)]
    fake_hub.fail("/resolve/", "truncate", bytes=4)
    with pytest.raises(httpx2.RemoteProtocolError):  # every GET cut short: the client gives up after 5 resumes
        hf_hub_download("o/a", "w.bin", force_download=True)
    fake_hub.clear_faults()
    for i in range(3):
        fake_hub.add_repo(f"o/m{i}", {"x": b"1"})
    fake_hub.page_size = 2
    fake_hub.fail(r"^/api/models$", "malformed_json", times=1, skip=1)  # the second page
    fake_hub.reset_log()
    with pytest.raises(ValueError):  # json.JSONDecodeError
        list(HfApi().list_models())
    assert [r["status"] for r in fake_hub.requests] == [200, 200]
    assert len(list(HfApi().list_models())) == 4


def test_create_repo_commit_branch_and_pull_request(fake_hub, tmp_path):
    fake_hub.add_user("alice", "hf_alice", orgs=["lab"])
    api = HfApi()
    url = api.create_repo("lab/new", token="hf_alice")
    assert url.repo_id == "lab/new" and api.create_repo("lab/new", token="hf_alice", exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("lab/new", token="hf_alice")
    assert err.value.response.status_code == 409
    assert api.create_repo("mine", token="hf_alice").repo_id == "alice/mine"  # the token owner's namespace
    (tmp_path / "up/sub").mkdir(parents=True)
    (tmp_path / "up/a.json").write_bytes(b"{}")
    (tmp_path / "up/sub/w.bin").write_bytes(b"\0\1")
    commit = api.upload_folder(repo_id="lab/new", folder_path=tmp_path / "up", token="hf_alice", commit_message="m")
    assert fake_hub.files("lab/new") == {
        ".gitattributes": fake_hub.files("lab/new")[".gitattributes"],
        "a.json": b"{}",
        "sub/w.bin": b"\0\1",
    }
    assert api.model_info("lab/new").sha == commit.oid and fake_hub.commits("lab/new")[-1]["summary"] == "m"
    preupload = next(r for r in fake_hub.requests if "/preupload/" in r["path"])
    assert preupload["path"] == "/api/models/lab/new/preupload/main"
    posted = next(r for r in fake_hub.requests if r["path"] == "/api/models/lab/new/commit/main")
    sent = [json.loads(line) for line in posted["body"].splitlines()]  # NDJSON, the files inline
    assert posted["headers"]["content-type"] == "application/x-ndjson"
    assert [line["key"] for line in sent] == ["header", "file", "file"]
    pr = api.delete_file("a.json", repo_id="lab/new", token="hf_alice", create_pr=True)
    assert pr.pr_num == 1 and "a.json" in fake_hub.files("lab/new")
    assert "a.json" not in fake_hub.files("lab/new", "refs/pr/1")
    api.create_branch("lab/new", branch="dev", token="hf_alice")
    api.upload_file(path_or_fileobj=b"x", path_in_repo="dev.txt", repo_id="lab/new", revision="dev", token="hf_alice")
    assert "dev.txt" in fake_hub.files("lab/new", "dev") and "dev.txt" not in fake_hub.files("lab/new")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):  # checked by POST /api/validate-yaml
        api.upload_file(
            path_or_fileobj=b"---\n[unclosed\n---\n", path_in_repo="README.md", repo_id="lab/new", token="hf_alice"
        )


def test_card_metadata_becomes_tags_and_private_repos_need_their_token(fake_hub):
    fake_hub.add_user("alice", "hf_alice")
    fake_hub.add_user("bob", "hf_bob")
    api = HfApi()
    api.create_repo("alice/card", token="hf_alice", private=True)
    card = (
        b"---\nlibrary_name: adapter-transformers\nbase_model: org/m\ntags: [x]\ndatasets: [glue]\n"
        b"pipeline_tag: text-classification\nlanguage: en\nlicense: mit\n---\n# hi\n"
    )
    api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id="alice/card", token="hf_alice")
    api.upload_file(
        path_or_fileobj=json.dumps({"model_name": "org/m", "model_type": "bert"}).encode(),
        path_in_repo="adapter_config.json",
        repo_id="alice/card",
        token="hf_alice",
    )
    info = api.model_info("alice/card", token="hf_alice")
    assert info.private and info.library_name == "adapter-transformers" and info.pipeline_tag == "text-classification"
    assert info.tags == [
        "x",
        "adapter-transformers",
        "text-classification",
        "dataset:glue",
        "en",
        "license:mit",
        "base_model:org/m",
        "base_model:adapter:org/m",
    ]
    assert info.config == {"model_type": "bert", "adapter_transformers": {"model_name": "org/m", "model_class": None}}
    assert ids(api.list_models(filter="base_model:adapter:org/m", token="hf_alice")) == ["alice/card"]
    assert ids(api.list_models(filter="base_model:adapter:org/m", token=False)) == []
    for token in (False, "hf_bob"):
        with pytest.raises(RepositoryNotFoundError):
            api.model_info("alice/card", token=token)
        assert not file_exists("alice/card", "README.md", token=token)
    assert [r["status"] for r in fake_hub.requests[-4:]] == [401, 401, 404, 404]
    with pytest.raises(RepositoryNotFoundError):  # nor can another user write to it
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="alice/card", token="hf_bob")
    assert hf_hub_download("alice/card", "README.md", token="hf_alice")
