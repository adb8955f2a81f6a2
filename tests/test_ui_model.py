"""The Model panel from Python: load a base model (Hub id, folder, offline MiniLM), list, activate, compose, save."""

import pytest
import torch
from tiny import tiny_adapter_model

from workbench.ui import Session
from workbench.ui.model_panel import MINILM_HUB_ID, ModelPanel, minilm_path


def wait(thread, timeout=120):
    thread.join(timeout)
    assert not thread.is_alive(), f"{thread.name} did not finish in {timeout} s"


@pytest.fixture
def tiny_session():
    model = tiny_adapter_model("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter("lora1", config="lora")
    model.add_classification_head("a", num_labels=2, id2label={0: "neg", 1: "pos"})
    return Session(model=model)


def test_lists_adapters_and_heads_and_activates_one(tiny_session):
    panel = ModelPanel(tiny_session)
    assert [value for _, value in panel.adapters.options] == ["a", "b", "lora1"]
    assert dict(panel.adapters.options)["lora1 (lora)"] == "lora1"
    assert "neg" in panel.heads.value and "pos" in panel.heads.value
    assert "Full model" in panel.summary.value and "lora1" in panel.summary.value
    panel.adapters.value = "a"
    panel.activate_button.click()
    model = tiny_session.model
    assert model.active_adapters.names() == ["a"] and model.active_head == "a"
    assert "Stack(&#x27;a&#x27;)" in panel.active.value or "Stack('a')" in panel.active.value
    assert "<td>True</td>" in panel.summary.value  # the summary's "active" column follows
    panel.deactivate_button.click()
    assert model.active_adapters is None


def test_compositions_from_the_pickers_and_errors_in_the_panel(tiny_session):
    from workbench import Average, Fuse, Parallel, Stack

    panel = ModelPanel(tiny_session)
    model = tiny_session.model
    panel.compose_names.value = ("a", "b")
    for kind, block in (("Stack", Stack), ("Parallel", Parallel), ("Average", Average)):
        panel.compose_kind.value = kind
        assert panel.compose_text.value == f"{kind}(a, b)"
        panel.compose_button.click()
        assert panel.error.text == ""
        assert isinstance(model.active_adapters, block) and model.active_adapters.names() == ["a", "b"]
    panel.compose_kind.value = "Fuse"
    panel.compose_button.click()
    assert isinstance(model.active_adapters, Fuse) and "a,b" in model.adapter_fusions
    assert (
        "untrained AdapterFusion" in panel.status.value
        and "AdapterFusion layers: <code>a,b</code>" in panel.heads.value
    )

    before = model.active_adapters
    panel.compose_text.value = "Stack(a, nope)"
    panel.compose_button.click()
    assert "nope" in panel.error.text and "Traceback" not in panel.error.message.value
    assert model.active_adapters == before  # unchanged by the bad setup
    panel.compose_text.value = "Fuse(a, lora1)"  # LoRA cannot be fused: no fusion layer is left behind
    panel.compose_button.click()
    assert "bottleneck" in panel.error.text and "a,lora1" not in model.adapter_fusions
    panel.compose_text.value = "Stack(a, b"
    panel.compose_button.click()
    assert "missing ')'" in panel.error.text


def test_save_selected_adapter_and_reload_it(tiny_session, tmp_path):
    panel = ModelPanel(tiny_session)
    model = tiny_session.model
    with torch.no_grad():
        for _, param in model._adapter_parameters("a"):
            param.add_(torch.randn_like(param))
    panel.adapters.value = "a"
    panel.save_folder.value = str(tmp_path / "saved_a")
    panel.save_button.click()
    assert panel.error.text == "" and "Saved adapter" in panel.status.value
    assert (tmp_path / "saved_a" / "adapter_config.json").is_file()
    other = tiny_adapter_model("bert")
    other.load_state_dict(model.state_dict(), strict=False)
    assert other.load_adapter(tmp_path / "saved_a") == "a"
    inputs = torch.tensor([[5, 6, 7, 8]])
    model.set_active_adapters("a")
    other.set_active_adapters("a")
    assert torch.allclose(model(input_ids=inputs).logits, other(input_ids=inputs).logits)
    panel.save_folder.value = ""
    panel.save_button.click()
    assert "folder" in panel.error.text


def test_offline_default_minilm_loads_in_a_worker_and_other_panels_hear_of_it():
    session = Session()
    heard = []
    session.on_change(heard.append)
    panel = ModelPanel(session)
    assert "no model" in panel.summary.value
    wait(panel.load_default())
    assert panel.error.text == ""
    assert session.model is not None and session.tokenizer is not None and session.source == minilm_path()
    assert "offline default MiniLM" in panel.status.value and "22.7M" in panel.status.value
    assert heard == ["model"]
    assert not panel.default_button.disabled
    assert "Full model" in panel.summary.value


def test_hub_id_loads_through_the_hub_and_a_bad_folder_is_one_readable_error(fake_hub, tmp_path):
    fake_hub.add_folder(MINILM_HUB_ID, minilm_path(), tags=["bert"], config={"model_type": "bert"})
    session = Session()
    panel = ModelPanel(session)
    panel.hub_id.value = MINILM_HUB_ID
    panel.hub_button.click()
    wait(panel.worker)
    assert panel.error.text == "" and session.source == MINILM_HUB_ID
    assert any(r["path"].endswith("/config.json") and r["status"] == 200 for r in fake_hub.requests)
    loaded = session.model
    panel.folder.value = str(tmp_path / "missing")
    panel.folder_button.click()
    wait(panel.worker)
    assert "missing" in panel.error.text and session.model is loaded  # the session keeps its model
    assert "Loading failed" in panel.status.value


def test_the_family_choice_comes_from_the_registry_and_offers_a_checkpoint(monkeypatch):
    from workbench.core.archs import ARCHITECTURES
    from workbench.core.support import EXAMPLE_CHECKPOINTS

    panel = ModelPanel(Session())
    assert {value for _, value in panel.family.options} == {None, *ARCHITECTURES}
    panel.family.value = "gpt2"
    assert panel.hub_id.value == EXAMPLE_CHECKPOINTS["gpt2"] and "GPT-2" in panel.hub_id.placeholder
    monkeypatch.setitem(ARCHITECTURES, "wb_new_family", ARCHITECTURES["llama"])  # merged later, no example yet
    later = ModelPanel(Session())
    later.family.value = "wb_new_family"
    assert later.hub_id.value == "" and "wb_new_family" in later.hub_id.placeholder


def test_a_decoder_without_a_spec_loads_when_automatic_description_is_ticked(tmp_path):
    import shutil

    from transformers import AutoConfig, AutoModel

    config = AutoConfig.for_model(
        "olmo",
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        pad_token_id=0,
    )
    AutoModel.from_config(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(f"{minilm_path()}/{name}", tmp_path / name)
    session = Session()
    panel = ModelPanel(session)
    panel.folder.value = str(tmp_path)
    panel.folder_button.click()
    wait(panel.worker)
    assert "interface=&#x27;auto&#x27;" in panel.error.message.value or "interface='auto'" in panel.error.text
    assert session.model is None
    panel.auto_describe.value = True
    panel.folder_button.click()
    wait(panel.worker)
    assert panel.error.text == "" and session.model._engine.interface.model_layers == "layers"
    assert "olmo, described by an AdapterModelInterface" in panel.status.value
