"""The GPU path on a CUDA device: every method and composition gives the CPU's outputs, adapters and heads added
or loaded after a move land on the GPU, bf16 training and checkpointing train the adapter.

Skipped without CUDA (CI has none); run on a lent GPU by benchmarks/gpu_run.sh. The CPU side of the same paths
(bf16, dtypes, device-free code) is tested everywhere in tests/test_dtypes.py and tests/test_per_call_state.py.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import tiny_adapter_model

from workbench import AdapterSetup, Average, BatchSplit, Fuse, Parallel, Split, Stack

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0], [15, 16, 17, 0, 0, 0]])
MASK = (IDS != 0).long()
LABELS = torch.tensor([0, 1, 1])
METHODS = ["seq_bn", "par_bn", "double_seq_bn", "compacter[reduction_factor=4]", "lora", "ia3", "dora", "vera",
           "prefix_tuning", "mam", "unipelt", "loreft", "prompt_tuning"]  # fmt: skip


@pytest.fixture(autouse=True)
def _exact_float32():
    """No TF32 in float32 products, so CUDA and CPU agree to float32 rounding."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def perturb(model, name: str) -> None:
    """Move adapter `name` away from its identity-like init, so that a wrong output shows."""
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * 0.1)


def outputs(model, device: str, **kwargs):
    with torch.no_grad():
        out = model(input_ids=IDS.to(device), attention_mask=MASK.to(device), **kwargs)
    return [t.float().cpu() for t in (out.head_outputs if hasattr(out, "head_outputs") else [out])
            for t in [t.logits if hasattr(t, "logits") else t[0]]]  # fmt: skip


def assert_same(cuda_out, cpu_out):
    assert len(cuda_out) == len(cpu_out)
    for got, want in zip(cuda_out, cpu_out, strict=True):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def model_with(model_type: str, adapters: dict):
    torch.manual_seed(0)
    model = tiny_adapter_model(model_type)
    for name, config in adapters.items():
        model.add_adapter(name, config=config)
        perturb(model, name)
        if model_type == "bert":
            model.add_classification_head(name, num_labels=2 + len(name) % 2)
    return model


def devices_of(model) -> set[str]:
    return {p.device.type for p in model.parameters()} | {b.device.type for b in model.buffers()}


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("config", METHODS)
def test_every_method_gives_the_cpu_outputs_on_cuda(model_type, config):
    if model_type == "llama" and config == "prompt_tuning":
        pytest.skip("prompt tuning is for encoders")
    model = model_with(model_type, {"a": config})
    model.set_active_adapters("a")
    on_cpu = outputs(model, "cpu")
    model.to("cuda")
    assert devices_of(model) == {"cuda"}
    assert_same(outputs(model, "cuda"), on_cpu)


COMPOSITIONS = {
    "stack": lambda: Stack("a", "b"),
    "parallel": lambda: Parallel("a", "b"),
    "fuse": lambda: Fuse("a", "b"),
    "batch_split": lambda: BatchSplit("a", "b", batch_sizes=[1, 2]),
    "average": lambda: Average("a", "b", weights=[0.3, 0.7]),
    "split": lambda: Split("a", "b", splits=[2, 4]),
}


@pytest.mark.parametrize("model_type", ["bert", "llama"])  # post-LN with heads; pre-LN (the layer adds `r`)
@pytest.mark.parametrize("composition", COMPOSITIONS)
def test_compositions_and_their_heads_give_the_cpu_outputs_on_cuda(composition, model_type):
    model = model_with(model_type, {"a": "seq_bn", "b": "seq_bn"})
    if composition == "fuse":
        model.add_adapter_fusion(["a", "b"])
        perturb_fusion(model, "a,b")
    model.set_active_adapters(COMPOSITIONS[composition]())
    on_cpu = outputs(model, "cpu")
    model.to("cuda")
    assert_same(outputs(model, "cuda"), on_cpu)


def perturb_fusion(model, name: str) -> None:
    with torch.no_grad():
        for _, param in model._fusion_parameters(name):
            param.add_(torch.randn_like(param) * 0.1)


def test_per_row_adapters_give_the_cpu_outputs_on_cuda():
    model = model_with("llama", {"a": "lora", "b": "seq_bn"})
    rows = ["a", "b", "a"]
    on_cpu = outputs(model, "cpu", adapter_names=rows)
    model.to("cuda")
    assert_same(outputs(model, "cuda", adapter_names=rows), on_cpu)


def test_adapters_and_heads_added_or_loaded_after_the_move_live_on_cuda(tmp_path):
    source = model_with("bert", {"saved": "lora"})
    source.save_adapter(tmp_path / "saved", "saved")
    source.set_active_adapters("saved")
    want = outputs(source, "cpu")
    torch.manual_seed(0)  # the same base weights as the source
    model = tiny_adapter_model("bert").to("cuda")
    model.add_adapter("new", config="seq_bn")
    model.add_classification_head("new_head", num_labels=4)  # unlike the loaded head's 3
    name = model.load_adapter(str(tmp_path / "saved"), set_active=True)
    assert devices_of(model) == {"cuda"}
    assert name == "saved" and model.active_head == "saved"
    assert_same(outputs(model, "cuda"), want)
    model.set_active_adapters("new")
    model.active_head = "new_head"
    assert outputs(model, "cuda")[0].shape == (3, 4)


def test_merged_lora_on_cuda_gives_the_unmerged_outputs():
    model = model_with("llama", {"a": "lora"}).to("cuda")
    model.set_active_adapters("a")
    unmerged = outputs(model, "cuda")
    model.merge_adapter("a")
    assert_same(outputs(model, "cuda"), unmerged)


@pytest.mark.parametrize("config", ["lora", "ia3", "dora", "vera"])
@pytest.mark.parametrize("there", ["cuda", "cpu"])
def test_a_merged_model_moved_to_another_device_resets_bit_for_bit(config, there):
    """The undo is computed where the merge was (exact_undo.py): a move while merged loses nothing."""
    here = "cpu" if there == "cuda" else "cuda"
    model = model_with("llama", {"a": config}).to(here)
    before = {k: v.cpu().clone() for k, v in model.state_dict().items() if ".loras." not in k}
    model.merge_adapter("a")
    model.to(there)
    model.reset_adapter()
    after = model.state_dict()
    assert all(after[k].device.type == there and torch.equal(after[k].cpu(), v) for k, v in before.items())


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("config", ["seq_bn", "lora", "prefix_tuning"])
def test_bf16_training_on_cuda_with_and_without_checkpointing(model_type, config):
    """Adapter gradients with checkpointing equal those without (float32), and bf16 steps change the adapter."""

    def adapter_grads(checkpointing: bool, dtype):
        model = model_with(model_type, {"a": config}).to(device="cuda", dtype=dtype)
        model.train_adapter("a")
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.is_activation_checkpointing
        out = model(input_ids=IDS.cuda(), attention_mask=MASK.cuda())[0]
        out.float().pow(2).sum().backward()
        return model, {k: p.grad for k, p in model._adapter_parameters("a")}

    _, plain = adapter_grads(False, torch.float32)
    _, checkpointed = adapter_grads(True, torch.float32)
    assert plain and all(g is not None and g.is_cuda for g in plain.values())
    for key, grad in plain.items():
        torch.testing.assert_close(checkpointed[key], grad, atol=1e-5, rtol=1e-4, msg=key)

    model, grads = adapter_grads(True, torch.bfloat16)
    assert all(g is not None and g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads.values())
    before = {k: p.detach().clone() for k, p in model._adapter_parameters("a")}
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert any(not torch.equal(p, before[k]) for k, p in model._adapter_parameters("a"))


def test_a_deep_copy_moved_there_and_back_keeps_the_outputs():
    model = model_with("bert", {"a": "seq_bn", "b": "lora"})
    model.set_active_adapters(Stack("a", "b"))
    on_cpu = outputs(model, "cpu")
    moved = copy.deepcopy(model).to("cuda")
    assert devices_of(model) == {"cpu"} and devices_of(moved) == {"cuda"}
    assert_same(outputs(moved, "cuda"), on_cpu)
    moved.to("cpu")
    with AdapterSetup("a", head_setup="a"):
        assert_same(outputs(moved, "cpu"), outputs(model, "cpu"))
