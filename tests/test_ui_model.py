"""The Model panel from Python: load a base model (Hub id, folder, offline MiniLM), list, activate, compose, save."""

import html
import threading

import pytest
import torch
from tiny import tiny_adapter_model

from workbench.ui import Session
from workbench.ui.model_panel import MINILM_HUB_ID, ModelPanel, minilm_path


def hint(row) -> str:
    """A row's "why disabled" line as plain text."""
    return html.unescape(row.hint.value)


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
    assert panel.activate_button.disabled and "select an adapter first" in hint(panel.activate_row)
    panel.adapters.value = "a"
    assert not panel.activate_button.disabled and hint(panel.activate_row) == ""
    panel.activate_button.click()
    model = tiny_session.model
    assert model.active_adapters.names() == ["a"] and model.active_head == "a"
    assert "Stack(&quot;a&quot;)" in panel.active.value
    assert "<td>True</td>" in panel.summary.value  # the summary's "active" column follows
    panel.deactivate_button.click()
    assert model.active_adapters is None


def test_nothing_can_act_without_a_model_and_each_button_says_why():
    panel = ModelPanel(Session())
    for button in (
        panel.activate_button,
        panel.actions.add_button,
        panel.actions.delete_button,
        panel.actions.merge_button,
        panel.actions.average_button,
        panel.actions.save_button,
        panel.actions.push_button,
        panel.composer.activate_button,
    ):
        assert button.disabled and "no model loaded" in button.tooltip, button.description
    assert "no model loaded" in hint(panel.actions.add_row)
    panel.actions.add_button.click()  # a click from code still answers, next to the row
    assert "no model loaded" in panel.actions.add_row.error.text and panel.error.text == ""


def test_compositions_are_built_in_click_order_and_shown_as_the_expression(tiny_session):
    from workbench import Average, BatchSplit, Parallel, Stack

    model = tiny_session.model
    model.add_adapter("en", config="seq_bn")
    model.add_adapter("sst-2", config="seq_bn")
    panel = ModelPanel(tiny_session)
    composer = panel.composer
    assert composer.activate_button.disabled and "select adapters first" in hint(composer.row)
    composer.button("en").value = True  # click en, then sst-2 (sst-2 comes first in the list)
    composer.button("sst-2").value = True
    assert composer.text.value == 'Stack("en", "sst-2")'
    assert "Will activate: <code>Stack(&quot;en&quot;, &quot;sst-2&quot;)</code>" in composer.preview.value
    composer.activate_button.click()
    assert composer.row.error.text == ""
    assert model.active_adapters == Stack("en", "sst-2")  # MAD-X: the language adapter first
    assert "Stack(&quot;en&quot;, &quot;sst-2&quot;)" in panel.active.value

    composer.clear()
    composer.pick("sst-2", "en")
    assert composer.text.value == 'Stack("sst-2", "en")'
    composer.button("sst-2").value = False  # un-clicking drops it, the rest keeps its order
    composer.pick("a", "sst-2")
    assert composer.order == ["en", "a", "sst-2"]

    composer.clear()
    composer.pick("b", "a")
    composer.kind.value = "Parallel"
    assert composer.text.value == 'Parallel("b", "a")'
    composer.activate_button.click()
    assert model.active_adapters == Parallel("b", "a")
    composer.kind.value = "Average"
    composer.option.value = "3, 1"
    assert composer.text.value == 'Average("b", "a", weights=[0.75, 0.25])'
    composer.activate_button.click()
    assert model.active_adapters == Average("b", "a", weights=[3, 1])
    composer.kind.value = "BatchSplit"
    composer.option.value = ""
    assert composer.activate_button.disabled and "BatchSplit needs batch_sizes" in hint(composer.row)
    composer.option.value = "1, x"
    assert "batch_sizes: 'x' is not a whole number" in hint(composer.row)
    composer.option.value = "1, 2"
    assert composer.text.value == 'BatchSplit("b", "a", batch_sizes=[1, 2])'
    composer.activate_button.click()
    assert composer.row.error.text == "" and model.active_adapters == BatchSplit("b", "a", batch_sizes=[1, 2])
    composer.kind.value = "Split"
    assert composer.option.value == "" and "tokens per adapter" in composer.option.placeholder
    composer.option.value = "3"  # one number: the same for each adapter
    assert composer.text.value == 'Split("b", "a", splits=[3, 3])'
    composer.option.value = "1, 2, 3"
    assert "Split has 2 children but splits=[1, 2, 3] has 3" in hint(composer.row)


def test_a_typed_setup_and_its_errors_show_next_to_the_row(tiny_session):
    panel = ModelPanel(tiny_session)
    composer, model = panel.composer, tiny_session.model
    composer.text.value = "Stack(b, a)"
    assert "Will activate: <code>Stack(&quot;b&quot;, &quot;a&quot;)</code>" in composer.preview.value
    composer.activate_button.click()
    assert model.active_adapters.names() == ["b", "a"]
    before = model.active_adapters
    composer.text.value = "Stack(a, nope)"
    composer.activate_button.click()
    assert "nope" in composer.row.error.text and "Traceback" not in composer.row.error.message.value
    assert model.active_adapters == before  # unchanged by the bad setup
    composer.text.value = "Stack(a, b"
    assert composer.activate_button.disabled and "missing ')'" in hint(composer.row)
    composer.activate_button.click()
    assert "missing ')'" in composer.row.error.text and panel.error.text == ""


def test_fuse_does_not_create_a_fusion_until_the_explicit_button(tiny_session):
    from workbench import Fuse

    panel = ModelPanel(tiny_session)
    composer, model = panel.composer, tiny_session.model
    composer.kind.value = "Fuse"
    composer.pick("a", "b")
    assert composer.text.value == 'Fuse("a", "b")'
    assert composer.activate_button.disabled and "no fusion layer 'a,b'" in composer.activate_button.tooltip
    assert composer.fusion_button.layout.display == "flex" and not composer.fusion_button.disabled
    composer.activate_button.click()  # even when clicked from code: nothing is created or activated
    assert "Add fusion layer" in composer.row.error.text
    assert model.adapter_fusions == {} and model.active_adapters is None
    composer.fusion_button.click()
    assert list(model.adapter_fusions) == ["a,b"] and model.active_adapters is None  # added, not activated
    assert "untrained fusion layer" in composer.row.result.value
    assert composer.fusion_button.layout.display == "none" and not composer.activate_button.disabled
    composer.activate_button.click()
    assert model.active_adapters == Fuse("a", "b")
    composer.text.value = "Fuse(a, lora1)"  # LoRA cannot be fused: the engine's reason, nothing left behind
    composer.fusion_button.click()
    assert "bottleneck" in composer.row.error.text and "a,lora1" not in model.adapter_fusions


def test_add_adapter_from_a_config_and_errors_name_the_key(tiny_session):
    panel = ModelPanel(tiny_session)
    actions, model = panel.actions, tiny_session.model
    actions.new_name.value = "rf8"
    actions.new_config.value = "seq_bn[reduction_factor=8]"
    actions.add_button.click()
    assert actions.add_row.error.text == "" and "Added adapter" in actions.add_row.result.value
    assert model.adapters["rf8"].reduction_factor == 8
    assert "rf8" in [v for _, v in panel.adapters.options] and "rf8" in panel.summary.value
    assert panel.composer.button("rf8")  # the composition pickers follow
    before = dict(model.state_dict())
    for config, expected in (
        ("seq_bn[reduction_factr=8]", "unknown key(s) ['reduction_factr']"),
        ("seq_bn[reduction_factor=abc]", "reduction_factor='abc'"),
        ("nope", "unknown adapter config 'nope'"),
        ("lora[r=0]", "r=0 must be an integer >= 1"),
    ):
        actions.new_name.value = "bad"
        actions.new_config.value = config
        actions.add_button.click()
        assert expected in actions.add_row.error.text, config
    actions.new_name.value = "a"
    actions.new_config.value = "lora"
    actions.add_button.click()
    assert "already exists" in actions.add_row.error.text
    actions.new_name.value = ""
    actions.add_button.click()
    assert "name:" in actions.add_row.error.text
    assert "bad" not in model.adapters and model.state_dict().keys() == before.keys()


def test_delete_asks_first_and_cancel_keeps_the_adapter(tiny_session):
    model = tiny_session.model
    model.add_adapter_fusion(["a", "b"])
    panel = ModelPanel(tiny_session)
    actions = panel.actions
    assert actions.delete_button.disabled and "select an adapter first" in hint(actions.delete_row)
    panel.adapters.value = "a"
    actions.delete_button.click()
    assert actions.delete_confirm.asking and "Delete adapter 'a' and the fusion layer(s) a,b?" in (
        html.unescape(actions.delete_confirm.message.value)
    )
    assert "a" in model.adapters  # nothing happens before the confirmation
    actions.delete_confirm.no.click()
    assert not actions.delete_confirm.asking and "a" in model.adapters and "a,b" in model.adapter_fusions
    actions.delete_button.click()
    actions.delete_confirm.yes.click()
    assert "a" not in model.adapters and "a,b" not in model.adapter_fusions
    assert [v for _, v in panel.adapters.options] == ["b", "lora1"]
    assert "Deleted adapter" in actions.delete_row.result.value


def test_merge_only_for_lora_and_unmerge_restores_the_weights(tiny_session):
    panel = ModelPanel(tiny_session)
    actions, model = panel.actions, tiny_session.model
    with torch.no_grad():
        for _, param in model._adapter_parameters("lora1"):
            param.add_(torch.randn_like(param))
    panel.adapters.value = "a"
    assert actions.merge_button.disabled
    assert "Merge: only LoRA adapters can be merged ('a' is bottleneck)" in hint(actions.merge_row)
    panel.adapters.value = "lora1"
    assert not actions.merge_button.disabled and hint(actions.merge_row) == ""
    inputs = torch.tensor([[5, 6, 7, 8]])
    model.active_head = "a"
    model.set_active_adapters("lora1")
    with_lora = model(input_ids=inputs).logits
    model.set_active_adapters(None)
    base = model(input_ids=inputs).logits
    weights = {k: v.clone() for k, v in model.state_dict().items() if "lora" not in k}
    actions.merge_button.click()
    assert actions.merge_row.error.text == "" and "Merged" in actions.merge_row.result.value
    assert torch.allclose(model(input_ids=inputs).logits, with_lora, atol=1e-5)
    actions.unmerge_button.click()
    assert "Unmerged 'lora1'" in html.unescape(actions.merge_row.result.value)
    assert torch.equal(model(input_ids=inputs).logits, base)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items() if k in weights)


def test_average_adapters_with_weights_and_a_new_name(tiny_session):
    panel = ModelPanel(tiny_session)
    actions, model = panel.actions, tiny_session.model
    with torch.no_grad():
        for name in ("a", "b"):
            for _, param in model._adapter_parameters(name):
                param.copy_(torch.randn_like(param))
    actions.average_of.value = "a=3, b=1"
    actions.average_name.value = "avg"
    actions.average_button.click()
    assert actions.average_row.error.text == "" and "the average of a=3, b=1" in actions.average_row.result.value
    a, b, avg = (dict(model._adapter_parameters(n)) for n in ("a", "b", "avg"))
    key_a = next(iter(a))
    key_avg = key_a.replace(".a.", ".avg.")
    assert torch.allclose(avg[key_avg], 0.75 * a[key_a] + 0.25 * b[key_a.replace(".a.", ".b.")])
    actions.average_of.value = "a=x, b=1"
    actions.average_name.value = "avg2"
    actions.average_button.click()
    assert "weight 'x' of 'a' is not a number" in actions.average_row.error.text
    actions.average_of.value = "a, lora1"
    actions.average_button.click()
    assert actions.average_row.error.text and "avg2" not in model.adapters


def test_save_selected_adapter_and_reload_it(tiny_session, tmp_path):
    panel = ModelPanel(tiny_session)
    model = tiny_session.model
    actions = panel.actions
    with torch.no_grad():
        for _, param in model._adapter_parameters("a"):
            param.add_(torch.randn_like(param))
    panel.adapters.value = "a"
    actions.save_folder.value = str(tmp_path / "saved_a")
    actions.save_button.click()
    assert actions.save_row.error.text == "" and "Saved adapter" in actions.save_row.result.value
    assert (tmp_path / "saved_a" / "adapter_config.json").is_file()
    other = tiny_adapter_model("bert")
    other.load_state_dict(model.state_dict(), strict=False)
    assert other.load_adapter(tmp_path / "saved_a") == "a"
    inputs = torch.tensor([[5, 6, 7, 8]])
    model.set_active_adapters("a")
    other.set_active_adapters("a")
    assert torch.allclose(model(input_ids=inputs).logits, other(input_ids=inputs).logits)
    actions.save_folder.value = ""
    actions.save_button.click()
    assert "folder" in actions.save_row.error.text


def test_push_to_the_fake_hub_and_a_refused_token_is_shown_inline(fake_hub, tmp_path):
    fake_hub.add_user("alice", "hf_alice_write")
    model = tiny_adapter_model("bert")
    model.add_adapter("sst", config="seq_bn")
    model.add_classification_head("sst", num_labels=2, id2label={0: "neg", 1: "pos"})
    panel = ModelPanel(Session(model=model))
    actions = panel.actions
    panel.adapters.value = "sst"
    actions.repo_id.value = "alice/my-sst"
    actions.token.value = "hf_alice_write"
    actions.private.value = True
    wait(actions.push())
    assert actions.push_row.error.text == "" and "Pushed" in actions.push_row.result.value
    assert {"adapter_config.json", "README.md", "head_config.json"} <= set(fake_hub.files("alice/my-sst"))
    assert fake_hub.info("alice/my-sst")["private"] is True
    assert not actions.push_button.disabled and actions.push_button.description == "Push to Hub"

    actions.token.value = "hf_wrong"
    actions.repo_id.value = "alice/other"
    actions.push_button.click()
    wait(actions.pusher)
    assert "alice/other" in actions.push_row.error.text and "HubPushError" in actions.push_row.error.details.value
    actions.repo_id.value = ""
    actions.push_button.click()
    assert "repo: give a Hub repo id" in actions.push_row.error.text


def test_push_uses_the_environment_token_when_none_is_typed(fake_hub, monkeypatch):
    fake_hub.add_user("alice", "hf_alice_write")
    monkeypatch.setenv("HF_TOKEN", "hf_alice_write")
    model = tiny_adapter_model("bert")
    model.add_adapter("lora1", config="lora")
    panel = ModelPanel(Session(model=model))
    panel.adapters.value = "lora1"
    panel.actions.repo_id.value = "alice/lora1"
    wait(panel.actions.push())
    assert panel.actions.push_row.error.text == "" and "adapter_config.json" in fake_hub.files("alice/lora1")
    assert fake_hub.info("alice/lora1")["private"] is False


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
    from workbench.core.families import ARCHITECTURES
    from workbench.core.support import EXAMPLE_CHECKPOINTS

    panel = ModelPanel(Session())
    assert {value for _, value in panel.family.options} == {"", *ARCHITECTURES}
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


def test_replacing_a_model_with_adapters_asks_first_and_cancel_keeps_everything(tiny_session):
    heard = []
    tiny_session.on_change(heard.append)
    panel = ModelPanel(tiny_session)
    model = tiny_session.model
    panel.default_button.click()
    assert panel.worker is None and tiny_session.model is model  # nothing happens before the confirmation
    assert panel.confirm.asking
    assert "Replace the model with the offline default MiniLM? 3 adapters (a, b, lora1) will be lost" in (
        html.unescape(panel.confirm.message.value)
    )
    panel.confirm.no.click()
    assert not panel.confirm.asking and tiny_session.model is model and list(model.adapters) == ["a", "b", "lora1"]
    assert heard == []
    panel.composer.pick("a")
    panel.composer.activate_button.click()
    assert "Active" in panel.composer.row.result.value
    panel.default_button.click()
    panel.confirm.yes.click()
    wait(panel.worker)
    assert panel.error.text == "" and tiny_session.model is not model and tiny_session.source == minilm_path()
    assert heard[-1] == "model" and panel.adapters.options == ()
    assert panel.composer.row.result.value == "" and panel.composer.order == []  # nothing said about the old model
    assert not panel.default_button.disabled and panel.default_button.description == "Offline default MiniLM"


class FakeRun:
    """A run "training" in a live thread until `end()`: the session's `run_in_progress()` sees it."""

    def __init__(self, session, kind="train"):
        from workbench.ui.session import ActiveRun

        self.session, self.release = session, threading.Event()
        thread = threading.Thread(target=self.release.wait, daemon=True)
        thread.start()
        self.run = ActiveRun(kind, control=None, thread=thread)
        session.active_run = self.run
        session.notify("active_run")

    def end(self):
        self.release.set()
        self.run.thread.join(10)
        self.session.notify("active_run")


def test_model_changes_are_refused_while_a_run_trains_and_allowed_after(tiny_session):
    panel = ModelPanel(tiny_session)
    model = tiny_session.model
    panel.adapters.value = "a"
    panel.actions.delete_button.click()
    assert panel.actions.delete_confirm.asking
    panel.default_button.click()
    assert panel.confirm.asking
    run = FakeRun(tiny_session)
    assert not panel.confirm.asking and not panel.actions.delete_confirm.asking  # the questions no longer apply
    reason = "a train run is training on this model"
    for button in (
        panel.default_button,
        panel.hub_button,
        panel.folder_button,
        panel.activate_button,
        panel.actions.add_button,
        panel.actions.delete_button,
        panel.actions.merge_button,
        panel.actions.average_button,
        panel.composer.activate_button,
    ):
        assert button.disabled and reason in button.tooltip, button.description
    assert reason in hint(panel.load_row) and reason in hint(panel.actions.delete_row)
    assert not panel.actions.save_button.disabled  # reading the adapter is fine

    panel.default_button.click()  # clicks from code are refused too, with the reason next to the button
    assert reason in panel.error.text and not panel.confirm.asking and panel.worker is None
    panel.actions.delete_button.click()
    assert reason in panel.actions.delete_row.error.text and "a" in model.adapters
    with pytest.raises(RuntimeError, match=reason):
        panel.load_default(replace=True)
    assert tiny_session.model is model

    run.end()
    assert not panel.default_button.disabled and hint(panel.load_row) == ""
    panel.actions.delete_button.click()
    panel.actions.delete_confirm.yes.click()
    assert "a" not in model.adapters


def test_a_run_started_while_the_model_loads_keeps_its_model(tiny_session, monkeypatch):
    """The run must never continue on an orphaned model: a load that ends after a run started is dropped."""
    from workbench.ui import model_panel

    panel = ModelPanel(tiny_session)
    model = tiny_session.model
    runs = []

    def slow_load(source, interface=None):
        runs.append(FakeRun(tiny_session))  # the Train panel's Start, clicked while the model loads
        return tiny_adapter_model("bert"), None

    monkeypatch.setattr(model_panel, "load_base_model", slow_load)
    wait(panel.load_default(replace=True))
    assert tiny_session.model is model and "training on this model" in panel.error.text
    assert panel.default_button.disabled and "training on this model" in panel.default_button.tooltip
    assert panel.default_button.description == "Offline default MiniLM"  # no longer busy
    runs[0].end()
    assert not panel.default_button.disabled


def test_a_load_shows_a_spinner_on_the_clicked_button_and_the_error_under_it(monkeypatch, tmp_path):
    from workbench.ui import model_panel

    started, release = threading.Event(), threading.Event()

    def slow_failing_load(source, interface=None):
        started.set()
        release.wait(30)
        raise OSError(f"cannot reach the Hub for {source}")  # whatever the engine raises is shown as it is

    monkeypatch.setattr(model_panel, "load_base_model", slow_failing_load)
    panel = ModelPanel(Session())
    panel.hub_id.value = "org/some-model"
    panel.hub_button.click()
    assert started.wait(30)
    assert panel.hub_button.icon == "spinner spin" and panel.hub_button.description == "Loading..."
    assert panel.hub_button.disabled and panel.folder_button.disabled and panel.default_button.disabled
    release.set()
    wait(panel.worker)
    assert panel.hub_button.icon == "cloud-download" and panel.hub_button.description == "Load from Hub"
    assert not panel.hub_button.disabled and not panel.default_button.disabled
    assert panel.error.text == "Loading org/some-model failed: cannot reach the Hub for org/some-model"
    assert "OSError" in panel.error.details.value


def test_percentages_are_of_the_base_model_and_do_not_move_when_adapters_are_added():
    def adapter_percentages(model):  # what the panel's summary table shows: AdapterHub's adapter_summary
        return {row["name"]: (row["#param"], row["%param"]) for row in model.adapter_summary(as_dict=True)[:-1]}

    model = tiny_adapter_model("bert")
    base = sum(p.numel() for p in model.parameters())
    model.add_adapter("a", config="seq_bn")
    first = adapter_percentages(model)["a"]
    assert first[1] == pytest.approx(first[0] / base * 100)
    model.add_adapter("b", config="lora")
    model.add_classification_head("b", num_labels=2)
    assert adapter_percentages(model)["a"] == first
    panel = ModelPanel(Session(model=model))
    assert f"<td>{first[1]:.3f}</td>" in panel.summary.value and "base model" in panel.children[-2].value


def test_a_click_on_the_pickers_replaces_a_typed_setup_and_a_refresh_keeps_it(tiny_session):
    panel = ModelPanel(tiny_session)
    composer = panel.composer
    composer.text.value = "Parallel(a, b)"
    tiny_session.notify("adapters")  # other panels' changes do not wipe what was typed
    assert composer.text.value == "Parallel(a, b)"
    composer.pick("b")
    assert composer.text.value == 'Stack("b")' and "Stack(&quot;b&quot;)" in composer.preview.value


def test_a_real_run_blocks_model_replacement_until_it_ends(tmp_path):
    """A real (tiny) fusion run, held at its first step: the Model panel refuses to replace or change the model it
    trains, the header says a run is in progress; once it ends, both are back to normal."""
    from test_train import keyword_frame
    from test_ui_fusion import session_with_adapters
    from test_ui_train import gate_at, set_up, wait_until

    from workbench.ui import Workbench
    from workbench.ui.fusion_panel import FusionPanel

    session = session_with_adapters("a", "b")
    model = session.model
    bench = Workbench(session, tab="Model")
    panel = bench.panels["Model"]
    gate, reached, release = gate_at(1)
    fusion = FusionPanel(session, data=keyword_frame(24), callbacks=[gate])
    fusion.adapters.value = ("a", "b")
    set_up(fusion, tmp_path, max_steps=2, eval_every=2)
    fusion.view.start.click()
    try:
        assert reached.wait(60)
        assert "fusion run in progress" in bench.title.value
        assert panel.default_button.disabled and "fusion run is training" in panel.default_button.tooltip
        panel.default_button.click()
        panel.adapters.value = "a"
        panel.actions.delete_button.click()
        assert not panel.confirm.asking and not panel.actions.delete_confirm.asking
        assert "fusion run is training" in panel.error.text and panel.worker is None
        assert "fusion run is training" in panel.actions.delete_row.error.text
    finally:
        release.set()
    wait_until(lambda: session.run_in_progress() is None and session.runs)
    assert session.model is model and list(model.adapters) == ["a", "b"]
    assert "run in progress" not in bench.title.value and "runs: 1" in bench.title.value
    assert not panel.default_button.disabled and not panel.actions.delete_button.disabled


def test_a_new_error_replaces_the_rows_last_success_message(tiny_session):
    panel = ModelPanel(tiny_session)
    actions = panel.actions
    actions.new_name.value, actions.new_config.value = "fresh", "lora"
    actions.add_button.click()
    assert "Added adapter 'fresh'" in actions.add_row.result.value
    actions.add_button.click()  # the same name again: an error, and the old "Added" line goes
    assert actions.add_row.error.text and actions.add_row.result.value == ""
