"""Quantized bases (QLoRA-style): adapters on a model loaded in 4/8 bit through transformers' bitsandbytes
integration. Runs for real where bitsandbytes runs (its CPU backend, or a GPU); the refusal paths run everywhere."""

from __future__ import annotations

import sys

import pytest
import torch
from tiny import tiny_config
from transformers import AutoModel, BitsAndBytesConfig

import workbench
from workbench import UnsupportedModelError
from workbench.core import quantized

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def _usable(device: str) -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return quantized._kernel_problem("4-bit", device) is None and quantized._kernel_problem("8-bit", device) is None


needs_bnb_cpu = pytest.mark.skipif(not _usable("cpu"), reason="bitsandbytes with a working CPU backend not installed")


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_config("llama", hidden_size=64, intermediate_size=128)).save_pretrained(folder)
    return folder


QUANT = {
    "4bit": lambda: BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
    "8bit": lambda: BitsAndBytesConfig(load_in_8bit=True),
}


def load(folder, bits: str, device="cpu"):
    return workbench.AutoAdapterModel.from_pretrained(folder, quantization_config=QUANT[bits](), device_map=device)


@needs_bnb_cpu
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_quantized_projections_are_recognised(saved_llama, bits):
    model = load(saved_llama, bits)
    q_proj = model.base_model.layers[0].self_attn.q_proj
    assert quantized.quantization_of(q_proj) == ("4-bit" if bits == "4bit" else "8-bit")
    assert quantized.quantization_of(model.base_model.embed_tokens) is None
    assert model._engine.reference_weight().is_floating_point()


@needs_bnb_cpu
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_lora_adds_its_delta_to_the_quantized_layers_output(saved_llama, bits):
    model = load(saved_llama, bits).eval()
    with torch.no_grad():
        base = model(input_ids=IDS)[0]
    model.add_adapter("a", "lora", set_active=True)  # B = 0: the adapter starts as a no-op
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS)[0], base, atol=0, rtol=0)
        for _, param in model._adapter_parameters("a"):
            param.add_(torch.randn_like(param) * 0.1)
    q_proj = model.base_model.layers[0].self_attn.q_proj
    lora = q_proj.loras["a"]
    captured = {}
    handle = q_proj.register_forward_hook(lambda m, a, o: captured.update(x=a[0], y=o))
    try:
        with torch.no_grad():
            model(input_ids=IDS)
    finally:
        handle.remove()
    with torch.no_grad():
        y0 = type(q_proj).forward(q_proj, captured["x"])
        delta = (captured["x"] @ lora.lora_A.t() @ lora.lora_B.t()) * lora.scaling
    torch.testing.assert_close(captured["y"], y0 + delta, atol=1e-5, rtol=1e-5)


@needs_bnb_cpu
@pytest.mark.parametrize("bits", ["4bit", "8bit"])
@pytest.mark.parametrize("config", ["lora[init_weights=bert]", "ia3", "seq_bn", "prefix_tuning", "noreft"])
def test_adapters_train_save_load_and_run_per_row_on_a_quantized_base(saved_llama, bits, config, tmp_path):
    model = load(saved_llama, bits)
    model.add_adapter("a", config)
    model.add_causal_lm_head("a")
    model.train_adapter("a")
    assert all(p.dtype == torch.float32 for _, p in model._adapter_parameters("a"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=IDS, labels=IDS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    model.save_adapter(tmp_path, "a")
    model.load_adapter(tmp_path, load_as="b")
    with torch.no_grad():
        with workbench.AdapterSetup("a"):
            a = model(input_ids=IDS).logits
        with workbench.AdapterSetup("b", head_setup="a"):
            torch.testing.assert_close(model(input_ids=IDS).logits, a, atol=0, rtol=0)
        rows = model(input_ids=IDS, adapter_names=["a", "__base__"], head="a").logits
    torch.testing.assert_close(rows[0], a[0], atol=1e-5, rtol=1e-5)


@needs_bnb_cpu
def test_merge_and_dora_need_the_dense_weight_and_are_refused(saved_llama):
    model = load(saved_llama, "4bit")
    model.add_adapter("a", "lora")
    with pytest.raises(UnsupportedModelError, match="bitsandbytes 4-bit layer.*dequantiz"):
        model.merge_adapter("a")
    with pytest.raises(UnsupportedModelError, match="DoRA"):
        model.add_adapter("d", "dora")
    assert list(model.adapters) == ["a"]


@needs_bnb_cpu
def test_a_machine_that_cannot_run_the_kernels_is_refused_clearly(saved_llama, monkeypatch):
    model = load(saved_llama, "8bit")
    monkeypatch.setattr(quantized, "_kernel_problem", lambda kind, device: "no kernel for this device")
    with pytest.raises(UnsupportedModelError, match="needs a CUDA GPU"):
        model.add_adapter("a", "lora")
    assert not model.adapters


def test_an_unimportable_bitsandbytes_is_reported(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    problem = quantized._kernel_problem.__wrapped__("4-bit", "cpu")
    assert problem and "cannot be imported" in problem


def test_plain_models_need_no_bitsandbytes(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    model = workbench.AutoAdapterModel.from_config(tiny_config("llama"))
    model.add_adapter("a", "lora")
    model.merge_adapter("a")
    assert quantized.quantized_kinds(model) == {}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_qlora_4bit_nf4_on_a_gpu(saved_llama):
    pytest.importorskip("bitsandbytes")
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                bnb_4bit_use_double_quant=True)  # fmt: skip
    model = workbench.AutoAdapterModel.from_pretrained(saved_llama, quantization_config=config, device_map="cuda:0")
    assert type(model.base_model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    model.add_adapter("a", "lora[init_weights=bert]")
    model.add_causal_lm_head("a")
    model.train_adapter("a")
    ids = IDS.to("cuda:0")
    assert all(p.device.type == "cuda" for _, p in model._adapter_parameters("a"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    out = model.generate(input_ids=ids, adapter_names=["a", "__base__"], max_new_tokens=3, do_sample=False,
                         pad_token_id=0, eos_token_id=None)  # fmt: skip
    assert out.shape == (2, 9)
    with pytest.raises(UnsupportedModelError, match="4-bit"):
        model.merge_adapter("a")
