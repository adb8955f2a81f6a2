"""Dtypes and devices: adapters take the base model's float dtype unless their config names one; a bf16 model
adds, runs, trains, saves, loads and merges every method on CPU."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config

import workbench
from workbench import AdapterConfigError

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
MASK = (IDS != 0).long()
LABELS = torch.tensor([0, 1])
MERGEABLE = ("lora", "ia3", "dora", "vera", "dvora")
CONFIGS = ["seq_bn", "double_seq_bn", "par_bn", "seq_bn_inv", "compacter[reduction_factor=4]", "adapterplus",
           "lora", "ia3", "dora", "vera", "dvora", "prefix_tuning", "prefix_tuning[flat=True]", "mam", "unipelt",
           "noreft", "direft", "loreft[dtype='float32']", "prompt_tuning"]  # fmt: skip


def bf16_model(model_type: str):
    torch.manual_seed(0)
    return workbench.AutoAdapterModel.from_config(tiny_config(model_type), dtype=torch.bfloat16)


def float_dtypes(model, name) -> set:
    return {v.dtype for v in model.adapter_state_dict(name).values() if v.is_floating_point()}


@pytest.mark.parametrize("model_type", ["bert", "llama"])
@pytest.mark.parametrize("config", CONFIGS)
def test_bf16_model_end_to_end_on_cpu(model_type, config, tmp_path):
    if model_type == "llama" and config == "prompt_tuning":
        pytest.skip("prompt tuning is for encoders")
    model = bf16_model(model_type)
    model.add_classification_head("h", num_labels=2)
    model.add_adapter("a", config)
    model.train_adapter("a")
    model.active_head = "h"
    expected = {torch.float32} if "float32" in config else {torch.bfloat16}
    assert float_dtypes(model, "a") == expected
    assert {p.dtype for p in model.heads["h"].parameters()} == {torch.bfloat16}
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(2):
        loss = model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable, strict=True))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    model.save_adapter(tmp_path, "a")
    model.load_adapter(tmp_path, load_as="b", set_active=True)
    model.active_head = "h"
    assert float_dtypes(model, "b") == expected
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS, attention_mask=MASK).logits, out, atol=0, rtol=0)
    if config in MERGEABLE:
        model.merge_adapter("b")
        with torch.no_grad():
            merged = model(input_ids=IDS, attention_mask=MASK).logits
        assert torch.isfinite(merged).all()
        torch.testing.assert_close(merged, out, atol=0.05, rtol=0.05)  # bf16 rounding of W + dW
        model.reset_adapter()
        with torch.no_grad():
            torch.testing.assert_close(model(input_ids=IDS, attention_mask=MASK).logits, out, atol=0, rtol=0)


@pytest.mark.parametrize("base_dtype, config_dtype", [(torch.bfloat16, "float32"), (torch.float32, "bfloat16")])
@pytest.mark.parametrize("config", ["lora", "ia3", "dora", "vera", "dvora", "lora[use_gating=True]", "noreft"])
def test_the_config_dtype_overrides_the_models(base_dtype, config_dtype, config):
    model = workbench.AutoAdapterModel.from_config(tiny_config("llama"), dtype=base_dtype)
    spec = f"{config[:-1]},dtype='{config_dtype}']" if "[" in config else f"{config}[dtype='{config_dtype}']"
    model.add_adapter("a", spec, set_active=True)
    assert float_dtypes(model, "a") == {getattr(torch, config_dtype)}
    with torch.no_grad():
        out = model(input_ids=IDS, attention_mask=MASK)[0]
    assert out.dtype == base_dtype and torch.isfinite(out).all()


def test_loreft_keeps_a_float32_projection():
    model = bf16_model("llama")
    with pytest.raises(AdapterConfigError, match="dtype='float32'"):
        model.add_adapter("a", "loreft")
    model.add_adapter("a", "loreft[dtype='float32']")
    with pytest.raises(AdapterConfigError, match="orthogonal"):
        model.adapter_to("a", dtype=torch.bfloat16)
    assert float_dtypes(model, "a") == {torch.float32}


def test_casting_a_model_with_loreft_keeps_its_projection_float32_and_runs():
    """torch has no half-precision orthogonal map: `model.to(bfloat16)` leaves the projection in float32 (the
    forward failed in `orgqr`); the output stays that of the float32 model up to bf16's rounding."""
    torch.manual_seed(0)
    model = workbench.AutoAdapterModel.from_config(tiny_config("llama")).eval()
    model.add_adapter("a", "loreft")
    with torch.no_grad():
        for _, param in model._adapter_parameters("a"):
            param.add_(0.1 * torch.randn_like(param))
    model.set_active_adapters("a")
    with torch.no_grad():
        expected = model(input_ids=IDS)[0]
        model.to(torch.bfloat16)
        got = model(input_ids=IDS)[0]
    projections = [m.projection.parametrizations.weight.original for m in model.modules() if hasattr(m, "projection")]
    assert projections and {p.dtype for p in projections} == {torch.float32}
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("model_type", ["bert", "gpt2"])
@pytest.mark.parametrize("config", ["seq_bn", "seq_bn_inv", "compacter[reduction_factor=4]", "lora", "ia3",
                                    "prefix_tuning", "noreft", "seq_bn[use_gating=True]", "mam",
                                    "prefix_tuning[use_gating=True]", "unipelt"])  # fmt: skip
def test_adapter_to_moves_and_casts_and_the_forward_follows(model_type, config):
    model = bf16_model(model_type).eval()
    model.add_adapter("a", config, set_active=True)
    model.adapter_to("a", dtype=torch.float32)
    assert float_dtypes(model, "a") == {torch.float32}
    with torch.no_grad():
        wide = model(input_ids=IDS, attention_mask=MASK)[0]
    assert wide.dtype == torch.bfloat16 and torch.isfinite(wide).all()
    model.adapter_to("a", "cpu", torch.bfloat16)
    assert float_dtypes(model, "a") == {torch.bfloat16}
    with torch.no_grad():
        narrow = model(input_ids=IDS, attention_mask=MASK)[0]
    torch.testing.assert_close(narrow, wide, atol=0.05, rtol=0.05)


def fusion_dtypes(model, name="a,b") -> set:
    return {p.dtype for _, p in model._engine.named_parameters_of(f"fusion:{name}")}


def test_a_fusion_takes_the_models_dtype_and_follows_adapter_fusion_to(tmp_path):
    """Added or loaded on a bf16 model, a fusion is bf16; cast apart with `adapter_fusion_to`, its forward still
    runs (in its own dtype, answering in the model's)."""
    model = bf16_model("bert").eval()
    for name in ("a", "b"):
        model.add_adapter(name, "seq_bn")
    model.add_adapter_fusion(workbench.Fuse("a", "b"), set_active=True)
    assert fusion_dtypes(model) == {torch.bfloat16}
    with torch.no_grad():
        narrow = model(input_ids=IDS, attention_mask=MASK)[0]
    model.adapter_fusion_to(workbench.Fuse("a", "b"), dtype=torch.float32)
    assert fusion_dtypes(model) == {torch.float32}
    with torch.no_grad():
        wide = model(input_ids=IDS, attention_mask=MASK)[0]
    assert wide.dtype == torch.bfloat16 and torch.isfinite(wide).all()
    torch.testing.assert_close(narrow, wide, atol=0.05, rtol=0.05)
    model.save_adapter_fusion(tmp_path / "fusion", "a,b")
    loaded = bf16_model("bert").eval()
    for name in ("a", "b"):
        loaded.add_adapter(name, "seq_bn")
    loaded.load_adapter_fusion(tmp_path / "fusion", set_active=True)
    assert fusion_dtypes(loaded) == {torch.bfloat16}
    with torch.no_grad():
        assert torch.isfinite(loaded(input_ids=IDS, attention_mask=MASK)[0]).all()


@pytest.mark.parametrize("config", ["seq_bn", "compacter[reduction_factor=4]", "lora", "ia3", "vera",
                                    "prefix_tuning", "prompt_tuning", "noreft", "loreft"])  # fmt: skip
def test_init_weights_seed_is_reproducible_and_independent_of_the_dtype(config):
    seeded = f"{config[:-1]},init_weights_seed=7]" if "[" in config else f"{config}[init_weights_seed=7]"
    states = []
    for dtype in (torch.float32, torch.float32, torch.bfloat16):
        torch.manual_seed(len(states))  # a different global state each time: only the seed decides
        model = workbench.AutoAdapterModel.from_config(tiny_config("bert"), dtype=dtype)
        if dtype == torch.bfloat16 and config == "loreft":
            seeded = seeded[:-1] + ",dtype='float32']"
        model.add_adapter("a", seeded)
        states.append(model.adapter_state_dict("a"))
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
        assert torch.equal(value.to(states[2][key].dtype), states[2][key]), key


def test_trainer_trains_an_adapter_of_a_bf16_model_on_cpu(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = bf16_model("bert")
    model.add_adapter("a", "lora")
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    data = [{"input_ids": IDS[i % 2], "attention_mask": MASK[i % 2], "labels": LABELS[i % 2]} for i in range(8)]
    args = TrainingArguments(tmp_path, bf16=True, use_cpu=True, max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1)  # fmt: skip
    before = {k: v.clone() for k, v in model.adapter_state_dict("a").items()}
    Trainer(model=model, args=args, train_dataset=data).train()
    after = model.adapter_state_dict("a")
    assert float_dtypes(model, "a") == {torch.bfloat16}
    assert any(not torch.equal(v, after[k]) for k, v in before.items())
    assert all(torch.isfinite(v).all() for v in after.values())
