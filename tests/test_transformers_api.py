"""One test per transformers internal in `workbench.core.transformers_api`; each failure names the item."""

import dataclasses
import inspect
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from tiny import tiny_base_model, tiny_config
from torch import nn
from transformers import AutoModel, EarlyStoppingCallback, PreTrainedModel, Trainer

from workbench._requirements import MIN_TRANSFORMERS, require_transformers
from workbench.core import transformers_api as api
from workbench.core.archs import get_module
from workbench.core.families import ARCHITECTURES


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def _recording(calls: list, base=None):
    """An attention function that records its arguments and runs sdpa."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        calls.append({"module": module, "query": query, "mask": attention_mask, "kwargs": kwargs})
        return api.sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    return attention


def _input(batch=2, length=5):
    ids = torch.randint(2, 100, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, -1] = 0  # padding, so a mask is built
    return {"input_ids": ids, "attention_mask": mask}


def test_attention_interface():
    calls = []
    name = "workbench_test_attention_interface"
    api.AttentionInterface.register(name, _recording(calls))
    api.AttentionMaskInterface.register(name, api.sdpa_mask)
    model = tiny_base_model("bert")
    model.set_attn_implementation(name)
    model(**_input())
    assert calls, f"AttentionInterface: a function registered as {name!r} and set on the model was never called"
    call = calls[0]
    assert call["query"].shape == (2, 4, 5, 8), (
        f"AttentionInterface: attention functions got query of shape {tuple(call['query'].shape)}; the workbench "
        "expects (batch, heads, length, head_dim)"
    )
    missing = {"dropout", "scaling"} - set(call["kwargs"])
    assert not missing, f"AttentionInterface: attention functions are no longer passed {sorted(missing)} as keywords"
    assert isinstance(call["module"], nn.Module), "AttentionInterface: first argument is no longer the attention module"


def test_all_attention_functions():
    name = "workbench_test_all_attention_functions"
    fn = _recording([])
    api.AttentionInterface.register(name, fn)
    assert name in api.ALL_ATTENTION_FUNCTIONS and api.ALL_ATTENTION_FUNCTIONS[name] is fn, (
        "ALL_ATTENTION_FUNCTIONS (transformers.modeling_utils) no longer holds the functions registered with "
        "AttentionInterface.register"
    )
    assert "sdpa" in api.ALL_ATTENTION_FUNCTIONS, "ALL_ATTENTION_FUNCTIONS no longer has 'sdpa'"
    assert "eager" not in api.ALL_ATTENTION_FUNCTIONS, (
        "ALL_ATTENTION_FUNCTIONS now has 'eager': prefix tuning's eager path (per-model eager_attention_forward) "
        "may be bypassed by transformers; check methods/prefix_tuning.py"
    )


def test_attention_mask_interface():
    seen = []
    name = "workbench_test_attention_mask_interface"

    def mask_builder(*args, **kwargs):
        seen.append(kwargs)
        return api.sdpa_mask(*args, **kwargs)

    api.AttentionInterface.register(name, _recording([]))
    api.AttentionMaskInterface.register(name, mask_builder)
    assert api.ALL_MASK_ATTENTION_FUNCTIONS.get(name) is mask_builder, (
        "AttentionMaskInterface.register no longer puts the builder into ALL_MASK_ATTENTION_FUNCTIONS"
    )
    model = tiny_base_model("llama")
    model.set_attn_implementation(name)
    model(**_input())
    assert seen, f"AttentionMaskInterface: the mask builder registered for {name!r} was not used by the model"


def test_all_mask_attention_functions():
    get = api.ALL_MASK_ATTENTION_FUNCTIONS.get
    assert get("sdpa") is api.sdpa_mask, (
        "ALL_MASK_ATTENTION_FUNCTIONS['sdpa'] is no longer transformers.masking_utils.sdpa_mask: prefix tuning tells "
        "bool from float masks by this identity"
    )
    assert get("eager") is api.eager_mask, (
        "ALL_MASK_ATTENTION_FUNCTIONS['eager'] is no longer transformers.masking_utils.eager_mask: prefix tuning "
        "tells bool from float masks by this identity"
    )
    assert get("workbench_test_no_such_impl", api.eager_mask) is api.eager_mask, (
        "ALL_MASK_ATTENTION_FUNCTIONS.get(name, default) no longer returns the default for unknown names"
    )


def _mask_seen_with(builder, name):
    calls = []
    api.AttentionInterface.register(name, _recording(calls))
    api.AttentionMaskInterface.register(name, builder)
    model = tiny_base_model("llama")
    model.set_attn_implementation(name)
    model(**_input())
    return calls[0]["mask"]


def test_eager_mask():
    mask = _mask_seen_with(api.eager_mask, "workbench_test_eager_mask")
    assert mask is not None and mask.dtype.is_floating_point and mask.dim() == 4, (
        "eager_mask (transformers.masking_utils) no longer builds a 4-d additive float mask "
        f"(got {None if mask is None else (mask.dtype, mask.dim())}); prefix tuning extends it with float blocks"
    )


def test_sdpa_mask():
    mask = _mask_seen_with(api.sdpa_mask, "workbench_test_sdpa_mask")
    assert mask is not None and mask.dtype == torch.bool and mask.dim() == 4, (
        "sdpa_mask (transformers.masking_utils) no longer builds a 4-d bool mask "
        f"(got {None if mask is None else (mask.dtype, mask.dim())}); prefix tuning extends it with bool blocks"
    )


def test_sdpa_attention_forward():
    params = _params(api.sdpa_attention_forward)
    expected = ["module", "query", "key", "value", "attention_mask", "dropout", "scaling"]
    assert params[:7] == expected, (
        f"sdpa_attention_forward (transformers.integrations.sdpa_attention) parameters are now {params}; "
        f"fast dropout calls it as {expected}"
    )
    q = torch.randn(2, 4, 5, 8)
    out, _ = api.sdpa_attention_forward(nn.Module(), q, q, q, None, dropout=0.0, scaling=None)
    assert out.shape == (2, 5, 4, 8), (
        f"sdpa_attention_forward now returns shape {tuple(out.shape)}; expected (batch, length, heads, head_dim)"
    )


def test_eager_attention_forward():
    for model_type, spec in ARCHITECTURES.items():
        if model_type == "distilbert":
            continue  # DistilBERT's attention is checked through its own module below
        if "prefix_tuning" not in spec.methods or spec.prefix_glue is not None:
            continue  # prefix tuning does not go through an attention function there (DeBERTa: hooks)
        model = tiny_base_model(model_type)
        attention = get_module(get_module(model, spec.layers)[0], spec.attention)
        try:
            fn = api.eager_attention_of(attention)
        except AttributeError:
            pytest.fail(
                f"eager_attention_forward: {type(attention).__module__} no longer defines it; prefix tuning "
                f"over eager attention looks it up there for {model_type}"
            )
        params = _params(fn)
        assert params[:5] == ["module", "query", "key", "value", "attention_mask"], (
            f"eager_attention_forward in {type(attention).__module__} now takes {params}"
        )
    distil = tiny_base_model("distilbert")
    attention = get_module(get_module(distil, "transformer.layer")[0], "attention")
    assert callable(api.eager_attention_of(attention)), "eager_attention_forward: gone from DistilBERT's module"


def test_relative_position_bias():
    model = tiny_base_model("t5")
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert callable(getattr(attention, api.RELATIVE_BIAS_METHOD, None)), (
        f"T5Attention no longer has `{api.RELATIVE_BIAS_METHOD}`; prefix tuning recomputes T5's bias with it"
    )
    full = api.relative_position_bias(attention, 5, 5, 0)
    tail = api.relative_position_bias(attention, 2, 5, 3)
    heads = model.config.num_heads
    assert full.shape == (1, heads, 5, 5) and tail.shape == (1, heads, 2, 5), (
        f"{api.RELATIVE_BIAS_METHOD} now returns {tuple(full.shape)}; expected (1, heads, queries, keys)"
    )
    assert torch.equal(full[:, :, 3:], tail), (
        f"{api.RELATIVE_BIAS_METHOD}(past_seen_tokens=...) no longer places the queries after the past tokens"
    )


def test_gpt2_upcast_and_reordered_attn():
    model = AutoModel.from_config(tiny_config("gpt2", reorder_and_upcast_attn=True))
    attention = model.h[0].attn
    assert getattr(attention, api.GPT2_UPCAST_FLAG, None) is True, (
        f"GPT-2 attention no longer carries `{api.GPT2_UPCAST_FLAG}` from its config"
    )
    fn = api.gpt2_upcast_attention(attention)
    assert fn is not None, f"GPT-2 attention no longer has `{api.GPT2_UPCAST_METHOD}`"
    assert _params(fn)[:4] == ["query", "key", "value", "attention_mask"], (
        f"GPT-2's `{api.GPT2_UPCAST_METHOD}` now takes {_params(fn)}; prefix tuning calls (query, key, value, mask)"
    )


def test_config_attn_implementation():
    model = tiny_base_model("bert")
    impl = api.attn_implementation(model.config)
    assert isinstance(impl, str) and impl, (
        f"config.{api.ATTN_IMPLEMENTATION_ATTR} no longer names the model's attention implementation (got {impl!r})"
    )
    model.set_attn_implementation("eager")
    assert api.attn_implementation(model.config) == "eager", (
        f"config.{api.ATTN_IMPLEMENTATION_ATTR} no longer follows set_attn_implementation"
    )


def test_set_attn_implementation():
    calls = []
    name = "workbench_test_set_attn_implementation"
    api.AttentionInterface.register(name, _recording(calls))
    api.AttentionMaskInterface.register(name, api.sdpa_mask)
    model = tiny_base_model("gpt2")
    assert hasattr(model, api.SET_ATTN_IMPLEMENTATION), "PreTrainedModel.set_attn_implementation is gone"
    getattr(model, api.SET_ATTN_IMPLEMENTATION)(name)
    model(**_input())
    assert calls and api.attn_implementation(model.config) == name, (
        "PreTrainedModel.set_attn_implementation no longer switches a loaded model to a registered custom name"
    )
    model.set_attn_implementation("sdpa")
    assert api.attn_implementation(model.config) == "sdpa", "set_attn_implementation no longer switches back"


def test_set_gradient_checkpointing_signature():
    params = _params(PreTrainedModel._set_gradient_checkpointing)[1:]
    assert tuple(params) == api.GRADIENT_CHECKPOINTING_PARAMS, (
        f"PreTrainedModel._set_gradient_checkpointing now takes {params}; ModelAdaptersMixin overrides it "
        f"expecting {list(api.GRADIENT_CHECKPOINTING_PARAMS)}"
    )
    seen = {}
    model = tiny_base_model("bert")

    def spy(**kwargs):
        seen.update(kwargs)

    model._set_gradient_checkpointing = spy
    model.activation_checkpointing_enable()
    assert set(seen) == set(api.GRADIENT_CHECKPOINTING_PARAMS), (
        f"activation_checkpointing_enable now calls _set_gradient_checkpointing with {sorted(seen)}"
    )


def test_gradient_checkpointing_layer():
    model = tiny_base_model("bert").train()
    layers = list(model.encoder.layer)
    assert all(isinstance(layer, api.GradientCheckpointingLayer) for layer in layers), (
        "GradientCheckpointingLayer (transformers.modeling_layers) is no longer the base of BERT's layers"
    )
    calls = []

    def checkpoint(function, *args, **kwargs):
        calls.append(function)
        return function(*args, **kwargs)

    model.activation_checkpointing_enable()
    model._set_gradient_checkpointing(True, checkpoint, 1)
    model(**_input())
    assert len(calls) == len(layers) and all(callable(c) for c in calls), (
        f"GradientCheckpointingLayer no longer calls the checkpoint function with the layer call first "
        f"({len(calls)} calls for {len(layers)} layers); keep_call_context relies on it"
    )


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_cache_argument(model_type):
    """ReFT tells a decoding step from a prompt forward by the cache argument of the base model's forward."""
    model = tiny_base_model(model_type)
    names = [name for name in api.CACHE_ARGUMENTS if name in _params(model.forward)]
    assert names, f"CACHE_ARGUMENTS {api.CACHE_ARGUMENTS}: none is an argument of {type(model).__name__}.forward"
    out = model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=True)
    cache = getattr(out, "past_key_values", None)
    assert api.cache_length(cache) == 3, f"cache_length: a cache after 3 tokens reports {api.cache_length(cache)}"
    assert api.cache_length(None) == 0


def test_model_class_flags():
    missing = [flag for flag in api.MODEL_CLASS_FLAGS if not hasattr(PreTrainedModel, flag)]
    assert not missing, f"PreTrainedModel no longer has the class flags {missing} that AdapterModel sets"


def test_conv1d():
    layer = api.Conv1D(6, 4)  # nf (out), nx (in)
    assert layer.weight.shape == (4, 6), (
        f"Conv1D (transformers.pytorch_utils) weight is now {tuple(layer.weight.shape)}; LoRA and PEFT conversion "
        "expect it stored transposed, (in, out)"
    )
    x = torch.randn(3, 4)
    assert torch.allclose(layer(x), x @ layer.weight + layer.bias), "Conv1D no longer computes x @ weight + bias"
    gpt2 = tiny_base_model("gpt2")
    assert isinstance(gpt2.h[0].attn.c_attn, api.Conv1D), "Conv1D: GPT-2's c_attn is no longer a Conv1D"


def test_model_output():
    out = api.ModelOutput(a=torch.ones(1), c=torch.zeros(2))
    assert list(out.keys()) == ["a", "c"] and out["c"] is out.c and out[1] is out.c, (
        "ModelOutput (transformers.modeling_outputs) built from keywords no longer indexes by key, attribute and "
        "position; heads get row slices of the base outputs built that way"
    )

    @dataclasses.dataclass
    class Sub(api.ModelOutput):
        loss: torch.Tensor | None = None
        logits: torch.Tensor | None = None

    sub = Sub(logits=torch.ones(1))
    assert list(sub.keys()) == ["logits"] and sub.to_tuple() == (sub.logits,), (
        "ModelOutput dataclass subclasses (MultiHeadOutput) no longer drop None fields from keys() / to_tuple()"
    )


def test_activations():
    names = {"relu", "gelu", "gelu_new", "tanh", "swish", "silu", "sigmoid"}
    missing = sorted(names - set(api.ACT2FN))
    assert not missing, f"ACT2FN (transformers.activations) lost the AdapterHub activation names {missing}"
    assert isinstance(api.get_activation("gelu"), nn.Module), "get_activation no longer returns an nn.Module"


def test_trainer_checkpoint_helpers(tmp_path):
    assert api.PREFIX_CHECKPOINT_DIR == "checkpoint", (
        f"PREFIX_CHECKPOINT_DIR (transformers.trainer_utils) is now {api.PREFIX_CHECKPOINT_DIR!r}"
    )
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-{step}").mkdir()
        os.utime(tmp_path / f"checkpoint-{step}", (step, step))
    assert api.get_last_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-3"), (
        "get_last_checkpoint (transformers.trainer_utils) no longer returns the newest checkpoint folder"
    )
    expected = ["output_dir", "save_total_limit", "best_model_checkpoint", "use_mtime"]
    params = _params(api.rotate_checkpoints)
    assert params[:4] == expected, f"rotate_checkpoints (transformers.trainer_utils) now takes {params}"
    api.rotate_checkpoints(str(tmp_path), 1, None, use_mtime=True)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["checkpoint-3"], f"rotate_checkpoints(save_total_limit=1) left {left}"


def test_exportable_state():
    callback = EarlyStoppingCallback(early_stopping_patience=3)
    assert isinstance(callback, api.ExportableState), (
        "ExportableState (transformers.trainer_callback): EarlyStoppingCallback is no longer one"
    )
    state = callback.state()
    assert isinstance(state, dict) and type(callback).from_state(state).early_stopping_patience == 3, (
        "ExportableState: state() / from_state() no longer round-trip early stopping's settings"
    )


def test_trainer_hooks():
    missing = [name for name in api.TRAINER_HOOKS if not callable(getattr(Trainer, name, None))]
    assert not missing, f"Trainer no longer has the private methods {missing} that WorkbenchTrainer overrides/calls"


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_arch_paths(model_type):
    spec = ARCHITECTURES[model_type]
    model = tiny_base_model(model_type)
    try:
        layers = get_module(model, spec.layers)
    except AttributeError:
        pytest.fail(f"archs[{model_type!r}].layers: {spec.layers!r} is gone from {type(model).__name__}")
    layer = layers[0]
    paths = {"attention": spec.attention, "embeddings": None, **{f"lora.{k}": v for k, v in spec.lora.items()}}
    paths["layer_output"] = spec.layer_output
    for site_name, site in (("attention_site", spec.attention_site), ("output_site", spec.output_site)):
        paths[f"{site_name}.sublayer"] = site.sublayer
        for field in ("residual", "norm", "residual_plus"):  # optional: None when the site has none
            if getattr(site, field) is not None:
                paths[f"{site_name}.{field}"] = getattr(site, field)
        paths[f"{site_name}.host (parent)"] = site.host.rpartition(".")[0]
    for item, path in paths.items():
        root, where = (model, spec.embeddings) if item == "embeddings" else (layer, path)
        try:
            get_module(root, where)
        except AttributeError:
            pytest.fail(
                f"archs[{model_type!r}].{item}: {where!r} is gone from {type(root).__name__} "
                f"({type(model).__module__}); update its spec in workbench/core/family_*.py"
            )


def test_an_older_transformers_is_refused_at_import_with_the_fix():
    """Below MIN_TRANSFORMERS the engine's hooks miss (prefix tuning on T5 and GPT-J did nothing on 5.17): import
    fails before any other part of the package loads, naming both versions and the pip command; pyproject asks for
    the same floor."""
    require_transformers(MIN_TRANSFORMERS)
    require_transformers("6.0.0.dev0")
    with pytest.raises(ImportError, match=r"needs transformers >= 5\.24, this environment has 5\.23\.9"):
        require_transformers("5.23.9")
    code = (
        "import sys, transformers; transformers.__version__ = '5.17.0'\n"
        "try:\n    import workbench\n"
        "except ImportError as error:\n"
        "    print(sorted(m for m in sys.modules if m.startswith('workbench.')), error)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert proc.stdout.startswith("[] "), proc.stdout + proc.stderr  # no other module of the package was loaded
    assert f"needs transformers >= {MIN_TRANSFORMERS}, this environment has 5.17.0" in proc.stdout
    assert 'pip install "transformers>=' in proc.stdout
    dependencies = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"transformers>={MIN_TRANSFORMERS},<6" in dependencies
