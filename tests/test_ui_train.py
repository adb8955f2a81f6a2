"""The Train panel from Python: set widget values, click, and watch real runs on a tiny model."""

import html
import threading
import time

import pandas as pd
import pytest
import torch
from test_train import keyword_frame, make_tokenizer
from tiny import tiny_adapter_model

from workbench.train import StepEvent
from workbench.ui.code import as_code
from workbench.ui.curves import LiveCurves, ema, thin
from workbench.ui.session import Session
from workbench.ui.train_panel import TrainPanel


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the panel")
        time.sleep(0.05)


def finished(panel: TrainPanel) -> bool:
    follower = panel.view.follower
    return follower is not None and not follower.is_alive() and not panel.view.start.disabled


def new_session() -> Session:
    torch.manual_seed(0)
    return Session(model=tiny_adapter_model(), tokenizer=make_tokenizer())


def set_up(panel: TrainPanel, tmp_path, max_steps: int = 6, eval_every: int = 3) -> None:
    panel.params.fields["learning rate"].value = "1e-3"
    panel.params.fields["max steps"].value = str(max_steps)
    panel.params.fields["batch size"].value = "8"
    panel.params.fields["eval every"].value = str(eval_every)
    panel.output_dir.value = str(tmp_path)


def gate_at(step: int):
    """A run callback that blocks the run at `step` until the test releases it."""
    reached, release = threading.Event(), threading.Event()

    def gate(event) -> None:
        if isinstance(event, StepEvent) and event.step == step:
            reached.set()
            release.wait(30)

    return gate, reached, release


def test_start_runs_to_the_end_with_record_curves_and_summary(tmp_path):
    session = new_session()
    panel = TrainPanel(session, data=keyword_frame(48))
    assert panel.columns.role["text"].value == "text" and panel.columns.role["label"].value == "label"
    assert "<td>" in panel.data.preview.value and panel.device.value.endswith(("CPU</b>", "</b>"))
    set_up(panel, tmp_path)
    assert [field.description for field in panel.labels.names] == ["0: no →", "1: yes →"]
    panel.labels.names[0].value, panel.labels.names[1].value = "negative", "positive"  # the head's label names
    panel.view.start.click()
    assert panel.view.start.disabled and not panel.view.stop.disabled  # Start is off while the run is active
    wait_until(lambda: finished(panel))

    record = panel.record
    assert panel.error.text == "" and panel.view.error.text == ""
    assert record is not None and record.kind == "adapter" and record.method == "seq_bn"
    assert record.global_step == 6 and record.stop_reason == "completed"
    assert session.runs == [record] and session.active_run.record is record
    steps = [e.step for e in session.run_curves[record.name] if isinstance(e, StepEvent)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert panel.curves.point_count == 6 and panel.view.bar.value == 6
    figure = panel.curves.figure()
    assert tuple(figure.layout.xaxis.range) == (0, 6)
    names = [trace.name for trace in figure.data]
    assert {"loss", "loss (smoothed)", "eval loss", "eval accuracy"} <= set(names)
    eval_trace = next(t for t in figure.data if t.name == "eval accuracy")
    assert list(eval_trace.x) == [3, 6]
    assert panel.view.curves.out.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"]
    assert record.name in panel.view.records.value and "<th>status</th>" in panel.view.records.value
    assert "completed at step 6" in panel.summary_html()
    assert "my_adapter" in session.model.adapters
    assert session.model.heads["my_adapter"].id2label == {0: "negative", 1: "positive"}


def test_stop_ends_the_run_within_a_step_and_start_is_refused_meanwhile(tmp_path):
    session = new_session()
    gate, reached, release = gate_at(2)
    panel = TrainPanel(session, data=keyword_frame(48), callbacks=[gate])
    set_up(panel, tmp_path, max_steps=200, eval_every=100)
    panel.view.start.click()
    assert reached.wait(60)
    panel.view.start.click()  # a second Start while running: refused with a message
    assert "a run is in progress" in panel.view.error.text
    panel.view.stop.click()
    release.set()
    wait_until(lambda: finished(panel))
    assert panel.record.stop_reason == "stop_request" and panel.record.global_step == 2
    assert len(session.runs) == 1


def test_a_new_panel_reattaches_to_the_run_in_progress(tmp_path):
    session = new_session()
    gate, reached, release = gate_at(3)
    first = TrainPanel(session, data=keyword_frame(48), callbacks=[gate])
    set_up(first, tmp_path, max_steps=6, eval_every=6)
    first.view.start.click()
    assert reached.wait(60)
    second = TrainPanel(session)  # the cell re-run while training
    assert second.view.start.disabled and second.view.following is session.active_run
    wait_until(lambda: second.curves.point_count == 3)  # the past events are drawn
    release.set()
    wait_until(lambda: finished(first) and finished(second))
    assert second.curves.point_count == 6 and second.record is first.record is session.runs[0]
    assert second.curves.planned_steps == 6


def test_start_is_disabled_with_the_reason_without_model_or_data():
    empty = TrainPanel(Session())
    assert empty.view.start.disabled and "no model yet" in empty.start_hint.value
    assert "no model yet" in empty.view.start.tooltip
    session = new_session()
    panel = TrainPanel(session)
    assert panel.view.start.disabled and "no data yet" in panel.start_hint.value
    panel.data._load(keyword_frame(16))  # as the Load button's worker does
    assert not panel.view.start.disabled and panel.start_hint.value == ""


def test_every_bad_setting_is_listed_at_once_under_start_and_nothing_starts(tmp_path):
    session = new_session()
    panel = TrainPanel(session, data=keyword_frame(16))
    set_up(panel, tmp_path / "out")
    bad = {
        "learning rate": "abc",
        "batch size": "0",
        "max steps": "2.5",
        "warm-up": "-1",
        "weight decay": "x",
        "baseline learning rate": "0",
    }
    for field, value in bad.items():
        panel.params.fields[field].value = value
    panel.data.holdout.value = "2"
    panel.method_config.value = "reduction_fator=8"
    panel.view.start.click()
    problems = panel.error.text
    for message in (
        "adapter learning rate: 'abc' is not a number",
        "batch size: '0' must be greater than 0",
        "max steps: '2.5' is not a whole number",
        "warm-up: '-1' must be 0 or more",
        "weight decay: 'x' is not a number",
        "baseline learning rate: '0' must be greater than 0",
        "hold out: '2' must be between 0 and 1",
        "unknown key(s) ['reduction_fator']",
    ):
        assert message in problems
    assert "Error" not in problems  # plain words, no exception names
    assert session.active_run is None and not (tmp_path / "out").exists()
    # the messages sit right under Start, in the run view
    start_row, hint, box = panel.view.children[:3]
    assert panel.view.start in start_row.children and box is panel.error and hint is panel.start_hint


def test_a_csv_without_a_label_column_is_refused_before_start(tmp_path):
    """The issue's bug: a CSV without a label column trained on a guessed constant column (accuracy 1.0)."""
    path = tmp_path / "reviews.csv"
    keyword_frame(40).drop(columns="label").assign(source="web").to_csv(path, index=False)
    session = new_session()
    panel = TrainPanel(session, data=str(path))
    set_up(panel, tmp_path / "out")
    assert panel.columns.role["label"].value == "(none)"  # no column is taken for the label by position
    assert "no label column found by name" in panel.data.status.value
    assert "pick the label column for task 'classification'" in panel.checks.text
    panel.view.start.click()
    assert "pick the label column" in panel.error.text and session.active_run is None
    panel.columns.role["label"].value = "source"
    assert "'source' holds one value only ('web')" in panel.checks.text
    panel.view.start.click()
    assert "'source' holds one value only ('web')" in panel.error.text
    assert session.active_run is None and not (tmp_path / "out").exists()


def test_data_checks_follow_the_columns_and_the_validation_file(tmp_path):
    session = new_session()
    frame = keyword_frame(40).rename(columns={"label": "target"}).assign(n=range(40))
    panel = TrainPanel(session, data=frame)
    assert panel.columns.role["label"].value == "target"  # taken by its name
    assert panel.checks.text == ""
    panel.columns.role["text"].value = "n"
    assert "text column 'n' holds numbers, not text" in panel.checks.text
    panel.columns.role["text"].value = "text"
    assert panel.checks.text == ""
    validation = keyword_frame(10, seed=1).rename(columns={"label": "target"}).assign(n=0)
    validation.loc[[0, 1], "target"] = "maybe"
    validation.to_csv(tmp_path / "dev.csv", index=False)
    panel.data.validation_file.value = str(tmp_path / "dev.csv")
    assert "'maybe' (2 rows) of the validation split in column 'target' are never seen in training" in (
        panel.checks.text
    )
    panel.data.validation_file.value = str(tmp_path / "absent.csv")
    assert "absent.csv: no such file" in panel.checks.text
    panel.data.validation_file.value = ""
    few = pd.concat([frame, pd.DataFrame({"text": ["w6 w7"] * 3, "target": ["rare"] * 3, "n": 0})])
    panel.data._load(few)
    assert panel.checks.text == "" and "few training rows for label(s) 'rare'" in html.unescape(panel.warnings.value)


def test_errors_from_the_run_show_under_start(tmp_path):
    session = new_session()
    panel = TrainPanel(session, data=keyword_frame(16))
    set_up(panel, tmp_path, max_steps=5, eval_every=5)
    panel.params.fields["learning rate"].value = "1e30"  # a valid number; the loss diverges in the run
    panel.view.start.click()
    wait_until(lambda: finished(panel))
    assert "Training failed: the training loss became" in panel.error.text
    assert "NonFiniteLossError" in panel.error.details.value and panel.record is None and session.runs == []
    assert not panel.view.start.disabled


def test_an_output_folder_blocked_by_a_file_is_refused_before_start(tmp_path):
    session = new_session()
    panel = TrainPanel(session, data=keyword_frame(16))
    (tmp_path / "blocked").write_text("a file where the output folder would go")
    panel.output_dir.value = str(tmp_path / "blocked")
    panel.view.start.click()
    assert f"output folder: {tmp_path / 'blocked'} is a file, not a folder" in panel.error.text
    assert session.active_run is None


def test_data_from_a_file_typed_in(tmp_path):
    session = new_session()
    keyword_frame(20).rename(columns={"text": "sentence"}).to_csv(tmp_path / "train.csv", index=False)
    panel = TrainPanel(session)
    panel.data.source.value = str(tmp_path / "missing.csv")
    panel.data.load_button.click()
    wait_until(lambda: not panel.data.loader.is_alive())
    assert "missing.csv" in panel.data_error.text and panel.data.data is None
    panel.data.source.value = str(tmp_path / "train.csv")
    panel.data.load_button.click()
    wait_until(lambda: not panel.data.loader.is_alive())
    assert panel.data.data == str(tmp_path / "train.csv") and panel.data.columns == ["sentence", "label"]
    assert panel.columns.role["text"].value == "sentence" and panel.data.preview.value.count("<tr>") == 6


def readable(widget) -> bool:
    """The description is shown in full: as wide as its text, or a width in em that fits it."""
    width = widget.style.description_width
    return width == "initial" or (width.endswith("em") and float(width[:-2]) >= 0.55 * len(widget.description))


def test_labels_are_readable_in_full():
    panel = TrainPanel(new_session(), data=keyword_frame(16))
    fields = [*panel.params.fields.values(), panel.params.scheduler, panel.output_dir, panel.method_config]
    fields += [panel.data.source, panel.data.validation_file, panel.data.holdout, *panel.columns.role.values()]
    fields += panel.labels.names
    assert all(readable(widget) for widget in fields), [w.description for w in fields if not readable(w)]
    shown = [panel.columns.role["text"], panel.columns.role["label"], *panel.params.fields.values()]
    assert all(widget.layout.display != "none" for widget in shown)  # hiding the QA columns hides only those
    assert panel.columns.role["question"].layout.display == "none"


def test_baseline_runs_after_the_adapter_on_a_copy(tmp_path):
    session = new_session()
    before = {k: v.clone() for k, v in session.model.base_model.state_dict().items()}
    panel = TrainPanel(session, data=keyword_frame(32))
    set_up(panel, tmp_path, max_steps=3, eval_every=3)
    panel.baseline.value = True
    fields = panel.params.fields
    fields["baseline learning rate"].value, fields["seed"].value = "3e-5", "7"
    fields["warm-up"].value, fields["weight decay"].value = "0.1", "0.01"
    panel.params.scheduler.value = "cosine"
    panel.view.start.click()
    wait_until(lambda: len(session.runs) == 2 and finished(panel), timeout=120)
    adapter, full = session.runs
    assert adapter.config["learning_rate"] == 1e-3 and full.config["learning_rate"] == 3e-5
    for record in (adapter, full):
        settings = {k: record.config[k] for k in ("seed", "warmup_steps", "weight_decay", "lr_scheduler_type")}
        assert settings == {"seed": 7, "warmup_steps": 0.1, "weight_decay": 0.01, "lr_scheduler_type": "cosine"}
    assert adapter.kind == "adapter" and full.kind == "full" and full.global_step == 3
    assert full.trainable_params == full.total_params and session.full_checkpoint == full.saved_path
    assert panel.record is full and "full:my_adapter" in panel.view.records.value
    after = session.model.base_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the adapters' base model is untouched
    assert "adapter:my_adapter (earlier)" in [t.name for t in panel.curves.figure().data]


def test_show_as_code_repeats_the_run(tmp_path):
    session = new_session()
    data = keyword_frame(24)
    panel = TrainPanel(session, data=data)
    set_up(panel, tmp_path / "panel", max_steps=2, eval_every=2)
    panel.method.value = "lora"
    panel.method_config.value = "r=4"
    panel.params.fields["seed"].value = "5"
    panel.params.scheduler.value = "constant"
    panel.baseline.value = True
    panel.view.code_button.click()
    code = panel.view.code.value
    assert "adapter_config='lora[r=4]'" in code and "max_steps=2" in code
    assert "seed=5" in code and "lr_scheduler_type='constant'" in code
    assert "baseline_config = TrainConfig(learning_rate=2e-05" in code and "config=baseline_config" in code
    spec = panel.spec()
    spec.output_dir = str(tmp_path / "code")
    namespace = {"model": tiny_adapter_model(), "tokenizer": make_tokenizer(), "data": data}
    exec(compile(as_code(spec), "show-as-code", "exec"), namespace)
    record, baseline = namespace["record"], namespace["baseline"]
    assert record.method == "lora" and record.global_step == 2 and record.kind == "adapter"
    assert baseline.kind == "full" and baseline.config["learning_rate"] == 2e-5 and record.config["seed"] == 5
    assert (tmp_path / "code" / "final").is_dir() and (tmp_path / "code-full" / "final").is_dir()


def test_show_as_code_has_no_installation_path_and_runs(tmp_path, monkeypatch):
    """A model installed inside a package (the offline MiniLM is one) is found through the package, so the script
    runs where it is pasted; the data with a validation file and the label names come along."""
    packages = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    model_dir = packages / "tiny_model_pkg" / "model"
    tiny_adapter_model().save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    (packages / "tiny_model_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(packages))
    session = new_session()
    session.source = str(model_dir)
    keyword_frame(24).to_csv(tmp_path / "train.csv", index=False)
    keyword_frame(8, seed=1).to_csv(tmp_path / "dev.csv", index=False)
    panel = TrainPanel(session, data=str(tmp_path / "train.csv"))
    set_up(panel, tmp_path / "panel", max_steps=1, eval_every=1)
    panel.data.validation_file.value = str(tmp_path / "dev.csv")
    panel.labels.names[1].value = "keyword"
    panel.view.code_button.click()
    code = panel.view.code.value
    assert "site-packages" not in code and str(packages) not in code
    assert "model_source = str(files('tiny_model_pkg') / 'model')" in code
    assert (
        f"'validation': {str(tmp_path / 'dev.csv')!r}" in code and "label_names={'no': 'no', 'yes': 'keyword'}" in code
    )
    code = code.replace(repr(f"{tmp_path}/panel/my_adapter"), repr(str(tmp_path / "pasted")))
    namespace = {}
    exec(compile(code, "show-as-code", "exec"), namespace)
    assert namespace["record"].global_step == 1 and (tmp_path / "pasted" / "final").is_dir()
    assert namespace["model"].heads["my_adapter"].id2label == {0: "no", 1: "keyword"}


def test_curves_log_scale_smoothing_and_overlays():
    curves = LiveCurves(interval=0.0)
    assert ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias-corrected: no pull towards 0
    assert ema([1.0, 3.0])[1] == pytest.approx((0.09 * 1 + 0.1 * 3) / 0.19)
    earlier = [StepEvent(s, 4, 0.0, 1.0 / s, 1e-3, 1.0, 0.0, None) for s in (1, 2, 3, 4)]
    curves.reset(10, overlays={"old": earlier})
    curves.add(StepEvent(1, 10, 0.0, 0.7, 1e-3, 1.0, 9.0, None))
    figure = curves.figure()
    assert figure.layout.yaxis.type == "linear" and tuple(figure.layout.xaxis.range) == (0, 10)
    assert [t.name for t in figure.data][0] == "old (earlier)"
    curves.log_scale.value = True
    assert curves.figure().layout.yaxis.type == "log"
    shown = curves.out.outputs[0]["data"]["application/vnd.plotly.v1+json"]
    assert shown["layout"]["yaxis"]["type"] == "log"  # the toggle redraws
    assert thin(list(range(10)), list(range(10)), limit=20) == (list(range(10)), list(range(10)))
    xs, ys = thin(list(range(10_001)), list(range(10_001)), limit=1000)
    assert len(xs) <= 1001 and xs[0] == 0 and xs[-1] == 10_000 and xs == ys


def test_an_adapter_name_that_is_a_path_is_refused_before_anything_is_written(tmp_path):
    session = new_session()
    panel = TrainPanel(session, data=keyword_frame(16))
    set_up(panel, tmp_path / "out")
    for name in ("../escape", "a/b"):
        panel.adapter.value = name
        panel.view.start.click()
        assert f"adapter name {name!r}" in panel.error.text and "'/'" in panel.error.text
    assert session.active_run is None and not (tmp_path / "escape").exists() and not (tmp_path / "out").exists()
