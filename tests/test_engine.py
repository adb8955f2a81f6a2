"""Behaviour of the engine API on tiny models: adding, activating, training, saving and loading adapters."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_adapter_model, tiny_base_model, tiny_config
from transformers import BertForSequenceClassification

import workbench
from workbench import Fuse, Parallel, Stack

IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])


def hidden(model, **kw):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK, **kw)[0]


def perturb(model, name):
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * 0.3)


def test_no_active_adapter_leaves_outputs_unchanged():
    model = tiny_adapter_model()
    before = hidden(model)
    model.add_adapter("a", config="double_seq_bn")
    perturb(model, "a")
    assert torch.equal(hidden(model), before)
    model.set_active_adapters("a")
    assert not torch.allclose(hidden(model), before)
    model.set_active_adapters(None)
    assert torch.equal(hidden(model), before)


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "gpt2", "llama"])
def test_save_load_round_trip_restores_outputs(tmp_path, model_type):
    model = tiny_adapter_model(model_type)
    model.add_adapter("task", config="seq_bn_inv")
    model.add_classification_head("task", num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
    perturb(model, "task")
    model.set_active_adapters("task")
    expected = model(input_ids=IDS, attention_mask=MASK).logits.detach()
    model.save_adapter(tmp_path / "task", "task")

    fresh = tiny_adapter_model(model_type)
    fresh.load_state_dict(model.state_dict(), strict=False)  # same base weights
    fresh.delete_adapter("task") if "task" in fresh.adapters else None
    name = fresh.load_adapter(str(tmp_path / "task"), set_active=True)
    assert name == "task"
    assert fresh.active_head == "task"
    assert fresh.heads["task"].id2label == {0: "a", 1: "b", 2: "c"}
    torch.testing.assert_close(fresh(input_ids=IDS, attention_mask=MASK).logits, expected)


def test_load_as_renames_every_key(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("old", config="seq_bn")
    perturb(model, "old")
    model.save_adapter(tmp_path / "old", "old")
    model.set_active_adapters("old")
    expected = hidden(model)
    name = model.load_adapter(str(tmp_path / "old"), load_as="new", set_active=True)
    assert name == "new" and set(model.adapters) == {"old", "new"}
    torch.testing.assert_close(hidden(model), expected)
    assert not any(".old." in k for k in model.adapter_state_dict("new"))


def test_train_adapter_freezes_everything_else():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.a." in n or n.startswith("heads.a.") for n in trainable)
    assert model.active_adapters == Stack("a")
    loss = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 1])).loss
    loss.backward()
    frozen_grads = [p.grad for n, p in model.named_parameters() if not p.requires_grad]
    assert all(g is None for g in frozen_grads)


def test_adapter_summary_counts_parameters():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")  # output adapter, 32 -> 2 -> 32 in each of 2 layers
    rows = model.adapter_summary(as_dict=True)
    assert rows[0]["name"] == "a" and rows[0]["#param"] == 2 * (32 * 2 + 2 + 2 * 32 + 32)
    assert rows[-1]["name"] == "Full model"
    text = model.adapter_summary()
    assert "bottleneck" in text and "Full model" in text


def test_init_adds_adapters_to_a_task_model(tmp_path):
    model = BertForSequenceClassification(tiny_config("bert", num_labels=2)).eval()
    workbench.init(model)
    model.add_adapter("a", config="par_bn", set_active=True)
    perturb(model, "a")
    logits = model(input_ids=IDS, attention_mask=MASK).logits
    model.save_adapter(tmp_path / "a", "a")
    keys = torch.load(tmp_path / "a" / "pytorch_adapter.bin", weights_only=True)
    assert all(k.startswith("bert.encoder.layer.") for k in keys)
    # a file saved from a task model loads into an AdapterModel with the same base weights
    other = tiny_adapter_model("bert")
    other.bert.load_state_dict(model.bert.state_dict(), strict=False)
    other.load_adapter(str(tmp_path / "a"), set_active=True, with_head=False)
    with torch.no_grad():
        torch.testing.assert_close(hidden(other), model.bert(input_ids=IDS, attention_mask=MASK)[0])
    assert logits.shape == (2, 2)
    # with its head (saved beside it as AdapterHub's static head), converted to flex head "a"
    other.load_adapter(str(tmp_path / "a"), set_active=True)
    torch.testing.assert_close(hidden(other), logits)


def test_fusion_output_attentions_and_training():
    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.train_adapter_fusion(Fuse("a", "b"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapter_fusion_layer.a,b." in n for n in trainable)
    model.eval()
    out = model(input_ids=IDS, attention_mask=MASK, output_adapter_fusion_attentions=True)
    attention = out["adapter_fusion_attentions"]["a,b"][0]["output_adapter"]
    assert attention.shape == (2, 4, 2)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 4))


def test_a_task_models_output_carries_fusion_attentions_and_gating_scores():
    """init() on a `...For<Task>` model: the task model's own output gets what its base model's call collected."""
    model = workbench.init(BertForSequenceClassification(tiny_config()).eval())
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter("g", config="unipelt")
    model.add_adapter_fusion(["a", "b"])
    model.set_active_adapters(Fuse("a", "b"))
    out = model(input_ids=IDS, attention_mask=MASK, output_adapter_fusion_attentions=True)
    assert out["adapter_fusion_attentions"]["a,b"][0]["output_adapter"].shape == (2, 4, 2)
    model.set_active_adapters("g")
    out = model(input_ids=IDS, attention_mask=MASK, output_adapter_gating_scores=True)
    assert out["adapter_gating_scores"]["g"]
    assert "adapter_gating_scores" not in model(input_ids=IDS, attention_mask=MASK)  # only when asked for


def test_parallel_runs_each_adapter_on_a_copy_of_the_batch():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    perturb(model, "a")
    perturb(model, "b")
    model.set_active_adapters("a")
    only_a = hidden(model)
    model.set_active_adapters("b")
    only_b = hidden(model)
    model.set_active_adapters(Parallel("a", "b"))
    both = hidden(model)
    assert both.shape[0] == 4
    torch.testing.assert_close(both[:2], only_a)
    torch.testing.assert_close(both[2:], only_b)


def test_config_strings_and_objects():
    config = workbench.AdapterConfig.load("seq_bn[reduction_factor=4, non_linearity='gelu']")
    assert isinstance(config, workbench.SeqBnConfig) and config.reduction_factor == 4
    assert config["non_linearity"] == "gelu"
    assert workbench.AdapterConfig.load("houlsby") == workbench.DoubleSeqBnConfig()
    union = workbench.AdapterConfig.load("prefix_tuning|par_bn")
    assert isinstance(union, workbench.ConfigUnion) and len(union.configs) == 2


def test_average_adapter_averages_weights():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    perturb(model, "a")
    model.average_adapter("avg", ["a", "b"], weights=[1, 3])
    a, b, avg = (model.adapter_state_dict(n) for n in ("a", "b", "avg"))
    for key, value in avg.items():
        torch.testing.assert_close(value, 0.25 * a[key.replace(".avg.", ".a.")] + 0.75 * b[key.replace(".avg.", ".b.")])


def test_engine_imports_no_ui_or_server_code():
    code = (
        "import sys, workbench; bad = [m for m in ('ipywidgets', 'IPython', 'tornado', 'jupyter_server', "
        "'plotly') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_neither_the_hub_nor_training():
    """The engine sits at the bottom: no module of workbench/core imports the hub, training or UI packages
    (`import workbench` loads the hub, which registers its resolver with the engine, not the other way round)."""
    import ast

    core = Path(workbench.__file__).parent / "core"
    found = []
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
            elif isinstance(node, ast.Import):
                target = ",".join(alias.name for alias in node.names)
            else:
                continue
            depth = len(path.relative_to(core).parts)  # core/x.py: 1; core/methods/x.py: 2
            outside = "." * (depth + 1)
            if any(target.startswith(p) for p in (f"{outside}hub", f"{outside}train", f"{outside}ui", "workbench.")):
                found.append(f"{path.relative_to(core)}: {target}")
    assert not found, found


def test_base_model_forward_is_untouched_by_init():
    model = tiny_base_model("llama")
    before = hidden(model)
    workbench.init(model)
    model.add_adapter("a", config="seq_bn")
    assert torch.equal(hidden(model), before)


def test_save_pretrained_writes_base_adapters_fusions_and_heads(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=8]")
    model.add_adapter_fusion(["a", "b"])
    model.add_classification_head("a", num_labels=2)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file()
    for folder in ("adapters/a", "adapters/b", "adapters/p"):
        assert (tmp_path / folder / "adapter_config.json").is_file()
    assert (tmp_path / "fusions" / "a,b" / "adapter_fusion_config.json").is_file()
    assert (tmp_path / "heads" / "a" / "head_config.json").is_file()
    reloaded = workbench.AutoAdapterModel.from_pretrained(tmp_path)  # adapters, fusions and heads come back
    assert set(reloaded.adapters) == {"a", "b", "p"} and set(reloaded.adapter_fusions) == {"a,b"}
    assert set(reloaded.heads) == {"a"} and type(reloaded).__name__ == "BertAdapterModel"
    for setup in ("p", workbench.Fuse("a", "b"), "a"):
        reloaded.set_active_adapters(setup)
        model.set_active_adapters(setup)
        torch.testing.assert_close(hidden(reloaded), hidden(model))


def test_a_checkpoint_listing_heads_it_does_not_hold_leaves_them_out_or_is_refused(tmp_path):
    """config.json lists heads whose weights are not in the folder: built, they would be random. A model saved whole
    by the `adapters` library (its weights file holds them, which workbench does not read) is refused."""
    import json
    import shutil

    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=3)
    model.save_pretrained(tmp_path / "whole")
    shutil.rmtree(tmp_path / "whole" / "heads" / "a")
    with pytest.warns(UserWarning, match=r"head\(s\) \['a'\] .* left out"):
        reloaded = workbench.AutoAdapterModel.from_pretrained(tmp_path / "whole")
    assert set(reloaded.heads) == {"b"} and set(reloaded.config.prediction_heads) == {"b"}
    shutil.copytree(tmp_path / "whole", tmp_path / "library")
    shutil.rmtree(tmp_path / "library" / "adapters")
    config = json.loads((tmp_path / "library" / "config.json").read_text())
    config["adapters"] = {"adapters": {"a": "9076f36a74755ac4"}, "config_map": {}, "fusions": {}}
    (tmp_path / "library" / "config.json").write_text(json.dumps(config))
    with pytest.raises(workbench.AdapterLoadError, match=r"head\(s\) \['a'\] and adapter\(s\) \['a'\]"):
        workbench.AutoAdapterModel.from_pretrained(tmp_path / "library")


def test_adapter_setup_activates_a_setup_only_inside_the_block():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    perturb(model, "a")
    perturb(model, "b")
    plain = hidden(model)
    model.set_active_adapters("b")
    only_b = hidden(model)
    model.set_active_adapters(None)
    with workbench.AdapterSetup(Stack("b")):
        torch.testing.assert_close(hidden(model), only_b)
        with workbench.AdapterSetup(None, ignore_empty=True):  # an empty inner setup changes nothing
            torch.testing.assert_close(hidden(model), only_b)
    assert torch.equal(hidden(model), plain)
    assert model.active_adapters is None


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_generate_with_a_causal_lm_head_and_adapter(model_type):
    model = tiny_adapter_model(model_type)
    model.add_adapter("a", config="seq_bn")
    model.add_causal_lm_head("a")
    perturb(model, "a")
    model.set_active_adapters("a")
    prompt = torch.tensor([[5, 6, 7]])
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False)
    ids = prompt  # greedy decoding by hand, without a cache, must agree
    with torch.no_grad():
        for _ in range(6):
            next_id = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize("config", ["seq_bn", "lora", "prefix_tuning[prefix_length=2,bottleneck_size=8]"])
def test_delete_adapter_removes_weights_and_restores_outputs(config):
    model = tiny_adapter_model()
    before = hidden(model)
    model.add_adapter("a", config=config, set_active=True)
    perturb(model, "a")
    assert not torch.allclose(hidden(model), before)
    model.delete_adapter("a")
    assert not model.adapters and model.active_adapters is None
    assert not model.adapter_state_dict("a")
    torch.testing.assert_close(hidden(model), before)


def test_trainer_style_save_pretrained_with_a_state_dict(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    assert model.adapter_fusions == {"a,b": ["a", "b"]}
    model.save_pretrained(tmp_path, state_dict=model.state_dict())  # as transformers' Trainer calls it
    assert (tmp_path / "config.json").is_file() and (tmp_path / "adapters" / "a" / "adapter_config.json").is_file()


def test_train_adapter_keeps_a_tied_lm_head_weight_frozen():
    model = tiny_adapter_model("gpt2")  # GPT-2 ties the LM projection to the token embeddings
    model.add_adapter("a", config="seq_bn")
    model.add_causal_lm_head("a")
    model.train_adapter("a")
    assert model.heads["a"][-1].weight is model.get_input_embeddings().weight
    assert not model.get_input_embeddings().weight.requires_grad
    assert model.heads["a"][0].weight.requires_grad


def test_fusion_regularization_penalises_value_matrices_away_from_identity():
    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["a", "b"])  # dynamic: value matrices start at identity
    assert model.get_fusion_regularization_loss("a,b").item() < 1e-6
    with torch.no_grad():
        for key, param in model._fusion_parameters("a,b"):
            if key.endswith("value.weight"):
                param.add_(0.1)
    assert model.get_fusion_regularization_loss("a,b").item() > 0.01
    model.add_adapter_fusion(["a", "b"], config="static", overwrite_ok=True)  # static: no value matrix
    assert model.get_fusion_regularization_loss("a,b").item() == 0.0
