"""The tabbed Workbench from Python: tabs built on first view, one shared session, the Hub-to-Model flow."""

import ipywidgets as widgets
import pytest
from test_ui_hub import hub, minilm_adapters, search, wait_all  # noqa: F401  (fixtures)
from tiny import tiny_adapter_model

from workbench.ui import HubPanel, ModelPanel, Session, Workbench, default_session
from workbench.ui import workbench as workbench_module


def test_tabs_are_built_on_first_view_and_share_the_session():
    session = Session()
    bench = Workbench(session)
    assert "wb-workbench" in bench._dom_classes
    assert bench.tabs.titles == ("Hub", "Model", "Compare", "Train", "Fusion")
    assert list(bench.panels) == ["Hub"] and isinstance(bench.panels["Hub"], HubPanel)
    assert bench.tabs.children[1].children == ()  # not built yet
    bench.tabs.selected_index = 1  # as a click on the tab does
    model_panel = bench.panels["Model"]
    assert isinstance(model_panel, ModelPanel) and model_panel.session is session
    assert bench.tabs.children[1].children == (model_panel,)
    assert bench.panel("Model") is model_panel  # built once
    for title in ("Compare", "Train", "Fusion"):
        panel = bench.show(title)
        assert bench.tabs.selected_index == bench.tabs.titles.index(title)
        assert getattr(panel, "session", session) is session
    with pytest.raises(ValueError, match="no tab 'Nope'"):
        bench.show("Nope")


def test_title_follows_the_session_and_engine_objects_go_in():
    model = tiny_adapter_model("bert")
    session = Session()
    bench = Workbench(session, model=model)
    assert session.model is model and "adapters: 0" in bench.title.value
    model.add_adapter("a", config="seq_bn")
    session.notify("adapters")
    assert "adapters: 1" in bench.title.value
    bench.show("Model")
    assert "Model" in bench.summary_html() and "a" in bench.panels["Model"].summary.value


def test_a_missing_or_failing_panel_is_a_message_in_its_tab(monkeypatch):
    class Broken(widgets.VBox):
        def __init__(self, session):
            raise RuntimeError("cannot open")

    tabs = list(workbench_module.TABS)
    tabs[2] = ("Compare", "no_such_panel", "ComparePanel")
    tabs[3] = ("Train", "workbench", "Broken")
    monkeypatch.setattr(workbench_module, "TABS", tuple(tabs))
    monkeypatch.setattr(workbench_module, "Broken", Broken, raising=False)
    bench = Workbench(Session())
    missing = bench.show("Compare")
    assert isinstance(missing, widgets.HTML) and "not available" in missing.value
    failing = bench.show("Train")
    assert "RuntimeError" in failing.details.value and "cannot open" in failing.text
    assert isinstance(bench.show("Hub"), HubPanel)  # the others still work


def test_rerunning_the_cell_finds_the_same_session(monkeypatch):
    monkeypatch.setattr("workbench.ui.session._DEFAULT", None)
    first = Workbench()
    first.session.set_model(tiny_adapter_model("bert"), None, "tiny")
    again = Workbench()
    assert again.session is first.session is default_session()
    assert again.session.model is first.session.model and "tiny" in again.title.value


def test_load_from_the_hub_tab_shows_in_the_model_tab(hub):  # noqa: F811  (the browser test's path, from Python)
    session = Session()
    bench = Workbench(session)
    summaries = []
    bench.static.listeners.append(summaries.append)  # what a saved notebook keeps below the widgets
    hub_panel = bench.panels["Hub"]
    search(hub_panel, search_text="sst-2", source="hf")
    hub_panel.grid.select(0)
    wait_all(hub_panel)
    hub_panel.load_button.click()
    wait_all(hub_panel)
    assert "Loaded" in hub_panel.status.value and hub_panel.error.text == ""
    model_panel = bench.show("Model")
    assert [value for _, value in model_panel.adapters.options] == ["sst-2"]
    assert "sst-2" in model_panel.active.value and "negative" in model_panel.heads.value
    assert "adapters: 1" in bench.title.value
    assert "Loaded adapter" in summaries[-1] and "<h4>Hub</h4>" in summaries[-1]
    assert "<h4>Model</h4>" in bench.summary_html() and "sst-2" in bench.summary_html()


def test_the_header_says_model_adapters_active_setup_and_a_run_only_while_it_trains():
    import threading

    from workbench import Stack
    from workbench.ui.session import ActiveRun

    model = tiny_adapter_model("bert")
    session = Session()
    bench = Workbench(session, model=model)
    assert "adapters: 0" in bench.title.value and "active:" not in bench.title.value
    for name in ("en", "sst-2"):
        model.add_adapter(name, config="seq_bn")
    model.set_active_adapters(Stack("en", "sst-2"))
    session.notify("adapters")
    assert "adapters: 2 (en, sst-2)" in bench.title.value
    assert "active: <code>Stack(&quot;en&quot;, &quot;sst-2&quot;)</code>" in bench.title.value
    assert "run in progress" not in bench.title.value

    release = threading.Event()
    thread = threading.Thread(target=release.wait, daemon=True)
    thread.start()
    run = ActiveRun("train", control=None, thread=thread)
    session.active_run = run
    session.notify("active_run")
    assert "train run in progress" in bench.title.value
    run.error = RuntimeError("failed to start")  # a run that fails is over, though its thread lives on a moment
    session.notify("active_run")
    assert "run in progress" not in bench.title.value
    release.set()
    thread.join(10)
