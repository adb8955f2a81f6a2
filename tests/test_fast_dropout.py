"""workbench.train.fast_dropout: honest Bernoulli masks, gradients, determinism, eval unchanged, train() use."""

import math

import pytest
import torch
from test_train import keyword_frame, make_tokenizer
from tiny import tiny_adapter_model
from torch import nn

from workbench.core.methods.prefix_tuning import wrapped_implementation
from workbench.train import StepEvent, TrainConfig, train
from workbench.train import fast_dropout as fd

N = 1 << 20


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_is_bernoulli_p_with_independent_elements(p):
    drop = (~fd.keep_mask((N,), p, seed=11)).double()
    exact = fd.drop_threshold(p) / fd.LEVELS
    assert abs(exact - p) <= 2**-17
    sigma = math.sqrt(p * (1 - p) / N)
    assert abs(drop.mean().item() - exact) < 5 * sigma
    for lane in range(4):  # each 16-bit lane of the 64-bit random words is uniform
        assert abs(drop[lane::4].mean().item() - exact) < 5 * sigma * 2
    for lag in (1, 2, 3, 4, 5, 128):  # neighbours within a word, across words, a row apart: uncorrelated
        both = (drop[:-lag] * drop[lag:]).mean().item()
        assert abs(both - exact**2) < 5 * math.sqrt(exact**2 * (1 - exact**2) / N), lag


def test_same_seed_same_mask_other_seed_other_mask():
    a, b, c = (fd.keep_mask((64, 512), 0.1, seed=s) for s in (3, 3, 4))
    assert torch.equal(a, b)
    assert (a != c).float().mean() > 0.1


def test_dropout_scales_kept_values_and_gradient_uses_the_same_mask():
    x = (torch.rand(32, 300) + 0.5).requires_grad_()  # no zeros: a zero output means dropped
    y = fd.seeded_dropout(x, 0.25)
    kept = y != 0
    scale = fd.keep_scale(0.25)
    assert torch.allclose(y[kept], x[kept] * scale)
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    upstream = torch.randn_like(y)
    y.backward(upstream)
    assert torch.equal(x.grad, torch.where(kept, upstream * scale, 0.0))


def test_expectation_is_kept():
    y = fd.seeded_dropout(torch.ones(N), 0.1)
    assert abs(y.mean().item() - 1.0) < 5 * math.sqrt(0.1 / 0.9 / N)


def test_determinism_under_manual_seed_and_identity_when_not_training():
    x = torch.randn(8, 100)
    torch.manual_seed(5)
    first = fd.seeded_dropout(x, 0.1)
    torch.manual_seed(5)
    assert torch.equal(fd.seeded_dropout(x, 0.1), first)
    assert not torch.equal(fd.seeded_dropout(x, 0.1), first)
    assert fd.seeded_dropout(x, 0.1, training=False) is x
    assert fd.seeded_dropout(x, 0.0) is x
    with pytest.raises(ValueError, match="p=1.0"):
        fd.seeded_dropout(x, 1.0)


def test_attention_applies_the_drawn_mask_to_the_probabilities():
    module = nn.Module()
    module.workbench_attention_dropout = "fast"
    module.training = True
    q, k, v = (torch.randn(2, 4, 6, 8) for _ in range(3))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2]).view(2, 1, 1, 6).expand(2, 1, 6, 6)
    torch.manual_seed(9)
    out, _ = fd._attention(module, q, k, v, mask, dropout=0.2, scaling=0.5)
    torch.manual_seed(9)
    keep = fd.keep_mask((2, 4, 6, 6), 0.2, fd.draw_seed())
    scores = (q @ k.transpose(-1, -2) * 0.5).masked_fill(~mask, torch.finfo(q.dtype).min)
    expected = (scores.softmax(-1) * keep * fd.keep_scale(0.2)) @ v
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-6)
    module.workbench_attention_dropout = "off"  # as sdpa without dropout
    off, _ = fd._attention(module, q, k, v, mask, dropout=0.2, scaling=0.5)
    plain = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)
    assert torch.allclose(off, plain.transpose(1, 2), atol=1e-6)


def _model(head: bool = True):
    model = tiny_adapter_model(attn_implementation="sdpa", attention_probs_dropout_prob=0.3, hidden_dropout_prob=0.3)
    model.add_adapter("a", config="seq_bn")
    if head:
        model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    return model


def test_eval_outputs_are_bit_identical_and_everything_is_restored():
    model = _model().eval()
    ids = torch.randint(4, 100, (3, 10))
    before = model(input_ids=ids).logits
    with fd.fast_dropout(model):
        assert model.config._attn_implementation == fd.IMPL_NAME
        assert any(type(m) is fd.FastDropout for m in model.modules())
        inside = model(input_ids=ids).logits
    assert torch.equal(inside, before)
    assert model.config._attn_implementation == "sdpa"
    assert not any(isinstance(m, fd.FastDropout) for m in model.modules())
    assert not any(hasattr(m, "workbench_attention_dropout") for m in model.modules())


def test_training_under_fast_dropout_uses_it_and_learns():
    model = _model().train()
    ids = torch.randint(4, 100, (4, 12))
    labels = torch.tensor([0, 1, 0, 1])
    with fd.fast_dropout(model):
        torch.manual_seed(1)
        a = model(input_ids=ids, labels=labels).loss
        torch.manual_seed(1)
        b = model(input_ids=ids, labels=labels).loss
        c = model(input_ids=ids, labels=labels).loss
        a.backward()
    assert a == b and c != a  # the masks follow torch's seed
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    with fd.fast_dropout(model, fast=False, attention=False):  # opt-in: no attention dropout, hidden dropout as usual
        assert not any(type(m) is fd.FastDropout for m in model.modules())
        assert model.config._attn_implementation == fd.IMPL_NAME


def test_prefix_tuning_keeps_its_attention_and_gets_the_fast_dropout():
    model = tiny_adapter_model(attn_implementation="sdpa", attention_probs_dropout_prob=0.3)
    model.add_adapter("p", config="prefix_tuning")
    model.train_adapter("p")
    ids = torch.randint(4, 100, (2, 7))
    before = model.eval()(input_ids=ids).last_hidden_state
    impl = model.config._attn_implementation
    with fd.fast_dropout(model):  # prefix tuning keeps its attention function, over the fast-dropout sdpa
        assert wrapped_implementation(model.config._attn_implementation) == fd.IMPL_NAME
        assert torch.equal(model.eval()(input_ids=ids).last_hidden_state, before)
        model.train()
        torch.manual_seed(2)
        a = model(input_ids=ids).last_hidden_state
        torch.manual_seed(2)
        assert torch.equal(model(input_ids=ids).last_hidden_state, a)
        assert not torch.allclose(a, before, atol=1e-3)
    assert model.config._attn_implementation == impl


def test_train_runs_adapters_with_fast_dropout_and_restores_the_model(tmp_path):
    model = _model(head=False)
    seen = []

    def watch(event):
        if isinstance(event, StepEvent):
            seen.append({type(m) for m in model.modules() if isinstance(m, nn.Dropout)})

    config = TrainConfig(max_steps=3, batch_size=8, eval_strategy="no", logging_steps=1, save_steps=100)
    train(
        model,
        {"train": keyword_frame(32)},
        adapter="a",
        tokenizer=make_tokenizer(),
        output_dir=tmp_path,
        config=config,
        callbacks=[watch],
    )
    assert seen and all(kinds == {fd.FastDropout} for kinds in seen)
    assert {type(m) for m in model.modules() if isinstance(m, nn.Dropout)} == {nn.Dropout}
    assert model.config._attn_implementation == "sdpa"

    seen.clear()
    config = TrainConfig(max_steps=2, batch_size=8, eval_strategy="no", save_steps=100, fast_dropout=False)
    train(
        model,
        {"train": keyword_frame(32)},
        adapter="a",
        tokenizer=make_tokenizer(),
        output_dir=tmp_path / "b",
        config=config,
        callbacks=[watch],
    )
    assert seen and all(kinds == {nn.Dropout} for kinds in seen)
