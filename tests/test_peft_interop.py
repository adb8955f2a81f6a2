"""PEFT interop: PEFT LoRA/(IA)^3 folders load into the engine with PEFT's outputs, and format="peft" saves load
back into real PEFT. Tiny models from configs; PEFT and the engine share the same base weights."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

import workbench
from tests.tiny import tiny_base_model, tiny_config

peft = pytest.importorskip("peft")

ATOL = 1e-5


def _inputs(batch=2, length=7):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(1, 100, (batch, length), generator=gen)


def _perturb(model):
    """Random adapter weights (PEFT's lora_B, IA3 vectors and copies start as no-ops): IA3 vectors near 1."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(m in name for m in ("lora_", "ia3_l", "loras.", "modules_to_save")):
                ia3 = "ia3_l" in name or (name.endswith("lora_B") and param.shape[-1] == 1)
                param.copy_(float(ia3) + 0.3 * torch.randn(param.shape, generator=gen))


def _hidden(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).last_hidden_state


def _peft_folder(base, config, tmp_path):
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    _perturb(peft_model)
    peft_model.eval()
    folder = tmp_path / "my-peft"
    peft_model.save_pretrained(folder)
    return peft_model, folder


LORA_CASES = [
    ("bert", dict(target_modules=["query", "value"], lora_dropout=0.1)),
    (
        "bert",
        dict(
            target_modules=["key", "intermediate.dense"],
            use_rslora=True,
            rank_pattern={"key": 2},
            alpha_pattern={"intermediate.dense": 3},
            layers_to_transform=[1],
        ),
    ),
    ("bert", dict(target_modules=r".*\.layer\.0\.(output\.dense|attention\.self\.query)")),
    ("distilbert", dict(target_modules=["q_lin", "v_lin", "lin1", "lin2"])),
    ("llama", dict(target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])),
    ("gpt2", dict(target_modules=["c_attn", "c_fc", "mlp.c_proj"], fan_in_fan_out=True)),
]
IA3_CASES = [
    ("bert", ["key", "value", "intermediate.dense"]),
    ("llama", ["k_proj", "v_proj", "down_proj"]),
    ("gpt2", ["c_attn", "mlp.c_proj"]),
]


def _config(kind, options):
    if kind == "lora":
        return peft.LoraConfig(**{"r": 4, "lora_alpha": 8, **options})
    return peft.IA3Config(target_modules=options, feedforward_modules=[], fan_in_fan_out="c_attn" in options)


@pytest.mark.parametrize(
    "model_type,kind,options", [(m, "lora", o) for m, o in LORA_CASES] + [(m, "ia3", t) for m, t in IA3_CASES]
)
def test_peft_folder_loads_with_peft_outputs(model_type, kind, options, tmp_path):
    base = tiny_base_model(model_type)
    peft_model, folder = _peft_folder(base, _config(kind, options), tmp_path)
    ids = _inputs()
    expected = _hidden(peft_model, ids)
    model = workbench.init(copy.deepcopy(base))
    assert model.load_adapter(str(folder), set_active=True) == "my-peft"
    assert not torch.allclose(_hidden(base, ids), expected, atol=1e-3)  # the adapter does something
    torch.testing.assert_close(_hidden(model, ids), expected, atol=ATOL, rtol=0)
    # ... and saving it back in PEFT's format gives a folder real PEFT loads with the same outputs
    model.save_adapter(tmp_path / "back", "my-peft", format="peft")
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "back").eval()
    torch.testing.assert_close(_hidden(reloaded, ids), expected, atol=ATOL, rtol=0)


def test_peft_bin_weights_leave_out_and_merge(tmp_path):
    base = tiny_base_model("gpt2")
    peft_model = peft.get_peft_model(
        copy.deepcopy(base), _config("lora", dict(target_modules=["c_attn"], fan_in_fan_out=True))
    )
    _perturb(peft_model)
    peft_model.eval().save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "adapter_model.bin").is_file()
    model = workbench.init(copy.deepcopy(base))
    model.load_adapter(tmp_path, load_as="x", set_active=True)
    model.merge_adapter("x")
    torch.testing.assert_close(_hidden(model, _inputs()), _hidden(peft_model, _inputs()), atol=ATOL, rtol=0)
    assert model.load_adapter(tmp_path, load_as="y", leave_out=[0]) == "y"
    assert model.adapters["y"].leave_out == [0] and list(model.adapters["y"].targets) == [
        "h.0.attn.c_attn",
        "h.1.attn.c_attn",
    ]
    assert [t.path for t in model._method("lora").targets.values() if "y" in t.loras] == ["h.1.attn.c_attn"]
    with pytest.raises(workbench.AdapterConfigError, match="leaves none"):
        model.load_adapter(tmp_path, load_as="z", leave_out=[0, 1])


def test_peft_hub_repo_is_recognised(tmp_path, monkeypatch):
    """A Hub repo resolves to a snapshot folder; a PEFT one is named after the repo."""
    import workbench.core.model_files

    base = tiny_base_model("bert")
    peft_model, folder = _peft_folder(base, _config("lora", dict(target_modules=["query"])), tmp_path)
    monkeypatch.setattr(workbench.core.model_files, "_ADAPTER_RESOLVER", lambda adapter_id, **_: folder)
    model = workbench.init(copy.deepcopy(base))
    assert model.load_adapter("some-org/lora.v2", set_active=True) == "lora_v2"
    torch.testing.assert_close(_hidden(model, _inputs()), _hidden(peft_model, _inputs()), atol=ATOL, rtol=0)


LOCAL_CONFIGS = [
    (
        "bert",
        workbench.LoRAConfig(
            selfattn_lora=True,
            attn_matrices=["q", "k", "v"],
            intermediate_lora=True,
            output_lora=True,
            r=3,
            alpha=5,
            leave_out=[0],
        ),
    ),  # fmt: skip
    ("gpt2", workbench.LoRAConfig(attn_matrices=["q", "v"], intermediate_lora=True, output_lora=True, r=2)),
    ("llama", workbench.LoRAConfig(output_lora=True, r=4, alpha=16, dropout=0.1)),
    ("bert", workbench.IA3Config()),
    ("gpt2", workbench.IA3Config(attn_matrices=["v"], output_lora=True)),
]


@pytest.mark.parametrize("model_type,config", LOCAL_CONFIGS)
def test_saved_peft_format_loads_in_peft(model_type, config, tmp_path):
    base = tiny_base_model(model_type)
    model = workbench.init(copy.deepcopy(base))
    model.add_adapter("a", config=config, set_active=True)
    _perturb(model)
    ids = _inputs()
    expected = _hidden(model, ids)
    model.save_adapter(tmp_path, "a", format="peft")
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    assert data["peft_type"] == ("IA3" if config.composition_mode == "scale" else "LORA")
    reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    torch.testing.assert_close(_hidden(reloaded, ids), expected, atol=ATOL, rtol=0)
    again = workbench.init(copy.deepcopy(base))
    again.load_adapter(tmp_path, load_as="b", set_active=True)
    torch.testing.assert_close(_hidden(again, ids), expected, atol=ATOL, rtol=0)


def test_adapter_model_round_trip_with_task_model_keys(tmp_path):
    """An AdapterModel keeps its base under `bert.`: files match PEFT on a task model, and load back from one."""
    config = tiny_config("bert", num_labels=3)
    task = AutoModelForSequenceClassification.from_config(config).eval()
    model = workbench.AdapterModel(copy.deepcopy(task.bert)).eval()
    model.add_adapter("a", config=workbench.LoRAConfig(r=2), set_active=True)
    _perturb(model)
    model.save_adapter(tmp_path / "wb", "a", format="peft")
    keys = load_file(tmp_path / "wb" / "adapter_model.safetensors")
    assert all(k.startswith("base_model.model.bert.encoder.layer.") for k in keys)
    peft_task = peft.PeftModel.from_pretrained(copy.deepcopy(task), tmp_path / "wb").eval()
    ids = _inputs()
    with torch.no_grad():
        hidden = peft_task(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden, _hidden(model.base_model, ids), atol=ATOL, rtol=0)


def test_seq_cls_adapter_loads_modules_to_save_where_the_model_has_them(tmp_path):
    task = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_labels=3)).eval()
    config = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    peft_model, folder = _peft_folder(task, config, tmp_path)
    with torch.no_grad():  # a changed classifier copy, so that loading it matters
        peft_model.base_model.model.classifier.modules_to_save["default"].weight.add_(0.5)
    peft_model.save_pretrained(folder)
    model = workbench.init(copy.deepcopy(task))
    model.load_adapter(folder, set_active=True)
    ids = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, peft_model(input_ids=ids).logits, atol=ATOL, rtol=0)
    with pytest.warns(UserWarning, match="modules_to_save"):  # the bare AdapterModel has no classifier
        workbench.AdapterModel(copy.deepcopy(task.bert)).load_adapter(folder)


@pytest.mark.parametrize(
    "model_type,config,match",
    [
        ("bert", peft.LoraConfig(target_modules=["query"], lora_bias=True), "lora_bias"),
        ("bert", peft.LoraConfig(target_modules=["query"], bias="all"), "bias"),
        ("bert", peft.LoraConfig(target_modules=["word_embeddings"]), "nn.Linear and Conv1D"),
        ("bert", peft.LoHaConfig(target_modules=["query"]), "LOHA"),
    ],
)
def test_unsupported_peft_adapters_fail_clearly_and_leave_model_unchanged(model_type, config, match, tmp_path):
    base = tiny_base_model(model_type)
    _, folder = _peft_folder(base, config, tmp_path)
    model = workbench.init(copy.deepcopy(base))
    before = dict(model.state_dict())
    with pytest.raises(workbench.AdapterError, match=match):
        model.load_adapter(folder)
    assert model.adapters == {} and set(model.state_dict()) == set(before)


def test_failed_peft_load_leaves_model_unchanged(tmp_path):
    base = tiny_base_model("bert")
    _, folder = _peft_folder(base, _config("lora", dict(target_modules=["query"])), tmp_path)
    weights = folder / "adapter_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("lora_B.weight"))
    state[key] = torch.zeros(5, 4)  # wrong shape
    save_file(state, weights)
    model = workbench.init(copy.deepcopy(base))
    model.add_adapter("other", config="lora", set_active=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(workbench.AdapterLoadError, match="shape"):
        model.load_adapter(folder)
    assert set(model.adapters) == {"other"} and model.active_adapters.names() == ["other"]
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())
    with pytest.raises(workbench.AdapterConfigError, match="already exists"):
        model.load_adapter(folder, load_as="other")


def test_save_format_errors(tmp_path):
    model = workbench.init(tiny_base_model("bert"))
    model.add_adapter("bn", config="seq_bn")
    with pytest.raises(workbench.AdapterConfigError, match="LoRA and"):
        model.save_adapter(tmp_path, "bn", format="peft")
    with pytest.raises(workbench.AdapterConfigError, match="format="):
        model.save_adapter(tmp_path, "bn", format="onnx")
    model.add_adapter("g", config=workbench.LoRAConfig(use_gating=True))
    with pytest.raises(workbench.AdapterConfigError, match="gating"):
        model.save_adapter(tmp_path, "g", format="peft")
