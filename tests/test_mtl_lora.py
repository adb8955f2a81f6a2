"""MTL-LoRA and the MultiTask block: configs, the computation written out, task routing, sharing, merge, save/load,
refusals. The `adapters` library's own outputs are checked in tests/test_conformance.py (`*mtl_lora*`,
`*multitask*` cases)."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_adapter_model, tiny_base_model

import workbench
from workbench import (
    ADAPTER_CONFIG_MAP,
    AdapterConfig,
    AdapterConfigError,
    Average,
    CompositionError,
    LoRAConfig,
    MTLLoRAConfig,
    MultiTask,
    Parallel,
    Stack,
)
from workbench.core.composition import MultiTask as CoreMultiTask

ATOL = 1e-5
MTL = MTLLoRAConfig(n_up_projection=3, init_weights="bert", intermediate_lora=True, output_lora=True)


def _ids(batch=4, length=6):
    return torch.randint(1, 100, (batch, length), generator=torch.Generator().manual_seed(0))


def _perturb(model, scale=0.3):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".loras." in name or "shared_parameters" in name:
                param.add_(scale * torch.randn(param.shape, generator=gen))


def _model(model_type="bert", tasks="abc", config=MTL, share=False):
    model = workbench.init(tiny_base_model(model_type))
    for task in tasks:
        model.add_adapter(task, config=config)
    _perturb(model)
    if share:
        model.share_parameters(MultiTask(*tasks), name="shared")
    return model.eval()


def _out(model, setup, **kwargs):
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(input_ids=kwargs.pop("ids", _ids()), **kwargs).last_hidden_state


# --- configs --------------------------------------------------------------------------------------------------


def test_config_name_defaults_and_file_layout_are_adapterhubs():
    assert MultiTask is CoreMultiTask
    assert ADAPTER_CONFIG_MAP["mtl_lora"] == MTLLoRAConfig()
    data = MTLLoRAConfig().to_dict()
    assert data["architecture"] == "mtl_lora"
    assert (data["n_up_projection"], data["task_specific_matrix_type"], data["weights_sharpness"]) == (
        1,
        "singular_values",
        0.05,
    )
    assert (data["r"], data["alpha"], data["attn_matrices"], data["init_weights"]) == (8, 8, ["q", "v"], "lora")
    assert isinstance(AdapterConfig.from_dict(data), MTLLoRAConfig)
    assert AdapterConfig.load("mtl_lora[n_up_projection=2]").n_up_projection == 2
    assert isinstance(MTLLoRAConfig(), workbench.MultiTaskConfig) and not isinstance(
        LoRAConfig(), workbench.MultiTaskConfig
    )


@pytest.mark.parametrize(
    "changes",
    [
        dict(n_up_projection=0),
        dict(task_specific_matrix_type="diag"),
        dict(weights_sharpness=0.0),
        dict(use_dora=True),
        dict(vera_d=0.1, vera_b=0.0),
        dict(composition_mode="scale", r=1),
    ],
)
def test_config_refuses_what_it_cannot_compute(changes):
    with pytest.raises(AdapterConfigError):
        MTLLoRAConfig(**changes)


# --- the computation ------------------------------------------------------------------------------------------


def test_module_matches_the_library_formula_written_out():
    """adapters 1.3: x A^T T B_i^T per up-projection, mixed by exp(w/s)/sum, times alpha/r."""
    model = _model(tasks="a", config=MTL)
    model.set_active_adapters("a")
    lora = model.base_model.encoder.layer[0].attention.self.query.loras["a"]
    with torch.no_grad():
        lora.weights.copy_(torch.tensor([0.9, 1.0, 1.1]))
        x = torch.randn(2, 5, 32)
        per = x @ lora.lora_A.t() @ torch.diag(lora.task_specific.values) @ lora.lora_B.unsqueeze(1).transpose(-1, -2)
        w = (lora.weights / 0.05).exp()
        want = (w[:, None, None, None] * per).sum(0) / w.sum() * lora.scaling
        got, gate = lora(None, x)
    assert gate is None and torch.allclose(got, want, atol=ATOL)
    assert tuple(lora.lora_B.shape) == (3, 32, 8) and tuple(lora.weights.shape) == (3,)


def test_linear_task_matrix_and_zero_init():
    model = _model(tasks="a", config=MTLLoRAConfig(task_specific_matrix_type="linear", n_up_projection=2))
    lora = model.base_model.encoder.layer[0].attention.self.query.loras["a"]
    assert tuple(lora.task_specific.values.shape) == (8, 8)
    fresh = workbench.init(tiny_base_model("bert"))
    fresh.add_adapter("a", config=MTLLoRAConfig(n_up_projection=2))
    base = workbench.init(tiny_base_model("bert")).eval()
    fresh.load_state_dict(base.state_dict(), strict=False)
    assert torch.equal(_out(fresh, "a"), base(input_ids=_ids()).last_hidden_state.detach())  # B starts at zero


# --- MultiTask routing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("share", [False, True])
def test_each_row_equals_its_task_alone(model_type, share):
    model = _model(model_type, share=share)
    alone = {t: _out(model, t) for t in "abc"}
    for task_ids in ([2, 0, 1, 0], torch.tensor([1, 1, 1, 1]), ["c", "a", "a", "b"]):
        got = _out(model, MultiTask("a", "b", "c"), task_ids=task_ids)
        names = [t if isinstance(t, str) else "abc"[int(t)] for t in task_ids]
        for row, name in enumerate(names):
            assert torch.allclose(got[row], alone[name][row], atol=ATOL), (task_ids, row)


def test_nested_children_and_scoped_setup():
    model = _model(tasks="abc")
    avg = Average("a", "b", weights=[0.3, 0.7])
    got = _out(model, MultiTask(avg, Stack("c")), task_ids=[1, 0, 0, 1])
    by_avg, by_c = _out(model, avg), _out(model, "c")
    for row, want in enumerate([by_c, by_avg, by_avg, by_c]):
        assert torch.allclose(got[row], want[row], atol=ATOL)
    model.set_active_adapters(None)
    with workbench.AdapterSetup(MultiTask(avg, "c")), torch.no_grad():
        scoped = model(input_ids=_ids(), task_ids=torch.tensor([1, 0, 0, 1])).last_hidden_state
    assert torch.allclose(scoped, got, atol=ATOL)


def test_plain_lora_under_multitask_and_gradients_reach_only_used_tasks():
    model = workbench.init(tiny_base_model("bert"))
    for t in "ab":
        model.add_adapter(t, config="lora")
    _perturb(model)
    model.train_adapter(MultiTask("a", "b"))
    out = model(input_ids=_ids(), task_ids=[0, 0, 0, 0]).last_hidden_state
    out.sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if ".loras." in n}
    assert all(g is not None for n, g in grads.items() if ".loras.a." in n)
    assert all(g is None or not g.any() for n, g in grads.items() if ".loras.b." in n)


def test_adapter_model_keeps_its_head_and_takes_task_ids():
    model = tiny_adapter_model("bert")
    for t in "ab":
        model.add_adapter(t, config=MTL)
    model.add_classification_head("a", num_labels=2)
    model.add_classification_head("b", num_labels=2)
    model.active_head = "b"
    model.set_active_adapters(MultiTask("a", "b"))
    assert model.active_head == "b"  # MultiTask chooses no head, as in the library
    out = model(input_ids=_ids(), task_ids=["a", "b", "b", "a"], labels=torch.tensor([0, 1, 1, 0]))
    assert out.logits.shape == (4, 2) and out.loss is not None


# --- sharing --------------------------------------------------------------------------------------------------


def test_share_ties_a_and_b_and_unshare_gives_each_its_own_copy():
    model = _model(tasks="abc")
    query = model.base_model.encoder.layer[0].attention.self.query
    ref_a = query.loras["b"].lora_A.detach().clone()
    model.share_parameters(MultiTask("a", "b", "c"), name="shared", reference_adapter_name="b")
    tied = query.shared_parameters["shared"]
    assert all(query.loras[t].lora_A is tied["lora_A"] and query.loras[t].lora_B is tied["lora_B"] for t in "abc")
    assert torch.equal(tied["lora_A"], ref_a)
    assert query.loras["a"].weights is not query.loras["b"].weights  # task-specific parts stay per task
    assert "encoder.layer.0.attention.self.query.shared_parameters.shared.lora_A" in model.state_dict()
    model.unshare_parameters(MultiTask("a", "b", "c"), name="shared")
    assert not hasattr(query, "shared_parameters")
    assert query.loras["a"].lora_A is not query.loras["c"].lora_A
    assert torch.equal(query.loras["a"].lora_A, ref_a)


def test_share_refuses_adapters_without_a_multi_task_config():
    model = workbench.init(tiny_base_model("bert"))
    model.add_adapter("a", config="lora")
    model.add_adapter("b", config=MTL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError):
        model.share_parameters(MultiTask("a", "b"))
    with pytest.raises(AdapterConfigError):
        model.share_parameters(["b", "missing"])
    assert before.keys() == model.state_dict().keys()


# --- merge, save/load -----------------------------------------------------------------------------------------


def test_merge_equals_the_adapter_and_reset_is_exact():
    model = _model(tasks="a")
    weight = model.base_model.encoder.layer[0].output.dense.weight.detach().clone()
    want = _out(model, "a")
    model.merge_adapter("a")
    assert torch.allclose(_out(model, "a"), want, atol=1e-4)
    model.reset_adapter()
    assert torch.equal(model.base_model.encoder.layer[0].output.dense.weight, weight)


def test_save_load_round_trip(tmp_path):
    model = _model(tasks="ab", share=True)
    want = _out(model, MultiTask("a", "b"), task_ids=[1, 0, 1, 0])
    for t in "ab":
        model.save_adapter(str(tmp_path / t), t)
    config = workbench.core.files.read_json(tmp_path / "a" / "adapter_config.json")["config"]
    assert config["architecture"] == "mtl_lora" and config["n_up_projection"] == 3
    fresh = workbench.init(tiny_base_model("bert"))
    fresh.load_state_dict(model.state_dict(), strict=False)
    for t in "ab":
        fresh.load_adapter(str(tmp_path / t))
    assert isinstance(fresh.adapters_config.get("a"), MTLLoRAConfig)
    assert torch.allclose(_out(fresh.eval(), MultiTask("a", "b"), task_ids=[1, 0, 1, 0]), want, atol=ATOL)


def test_only_linear_averaging():
    model = _model(tasks="ab")
    with pytest.raises(AdapterConfigError, match="MTL-LoRA"):
        model.average_adapter("avg", ["a", "b"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    model.average_adapter("avg", ["a", "b"], weights=[0.5, 0.5])
    assert isinstance(model.adapters_config.get("avg"), MTLLoRAConfig)


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task_ids, match",
    [
        (None, "needs task_ids"),
        ([0, 1], "2 task_ids for a batch of 4"),
        ([0, 1, 2, 3], r"must lie in \[0, 3\)"),
        (["a", "x", "a", "a"], "not children"),
        (torch.tensor([0.0, 1.0, 0.0, 1.0]), "one integer per batch row"),
    ],
)
def test_bad_task_ids_are_refused_before_any_layer_runs(task_ids, match):
    model = _model()
    model.set_active_adapters(MultiTask("a", "b", "c"))
    kwargs = {} if task_ids is None else {"task_ids": task_ids}
    with pytest.raises(CompositionError, match=match):
        model(input_ids=_ids(), **kwargs)


def test_setups_that_cannot_be_computed_are_refused_at_activation():
    model = _model(tasks="ab", config=MTLLoRAConfig(init_weights="bert"))  # q and v: square, so they can Stack
    model.add_adapter("bn", config="seq_bn")
    model.set_active_adapters(MultiTask("a", "bn"))  # methods mix: each row runs its task's adapter, whatever it is
    with pytest.raises(CompositionError):
        model.set_active_adapters(MultiTask(Parallel("a", "b")))  # MultiTask takes str, Stack, Average, Fuse
    model.set_active_adapters(Stack(Parallel("a", "b"), MultiTask("a", "b")))
    with pytest.raises(CompositionError, match="cannot follow a Parallel"):
        model(input_ids=_ids(), task_ids=[0, 1, 0, 1])
    assert model.active_adapters == Stack(Parallel("a", "b"), MultiTask("a", "b"))


def test_fused_qkv_takes_the_weights_but_refuses_the_forward():
    model = workbench.init(tiny_base_model("gpt2"))
    model.add_adapter("a", config=MTLLoRAConfig(n_up_projection=2))
    assert tuple(model.h[0].attn.c_attn.loras["a"].lora_B.shape) == (2, 64, 8)
    with pytest.raises(CompositionError, match="fused"):
        model.set_active_adapters("a")
    with pytest.raises(AdapterConfigError, match="fused"):
        model.merge_adapter("a")
    model.add_adapter("ffn", config=MTLLoRAConfig(selfattn_lora=False, output_lora=True, init_weights="bert"))
    model.set_active_adapters("ffn")
    with torch.no_grad():
        model(input_ids=_ids())


@pytest.mark.parametrize(
    "model_type,config",
    [
        ("bert", "seq_bn"),
        ("llama", "double_seq_bn"),
        ("gpt2", "par_bn"),
        ("bert", "prefix_tuning[prefix_length=3,bottleneck_size=8]"),
        ("llama", "loreft"),
    ],
)
def test_multitask_routes_rows_of_every_row_wise_method(model_type, config):
    """AdapterHub runs MultiTask through any method (as a BatchSplit over rows sorted by task); here rows in any
    order each get exactly their task's adapter."""
    model = tiny_adapter_model(model_type)
    for name in ("a", "b"):
        model.add_adapter(name, config=config)
        with torch.no_grad():
            for _, param in model._adapter_parameters(name):
                param.add_(torch.randn_like(param) * 0.3)
    ids = torch.randint(3, 90, (4, 6))
    model.set_active_adapters(MultiTask("a", "b"))
    with torch.no_grad():
        together = model(input_ids=ids, task_ids=torch.tensor([1, 0, 1, 0]))[0]
    for row, task in enumerate("baba"):
        model.set_active_adapters(task)
        with torch.no_grad():
            alone = model(input_ids=ids[row : row + 1])[0]
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=0)
