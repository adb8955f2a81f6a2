"""The Hub panel from Python against the fake Hub: search, filter, sort, the card, Load with progress, Try it."""

import json
import time
import warnings

import ipywidgets as widgets
import pytest
import torch

from workbench.analysis import predict
from workbench.ui import HubPanel, Session
from workbench.ui.common import human_bytes
from workbench.ui.hub_grid import SELECTED
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
    """Set the fields, press Search, wait; the ids shown in the grid, top to bottom."""
    for name, value in values.items():
        getattr(panel, name).value = value
    panel.search_button.click()
    wait_all(panel)
    assert panel.error.text == ""
    return shown(panel)


def shown(panel):
    return [row[0].removeprefix(PREFIX) for row in panel.grid.texts()]


def column(panel, title):
    index = [c.title for c in panel.grid.columns].index(title)
    return [row[index] for row in panel.grid.texts()]


def press_enter(text_widget):
    """What the browser sends when Enter is pressed in a Text."""
    text_widget._handle_custom_msg({"event": "submit"}, [])


def test_one_grid_filters_and_sorts_by_its_headers(hub):
    panel = HubPanel(Session())
    assert not [w for w in _descendants(panel) if isinstance(w, widgets.Select)]  # one grid, no second list
    assert dict(panel.source.options)["both sources"] == panel.source.value  # "both" has a label, not a blank
    assert search(panel, model_filter=MINILM_HUB_ID, source="hf") == ["pf-sst-2", "nli-lora"]  # by downloads
    assert column(panel, "downloads") == ["500", "90"] and column(panel, "family") == ["bert", "bert"]
    assert "1-2 of 2 adapters" in panel.count.value and "cache" not in panel.count.value
    assert search(panel, search_text="sst") == ["pf-sst-2"]
    assert search(panel, search_text="", task_filter="nli") == ["nli-lora"]
    assert search(panel, task_filter="", method_filter="lora") == ["nli-lora"]  # read from its adapter_config.json
    assert search(panel, method_filter="", library="peft") == [] and "0 of 0 adapters" in panel.count.value
    search(panel, library="all")
    likes = panel.grid.sort_buttons["likes"]
    likes.click()  # largest first; the engine sorts every page, not only the one shown
    wait_all(panel)
    assert shown(panel) == ["nli-lora", "pf-sst-2"] and "\u25bc" in likes.description
    likes.click()  # again: reversed
    wait_all(panel)
    assert shown(panel) == ["pf-sst-2", "nli-lora"] and "\u25b2" in likes.description
    panel.grid.sort_buttons["adapter_id"].click()  # names: A to Z
    wait_all(panel)
    assert shown(panel) == ["nli-lora", "pf-sst-2"] and panel.descending is False
    assert "\u25b2" not in likes.description and panel.grid.sort_buttons["adapter_id"].button_style == "info"
    assert panel.offline.layout.display == "none"  # served from the listing cache, but the Hub is online


def test_size_column_is_filled_from_the_listing_and_sorts(hub, minilm_adapters):
    panel = HubPanel(Session())
    search(panel, model_filter=MINILM_HUB_ID, source="hf")
    sizes = {row[0].removeprefix(PREFIX): row[-1] for row in panel.grid.texts()}
    on_disk = {
        name: sum(f.stat().st_size for f in (minilm_adapters / name).iterdir()) for name in ("sst-2", "nli-lora")
    }
    assert sizes == {"pf-sst-2": human_bytes(on_disk["sst-2"]), "nli-lora": human_bytes(on_disk["nli-lora"])}
    size = panel.grid.sort_buttons["size_bytes"]
    assert not size.disabled
    size.click()
    wait_all(panel)
    biggest = max(on_disk, key=on_disk.get)
    assert shown(panel)[0].endswith(biggest) and panel.sort_key == "size_bytes"


def test_archive_results_show_size_unknown_and_do_not_offer_it_for_sorting(hub):
    panel = HubPanel(Session())
    assert search(panel, source="ah") == ["@ukp/all-MiniLM-L6-v2-pf-sst-2"]
    assert column(panel, "size") == ["unknown"] and column(panel, "method") == ["seq_bn"]
    size = panel.grid.sort_buttons["size_bytes"]
    assert size.disabled and "unknown" in size.tooltip
    assert not panel.grid.sort_buttons["downloads"].disabled


def test_methods_come_from_the_configs_for_adapterhub_and_peft(hub, minilm_adapters):
    from workbench import AdapterConfig

    lora = {**json.loads((minilm_adapters / "nli-lora" / "adapter_config.json").read_text())}
    assert lora["config"]["architecture"] == "lora"
    hub.add_repo(  # PEFT: the listing's tags do not name the method, its adapter_config.json does
        "someone/minilm-ia3",
        {"adapter_config.json": json.dumps({"peft_type": "IA3", "base_model_name_or_path": MINILM_HUB_ID})},
        library_name="peft",
        tags=["peft", f"base_model:adapter:{MINILM_HUB_ID}"],
    )
    hub.add_repo(
        "someone/minilm-prefix",
        {"adapter_config.json": json.dumps({"config": AdapterConfig.load("prefix_tuning").to_dict()})},
        library_name="adapter-transformers",
        tags=["adapter-transformers", f"base_model:adapter:{MINILM_HUB_ID}"],
        config={"adapter_transformers": {"model_name": MINILM_HUB_ID}},
    )
    panel = HubPanel(Session())
    search(panel, source="hf", library="all", model_filter=MINILM_HUB_ID)
    methods = dict(zip(shown(panel), column(panel, "method"), strict=True))
    assert methods == {
        "pf-sst-2": "seq_bn",
        "nli-lora": "lora",  # showed "?" before: the listing has no config, the repo's file has
        "someone/minilm-ia3": "ia3",
        "someone/minilm-prefix": "prefix_tuning",
    }
    origins = dict(zip(shown(panel), column(panel, "from"), strict=True))
    assert origins["someone/minilm-ia3"] == "Hub (peft)" and origins["nli-lora"] == "Hub"
    entries = [  # the archive's entries carry their config: every method is named from it
        {"adapter_id": f"@ukp/minilm-{name}", "model_name": MINILM_HUB_ID, "adapter_config": config}
        for name, config in (
            ("lora", lora["config"]),
            ("houlsby", AdapterConfig.load("double_seq_bn").to_dict()),
            ("compacter", AdapterConfig.load("compacter").to_dict()),
        )
    ]
    hub.add_ah_file("all.json", entries)
    search(panel, source="ah", model_filter="")
    assert dict(zip(shown(panel), column(panel, "method"), strict=True)) == {
        "@ukp/minilm-compacter": "compacter",
        "@ukp/minilm-houlsby": "double_seq_bn",
        "@ukp/minilm-lora": "lora",
    }


def test_cache_notice_shows_only_when_the_hub_failed_or_offline_mode_is_on(hub, monkeypatch):
    panel = HubPanel(Session())
    search(panel, model_filter=MINILM_HUB_ID, source="hf")
    assert search(panel) == ["pf-sst-2", "nli-lora"]  # the second time from the (fresh) listing cache
    assert panel.offline.layout.display == "none" and panel.results.from_cache
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
    assert "could not list adapters" in panel.offline.value and "Showing cached results" in panel.offline.value
    hub.clear_faults()
    search(panel)  # online again: the notice goes
    assert panel.offline.layout.display == "none" and panel.offline.value == ""


def test_enter_searches_and_runs_try_it(hub):
    panel = HubPanel(Session())
    panel.source.value = "hf"
    panel.search_text.value = "sst-2"
    press_enter(panel.search_text)
    wait_all(panel)
    assert shown(panel) == ["pf-sst-2"]
    panel.search_text.value = ""
    panel.task_filter.value = "nli"
    press_enter(panel.task_filter)  # in a filter too
    wait_all(panel)
    assert shown(panel) == ["nli-lora"]
    press_enter(panel.try_text)  # nothing loaded: said under Try it, not elsewhere
    assert "load an adapter first" in panel.try_error.text and panel.search_error.text == ""


def test_buttons_spin_while_the_hub_works_and_say_why_they_cannot_act(hub):
    panel = HubPanel(Session())
    assert panel.load_button.disabled and "select an adapter" in panel.load_hint.value
    assert panel.try_button.disabled and "load an adapter first" in panel.try_button.tooltip
    hub.fail("^/api/models$", "timeout", seconds=1.0)
    panel.source.value = "hf"
    panel.search_button.click()
    assert panel.search_button.disabled and "spin" in panel.search_button.icon  # while the Hub answers
    assert panel.search_button.description == "Searching..."
    wait_all(panel)
    assert not panel.search_button.disabled and panel.search_button.icon == "search"
    assert panel.search_button.description == "Search"


def _descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _descendants(child)


def test_click_on_a_row_selects_it_and_load_acts_on_it(hub):
    session = Session()
    panel = HubPanel(session)
    search(panel, model_filter=MINILM_HUB_ID, source="hf")
    second = panel.grid.rows[1]
    second.children[3].click()  # any cell of the row: here its task
    wait_all(panel)
    assert panel.selected.adapter_id == PREFIX + "nli-lora" and panel.grid.selected == 1
    assert "wb-grid-row-selected" in second._dom_classes
    assert "wb-grid-row-selected" not in panel.grid.rows[0]._dom_classes
    assert {c.style.button_color for c in second.children} == {SELECTED}
    assert "nli/multinli" in panel.card.value and not panel.load_button.disabled and panel.load_hint.value == ""
    assert "reading the details" not in panel.card.value  # the details arrived
    panel.grid.sort_buttons["adapter_id"].click()  # re-sorted: the chosen adapter stays highlighted where it went
    wait_all(panel)
    assert shown(panel) == ["nli-lora", "pf-sst-2"] and panel.grid.selected == 0
    assert "wb-grid-row-selected" in panel.grid.rows[0]._dom_classes
    assert "wb-grid-row-selected" not in second._dom_classes
    panel.load_button.click()
    wait_all(panel)
    assert panel.error.text == "" and panel.loaded_name == "nli-lora"
    assert "nli-lora" in session.model.adapters and not panel.try_button.disabled


def test_card_shows_details_and_its_code_loads_the_adapter(hub):
    panel = HubPanel(Session())
    search(panel, search_text="sst-2", source="hf")
    panel.grid.select(0)
    wait_all(panel)
    card = panel.card.value
    assert "AdapterHub/all-MiniLM-L6-v2-pf-sst-2" in card and MINILM_HUB_ID in card and "sentiment/sst-2" in card
    assert "adapter_config.json" in card and "pytorch_model_head.bin" in card  # files, with sizes from the Hub
    assert "reduction_factor" in card and "adapterhub:sentiment/sst-2" in card  # config and tags
    assert "kB" in card
    assert not panel.load_button.disabled
    hub.add_folder(MINILM_HUB_ID, minilm_path(), tags=["bert"], config={"model_type": "bert"})
    scope = {}
    exec(panel.code.value, scope)  # the copyable snippet, run as a user would
    assert scope["adapter_name"] == "sst-2" and scope["model"].active_adapters.names() == ["sst-2"]


def test_load_without_a_model_uses_the_minilm_shows_progress_and_tries_it(hub):
    session = Session()
    panel = HubPanel(session)
    search(panel, search_text="sst-2", source="hf")
    panel.grid.select(0)
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
    assert panel.try_button.description == "Running..."  # in a worker, the button spinning
    wait_all(panel)
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
    panel.grid.select(0)
    wait_all(panel)
    hub.fail("/resolve/", "status", code=500)
    panel.load_button.click()
    wait_all(panel)
    assert "cannot be reached" in panel.load_error.text and "AdapterLoadError" in panel.load_error.details.value
    assert "Traceback" not in panel.error.message.value and "Loading failed" in panel.status.value
    assert panel.progress.bar_style == "danger" and panel.loaded_name is None
    assert model.adapters == {} and session.model is model
    panel.try_button.click()  # nothing loaded: a clear message, under Try it
    assert "load an adapter first" in panel.try_error.text


def test_archive_adapter_loads_onto_a_local_model_and_a_new_model_resets_try_it(hub):
    session = Session()
    panel = HubPanel(session)
    assert search(panel, source="ah") == ["@ukp/all-MiniLM-L6-v2-pf-sst-2"]
    panel.grid.select(0)
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
    from workbench.core.families import ARCHITECTURES

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
    assert offered.keys() == {"any", *ARCHITECTURES} and offered["bert"] == "BERT (bert)"
    assert offered["any"] == "any family"  # a label, not a blank dropdown
    assert sorted(search(panel, source="hf", family_filter="bert")) == ["nli-lora", "pf-sst-2"]
    assert set(column(panel, "family")) == {"bert"}  # the family column
    assert search(panel, family_filter="roberta") == ["someone/roberta-adapter"]
    search(panel, family_filter="any", search_text="olmo")
    panel.grid.select(0)
    wait_all(panel)
    assert "olmo: not supported by the engine yet" in panel.card.value
    monkeypatch.setitem(ARCHITECTURES, "olmo2", ARCHITECTURES["llama"])  # a family merged later
    assert ("OLMo 2 (olmo2)", "olmo2") in HubPanel(Session()).family_filter.options


def test_offline_search_and_load_fail_fast_with_the_message_under_the_control(hub, monkeypatch):
    from test_hub_reach import GENEROUS_S, assert_helpful, closed_port, silent_server

    from workbench.hub.reach import forget_checks

    panel = HubPanel(Session())
    search(panel, search_text="sst-2", source="hf")
    panel.grid.select(0)
    wait_all(panel)
    forget_checks()
    monkeypatch.setenv("WORKBENCH_LISTING_TTL", "0")
    url = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("WORKBENCH_AH_INDEX_URL", url + "/ah")
    panel.source.value = "both"
    panel.model_filter.value = "someone/other-model"  # a listing never cached: nothing to fall back on
    started = time.monotonic()
    panel.search_button.click()
    wait_all(panel)
    assert time.monotonic() - started < GENEROUS_S
    assert panel.search_error.text.startswith("Search failed: The Hub at")
    assert_helpful(panel.search_error.text, url)
    assert panel.load_error.text == "" and panel.try_error.text == ""
    with silent_server() as silent:
        monkeypatch.setenv("HF_ENDPOINT", silent)
        started = time.monotonic()
        panel.load_button.click()  # the adapter selected before
        assert panel.load_button.description == "Loading..." and "spin" in panel.load_button.icon
        wait_all(panel)
        assert time.monotonic() - started < GENEROUS_S
    assert_helpful(panel.load_error.text, silent)
    assert panel.load_button.description == "Load" and not panel.load_button.disabled
    forget_checks()


def test_a_base_model_from_the_hub_fails_fast_offline_or_loads_the_copy_from_before(hub, monkeypatch):
    from test_hub_reach import GENEROUS_S, assert_helpful, closed_port

    from workbench.hub import HubUnreachable
    from workbench.hub.reach import forget_checks

    hub.add_folder(MINILM_HUB_ID, minilm_path(), tags=["bert"], config={"model_type": "bert"})
    online, _ = load_base_model(MINILM_HUB_ID)  # downloaded into the Hugging Face cache
    forget_checks()
    url = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", url)
    started = time.monotonic()
    with pytest.raises(HubUnreachable) as caught:
        load_base_model("someone/never-downloaded")
    assert time.monotonic() - started < GENEROUS_S
    assert_helpful(str(caught.value), url)
    offline, tokenizer = load_base_model(MINILM_HUB_ID)  # the Hub is away: the copy from before
    assert tokenizer is not None and type(offline) is type(online)
    forget_checks()


def test_load_is_refused_while_a_run_trains_on_the_model(hub):
    import threading

    from workbench.ui.session import ActiveRun

    session = Session()
    panel = HubPanel(session)
    search(panel, model_filter=MINILM_HUB_ID, source="hf")
    panel.grid.rows[0].children[0].click()
    wait_all(panel)
    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    session.active_run = ActiveRun("train", control=None, thread=thread)
    try:
        panel.load_button.click()
        assert "training on this model" in panel.load_error.text and session.model is None
    finally:
        release.set()
        thread.join(10)
    panel.load_button.click()
    wait_all(panel)
    assert panel.load_error.text == "" and panel.loaded_name in session.model.adapters
