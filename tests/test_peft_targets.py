"""PEFT adapters on any module PEFT's matching selects (not only AdapterHub's LoRA places): each target form loads
with PEFT's own outputs, and `save_adapter(format="peft")` gives a folder real PEFT loads with the same outputs."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

import workbench
from tests.test_peft_interop import ATOL, _inputs, _peft_folder
from tests.tiny import tiny_base_model, tiny_config

peft = pytest.importorskip("peft")

def _outputs(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids)
    if "logits" in out:
        return out.logits
    parts = [out.last_hidden_state.flatten()]
    if out.get("pooler_output") is not None:
        parts.append(out.pooler_output.flatten())
    return torch.cat(parts)


def _lora(**options):
    return peft.LoraConfig(**{"r": 4, "lora_alpha": 8, **options})


CASES = {
    "exact-and-suffix": ("bert", _lora(target_modules=["attention.output.dense", "dense"])),
    "regex": ("bert", _lora(target_modules=r".*\.(query|output\.dense)")),
    "all-linear-bert": ("bert", _lora(target_modules="all-linear")),
    "all-linear-gpt2": ("gpt2", _lora(target_modules="all-linear", fan_in_fan_out=True)),
    "all-linear-llama": ("llama", _lora(target_modules="all-linear")),
    "exclude-list": ("bert", _lora(target_modules=["dense", "query"], exclude_modules=["pooler.dense"])),
    "exclude-regex": ("bert", _lora(target_modules=["dense"], exclude_modules=r".*layer\.0\..*")),
    "layers": ("bert", _lora(target_modules=["dense", "key"], layers_to_transform=[1], layers_pattern="layer")),
    "patterns": (
        "bert",
        _lora(
            target_modules=["dense", "query", "value"],
            rank_pattern={r"layer\.1\..*dense": 2, "value": 6},
            alpha_pattern={"query": 16, r"output\.dense": 3},
        ),
    ),
    "rslora": ("bert", _lora(target_modules=["dense", "key"], use_rslora=True, lora_alpha=5)),
    "ia3-feedforward-bert": (
        "bert",
        peft.IA3Config(
            target_modules=["key", "value", "intermediate.dense", "output.dense"], feedforward_modules=["output.dense"]
        ),
    ),
    "ia3-feedforward-gpt2": (
        "gpt2",
        peft.IA3Config(
            target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True
        ),
    ),
    "ia3-feedforward-llama": (
        "llama",
        peft.IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
    ),
    "modules-to-save-pooler": ("bert", _lora(target_modules=["query", "value"], modules_to_save=["pooler.dense"])),
}


@pytest.mark.parametrize("case", list(CASES))
def test_peft_target_form_loads_and_round_trips(case, tmp_path):
    model_type, config = CASES[case]
    base = tiny_base_model(model_type)
    peft_model, folder = _peft_folder(base, config, tmp_path)
    ids = _inputs()
    expected = _outputs(peft_model, ids)
    model = workbench.init(copy.deepcopy(base))
    name = model.load_adapter(str(folder), set_active=True)
    assert not torch.allclose(_outputs(base, ids), expected, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(_outputs(model, ids), expected, atol=ATOL, rtol=0)
    # the engine adapts exactly the modules PEFT wrapped
    wrapped = {n.removeprefix("base_model.model.") for n, m in peft_model.named_modules() if hasattr(m, "base_layer")}
    wrapped = {n.removesuffix(".base_layer") for n in wrapped if not n.endswith(".base_layer")}
    assert {t.path for t in model._method("lora").targets.values() if name in t.loras} == wrapped
    with pytest.raises(workbench.AdapterConfigError, match="format='peft'"):
        model.save_adapter(tmp_path / "ah", name, format="adapterhub")
    assert not (tmp_path / "ah" / "adapter_config.json").exists()
    model.save_adapter(tmp_path / "back", name)  # the default for a PEFT adapter: PEFT's format
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    torch.testing.assert_close(_outputs(reloaded, ids), expected, atol=ATOL, rtol=0)
    again = workbench.init(copy.deepcopy(base))
    again.load_adapter(tmp_path / "back", load_as="b", set_active=True)
    torch.testing.assert_close(_outputs(again, ids), expected, atol=ATOL, rtol=0)
    if case in ("all-linear-gpt2", "ia3-feedforward-gpt2", "patterns"):  # merging folds the same function in
        model.merge_adapter(name)
        torch.testing.assert_close(_outputs(model, ids), expected, atol=ATOL, rtol=0)
        model.reset_adapter()


def test_modules_to_save_classifier_on_a_task_model_trains_a_copy(tmp_path):
    task = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=3)).eval()
    config = _lora(target_modules="all-linear", modules_to_save=["classifier"])
    peft_model, folder = _peft_folder(task, config, tmp_path)
    keys = load_file(folder / "adapter_model.safetensors")
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(keys)  # PEFT's layout
    ids = _inputs()
    expected = _outputs(peft_model, ids)
    model = workbench.init(copy.deepcopy(task))
    model.load_adapter(folder, load_as="a", set_active=True)
    torch.testing.assert_close(_outputs(model, ids), expected, atol=ATOL, rtol=0)
    model.set_active_adapters(None)  # inactive: the original classifier again
    torch.testing.assert_close(_outputs(model, ids), _outputs(task, ids), atol=ATOL, rtol=0)
    model.save_adapter(tmp_path / "back", "a", format="peft")
    saved = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["classifier"]
    assert set(load_file(tmp_path / "back" / "adapter_model.safetensors")) == set(keys)
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(task), tmp_path / "back").eval()
    torch.testing.assert_close(_outputs(reloaded, ids), expected, atol=ATOL, rtol=0)

    model.train_adapter("a")
    copy_weight = model.classifier.modules_to_save["a"].weight
    assert copy_weight.requires_grad and not model.classifier.weight.requires_grad
    assert all(p.requires_grad for n, p in model._adapter_parameters("a"))
    logits = model(input_ids=ids).logits
    logits.sum().backward()
    assert copy_weight.grad is not None and model.classifier.weight.grad is None
    model.delete_adapter("a")
    assert not hasattr(model.classifier, "modules_to_save") and not model.classifier._forward_hooks


def test_peft_loaded_adapters_compose(tmp_path):
    """Each target is a ComposableLayer: Parallel/BatchSplit rows get each adapter's own outputs."""
    base = tiny_base_model("bert")
    _, first = _peft_folder(
        base, _lora(target_modules=["query", "value"], modules_to_save=["pooler.dense"]), tmp_path / "1"
    )
    _, second = _peft_folder(
        base,
        peft.IA3Config(target_modules=["key", "output.dense"], feedforward_modules=["output.dense"]),
        tmp_path / "2",
    )
    model = workbench.init(copy.deepcopy(base))
    model.load_adapter(first, load_as="a")
    model.load_adapter(second, load_as="b")
    ids = _inputs(batch=4)
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        with torch.no_grad():
            alone[name] = model(input_ids=ids)
    model.set_active_adapters(workbench.BatchSplit("a", "b", batch_sizes=[1, 3]))
    with torch.no_grad():
        split = model(input_ids=ids)
    for key in ("last_hidden_state", "pooler_output"):
        torch.testing.assert_close(split[key][:1], alone["a"][key][:1], atol=ATOL, rtol=0)
        torch.testing.assert_close(split[key][1:], alone["b"][key][1:], atol=ATOL, rtol=0)
    model.set_active_adapters(workbench.Parallel("a", "b"))
    with torch.no_grad():
        parallel = model(input_ids=ids)
    torch.testing.assert_close(parallel.pooler_output[:4], alone["a"].pooler_output, atol=ATOL, rtol=0)
    torch.testing.assert_close(parallel.pooler_output[4:], alone["b"].pooler_output, atol=ATOL, rtol=0)
    model.load_adapter(first.parent.parent / "1" / "my-peft", load_as="c")
    model.set_active_adapters(workbench.Average("a", "c"))  # runs (LoRA deltas follow AdapterHub's Average rule)
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids).pooler_output).all()
    _, third = _peft_folder(base, _lora(target_modules=["output.dense"]), tmp_path / "3")
    model.load_adapter(third, load_as="d")
    with pytest.raises(workbench.CompositionError, match="mix"):  # IA3 on the input and LoRA on one module
        model.set_active_adapters(workbench.BatchSplit("b", "d", batch_sizes=[2, 2]))


@pytest.mark.parametrize(
    "change,match",
    [
        ({"rank_pattern": {"query": "big"}}, "rank_pattern"),
        ({"target_modules": 3}, "target_modules"),
        ({"r": 0}, r"\br=0"),
        ({"layers_to_transform": "one"}, "layers_to_transform"),
        ({"exclude_modules": "(unclosed"}, "exclude_modules"),
        ({"r": 2}, "rank 4"),  # the weights disagree with the config
        ({"target_modules": ["query"]}, "does not select"),
        ({"target_modules": ["query", "key", "value"]}, "lacks"),
    ],
)
def test_bad_peft_values_fail_clearly_and_leave_model_unchanged(change, match, tmp_path):
    base = tiny_base_model("bert")
    _, folder = _peft_folder(base, _lora(target_modules=["query", "value"], modules_to_save=["pooler.dense"]), tmp_path)
    data = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**data, **change}))
    model = workbench.init(copy.deepcopy(base))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(workbench.AdapterError, match=match) as err:
        model.load_adapter(folder)
    assert "adapter_" in str(err.value)  # names the file
    after = model.state_dict()
    assert model.adapters == {} and set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert not hasattr(model.pooler.dense, "modules_to_save") and not model.pooler.dense._forward_hooks


def test_missing_modules_to_save_weight_fails_and_leaves_model_unchanged(tmp_path):
    base = tiny_base_model("bert")
    _, folder = _peft_folder(base, _lora(target_modules=["query"], modules_to_save=["pooler.dense"]), tmp_path)
    state = load_file(folder / "adapter_model.safetensors")
    del state["base_model.model.pooler.dense.bias"]
    save_file(state, folder / "adapter_model.safetensors")
    model = workbench.init(copy.deepcopy(base))
    with pytest.raises(workbench.AdapterLoadError, match="pooler.dense.bias"):
        model.load_adapter(folder)
    assert model.adapters == {} and not hasattr(model.pooler.dense, "modules_to_save")


def test_save_pretrained_keeps_a_peft_adapter_in_peft_format(tmp_path):
    """save_pretrained (and so training checkpoints) writes each adapter in a format that can describe it."""
    base = tiny_base_model("bert")
    peft_model, folder = _peft_folder(base, _lora(target_modules=["attention.output.dense", "dense"]), tmp_path)
    model = workbench.AdapterModel(copy.deepcopy(base))
    model.load_adapter(str(folder), load_as="p", set_active=True)
    model.add_adapter("s", config="seq_bn")
    model.save_pretrained(tmp_path / "saved")
    assert (
        json.loads((tmp_path / "saved" / "adapters" / "p" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    )
    assert "config" in json.loads((tmp_path / "saved" / "adapters" / "s" / "adapter_config.json").read_text())
    again = workbench.AdapterModel(copy.deepcopy(base))
    again.load_adapter(str(tmp_path / "saved" / "adapters" / "p"), load_as="p", set_active=True)
    ids = _inputs()
    torch.testing.assert_close(_outputs(again, ids), _outputs(peft_model, ids), atol=ATOL, rtol=0)
