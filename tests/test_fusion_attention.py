"""workbench.analysis.fusion_attention: the per-layer, per-adapter attention of an AdapterFusion."""

import pytest
import torch
from test_train import make_tokenizer
from tiny import tiny_adapter_model

import workbench
from workbench.analysis import fusion_attention

TEXTS = ["w5 w6 w7 w8 w9 w10 w11", "w12 w13"]


@pytest.fixture
def fused():
    """A tiny BERT with three adapters and a fusion over them whose attention is far from uniform."""
    model = tiny_adapter_model()
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(workbench.Fuse("a", "b", "c"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "adapter_fusion_layer" in name and ("query" in name or "key" in name):
                param.mul_(300.0)  # sharpen the softmax so each layer prefers some adapters
    model.set_active_adapters("a")
    return model


def test_rows_are_layers_columns_adapters_and_sum_to_one(fused):
    frame = fusion_attention(fused, make_tokenizer(), TEXTS, workbench.Fuse("a", "b", "c"))
    assert list(frame.columns) == ["a", "b", "c"] and list(frame.index) == [0, 1]
    assert frame.sum(axis=1).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    assert (frame.values > 0).all()
    assert frame.values.max() - frame.values.min() > 0.05  # not just a uniform 1/3 everywhere


def test_padding_tokens_are_left_out_and_model_state_is_kept(fused):
    tokenizer = make_tokenizer()
    fused.train()
    both = fusion_attention(fused, tokenizer, TEXTS, "a,b,c")
    long, short = (fusion_attention(fused, tokenizer, [t], ["a", "b", "c"]) for t in TEXTS)
    n_long, n_short = (len(tokenizer(t)["input_ids"]) for t in TEXTS)
    expected = (long * n_long + short * n_short) / (n_long + n_short)  # the token-weighted mean, padding excluded
    assert both.values == pytest.approx(expected.values, abs=1e-5)
    assert fused.training and fused.active_adapters.names() == ["a"]


def test_matches_the_forward_output(fused):
    tokenizer = make_tokenizer()
    frame = fusion_attention(fused, tokenizer, TEXTS[:1], "a,b,c")
    fused.eval()
    fused.set_active_adapters(workbench.Fuse("a", "b", "c"))
    with torch.no_grad():
        out = fused(**tokenizer(TEXTS[:1], return_tensors="pt"), output_adapter_fusion_attentions=True)
    layer1 = out["adapter_fusion_attentions"]["a,b,c"][1]["output_adapter"][0].mean(dim=0)
    assert frame.loc[1].tolist() == pytest.approx(layer1.tolist(), abs=1e-5)


def test_bad_fusion_or_texts_are_named(fused):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="no AdapterFusion 'a,b'"):
        fusion_attention(fused, tokenizer, TEXTS, "a,b")
    with pytest.raises(ValueError, match="at least two adapter names"):
        fusion_attention(fused, tokenizer, TEXTS, "a")
    with pytest.raises(ValueError, match="no input texts"):
        fusion_attention(fused, tokenizer, ["  "], "a,b,c")


def test_an_adapter_left_out_of_a_layer_has_no_attention_there():
    """Layer 0 fuses b alone (a is left out there): b gets all of it, a is NaN, not b's value under a's name."""
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn[leave_out=[0]]")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(workbench.Fuse("a", "b"))
    frame = fusion_attention(model, make_tokenizer(), TEXTS, workbench.Fuse("a", "b"))
    assert list(frame.index) == [0, 1] and frame.loc[0].isna().tolist() == [True, False]
    assert frame.loc[0, "b"] == pytest.approx(1.0) and frame.loc[1].sum() == pytest.approx(1.0, abs=1e-5)
