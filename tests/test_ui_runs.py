"""Runs from the Train panel: a folder that holds a run (resume / overwrite / a free name), Resume after Stop, the
runs table's actions on real files, its percentages against the Model panel's, and the header's truth."""

import csv
import re

from test_train import keyword_frame
from test_ui_train import finished, gate_at, new_session, set_up, wait_until

from workbench.train import StepEvent
from workbench.ui.model_panel import ModelPanel
from workbench.ui.train_panel import TrainPanel
from workbench.ui.workbench import Workbench


def stopped_run(tmp_path, stop_at=2, max_steps=8):
    """A Train panel whose run was stopped with Stop after step `stop_at` (of `max_steps`)."""
    session = new_session()
    gate, reached, release = gate_at(stop_at)
    panel = TrainPanel(session, data=keyword_frame(48), callbacks=[gate])
    set_up(panel, tmp_path, max_steps=max_steps, eval_every=100)
    panel.view.start.click()
    assert reached.wait(60)
    panel.view.stop.click()
    release.set()
    wait_until(lambda: finished(panel))
    assert panel.record.stop_reason == "stop_request" and panel.record.global_step == stop_at
    return session, panel


def steps_of(events):
    return [e.step for e in events if isinstance(e, StepEvent)]


def test_resume_after_stop_continues_to_the_planned_total(tmp_path):
    session, panel = stopped_run(tmp_path)
    assert "stopped at step 2 of 8" in panel.view.line.value
    assert not panel.view.resume.disabled and panel.view.resume.description == "Resume from step 2"
    figure = panel.curves.figure()
    assert tuple(figure.layout.xaxis.range) == (0, 2) and figure.layout.xaxis.dtick == 1  # fills the plot
    panel.view.resume.click()
    wait_until(lambda: finished(panel))
    record = panel.record
    assert panel.view.error.text == ""
    assert record.global_step == 8 and record.stop_reason == "completed"
    assert session.runs == [record]  # the resumed run replaces the stopped one
    assert steps_of(session.run_curves[record.name]) == list(range(1, 9))  # one curve, before and after
    assert (tmp_path / "my_adapter" / "checkpoint-8").is_dir() and panel.view.resume.disabled
    assert "completed at step 8" in panel.view.line.value


def test_start_on_a_folder_with_a_run_offers_resume_overwrite_or_a_free_name(tmp_path):
    session, panel = stopped_run(tmp_path)
    folder = tmp_path / "my_adapter"
    before = sorted(p.name for p in folder.iterdir())
    panel.view.start.click()  # the same name again
    view = panel.view
    assert view.choices.layout.display == "flex" and session.run_in_progress() is None
    assert str(folder) in view.conflict.value and "checkpoint-2 and final/" in view.conflict.value
    assert view.resume_run.description == "Resume from checkpoint-2" and view.use_free.description == "Use my_adapter-2"
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written yet

    view.use_free.click()  # a new adapter under a free name, in its own folder
    wait_until(lambda: finished(panel))
    assert panel.adapter.value == "my_adapter-2" and "my_adapter-2" in session.model.adapters
    assert panel.record.output_dir == str(tmp_path / "my_adapter-2") and panel.record.global_step == 8
    assert sorted(p.name for p in folder.iterdir()) == before and len(session.runs) == 2

    panel.view.start.click()  # my_adapter-2 holds a run now: asked again, this time overwrite
    assert view.choices.layout.display == "flex"
    (tmp_path / "my_adapter-2" / "notes.txt").write_text("mine")
    view.overwrite.click()
    wait_until(lambda: finished(panel))
    assert panel.record.global_step == 8 and view.choices.layout.display == "none"
    assert (tmp_path / "my_adapter-2" / "notes.txt").read_text() == "mine"
    assert len(session.runs) == 2  # the overwritten run's record is replaced


def test_runs_table_rename_delete_export_and_open(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    session, panel = stopped_run(tmp_path / "runs")
    table = panel.view.table
    record = session.runs[0]
    colour = session.colour(record.name)
    headings = [re.sub("<[^>]+>", "", c.value) for c in table.grid.children[:13]]  # the heading row
    assert headings[:6] == ["plot", "run", "type", "method", "status", "accuracy"] and "% of base model" in headings
    assert not any("_" in h for h in headings)  # no raw field names
    assert table.frame.layout.overflow == "auto"  # a wide table scrolls inside its box

    table.new_name.value = "first try"
    table.rename.click()
    assert table.error.text == "" and record.name == "first try" and session.colour("first try") == colour
    new_folder = tmp_path / "runs" / "first-try"
    assert record.output_dir == str(new_folder) and (new_folder / "checkpoint-2").is_dir()
    assert record.saved_path == str(new_folder / "final") and not (tmp_path / "runs" / "my_adapter").exists()
    assert "first try" in session.run_curves and table.choice.value == "first try"

    table.csv_path.value = "exports/runs.csv"
    table.export.click()
    with open(tmp_path / "exports" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["run"] == "first try" and rows[0]["status"] == "stopped" and rows[0]["steps"] == "2"
    assert "% of base model" in rows[0] and "global_step" not in rows[0]

    table.open_folder.click()
    shown = table.link.value
    assert str(new_folder) in shown and "<code>runs/first-try/</code>" in shown

    (new_folder / "notes.txt").write_text("mine")
    table.delete.click()
    assert table.confirm.asking and "first try" in table.confirm.message.value and session.runs == [record]
    table.confirm.yes.click()
    assert session.runs == [] and "first try" not in session.run_curves
    assert sorted(p.name for p in new_folder.iterdir()) == ["notes.txt"]  # only the run's folders went
    assert table.delete.disabled and "no runs yet" in table.delete.tooltip


def test_runs_table_percent_equals_the_model_panels(tmp_path):
    session = new_session()
    session.model.add_adapter("other", config="lora")  # must not count in the denominator
    panel = TrainPanel(session, data=keyword_frame(32))
    set_up(panel, tmp_path, max_steps=2, eval_every=2)
    panel.view.start.click()
    wait_until(lambda: finished(panel))
    model_panel = ModelPanel(session)
    row = re.search(r"<td>my_adapter</td><td>[^<]*</td><td>[^<]*</td><td>([\d.]+)</td>", model_panel.summary.value)
    assert row is not None
    table = panel.view.table
    cells = [re.sub("<[^>]+>", "", c.value) if isinstance(c.value, str) else "" for c in table.grid.children]
    column = cells.index("% of base model")
    width = len(cells) // 2  # one heading row, one run
    assert cells[width + column] == f"{row[1]}%"


def test_curves_name_runs_in_their_colours_and_overlay_picked_runs(tmp_path):
    session, panel = stopped_run(tmp_path, max_steps=4)
    first = session.runs[0].name
    smoothed = next(t for t in panel.curves.figure().data if t.name == "loss (smoothed)")
    assert smoothed.line.color == session.colour(first) and smoothed.legendgrouptitle.text == first
    table = panel.view.table
    table.new_name.value = "first"
    table.rename.click()  # frees the folder my_adapter for the next run
    panel.view.start.click()
    wait_until(lambda: finished(panel))
    second = panel.record.name
    assert second == "adapter:my_adapter" and session.colour(second) != session.colour("first")
    table.ticks["first"].value = True
    traces = {t.name: t for t in panel.curves.figure().data}
    assert traces["first (earlier)"].line.color == session.colour("first")
    assert traces["loss (smoothed)"].line.color == session.colour(second)
    figure = panel.curves.figure()
    assert figure.layout.yaxis2.tickformat == ".0%" and figure.layout.yaxis.tickformat == ".3~g"


def test_header_is_true_during_and_after_runs_and_after_a_failed_start(tmp_path):
    session = new_session()
    workbench = Workbench(session, tab="Model")
    gate, reached, release = gate_at(1)
    panel = TrainPanel(session, data=keyword_frame(32), callbacks=[gate])
    set_up(panel, tmp_path, max_steps=2, eval_every=2)
    panel.view.start.click()
    assert reached.wait(60)
    assert "train run in progress" in workbench.title.value
    release.set()
    wait_until(lambda: finished(panel))
    assert "run in progress" not in workbench.title.value and "runs: 1" in workbench.title.value

    def fail_at_once(_event):
        raise RuntimeError("a callback failed as the run started")

    bad = TrainPanel(session, data=keyword_frame(16), callbacks=[fail_at_once])
    set_up(bad, tmp_path / "bad", max_steps=2, eval_every=2)
    bad.view.start.click()
    wait_until(lambda: finished(bad))
    assert bad.view.error.text and "run in progress" not in workbench.title.value


def test_rename_never_moves_a_folder_holding_other_files_and_delete_is_refused_once_a_run_trains(tmp_path):
    from test_ui_model import FakeRun

    session, panel = stopped_run(tmp_path / "runs")
    table, record = panel.view.table, session.runs[0]
    folder = tmp_path / "runs" / "my_adapter"
    (folder / "notes.txt").write_text("the user's")
    table.new_name.value = "second"
    table.rename.click()
    assert table.error.text == "" and record.name == "second" and "keeps its name" in table.message.value
    assert record.output_dir == str(folder) and (folder / "notes.txt").read_text() == "the user's"

    table.delete.click()
    assert table.confirm.asking
    run = FakeRun(session)  # a run starts while the question is open: it is withdrawn
    assert not table.confirm.asking and table.delete.disabled
    table._delete(record)  # a confirmation that arrives anyway is refused
    assert "a run is training" in table.error.text and session.runs == [record]
    assert (folder / "checkpoint-2").is_dir()
    run.end()


def test_a_second_run_of_the_same_name_from_another_folder_gets_its_own_name(tmp_path):
    session, panel = stopped_run(tmp_path / "one")
    panel.output_dir.value = str(tmp_path / "two")
    panel.view.start.click()
    wait_until(lambda: finished(panel))
    first, second = session.runs
    assert first.name != second.name and second.name == f"{first.name} (2)"
    assert set(session.run_curves) == {first.name, second.name}


def test_resume_is_refused_after_the_model_was_replaced(tmp_path):
    from tiny import tiny_adapter_model

    session, panel = stopped_run(tmp_path)
    session.set_model(tiny_adapter_model(), session.tokenizer)
    panel.view.resume.click()
    assert "the model was replaced" in panel.view.error.text and session.run_in_progress() is None


def test_the_baseline_is_in_progress_before_the_adapter_runs_record_is_in(tmp_path):
    """No moment between the adapter run and its baseline without a run in progress (Start, model changes)."""
    seen = []
    session = new_session()
    session.on_change(lambda what: seen.append(session.run_in_progress() is not None) if what == "runs" else None)
    panel = TrainPanel(session, data=keyword_frame(32))
    set_up(panel, tmp_path, max_steps=2, eval_every=2)
    panel.baseline.value = True
    panel.view.start.click()
    wait_until(lambda: len(session.runs) == 2 and finished(panel), timeout=240)
    assert seen[0] is True  # the adapter run's record arrived while the baseline was in progress
    assert [r.kind for r in session.runs] == ["adapter", "full"] and panel.record is session.runs[1]
    assert panel.view.resume.disabled and "completed" in panel.view.resume.tooltip  # nothing left to resume
    panel.view.start.click()  # the same folder again: resume is not offered for a completed run
    assert panel.view.choices.layout.display == "flex" and panel.view.resume_run.disabled
