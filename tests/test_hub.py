"""workbench.hub against the fake Hub (a real HTTP server on 127.0.0.1): listing, search, download, faults."""

import json
import warnings

import pytest
import torch
from tiny import tiny_adapter_model

import workbench
from workbench import AdapterLoadError, AutoModelWithHeads, get_adapter_info, list_adapters, search_adapters
from workbench.hub import HubUnavailableError

MODEL = "bert-base-uncased"
SEQ_BN = {
    "mh_adapter": False,
    "output_adapter": True,
    "original_ln_before": True,
    "reduction_factor": 16,
    "non_linearity": "relu",
    "residual_before_ln": True,
}


@pytest.fixture
def adapter_files(tmp_path):
    """AdapterHub-format files of a seq_bn adapter (with head) for the tiny BERT, and that model's folder."""
    model = tiny_adapter_model("bert")
    model.add_adapter("imdb", config="seq_bn")
    model.add_classification_head("imdb", num_labels=2, id2label={0: "neg", 1: "pos"})
    with torch.no_grad():
        for _, param in model._adapter_parameters("imdb"):
            param.add_(torch.randn_like(param))
    model.save_adapter(tmp_path / "imdb", "imdb")
    config = json.loads((tmp_path / "imdb" / "adapter_config.json").read_text())
    config["model_name"] = MODEL  # as on the real Hub
    (tmp_path / "imdb" / "adapter_config.json").write_text(json.dumps(config))
    model.delete_adapter("imdb")  # the base folder holds the bare model (save_pretrained would keep adapters)
    model.base_model.save_pretrained(tmp_path / "base")
    files = {p.name: p.read_bytes() for p in (tmp_path / "imdb").iterdir()}
    return files, tmp_path / "base"


def add_adapterhub_repo(hub, repo_id, files, model_name=MODEL, task="sentiment/imdb", **meta):
    return hub.add_repo(
        repo_id,
        files,
        tags=["bert", f"adapterhub:{task}", "text-classification"],
        library_name="adapter-transformers",
        config={"model_type": "bert", "adapter_transformers": {"model_name": model_name}},
        **meta,
    )


def add_ah_index(hub, names=("bert-base-uncased-imdb_pfeiffer",)):
    entries = []
    for name in names:
        entry = {
            "source": "ah",
            "adapter_id": f"@ukp/{name}",
            "model_name": MODEL,
            "task": "sentiment",
            "subtask": "imdb",
            "username": "ukp",
            "adapter_config": SEQ_BN,
            "sha1_checksum": "0" * 40,
        }
        entries.append(entry)
        hub.add_ah_file(
            f"adapters/ukp/{name}.json",
            {"config_id": "9076f36a74755ac4", "default_version": "1", "files": {}, "info": entry},
        )
    hub.add_ah_file("all.json", entries)
    hub.add_ah_file(
        f"index/{MODEL}.json",
        {
            "sentiment": {
                "imdb": {
                    "9076f36a74755ac4": {
                        "versions": {"ukp": f"adapters/ukp/{names[0]}.json"},
                        "default": f"adapters/ukp/{names[0]}.json",
                    }
                }
            }
        },
    )


def test_tutorial_code_runs_against_the_hub(fake_hub, adapter_files):
    files, base = adapter_files
    add_ah_index(fake_hub)
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)

    adapter_infos = list_adapters(source="ah", model_name=MODEL)
    assert [(i.adapter_id, i.model_name, i.username) for i in adapter_infos] == [
        ("@ukp/bert-base-uncased-imdb_pfeiffer", MODEL, "ukp")
    ]

    model = AutoModelWithHeads.from_pretrained(base)
    adapter_name = model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb", source="hf")
    model.active_adapters = adapter_name
    assert adapter_name == "imdb" and model.active_head == "imdb"
    assert model.heads["imdb"].id2label == {0: "neg", 1: "pos"}
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    assert logits.shape == (1, 2)


def test_hf_listing_filters_on_the_server(fake_hub, adapter_files):
    files, _ = adapter_files
    for i in range(120):  # the rest of the Hub: many adapters for other models
        add_adapterhub_repo(
            fake_hub, f"AdapterHub/roberta-base-pf-task{i}", {"adapter_config.json": b"{}"}, model_name="roberta-base"
        )
    for i in range(3):
        add_adapterhub_repo(
            fake_hub, f"AdapterHub/bert-base-uncased-pf-task{i}", files, downloads=10 * i, task=f"sentiment/task{i}"
        )
    fake_hub.add_repo(
        "someone/bert-lora",
        {"adapter_config.json": b'{"peft_type": "LORA"}'},
        tags=["lora", f"base_model:adapter:{MODEL}"],
        library_name="peft",
        likes=7,
    )
    fake_hub.reset_log()

    infos = list_adapters(source="hf", model_name=MODEL, library="all")
    ids = {i.adapter_id for i in infos}
    assert ids == {f"AdapterHub/bert-base-uncased-pf-task{i}" for i in range(3)} | {"someone/bert-lora"}
    listing_requests = [r for r in fake_hub.requests if r["path"] == "/api/models"]
    assert len(listing_requests) == 3  # AdapterHub by name and by base-model tag, PEFT by base-model tag
    assert any("search" in r["query"] for r in listing_requests)
    adapter = next(i for i in infos if i.adapter_id.endswith("task2"))
    assert (adapter.task, adapter.subtask, adapter.method, adapter.library) == (
        "sentiment",
        "task2",
        "seq_bn",
        "adapters",
    )
    assert adapter.downloads == 20 and adapter.last_modified is not None  # sizes: only in get_adapter_info
    peft = next(i for i in infos if i.library == "peft")
    assert (peft.model_name, peft.method, peft.likes) == (MODEL, "lora", 7)

    fake_hub.reset_log()
    assert {i.adapter_id for i in list_adapters(source="hf", model_name=MODEL, library="all")} == ids
    assert not fake_hub.requests  # served from the listing cache
    only_adapterhub = list_adapters(source="hf", model_name=MODEL)  # PEFT repos only when asked for
    assert {i.library for i in only_adapterhub} == {"adapters"} and len(only_adapterhub) == 3


def test_both_sources_merge_without_duplicates(fake_hub, adapter_files):
    files, _ = adapter_files
    add_ah_index(fake_hub, names=("bert-base-uncased-imdb_pfeiffer", "bert-base-uncased-sst_pfeiffer"))
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-imdb_pfeiffer", files, downloads=5)
    infos = list_adapters(model_name=MODEL)
    assert sorted(i.adapter_id for i in infos) == [
        "@ukp/bert-base-uncased-sst_pfeiffer",
        "AdapterHub/bert-base-uncased-imdb_pfeiffer",
    ]
    merged = next(i for i in infos if i.source == "hf")
    assert (merged.task, merged.subtask, merged.downloads) == ("sentiment", "imdb", 5)


def test_get_adapter_info_for_both_sources(fake_hub, adapter_files):
    files, _ = adapter_files
    add_ah_index(fake_hub)
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    info = get_adapter_info("AdapterHub/bert-base-uncased-pf-imdb")
    assert info.method == "seq_bn" and info.model_name == MODEL and info.adapter_config["reduction_factor"] == 16
    assert info.size_bytes == sum(len(data) for data in files.values())
    ah = get_adapter_info("@ukp/bert-base-uncased-imdb_pfeiffer")
    assert (ah.source, ah.task, ah.hf_repo) == ("ah", "sentiment", "AdapterHub/bert-base-uncased-imdb_pfeiffer")


def test_search_filters_sorts_pages_and_tables(fake_hub, adapter_files):
    files, _ = adapter_files
    for i, task in enumerate(["sentiment/imdb", "sentiment/sst-2", "nli/rte"]):
        add_adapterhub_repo(
            fake_hub,
            f"AdapterHub/bert-base-uncased-pf-{task.split('/')[1]}",
            files,
            task=task,
            downloads=i,
            likes=3 - i,
        )
    with pytest.warns(UserWarning, match="showing the other source only"):  # no "ah" index on this fake Hub
        results = search_adapters("sentiment", model_name=MODEL, sort="downloads", page_size=1)
    assert results.total == 2 and results.pages == 2
    assert [i.adapter_id for i in results] == ["AdapterHub/bert-base-uncased-pf-sst-2"]
    second = search_adapters("sentiment", model_name=MODEL, sort="downloads", page=2, page_size=1)
    assert [i.adapter_id for i in second] == ["AdapterHub/bert-base-uncased-pf-imdb"]
    table = search_adapters(task="nli", model_name=MODEL).to_dataframe()
    assert list(table["adapter_id"]) == ["AdapterHub/bert-base-uncased-pf-rte"] and "downloads" in table
    by_likes = search_adapters(model_name=MODEL, sort="likes", source="hf")
    assert [i.likes for i in by_likes] == [3, 2, 1]
    with pytest.raises(ValueError, match="sort"):
        search_adapters(sort="stars")


def test_archive_ids_resolve_to_hub_repos(fake_hub, adapter_files):
    files, base = adapter_files
    add_ah_index(fake_hub)
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-imdb_pfeiffer", files)
    model = workbench.AutoAdapterModel.from_pretrained(base)
    assert model.load_adapter("@ukp/bert-base-uncased-imdb_pfeiffer", load_as="a") == "a"
    assert model.load_adapter("sentiment/imdb@ukp", source="ah", model_name=MODEL, load_as="b") == "b"
    with pytest.raises(AdapterLoadError, match="no adapter nli/rte"):
        model.load_adapter("nli/rte@ukp", source="ah", model_name=MODEL)


def test_missing_repo_and_server_errors_are_clear(fake_hub, adapter_files):
    _, base = adapter_files
    model = workbench.AutoAdapterModel.from_pretrained(base)
    with pytest.raises(AdapterLoadError, match="AdapterHub/nope"):
        model.load_adapter("AdapterHub/nope")
    fake_hub.fail("^/api/models$", "status", code=500)
    with pytest.raises(HubUnavailableError, match="no cached listing"):
        list_adapters(source="hf", model_name=MODEL)
    assert len(fake_hub.retry_sleeps) >= 3  # retried with back-off before giving up
    assert not model.adapters


def test_stale_cache_is_used_when_the_hub_fails(fake_hub, adapter_files, monkeypatch):
    files, _ = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    assert len(list_adapters(source="hf", model_name=MODEL)) == 1
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    fake_hub.fail("^/api/models$", "malformed_json")
    with pytest.warns(UserWarning, match="cached listing"):
        assert len(list_adapters(source="hf", model_name=MODEL)) == 1
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match="offline"):
        assert len(list_adapters(source="hf", model_name=MODEL)) == 1


def test_failed_download_leaves_nothing_half_written(fake_hub, adapter_files, tmp_path):
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    fake_hub.fail("pytorch_adapter.bin", "truncate", bytes=10)
    model = workbench.AutoAdapterModel.from_pretrained(base)
    with pytest.raises(AdapterLoadError, match="bert-base-uncased-pf-imdb"):
        model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb")
    cache = tmp_path / "hf_home" / "hub"
    partial = [p for p in cache.rglob("*") if p.name.endswith(".incomplete") or p.name == "pytorch_adapter.bin"]
    assert not partial, partial
    assert not model.adapters
    fake_hub.clear_faults()
    assert model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb") == "imdb"


def test_file_names_escaping_the_cache_are_refused(fake_hub, adapter_files, tmp_path):
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, "evil/adapter", {**files, "../../evil.txt": b"x"})
    model = workbench.AutoAdapterModel.from_pretrained(base)
    with pytest.raises(AdapterLoadError, match="evil"):
        model.load_adapter("evil/adapter")
    assert not list(tmp_path.rglob("evil.txt"))


def test_offline_loading_uses_the_download_cache(fake_hub, adapter_files, monkeypatch):
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    model = workbench.AutoAdapterModel.from_pretrained(base)
    model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    fake_hub.reset_log()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb", load_as="again") == "again"
    assert not fake_hub.requests
    with pytest.raises(AdapterLoadError, match="cannot be reached|offline"):
        model.load_adapter("AdapterHub/never-downloaded")


def test_token_is_sent_and_a_timed_out_download_is_retried(fake_hub, adapter_files, monkeypatch):
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_tests")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DOWNLOAD_TIMEOUT", 0.3)
    fake_hub.fail("pytorch_adapter.bin", "timeout", times=1, seconds=1.0, method="GET")
    model = workbench.AutoAdapterModel.from_pretrained(base)
    assert model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb") == "imdb"
    downloads = [r for r in fake_hub.requests if r["path"].endswith("pytorch_adapter.bin") and r["method"] == "GET"]
    assert len(downloads) >= 2  # the first one timed out and was retried
    assert all(
        r["headers"].get("authorization") == "Bearer hf_secret_for_tests"
        for r in fake_hub.requests
        if r["path"].startswith(("/api/models/", "/AdapterHub/"))
    )


def test_unavailable_listing_is_retried_then_reported(fake_hub):
    fake_hub.fail("^/api/models$", "status", code=503)
    with pytest.raises(HubUnavailableError, match="could not list adapters"):
        list_adapters(source="hf", model_name=MODEL)
    listing = [r for r in fake_hub.requests if r["path"] == "/api/models"]
    assert len(listing) > 1  # retried before giving up


def test_free_form_repo_names_are_found_by_their_base_model_tag(fake_hub, adapter_files):
    files, _ = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    fake_hub.add_repo(
        "someone/my-sentiment-adapter",
        files,
        library_name="adapter-transformers",
        tags=["bert", f"base_model:adapter:{MODEL}"],
        config={"adapter_transformers": {"model_name": MODEL}},
    )
    ids = {i.adapter_id for i in list_adapters(source="hf", model_name=MODEL)}
    assert ids == {"AdapterHub/bert-base-uncased-pf-imdb", "someone/my-sentiment-adapter"}
