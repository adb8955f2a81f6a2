"""Hub listings and info against malformed entries, damaged caches and bad ids, with the fake Hub on 127.0.0.1.

One malformed repo or archive entry is skipped with one warning naming it and the field; the rest still shows. A
damaged listing cache is removed and fetched again. An id that cannot name a repo is refused before any request.
"""

import json
import re
import warnings

import pytest

from workbench import AdapterLoadError, get_adapter_info, list_adapters, search_adapters
from workbench.hub import HubEntryError, HubUnavailableError, InvalidRepoIdError, resolve_adapter
from workbench.hub.cache import cache_dir

MODEL = "bert-base-uncased"
SEQ_BN = {"mh_adapter": False, "output_adapter": True, "original_ln_before": True, "reduction_factor": 16}
GOOD = "AdapterHub/bert-base-uncased-pf-imdb"
BAD_META = "someone/meta-is-a-string"
BAD_CONFIG = "someone/config-is-a-list"
BAD_FILE = "someone/config-file-is-a-list"
ARCHIVE_GOOD = "@ukp/bert-base-uncased-imdb_pfeiffer"
ARCHIVE_BAD = "@ukp/bert-base-uncased-sst_pfeiffer"


def adapter_config(model_name=MODEL) -> bytes:
    return json.dumps({"config": SEQ_BN, "model_name": model_name, "model_type": "bert", "name": "x"}).encode()


def add_repo(hub, repo_id, files=None, config=None):
    hub.add_repo(
        repo_id,
        files or {"adapter_config.json": adapter_config()},
        tags=["bert", "adapterhub:sentiment/imdb"],
        library_name="adapter-transformers",
        config=config,
    )


@pytest.fixture
def hub(fake_hub):
    """One good AdapterHub repo and three malformed ones; an archive with one good and one malformed entry."""
    add_repo(fake_hub, GOOD, config={"model_type": "bert", "adapter_transformers": {"model_name": MODEL}})
    add_repo(fake_hub, BAD_META, config={"model_type": "bert", "adapter_transformers": "bert-base-uncased"})
    add_repo(fake_hub, BAD_CONFIG, config=["not", "an", "object"])
    add_repo(fake_hub, BAD_FILE, files={"adapter_config.json": b'["a", "list"]'})
    entry = {"source": "ah", "model_name": MODEL, "task": "sentiment", "subtask": "imdb", "username": "ukp"}
    fake_hub.add_ah_file(
        "all.json",
        [
            {**entry, "adapter_id": ARCHIVE_GOOD, "adapter_config": SEQ_BN},
            {**entry, "adapter_id": ARCHIVE_BAD, "adapter_config": "pfeiffer"},
        ],
    )
    fake_hub.add_ah_file(f"adapters/ukp/{ARCHIVE_BAD[5:]}.json", {"info": {**entry, "adapter_config": "pfeiffer"}})
    return fake_hub


def skipped(caught) -> list[str]:
    return [str(w.message) for w in caught if "skipping a malformed entry" in str(w.message)]


def test_malformed_hub_repos_are_skipped_with_one_warning_each(hub):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = list_adapters(source="hf")
    assert [i.adapter_id for i in found] == [GOOD]
    messages = skipped(caught)
    assert len(messages) == 3, messages
    for repo, field in ((BAD_META, "config.adapter_transformers"), (BAD_CONFIG, "config"), (BAD_FILE, "json")):
        assert [m for m in messages if repo in m and field in m], (repo, messages)


def test_malformed_archive_entry_is_skipped_and_both_sources_still_list(hub):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = search_adapters(library="adapters", page_size=50)
    ids = {i.adapter_id for i in results}
    assert ids == {GOOD, ARCHIVE_GOOD}
    archive = [m for m in skipped(caught) if ARCHIVE_BAD in m]
    assert len(archive) == 1 and "adapter_config" in archive[0]


def test_listing_with_model_filter_skips_a_repo_whose_config_file_is_a_list(hub):
    broken = f"someone/{MODEL}-broken"  # found by the model's name; its base model is read from the file
    add_repo(hub, broken, files={"adapter_config.json": b'["a", "list"]'})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = list_adapters(source="hf", model_name=MODEL)
    assert [i.adapter_id for i in found] == [GOOD]
    about = [m for m in skipped(caught) if broken in m]
    assert len(about) == 1 and "adapter_config.json" in about[0]


@pytest.mark.parametrize(
    ("adapter_id", "field"),
    [(BAD_META, "config.adapter_transformers"), (BAD_CONFIG, "config"), (BAD_FILE, "adapter_config.json")],
)
def test_info_on_a_malformed_repo_names_repo_and_field(hub, adapter_id, field):
    with pytest.raises(HubEntryError, match=field) as caught:
        get_adapter_info(adapter_id)
    assert caught.value.repo == adapter_id and adapter_id in str(caught.value)


def test_info_on_a_malformed_archive_entry_names_it(hub):
    with pytest.raises(HubEntryError, match="adapter_config") as caught:
        get_adapter_info(ARCHIVE_BAD)
    assert ARCHIVE_BAD in str(caught.value)


def test_index_whose_task_maps_to_a_list_is_a_clear_error(hub):
    hub.add_ah_file(f"index/{MODEL}.json", {"sentiment": ["imdb"]})
    with pytest.raises(HubEntryError, match="'sentiment'") as caught:
        resolve_adapter("sentiment/imdb@ukp", source="ah", model_name=MODEL)
    assert f"index/{MODEL}.json" in str(caught.value)


@pytest.mark.parametrize(
    "damage",
    [
        json.dumps({"time": "yesterday", "items": "x"}),
        "not json {",
        json.dumps([1, 2, 3]),
        json.dumps({"time": 1.0, "items": ["x"]}),
        json.dumps({"time": 1.0, "items": [{"adapter_id": 3}]}),
    ],
)
def test_damaged_listing_cache_is_removed_and_fetched_again(hub, damage):
    list_adapters(source="hf")
    (path,) = cache_dir().glob("*.json")
    path.write_text(damage)
    before = len(hub.requests)
    with pytest.warns(UserWarning, match="damaged"):
        again = list_adapters(source="hf")
    assert [i.adapter_id for i in again] == [GOOD] and not again.from_cache
    assert len(hub.requests) > before  # fetched again
    assert json.loads(path.read_text())["items"][0]["adapter_id"] == GOOD  # rewritten whole
    assert [i.adapter_id for i in list_adapters(source="hf")] == [GOOD]  # and read back


def test_damaged_cache_when_offline_or_failing_names_the_file(hub, monkeypatch):
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    list_adapters(source="hf")
    (path,) = cache_dir().glob("*.json")
    path.write_text('{"time": "yesterday", "items": "x"}')
    hub.fail(r"^/api/models$", "status", code=500)
    with pytest.warns(UserWarning, match="damaged"), pytest.raises(HubUnavailableError, match=str(path)):
        list_adapters(source="hf")
    hub.clear_faults()
    list_adapters(source="hf")  # written again
    path.write_text("[]")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match="damaged"), pytest.raises(HubUnavailableError, match=str(path)):
        list_adapters(source="hf")


BAD_IDS = ["a/b/c", "../x", "bad id", "", "a--b/c", "org/na me", "org/name.", "@ukp/../x", "@ukp/a/b", "@/x"]


@pytest.mark.parametrize("adapter_id", BAD_IDS)
def test_bad_ids_are_refused_before_any_request(hub, adapter_id):
    before = len(hub.requests)
    named = re.escape(repr(adapter_id))
    with pytest.raises(InvalidRepoIdError, match=named):
        get_adapter_info(adapter_id)
    with pytest.raises(AdapterLoadError, match=named):  # InvalidRepoIdError, or "neither a folder nor a repo id"
        resolve_adapter(adapter_id, model_name=MODEL)
    assert len(hub.requests) == before


def test_bad_id_through_load_adapter_is_an_adapter_error_before_any_request(hub):
    from tiny import tiny_adapter_model

    model = tiny_adapter_model("bert")
    before = len(hub.requests)
    with pytest.raises(AdapterLoadError, match="org/na me"):
        model.load_adapter("org/na me")
    assert len(hub.requests) == before
