"""AdapterHub's introspection and model-level API: adapters_config, get_adapter, per-family classes, load_model,
save_pretrained round trips, loading_info, names and config hashes as the `adapters` library has them."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_adapter_model
from transformers import BertConfig, BertForSequenceClassification, GPT2Config

import workbench
from workbench import ADAPTER_MODEL_MAPPING, AdapterConfigError, AdapterLoadError, Fuse, UnsupportedModelError
from workbench.core.model_adapters_config import get_adapter_config_hash

BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
IDS = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])


def out(model):
    with torch.no_grad():
        return model(input_ids=IDS)[0]


def perturb(model, name):
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * 0.3)


def test_config_hashes_are_adapterhubs():
    # values computed with adapters 1.3.0's get_adapter_config_hash (the AdapterHub index names configs by them)
    assert get_adapter_config_hash(workbench.SeqBnConfig()) == "9076f36a74755ac4"
    assert get_adapter_config_hash(workbench.LoRAConfig()) == "625403edad0bf919"
    assert get_adapter_config_hash(workbench.LoRAConfig(r=4, alpha=16)) == "ff28680cd47c1288"
    assert get_adapter_config_hash(workbench.PrefixTuningConfig()) == "648bf22f5afeaaa6"


def test_adapters_config_views_the_model():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.add_adapter_fusion(["a", "b"], name="custom")
    config = model.adapters_config
    assert "a" in config and "x" not in config and list(config) == ["a", "b"] and len(config) == 2
    assert config.get("a") == workbench.SeqBnConfig() and config.get("x") is None
    assert config.config_map[config.adapters["a"]] == workbench.SeqBnConfig()
    assert config.fusions == {"a,b": "dynamic", "custom": "dynamic"}
    assert config.fusion_name_map == {"custom": ["a", "b"]}
    assert config.get_fusion(["a", "b"])[1] == ["a", "b"] and config.get_fusion("nope") == (None, None)
    assert config.match("a", workbench.BnConfig, layer_idx=0, location_key="output_adapter") == workbench.SeqBnConfig()
    assert config.match("a", workbench.LoRAConfig) is None
    assert config.common_config_value(["a", "b"], "reduction_factor") == 16
    model.delete_adapter("b")
    assert "b" not in model.adapters_config and not model.adapters_config.fusions  # a view, never stale


def test_get_adapter_reports_layers_and_locations():
    model = tiny_adapter_model()
    model.add_adapter("lora", config="lora[intermediate_lora=True,output_lora=True]")
    model.add_adapter("houlsby", config="double_seq_bn")
    model.add_adapter("prompt", config="prompt_tuning")
    layers = len(list(model.iter_layers()))
    lora = model.get_adapter("lora")
    assert set(lora) == set(range(layers)) and set(lora[0]) == {"selfattn", "intermediate", "output"}
    assert isinstance(lora[0]["selfattn"], torch.nn.ModuleList) and len(lora[0]["selfattn"]) == 2  # q and v
    assert set(model.get_adapter("houlsby")[1]) == {"mh_adapter", "output_adapter"}
    assert set(model.get_adapter("prompt")) == {-1} and "prompt" in model.get_adapter("prompt")[-1]
    assert model.get_adapter("missing") == {}


def test_supports_adapter_and_adapter_to():
    model = tiny_adapter_model("gpt2")
    assert model.supports_adapter("lora") and model.supports_adapter(workbench.SeqBnConfig())
    assert not model.supports_adapter("prompt_tuning")
    assert not model.support_lora_delta_w_svd  # GPT-2's fused q|k|v
    # DoRA and VeRA cannot adapt the fused q|k|v (add_adapter refuses them): supports_adapter says so
    assert not model.supports_adapter("dora") and not model.supports_adapter(workbench.VeraConfig())
    assert model.supports_adapter(workbench.DoRAConfig(selfattn_lora=False, output_lora=True))
    assert tiny_adapter_model("bert").supports_adapter("dora")
    model.add_adapter("a", config="seq_bn")
    model.adapter_to("a", dtype=torch.float64)
    assert {p.dtype for _, p in model._adapter_parameters("a")} == {torch.float64}
    with pytest.raises(AdapterConfigError, match="no adapter named 'b'"):
        model.adapter_to("b", dtype=torch.float64)


def test_family_classes_and_mapping():
    model = workbench.BertAdapterModel(BertConfig(**BERT))
    assert type(model).__name__ == "BertAdapterModel" and "masked_lm" in model.head_types
    assert type(workbench.AutoAdapterModel.from_config(BertConfig(**BERT))) is type(model)
    assert ADAPTER_MODEL_MAPPING[BertConfig] is workbench.BertAdapterModel and GPT2Config in ADAPTER_MODEL_MAPPING
    assert "causal_lm" in ADAPTER_MODEL_MAPPING[GPT2Config].head_types
    assert "masked_lm" not in ADAPTER_MODEL_MAPPING[GPT2Config].head_types
    from transformers import T5Config

    assert ADAPTER_MODEL_MAPPING[T5Config] is workbench.T5AdapterModel
    from workbench.core.families import ARCHITECTURES
    from workbench.core.model_classes import ADAPTER_MODEL_CLASSES

    unsupported = sorted(set(ADAPTER_MODEL_CLASSES) - set(ARCHITECTURES))
    if unsupported:  # a family AdapterHub has and the engine does not (yet): its class refuses clearly
        model_type = unsupported[0]
        assert model_type not in ADAPTER_MODEL_MAPPING
        with pytest.raises(UnsupportedModelError, match=f"'{model_type}' is not supported"):
            ADAPTER_MODEL_CLASSES[model_type](BertConfig(**BERT))
    with pytest.raises(UnsupportedModelError, match="for model type 'gpt2'"):
        workbench.GPT2AdapterModel(BertConfig(**BERT))


def test_base_model_shares_the_adapter_api():
    model = workbench.BertAdapterModel(BertConfig(**BERT))
    model.base_model.add_adapter("a", config="lora")  # AdapterHub code does this; not transformers' PEFT add_adapter
    assert "a" in model.adapters_config and model.base_model.adapters_config.get("a") == workbench.LoRAConfig()
    assert model.base_model.supports_adapter("lora")


def test_save_pretrained_and_load_model_restore_an_init_model(tmp_path):
    torch.manual_seed(0)
    model = workbench.init(BertForSequenceClassification(BertConfig(**BERT, num_labels=3)).eval())
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="lora")
    perturb(model, "a")
    perturb(model, "b")
    model.set_active_adapters("a")
    expected = out(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapters" / "a" / "adapter_config.json").is_file()
    reloaded, info = workbench.load_model(tmp_path, BertForSequenceClassification, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # no adapter weight inside the base checkpoint
    assert set(reloaded.adapters_config) == {"a", "b"}
    reloaded.eval().set_active_adapters("a")
    torch.testing.assert_close(out(reloaded), expected)


def test_load_adapter_fills_loading_info_and_replaces_an_adapter_of_the_same_name(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("a", config="lora")
    perturb(model, "a")
    model.save_adapter(tmp_path, "a")
    other = tiny_adapter_model()
    other.add_adapter("a", config="seq_bn")
    info = {}
    with pytest.warns(UserWarning, match="replacing the existing adapter 'a'"):
        other.load_adapter(str(tmp_path), loading_info=info)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert other.adapters_config.get("a") == workbench.LoRAConfig()  # the file's config, not the old one


def _fused_model():
    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        perturb(model, name)
    model.add_adapter_fusion(Fuse("a", "b"))
    with torch.no_grad():
        for _, param in model._fusion_parameters("a,b"):
            param.add_(torch.randn_like(param) * 0.3)
    model.train_adapter_fusion(Fuse("a", "b"))
    return model.eval()


def _parameters(model, owner):
    return {key: param for key, param in model._engine.named_parameters_of(owner)}


def test_reloading_an_adapter_loads_it_in_place(tmp_path):
    # AdapterHub loads into the adapter it has: the fusion over it, the active setup, its parameter objects (an
    # optimizer's) and requires_grad flags stay; only the values change
    model = _fused_model()
    model.save_adapter(tmp_path, "a")
    saved = {k: v.clone() for k, v in model._engine.state_dict_of("a").items()}
    expected = out(model)
    perturb(model, "a")
    params, fusion = _parameters(model, "a"), _parameters(model, "fusion:a,b")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.load_adapter(str(tmp_path))
    assert model.adapter_fusions == {"a,b": ["a", "b"]} and model.active_adapters == Fuse("a", "b")
    assert all(params[k] is p for k, p in _parameters(model, "a").items()) and len(params) == len(saved)
    assert all(fusion[k] is p for k, p in _parameters(model, "fusion:a,b").items())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(params[k], v) for k, v in saved.items())
    torch.testing.assert_close(out(model), expected, rtol=0, atol=0)


def test_reloading_a_fusion_loads_it_in_place_and_a_failure_puts_the_old_values_back(tmp_path):
    """As AdapterHub (which warns that it overwrites): a fusion already on the model takes the file's weights."""
    model = _fused_model()
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    expected = out(model)
    with torch.no_grad():
        for _, param in model._fusion_parameters("a,b"):
            param.add_(1.0)
    params = _parameters(model, "fusion:a,b")
    with pytest.warns(UserWarning, match="into the existing fusion 'a,b'"):
        model.load_adapter_fusion(tmp_path / "fusion")
    assert all(params[k] is p for k, p in _parameters(model, "fusion:a,b").items())
    torch.testing.assert_close(out(model), expected, rtol=0, atol=0)
    with torch.no_grad():
        for _, param in model._fusion_parameters("a,b"):
            param.add_(1.0)
    before = {k: p.detach().clone() for k, p in params.items()}
    with pytest.raises(AdapterLoadError), pytest.warns(UserWarning):
        with model._engine.transaction(model):  # a load around it that fails later (as load_adapter_setup)
            model.load_adapter_fusion(tmp_path / "fusion")
            raise AdapterLoadError("a later part of the load failed")
    assert all(torch.equal(params[k], v) for k, v in before.items())


@pytest.mark.parametrize("setup", ["a", ["a", "b"]])
def test_reloading_an_active_adapter_keeps_the_active_setup(tmp_path, setup):
    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.set_active_adapters(setup)
    active = model.active_adapters
    model.save_adapter(tmp_path, "a")
    model.load_adapter(str(tmp_path))
    assert model.active_adapters == active  # as adapters 1.3.0 keeps it


def test_reloading_a_merged_lora_adapter_merges_the_new_weights(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("a", config="lora")
    perturb(model, "a")
    model.save_adapter(tmp_path, "a")
    model.set_active_adapters("a")
    expected = out(model)
    perturb(model, "a")
    model.merge_adapter("a")
    model.load_adapter(str(tmp_path))  # the merged weights must not keep the old values
    torch.testing.assert_close(out(model), expected)
    model.reset_adapter()
    torch.testing.assert_close(out(model), expected)


def test_overwriting_a_fused_adapter_keeps_the_fusion_where_it_fits(tmp_path):
    # adapters 1.3.0 keeps a fusion when add_adapter(overwrite_ok=True) replaces one of its adapters
    model = _fused_model()
    fusion = _parameters(model, "fusion:a,b")
    model.add_adapter("a", config="seq_bn[reduction_factor=8]", overwrite_ok=True)
    assert model.adapter_fusions == {"a,b": ["a", "b"]} and model.active_adapters == Fuse("a", "b")
    assert all(fusion[k] is p for k, p in _parameters(model, "fusion:a,b").items())
    out(model)
    model.save_adapter(tmp_path, "a")  # a file of another config than the model's "a": replaced, fusion kept
    model.add_adapter("a", config="seq_bn", overwrite_ok=True)
    with pytest.warns(UserWarning, match="replacing the existing adapter 'a'"):
        model.load_adapter(str(tmp_path))
    assert model.adapters["a"]["reduction_factor"] == 8 and model.adapter_fusions == {"a,b": ["a", "b"]}


def test_legacy_activation_names_of_unversioned_files(tmp_path):
    import json

    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn[non_linearity='gelu']")
    model.save_adapter(tmp_path, "a")
    data = json.loads((tmp_path / "adapter_config.json").read_text())
    del data["version"]
    data["config"]["non_linearity"] = "gelu_orig"  # adapter-transformers v1/v2 spelling of today's "gelu"
    (tmp_path / "adapter_config.json").write_text(json.dumps(data))
    loaded = tiny_adapter_model()
    loaded.load_adapter(str(tmp_path))
    assert loaded.adapters_config.get("a")["non_linearity"] == "gelu"


def test_fuse_name_and_flatten():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.add_adapter_fusion(["a", "b"], name="custom")
    perturb(model, "a")
    with torch.no_grad():
        for _, param in model._fusion_parameters("custom"):
            param.add_(torch.randn_like(param))
    model.set_active_adapters(Fuse("a", "b"))
    default = out(model)
    model.set_active_adapters(Fuse("a", "b", name="custom"))
    assert not torch.equal(out(model), default)
    with pytest.raises(workbench.CompositionError, match="fuses \\['a', 'b'\\], not \\['b', 'a'\\]"):
        model.set_active_adapters(Fuse("b", "a", name="custom"))
    model.delete_adapter_fusion(Fuse("a", "b", name="custom"))
    assert set(model.adapter_fusions) == {"a,b"}
    assert Fuse("a", workbench.Stack("b", "c")).flatten() == {"a", "b", "c"}  # AdapterHub: a set
    assert workbench.Stack("b", "a", "b").names() == ["b", "a"]


def test_config_union_reads_like_adapterhubs():
    union = workbench.MAMConfig()
    assert isinstance(union[0], workbench.PrefixTuningConfig) and union["1.reduction_factor"] == 2
    assert union.prefix_tuning.bottleneck_size == 800 and "0.prefix_length" in list(union)
    assert workbench.UniPELTConfig()[2]["alpha"] == 2 and all(c.use_gating for c in workbench.UniPELTConfig().configs)
    assert workbench.AdapterConfig.load("mam") == union
    with pytest.raises(TypeError):
        workbench.ConfigUnion(workbench.SeqBnConfig(), "lora")


@pytest.mark.parametrize("config", ["seq_bn", "lora"])
def test_load_adapter_leave_out_skips_those_layers_of_a_file_saved_with_all(tmp_path, config):
    """As AdapterHub: the left-out layers' weights are not loaded (reported as unexpected keys)."""
    torch.manual_seed(0)
    source = tiny_adapter_model()
    source.add_adapter("a", config=config)
    with torch.no_grad():
        for _, param in source._adapter_parameters("a"):
            param.add_(torch.randn_like(param))
    source.save_adapter(tmp_path / "a", "a")
    info = {}
    model = tiny_adapter_model()
    model.load_adapter(tmp_path / "a", leave_out=[0], loading_info=info)
    assert model.adapters_config.get("a")["leave_out"] == [0]
    assert info["unexpected_keys"] and all(".layer.0." in key for key in info["unexpected_keys"])
    kept = dict(source._adapter_parameters("a"))
    loaded = dict(model._adapter_parameters("a"))
    assert loaded and not any(".layer.0." in key for key in loaded)
    for key, param in loaded.items():
        torch.testing.assert_close(param, kept[key], atol=0, rtol=0)


def test_load_adapter_leave_out_refuses_weights_that_span_all_layers(tmp_path):
    source = tiny_adapter_model()
    source.add_adapter("p", config="prefix_tuning")
    source.save_adapter(tmp_path / "p", "p")
    model = tiny_adapter_model()
    with pytest.raises(AdapterConfigError, match="leave_out= cannot apply"):
        model.load_adapter(tmp_path / "p", leave_out=[0])
    assert "p" not in model.adapters_config
