"""The Hub panel from Python against the fake Hub: search, filter, sort, the card, Load with progress, Try it."""

import json
import warnings

import pytest
import torch

from workbench.analysis import predict
from workbench.ui import HubPanel, Session
from workbench.ui.model_panel import MINILM_HUB_ID, load_base_model, minilm_path

LABELS = {0: "negative", 1: "positive"}
PREFIX = "AdapterHub/all-MiniLM-L6-v2-"


def wait_all(panel, timeout=180):
    for thread in list(panel.workers):
        thread.join(timeout)
        assert not thread.is_alive(), f"{thread.name} did not finish in {timeout} s"


@pytest.fixture(scope="module")
def minilm_adapters(tmp_path_factory):
    """Two AdapterHub-format adapters for the MiniLM: seq_bn "sst-2" with a labelled head, LoRA "nli-lora"."""
    folder = tmp_path_factory.mktemp("minilm_adapters")
    model, _ = load_base_model(minilm_path())
    torch.manual_seed(1)
    model.add_adapter("sst-2", config="seq_bn")
    model.add_classification_head("sst-2", num_labels=2, id2label=LABELS)
    model.add_adapter("nli-lora", config="lora")
    with torch.no_grad():
        for name in ("sst-2", "nli-lora"):
            for _, param in model._adapter_parameters(name):
                param.add_(0.05 * torch.randn_like(param))
    for name in ("sst-2", "nli-lora"):
        model.save_adapter(folder / name, name)
        config = json.loads((folder / name / "adapter_config.json").read_text())
        config["model_name"] = MINILM_HUB_ID
        (folder / name / "adapter_config.json").write_text(json.dumps(config))
    return folder


def serve(hub, folder, name, repo, task, downloads, likes):
    hub.add_folder(
        repo,
        folder / name,
        tags=["bert", f"adapterhub:{task}", f"base_model:adapter:{MINILM_HUB_ID}", "adapters"],
        library_name="adapter-transformers",
        config={"model_type": "bert", "adapter_transformers": {"model_name": MINILM_HUB_ID}},
        downloads=downloads,
        likes=likes,
    )


def archive(hub, name: str, task: str, subtask: str) -> None:
    """The archived AdapterHub index, listing `@ukp/<name>` (its files live in the Hub repo AdapterHub/<name>)."""
    from workbench import AdapterConfig

    entry = {
        "source": "ah",
        "adapter_id": f"@ukp/{name}",
        "model_name": MINILM_HUB_ID,
        "task": task,
        "subtask": subtask,
        "username": "ukp",
        "adapter_config": AdapterConfig.load("seq_bn").to_dict(),
        "sha1_checksum": "0" * 40,
    }
    path = f"adapters/ukp/{name}.json"
    hub.add_ah_file(path, {"config_id": "seq_bn", "default_version": "1", "files": {}, "info": entry})
    hub.add_ah_file("all.json", [entry])
    hub.add_ah_file(
        f"index/{MINILM_HUB_ID}.json", {task: {subtask: {"seq_bn": {"versions": {"ukp": path}, "default": path}}}}
    )


@pytest.fixture
def hub(fake_hub, minilm_adapters):
    serve(fake_hub, minilm_adapters, "sst-2", "AdapterHub/all-MiniLM-L6-v2-pf-sst-2", "sentiment/sst-2", 500, 3)
    serve(fake_hub, minilm_adapters, "nli-lora", "AdapterHub/all-MiniLM-L6-v2-nli-lora", "nli/multinli", 90, 7)
    archive(fake_hub, "all-MiniLM-L6-v2-pf-sst-2", "sentiment", "sst-2")
    return fake_hub


def search(panel, **values):
    for name, value in values.items():
        getattr(panel, name).value = value
    panel.search_button.click()
    wait_all(panel)
    assert panel.error.text == ""
    return [panel.results.items[i].adapter_id.removeprefix(PREFIX) for _, i in panel.result_list.options]


def test_search_filters_and_sorts_into_the_table_and_the_list(hub):
    panel = HubPanel(Session())
    assert search(panel, model_filter=MINILM_HUB_ID, source="hf") == ["pf-sst-2", "nli-lora"]  # by downloads
    assert "AdapterHub/all-MiniLM-L6-v2-pf-sst-2" in panel.table.value and "500" in panel.table.value
    assert "1-2 of 2 adapters" in panel.count.value
    assert search(panel, search_text="sst") == ["pf-sst-2"]
    assert search(panel, search_text="", task_filter="nli") == ["nli-lora"]
    assert search(panel, task_filter="", method_filter="seq_bn") == ["pf-sst-2"]  # listings know it by the name
    assert search(panel, method_filter="", library="peft") == []
    assert "0 of 0 adapters" in panel.count.value
    search(panel, library="all")
    panel.sort.value = "likes"  # re-sorts at once
    wait_all(panel)
    assert [i.adapter_id.removeprefix(PREFIX) for i in panel.results] == ["nli-lora", "pf-sst-2"]
    panel.sort.value = "adapter_id"  # names: A to Z
    wait_all(panel)
    assert panel.descending.value is False
    assert [i.adapter_id.removeprefix(PREFIX) for i in panel.results] == ["nli-lora", "pf-sst-2"]
    panel.descending.value = True
    wait_all(panel)
    assert [i.adapter_id.removeprefix(PREFIX) for i in panel.results] == ["pf-sst-2", "nli-lora"]
    assert panel.offline.layout.display == "none"


def test_offline_search_uses_the_cache_with_a_visible_notice(hub, monkeypatch):
    panel = HubPanel(Session())
    search(panel, model_filter=MINILM_HUB_ID, source="hf")
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    hub.reset_log()
    assert search(panel) == ["pf-sst-2", "nli-lora"]
    assert hub.requests == []  # nothing asked of the network
    assert panel.offline.layout.display == "block" and "offline" in panel.offline.value.lower()
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    hub.fail(".*", "status", code=503)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search(panel)
    assert "could not list adapters" in panel.offline.value


def test_card_shows_details_and_its_code_loads_the_adapter(hub):
    panel = HubPanel(Session())
    search(panel, search_text="sst-2", source="hf")
    panel.result_list.value = 0
    wait_all(panel)
    card = panel.card.value
    assert "AdapterHub/all-MiniLM-L6-v2-pf-sst-2" in card and MINILM_HUB_ID in card and "sentiment/sst-2" in card
    assert "adapter_config.json" in card and "pytorch_model_head.bin" in card  # files, with sizes from the Hub
    assert "reduction_factor" in card and "adapterhub:sentiment/sst-2" in card  # config and tags
    assert "KB" in card
    assert not panel.load_button.disabled
    hub.add_folder(MINILM_HUB_ID, minilm_path(), tags=["bert"], config={"model_type": "bert"})
    scope = {}
    exec(panel.code.value, scope)  # the copyable snippet, run as a user would
    assert scope["adapter_name"] == "sst-2" and scope["model"].active_adapters.names() == ["sst-2"]


def test_load_without_a_model_uses_the_minilm_shows_progress_and_tries_it(hub):
    session = Session()
    panel = HubPanel(session)
    search(panel, search_text="sst-2", source="hf")
    panel.result_list.value = 0
    wait_all(panel)
    assert panel.try_button.disabled
    panel.load_button.click()
    wait_all(panel)
    assert panel.error.text == ""
    assert panel.loaded_name == "sst-2" and panel.progress.value == 1.0
    assert "Loaded adapter 'sst-2' onto the offline default MiniLM" in panel.status.value.replace("&#x27;", "'")
    assert session.source == minilm_path() and session.model.active_adapters.names() == ["sst-2"]
    assert "/" in panel.progress.description  # bytes done / total
    assert f"from_pretrained({MINILM_HUB_ID!r})" in panel.code.value  # the snippet names a Hub id, not a local path
    downloaded = [r for r in hub.requests if "/resolve/" in r["path"]]
    assert {r["path"].rsplit("/", 1)[1] for r in downloaded} >= {"adapter_config.json", "pytorch_adapter.bin"}

    panel.try_text.value = "a wonderful, moving film"
    panel.try_button.click()
    assert panel.error.text == ""
    expected = predict(session.model, session.tokenizer, ["a wonderful, moving film"], setup="sst-2")[0]
    assert panel.prediction.scores == pytest.approx(expected.scores)
    assert set(panel.prediction.scores) == {"negative", "positive"}
    assert sum(panel.prediction.scores.values()) == pytest.approx(1.0)
    shown = panel.try_output.value
    assert expected.label in shown and f"{expected.scores['positive']:.3f}" in shown
    assert "id2label" in shown and "positive" in shown
    assert "Loaded adapter" in panel.summary_html() and "positive" in panel.summary_html()

    hub.reset_log()
    panel.load_button.click()  # again: activates the adapter already there, no second download
    wait_all(panel)
    assert panel.error.text == "" and "already on" in panel.status.value and "Loaded adapter" in panel.status.value
    assert not [r for r in hub.requests if "/resolve/" in r["path"]]
    assert list(session.model.adapters) == ["sst-2"]


def test_failed_download_is_one_message_and_leaves_the_model_alone(hub):
    model, tokenizer = load_base_model(minilm_path())
    session = Session(model=model, tokenizer=tokenizer, source=minilm_path())
    panel = HubPanel(session)
    search(panel, search_text="sst-2", source="hf")
    panel.result_list.value = 0
    wait_all(panel)
    hub.fail("/resolve/", "status", code=500)
    panel.load_button.click()
    wait_all(panel)
    assert "cannot be reached" in panel.error.text and "AdapterLoadError" in panel.error.details.value
    assert "Traceback" not in panel.error.message.value and "Loading failed" in panel.status.value
    assert panel.progress.bar_style == "danger" and panel.loaded_name is None
    assert model.adapters == {} and session.model is model
    panel.try_button.click()  # nothing loaded: a clear message
    assert "load an adapter first" in panel.error.text


def test_archive_adapter_loads_onto_a_local_model_and_a_new_model_resets_try_it(hub):
    session = Session()
    panel = HubPanel(session)
    assert search(panel, source="ah") == ["@ukp/all-MiniLM-L6-v2-pf-sst-2"]
    panel.result_list.value = 0
    wait_all(panel)
    assert "AdapterHub archive" in panel.card.value and "source='ah'" in panel.code.value
    panel.load_button.click()  # an archive id, loaded onto the local MiniLM
    wait_all(panel)
    assert panel.error.text == "" and panel.loaded_name == "sst-2"
    fetched = {r["path"] for r in hub.requests if r["status"] == 200 and "/resolve/" in r["path"]}
    assert any(path.startswith("/AdapterHub/all-MiniLM-L6-v2-pf-sst-2/resolve/") for path in fetched)
    assert not panel.try_button.disabled
    model, tokenizer = load_base_model(minilm_path())
    session.set_model(model, tokenizer, minilm_path())  # e.g. from the Model panel
    assert panel.loaded_name is None and panel.try_button.disabled


def test_the_family_filter_offers_the_registrys_families_and_filters_by_them(hub, monkeypatch):
    from workbench.core.archs import ARCHITECTURES

    for repo, model_type in (("someone/roberta-adapter", "roberta"), ("someone/olmo-adapter", "olmo")):
        hub.add_repo(
            repo,
            {"adapter_config.json": b"{}"},
            library_name="adapter-transformers",
            tags=["adapter-transformers"],
            config={"model_type": model_type},
        )
    panel = HubPanel(Session())
    offered = dict((value, label) for label, value in panel.family_filter.options)
    assert offered.keys() == {None, *ARCHITECTURES} and offered["bert"] == "BERT (bert)"
    assert sorted(search(panel, source="hf", family_filter="bert")) == ["nli-lora", "pf-sst-2"]
    assert "<td>bert</td>" in panel.table.value  # the family column
    assert search(panel, family_filter="roberta") == ["someone/roberta-adapter"]
    search(panel, family_filter=None, search_text="olmo")
    panel.result_list.value = 0
    wait_all(panel)
    assert "olmo: not supported by the engine yet" in panel.card.value
    monkeypatch.setitem(ARCHITECTURES, "olmo2", ARCHITECTURES["llama"])  # a family merged later
    assert ("OLMo 2 (olmo2)", "olmo2") in HubPanel(Session()).family_filter.options
