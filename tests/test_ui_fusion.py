"""The Fusion panel from Python: pick adapters, train a fusion live, see its attention heatmap."""

import pytest
import torch
from test_train import keyword_frame, make_tokenizer
from test_ui_train import finished, gate_at, set_up, wait_until
from tiny import tiny_adapter_model

from workbench.ui.code import as_code
from workbench.ui.fusion_panel import FusionPanel
from workbench.ui.session import Session
from workbench.ui.train_panel import TrainPanel


def session_with_adapters(*names: str) -> Session:
    torch.manual_seed(0)
    model = tiny_adapter_model()
    for name in names:
        model.add_adapter(name, config="seq_bn")
    return Session(model=model, tokenizer=make_tokenizer())


def test_fusion_run_then_heatmap_that_sums_to_one(tmp_path):
    session = session_with_adapters("a", "b", "c")
    panel = FusionPanel(session, data=keyword_frame(48))
    assert panel.adapters.options == ("a", "b", "c")
    panel.adapters.value = ("a", "c")
    set_up(panel, tmp_path, max_steps=4, eval_every=2)
    panel.view.start.click()
    assert panel.view.start.disabled
    wait_until(lambda: finished(panel) and panel.attention is not None)

    record = panel.record
    assert panel.error.text == "" and panel.attention_error.text == ""
    assert "Fusion layer 'a,c' is on the model" in panel.fusion_state.value and not panel.attention_button.disabled
    assert record.kind == "fusion" and record.name == "fusion:a,c" and record.global_step == 4
    assert "a,c" in session.model.adapter_fusions and session.runs == [record]
    assert panel.curves.point_count == 4
    # the heatmap is drawn on the first texts of the data, rows = layers, columns = the fused adapters
    frame = panel.attention
    assert list(frame.columns) == ["a", "c"] and list(frame.index) == [0, 1]
    assert frame.sum(axis=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    shown = panel.heatmap.outputs[0]["data"]["application/vnd.plotly.v1+json"]["data"][0]
    assert [sum(row) for row in shown["z"]] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert shown["x"] == ["a", "c"] and shown["type"] == "heatmap"

    panel.texts.value = "w5 w6 w7\nw8 w9"  # typed texts
    panel.attention_button.click()
    assert panel.attention_error.text == "" and panel.attention is not frame
    assert panel.attention.sum(axis=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert "fusion attention" in panel.summary_html() and "fusion:a,c" in panel.summary_html()


def test_fewer_than_two_adapters_or_no_fusion_is_a_message(tmp_path):
    session = session_with_adapters("a", "b")
    panel = FusionPanel(session, data=keyword_frame(16))
    set_up(panel, tmp_path / "out")
    panel.adapters.value = ("a",)
    panel.view.start.click()
    assert "pick at least two loaded adapters" in panel.error.text
    assert session.active_run is None and not (tmp_path / "out").exists()
    panel.adapters.value = ("a", "b")
    assert panel.attention_button.disabled and "no fusion layer 'a,b' yet" in panel.attention_button.tooltip
    panel.attention_button.click()  # no fusion trained or loaded yet: the message is under the button
    assert "no AdapterFusion 'a,b'" in panel.attention_error.text and panel.attention is None
    assert "AdapterFusion" not in panel.error.text  # the run's box, by Start, keeps its own message


def test_adapter_list_follows_the_session():
    session = session_with_adapters("a", "b")
    panel = FusionPanel(session)
    session.model.add_adapter("c", config="lora")
    session.notify("adapters")
    assert panel.adapters.options == ("a", "b", "c")


def test_a_fusion_run_blocks_training_elsewhere_and_code_repeats_it(tmp_path):
    session = session_with_adapters("a", "b")
    gate, reached, release = gate_at(1)
    panel = FusionPanel(session, data=keyword_frame(24), callbacks=[gate])
    panel.adapters.value = ("a", "b")
    set_up(panel, tmp_path / "panel", max_steps=2, eval_every=2)
    panel.view.start.click()
    assert reached.wait(60)
    train_panel = TrainPanel(session)
    assert train_panel.view.start.disabled and "fusion run is in progress" in train_panel.view.line.value
    release.set()
    wait_until(lambda: finished(panel) and not train_panel.view.start.disabled)

    spec = panel.spec()
    code = as_code(spec)
    assert "kind='fusion'" in code and "adapter=workbench.Fuse('a', 'b')" in code
    spec.output_dir = str(tmp_path / "code")
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    namespace = {"model": model, "tokenizer": make_tokenizer(), "data": keyword_frame(24)}
    exec(compile(as_code(spec), "show-as-code", "exec"), namespace)
    assert namespace["record"].kind == "fusion" and "a,b" in model.adapter_fusions


def test_creating_a_fusion_layer_is_explicit_and_refused_while_a_run_trains():
    from test_ui_model import FakeRun

    session = session_with_adapters("a", "b")
    panel = FusionPanel(session)
    model = session.model
    assert panel.add_fusion_button.disabled and "pick at least two adapters" in panel.add_fusion_button.tooltip
    panel.adapters.value = ("a", "b")
    assert "No fusion layer 'a,b' on the model yet" in panel.fusion_state.value and model.adapter_fusions == {}
    assert not panel.add_fusion_button.disabled
    run = FakeRun(session)
    assert panel.add_fusion_button.disabled and "train run is training" in panel.add_fusion_button.tooltip
    panel.add_fusion_button.click()
    assert "training on this model" in panel.fusion_row.error.text and model.adapter_fusions == {}
    run.end()
    panel.add_fusion_button.click()
    assert panel.fusion_row.error.text == "" and list(model.adapter_fusions) == ["a,b"]
    assert model.active_adapters is None  # added, not activated
    assert "untrained fusion layer 'a,b'" in panel.fusion_row.result.value
    assert panel.add_fusion_button.disabled and "already on the model" in panel.add_fusion_button.tooltip
    assert not panel.attention_button.disabled
