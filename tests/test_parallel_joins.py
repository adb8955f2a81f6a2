"""Parallel/BatchSplit join their children's states back without copying what the children left untouched.

`cat_rows` reads consecutive row slices of one tensor as that tensor; a Parallel of alike bottleneck adapters
finishes all rows in one `post_forward`. Both must give exactly the outputs and gradients of the adapters alone.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_adapter_model

from workbench import Parallel
from workbench.core.methods import bottleneck, bottleneck_layers, lora
from workbench.core.runtime import cat_rows


def _slices(t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    return list(t.split(sizes))


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_consecutive_slices_are_joined_without_a_copy(mode):
    t = torch.randn(6, 3, 4)
    context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with context:
        source = t * 1  # made inside the mode, as a layer's output would be
        joined = cat_rows(_slices(source, [2, 3, 1]))
    assert joined.data_ptr() == source.data_ptr() and joined.shape == source.shape
    assert torch.equal(joined, source)


def test_slices_of_a_tensor_in_a_graph_give_that_tensor_and_its_gradients():
    leaf = torch.randn(4, 5, requires_grad=True)
    source = leaf * 2
    parts = _slices(source, [1, 3])
    assert cat_rows(parts) is source
    weights = torch.randn(4, 5)
    (cat_rows(parts) * weights).sum().backward()
    torch.testing.assert_close(leaf.grad, 2 * weights, rtol=0, atol=0)


def test_slices_of_a_linear_layers_3d_output_in_a_graph_are_joined_without_a_copy():
    layer = torch.nn.Linear(5, 3)
    x, weights = torch.randn(4, 2, 5), torch.randn(4, 2, 3)
    out = layer(x)  # a 3-d view of the layer's 2-d result
    joined = cat_rows(_slices(out, [2, 2]))
    assert joined.data_ptr() == out.data_ptr() and torch.equal(joined, out)
    (joined * weights).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.einsum("bto,bti->oi", weights, x))


@pytest.mark.parametrize(
    "parts",
    [
        lambda t: [t[2:4], t[0:2]],  # out of order
        lambda t: [t[0:1], t[2:4]],  # a gap
        lambda t: [t[:, :2], t[:, 2:]],  # columns, not rows
        lambda t: [t[0:2], t[0:2].clone()],  # another tensor
        lambda t: [t[0:2], t[2:4].to(torch.float64)],  # another dtype
    ],
)
def test_other_pieces_are_concatenated(parts):
    t = torch.randn(4, 4)
    pieces = parts(t)
    with torch.no_grad():
        joined = cat_rows(pieces)
    assert torch.equal(joined, torch.cat(pieces))
    assert joined.data_ptr() != t.data_ptr()


def test_a_part_of_the_rows_in_a_graph_is_concatenated():
    source = torch.randn(4, 5, requires_grad=True) * 1
    joined = cat_rows(_slices(source, [1, 2, 1])[:2])  # rows 0..2 of 4: not the whole tensor
    assert joined is not source and torch.equal(joined, source[:3])


# --- in the model: the joins happen, and Parallel still equals the adapters alone -----------------------------

CONFIGS = {
    "lora": ("lora[init_weights=bert]", "lora[init_weights=bert,r=4]"),
    "seq_bn": ("seq_bn", "seq_bn[reduction_factor=4]"),
    "mixed bottlenecks": ("seq_bn", "par_bn"),  # different post-processing: finished row group by row group
}


def _model(configs):
    torch.manual_seed(0)
    model = tiny_adapter_model("bert")
    for name, config in zip("ab", configs, strict=True):
        model.add_adapter(name, config=config)
        with torch.no_grad():
            for _, param in model._adapter_parameters(name):
                param.add_(torch.randn_like(param) * 0.2)
    return model


def _forward(model, setup, ids):
    model.set_active_adapters(setup)
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


@pytest.fixture
def joins(monkeypatch):
    """Whether each `cat_rows` of the LoRA and bottleneck layers returned memory of its first slice (no copy)."""
    seen = []

    def spy(tensors):
        out = cat_rows(tensors)
        seen.append(out.data_ptr() == tensors[0].data_ptr())
        return out

    monkeypatch.setattr(lora, "cat_rows", spy)
    monkeypatch.setattr(bottleneck_layers, "cat_rows", spy)
    return seen


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_parallel_output_equals_the_adapters_alone_and_joins_without_copies(kind, joins):
    model = _model(CONFIGS[kind])
    ids = torch.randint(3, 90, (2, 6))
    with torch.no_grad():
        single = torch.cat([_forward(model, name, ids) for name in "ab"])
        joins.clear()
        both = _forward(model, Parallel("a", "b"), ids)
    torch.testing.assert_close(both, single, rtol=0, atol=1e-6)
    assert joins and all(joins), joins


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_gradients_through_parallel_equal_those_of_the_adapters_alone(kind, joins):
    model = _model(CONFIGS[kind])
    model.train_adapter(["a", "b"])
    model.eval()  # no dropout: the two ways must see the same computation
    ids = torch.randint(3, 90, (2, 6))
    weights = torch.randn(4, 6, 32)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    alone = grads(sum((_forward(model, n, ids) * w).sum() for n, w in zip("ab", weights.split(2), strict=True)))
    joins.clear()
    together = grads((_forward(model, Parallel("a", "b"), ids) * weights).sum())
    assert alone.keys() == together.keys() and alone
    for name in alone:
        torch.testing.assert_close(together[name], alone[name], rtol=1e-4, atol=1e-6, msg=name)
    assert joins and all(joins), joins


def test_alike_bottlenecks_finish_all_rows_in_one_call(monkeypatch):
    calls = []
    original = bottleneck.Adapter.post_forward

    def counting(self, h, *args, **kwargs):
        calls.append(h.shape[0])
        return original(self, h, *args, **kwargs)

    monkeypatch.setattr(bottleneck.Adapter, "post_forward", counting)
    model = _model(CONFIGS["seq_bn"])
    with torch.no_grad():
        _forward(model, Parallel("a", "b"), torch.randint(3, 90, (2, 6)))
    assert calls == [4, 4]  # one per layer's output site (2 layers), over both channels' rows
