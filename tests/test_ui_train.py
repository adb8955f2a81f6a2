"""The Train panel from Python: set widget values, click, and watch real runs on a tiny model."""

import threading
import time

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


def test_bad_settings_show_a_message_and_start_nothing(tmp_path):
    session = new_session()
    panel = TrainPanel(session)
    panel.view.start.click()
    assert "no data" in panel.view.error.text
    panel = TrainPanel(session, data=keyword_frame(16))
    set_up(panel, tmp_path / "out")
    for field, value, message in (
        ("learning rate", "abc", "learning rate: 'abc' is not a number"),
        ("batch size", "0", "batch size: '0' must be greater than 0"),
        ("max steps", "2.5", "max steps: '2.5' is not a whole number"),
    ):
        good = panel.params.fields[field].value
        panel.params.fields[field].value = value
        panel.view.start.click()
        assert message in panel.view.error.text and "ValueError" in panel.view.error.details.value
        assert "Traceback" in panel.view.error.details.value  # details on demand
        panel.params.fields[field].value = good
    panel.method_config.value = "reduction_fator=8"
    panel.view.start.click()
    assert "unknown key(s) ['reduction_fator']" in panel.view.error.text
    assert session.active_run is None and not (tmp_path / "out").exists()


def test_errors_from_the_run_show_in_the_error_box(tmp_path):
    session = new_session()
    frame = keyword_frame(16).rename(columns={"label": "target"})
    panel = TrainPanel(session, data=frame)
    assert panel.columns.role["label"].value == "target"  # guessed from the data
    panel.columns.role["label"].value = "text"  # 16 different "labels"
    panel.columns.task.value = "tagging"  # text is not a list of words: the run fails
    set_up(panel, tmp_path, max_steps=2, eval_every=2)
    panel.view.start.click()
    wait_until(lambda: finished(panel))
    assert "UnknownLabelError" in panel.view.error.details.value and "not in the head" in panel.view.error.text
    assert panel.record is None and session.runs == []
    assert not panel.view.start.disabled


def test_data_from_a_file_typed_in(tmp_path):
    session = new_session()
    keyword_frame(20).rename(columns={"text": "sentence"}).to_csv(tmp_path / "train.csv", index=False)
    panel = TrainPanel(session)
    panel.data.source.value = str(tmp_path / "missing.csv")
    panel.data.load_button.click()
    wait_until(lambda: not panel.data.loader.is_alive())
    assert "missing.csv" in panel.error.text and panel.data.data is None
    panel.data.source.value = str(tmp_path / "train.csv")
    panel.data.load_button.click()
    wait_until(lambda: not panel.data.loader.is_alive())
    assert panel.data.data == str(tmp_path / "train.csv") and panel.data.columns == ["sentence", "label"]
    assert panel.columns.role["text"].value == "sentence" and panel.data.preview.value.count("<tr>") == 6


def test_baseline_runs_after_the_adapter_on_a_copy(tmp_path):
    session = new_session()
    before = {k: v.clone() for k, v in session.model.base_model.state_dict().items()}
    panel = TrainPanel(session, data=keyword_frame(32))
    set_up(panel, tmp_path, max_steps=3, eval_every=3)
    panel.baseline.value = True
    panel.view.start.click()
    wait_until(lambda: len(session.runs) == 2 and finished(panel), timeout=120)
    adapter, full = session.runs
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
    panel.view.code_button.click()
    code = panel.view.code.value
    assert "adapter_config='lora[r=4]'" in code and "max_steps=2" in code
    spec = panel.spec()
    spec.output_dir = str(tmp_path / "code")
    namespace = {"model": tiny_adapter_model(), "tokenizer": make_tokenizer(), "data": data}
    exec(compile(as_code(spec), "show-as-code", "exec"), namespace)
    record = namespace["record"]
    assert record.method == "lora" and record.global_step == 2 and record.kind == "adapter"
    assert (tmp_path / "code" / "final").is_dir()


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
