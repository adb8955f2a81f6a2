"""What the Hub panel needs from workbench.hub: download progress, sorting on every column, cache/offline notices."""

import warnings

import pytest
from test_hub import MODEL, adapter_files, add_adapterhub_repo  # noqa: F401  (adapter_files is a fixture)

from workbench import AutoAdapterModel, get_adapter_info, search_adapters
from workbench.hub import DownloadProgress, list_adapters


def test_download_progress_reaches_all_files_and_bytes(fake_hub, adapter_files):  # noqa: F811
    files, base = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    reports = []
    model = AutoAdapterModel.from_pretrained(base)
    name = model.load_adapter("AdapterHub/bert-base-uncased-pf-imdb", progress=reports.append)
    assert name == "imdb"
    assert reports and all(isinstance(r, DownloadProgress) for r in reports)
    last = reports[-1]
    assert (last.files_done, last.files_total) == (len(files), len(files))
    assert last.bytes_done == last.bytes_total == sum(len(data) for data in files.values())
    assert last.fraction == 1.0
    assert [r.bytes_done for r in reports] == sorted(r.bytes_done for r in reports)  # never goes back


def test_search_sorts_on_every_column_both_ways(fake_hub, adapter_files):  # noqa: F811
    files, _ = adapter_files
    specs = [("pf-b", "sentiment/imdb", 5), ("pf-a", "nli/rte", 9), ("pf-c", "sts/qqp", 1)]
    for name, task, downloads in specs:
        add_adapterhub_repo(fake_hub, f"AdapterHub/bert-base-uncased-{name}", files, task=task, downloads=downloads)
    ids = lambda results: [i.adapter_id.split("-")[-1] for i in results]  # noqa: E731
    assert ids(search_adapters(source="hf", model_name=MODEL, sort="adapter_id")) == ["a", "b", "c"]
    by_id_desc = search_adapters(source="hf", model_name=MODEL, sort="adapter_id", descending=True)
    assert ids(by_id_desc) == ["c", "b", "a"]
    assert ids(search_adapters(source="hf", model_name=MODEL, sort="task")) == ["a", "b", "c"]
    assert ids(search_adapters(source="hf", model_name=MODEL, sort="downloads")) == ["a", "b", "c"]
    ascending = search_adapters(source="hf", model_name=MODEL, sort="downloads", descending=False)
    assert ids(ascending) == ["c", "b", "a"]
    fake_hub.add_repo(  # a bigger one: the listing's size is the repo's storage on the Hub (`usedStorage`)
        "AdapterHub/bert-base-uncased-pf-d",
        {**files, "extra.bin": b"x" * 5000},
        library_name="adapter-transformers",
        tags=["adapter-transformers"],
        config={"adapter_transformers": {"model_name": MODEL}},
    )
    sized = search_adapters(source="hf", model_name=MODEL, sort="size_bytes", refresh=True)
    assert ids(sized)[0] == "d" and sized.items[0].size_bytes == sum(map(len, files.values())) + 5000
    assert {i.size_bytes for i in sized.items[1:]} == {sum(map(len, files.values()))}


def test_listings_say_when_they_come_from_the_cache_or_a_stale_copy(fake_hub, adapter_files, monkeypatch):  # noqa: F811
    files, _ = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    fresh = list_adapters(source="hf", model_name=MODEL)
    assert not fresh.from_cache and fresh.notice is None
    again = search_adapters(source="hf", model_name=MODEL, library="adapters")
    assert again.from_cache and again.notice is None and len(again) == 1
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.warns(UserWarning, match="offline"):
        offline = search_adapters(source="hf", model_name=MODEL, library="adapters")
    assert offline.from_cache and "offline" in offline.notice and "cached listing" in offline.notice
    assert [i.adapter_id for i in offline] == ["AdapterHub/bert-base-uncased-pf-imdb"]
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "3600")  # a fresh cached copy: no warning, but still the notice
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh_offline = search_adapters(source="hf", model_name=MODEL, library="adapters")
    assert fresh_offline.from_cache and "offline mode" in fresh_offline.notice


def test_a_source_left_out_is_named_in_the_notice(fake_hub, adapter_files):  # noqa: F811
    files, _ = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = list_adapters(model_name=MODEL)  # this fake Hub has no archived AdapterHub index
    assert [i.adapter_id for i in both] == ["AdapterHub/bert-base-uncased-pf-imdb"]
    assert "showing the other source only" in both.notice


def test_adapter_details_list_the_repo_files_with_sizes(fake_hub, adapter_files):  # noqa: F811
    files, _ = adapter_files
    add_adapterhub_repo(fake_hub, "AdapterHub/bert-base-uncased-pf-imdb", files)
    info = get_adapter_info("AdapterHub/bert-base-uncased-pf-imdb")
    assert info.files == {name: len(data) for name, data in files.items()}
    assert info.size_bytes == sum(info.files.values())
    listed = list_adapters(source="hf", model_name=MODEL)
    assert sorted(listed[0].files) == sorted(files)  # listings name the files (sizes only in the details)
    assert sorted(list_adapters(source="hf", model_name=MODEL)[0].files) == sorted(files)  # and so does the cache
