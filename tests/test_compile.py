"""torch.compile of models with adapters: one graph per setup (no graph breaks), eager's numbers, and the setup of
each call and each thread, never a stale one.

Most tests compile with the "aot_eager" backend: it runs Dynamo's tracing and guards and autograd's graph capture,
which is where the engine's hooks and per-call state meet the compiler; inductor's code generation is torch's own
(one test trains with the default backend, as `TrainConfig(torch_compile=True)` does).
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch._dynamo as dynamo
from test_train import keyword_frame, make_tokenizer, trained_state
from tiny import tiny_adapter_model, tiny_config
from transformers import BertForSequenceClassification, LlamaForCausalLM

import workbench
from workbench import AdapterFusionConfig, AdapterSetup, Average, BatchSplit, Fuse, Parallel, Split, Stack
from workbench.train import TrainConfig, train

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # eager and compiled draw different masks
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18, 0, 0]])
MASK = torch.tensor([[1] * 8, [1] * 6 + [0, 0]])


def compiled(model, fullgraph: bool = True):
    """A fresh compile: `fullgraph` turns any graph break into an error."""
    dynamo.reset()
    dynamo.utils.counters.clear()
    return torch.compile(model, backend="aot_eager", fullgraph=fullgraph)


def graphs() -> int:
    return dynamo.utils.counters["stats"]["unique_graphs"]


def perturb(model, scale: float = 0.1) -> None:
    """Move trainable weights off their identity-like init, so every adapter changes the output and gets gradients."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale)


def gradients(model, step_model, **inputs) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = step_model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def task_model(model_type: str, config: str):
    torch.manual_seed(0)
    if model_type == "llama":
        model = LlamaForCausalLM(tiny_config("llama"))
        labels = IDS
    else:
        model = BertForSequenceClassification(tiny_config("bert", num_labels=2, **NO_DROPOUT))
        labels = torch.tensor([0, 1])
    workbench.init(model)
    model.add_adapter("a", config=config)
    model.train_adapter("a")
    perturb(model)
    return model, dict(input_ids=IDS, attention_mask=MASK, labels=labels)


METHODS = [
    *[("bert", c) for c in ("seq_bn", "double_seq_bn", "par_bn", "seq_bn_inv", "compacter[reduction_factor=4]")],
    *[("bert", c) for c in ("lora", "ia3", "dora", "vera", "prefix_tuning", "prompt_tuning")],
    *[("bert", c) for c in ("mam", "unipelt")],
    *[("llama", c) for c in ("seq_bn", "lora", "dora", "prefix_tuning")],
]


@pytest.mark.parametrize(("model_type", "config"), METHODS)
def test_a_training_step_compiles_to_one_graph_with_eager_gradients(model_type, config):
    model, inputs = task_model(model_type, config)
    eager_loss, eager = gradients(model, model, **inputs)
    loss, grads = gradients(model, compiled(model), **inputs)  # fullgraph: a graph break raises
    assert graphs() == 1
    assert any("adapter" in n or "lora" in n or "prompt" in n or "refts" in n or "prefix" in n for n in eager)
    assert grads.keys() == eager.keys()
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name in eager:
        torch.testing.assert_close(grads[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_reft_compiles_with_breaks_at_its_row_check_only_and_eager_gradients(model_type):
    """ReFT checks each row's length against its positions before it gathers them: graph breaks in each layer, kept
    because an index out of range on a GPU is a device-side assert that leaves the CUDA context unusable."""
    model, inputs = task_model(model_type, "loreft[dropout=0.0]")
    _, eager = gradients(model, model, **inputs)
    _, grads = gradients(model, compiled(model, fullgraph=False), **inputs)
    breaks = dynamo.utils.counters["graph_break"]
    assert breaks and all("data-dependent" in reason.lower() for reason in breaks)  # the row check's, no other
    assert grads.keys() == eager.keys()
    for name in eager:
        torch.testing.assert_close(grads[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)
    short = dict(inputs, attention_mask=torch.tensor([[1] * 8, [0] * 7 + [1]]))  # a row of one token
    model.eval()
    with pytest.raises(workbench.CompositionError, match="too few"), torch.no_grad():
        compiled(model, fullgraph=False)(**short)


def head_model():
    torch.manual_seed(0)
    model = tiny_adapter_model(**NO_DROPOUT)
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="lora" if name == "c" else "seq_bn")
        model.add_classification_head(name, num_labels=3)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.train_adapter(["a", "b", "c"])
    perturb(model)
    return model.eval()


def outputs_of(result):
    """The logits of a model output, or of each head's output (Parallel, BatchSplit with several heads)."""
    if isinstance(result, (list, tuple)) and not hasattr(result, "keys"):
        return torch.cat([r.logits for r in result])
    return result.logits


COMPOSITIONS = {
    "stack": Stack("a", "b"),
    "fuse": Fuse("a", "b"),
    "parallel": Parallel("a", "b"),
    "batchsplit": BatchSplit("a", "c", batch_sizes=[1, 1]),
    "split": Split("a", "b", splits=[5, 3]),
    "average": Average("a", "c"),
}


@pytest.mark.parametrize("key", COMPOSITIONS)
def test_compositions_with_heads_compile_to_one_graph_with_eager_outputs(key):
    model = head_model()
    model.set_active_adapters(COMPOSITIONS[key])
    with torch.no_grad():
        eager = outputs_of(model(input_ids=IDS, attention_mask=MASK))
        result = outputs_of(compiled(model)(input_ids=IDS, attention_mask=MASK))
    assert graphs() == 1
    torch.testing.assert_close(result, eager)


def test_per_row_adapters_compile_with_eager_outputs():
    model = head_model()
    names = ["c", "__base__"]
    with torch.no_grad():
        eager = model(input_ids=IDS, attention_mask=MASK, adapter_names=names, head="a").logits
        result = compiled(model)(input_ids=IDS, attention_mask=MASK, adapter_names=names, head="a").logits
    torch.testing.assert_close(result, eager)


def test_a_compiled_model_follows_setup_and_weight_changes_instead_of_replaying_a_stale_graph():
    model = head_model()
    fast = compiled(model)

    def both(setup):
        model.set_active_adapters(setup)
        with torch.no_grad():
            return outputs_of(fast(input_ids=IDS, attention_mask=MASK)), outputs_of(
                model(input_ids=IDS, attention_mask=MASK)
            )

    first, eager_a = both("a")
    for _ in range(3):
        again, _ = both("a")
    assert graphs() == 1  # the same setup reuses its graph
    torch.testing.assert_close(again, first)
    for setup in ("b", Stack("a", "b"), "a"):
        result, eager = both(setup)
        torch.testing.assert_close(result, eager)
    assert not torch.allclose(both("b")[0], eager_a)
    with torch.no_grad():  # weights are graph inputs, not constants
        for name, param in model.named_parameters():
            if ".adapters.a.adapter_up" in name:
                param.add_(torch.randn_like(param))
    result, eager = both("a")
    torch.testing.assert_close(result, eager)
    assert not torch.allclose(result, first)
    model.add_adapter("d", config="lora")  # added after compiling
    model.add_adapter("p", config="prefix_tuning")  # a method the model had no hooks for when it was compiled
    perturb(model)
    for setup in ("d", "p", Stack("p", "a")):
        result, eager = both(setup)
        torch.testing.assert_close(result, eager)
    model.set_active_adapters(None)
    model.delete_adapter("a")
    result, eager = both("b")
    torch.testing.assert_close(result, eager)


def test_a_fusion_whose_temperature_anneals_runs_that_step_eagerly_and_keeps_annealing():
    """AdapterHub lowers the fusion temperature (a Python number) on every forward; a graph would freeze it."""
    import copy

    model = head_model()
    model.delete_adapter_fusion(Fuse("a", "b"))
    model.add_adapter_fusion(Fuse("a", "b"), config=AdapterFusionConfig.load("dynamic", temperature=True))
    model.set_active_adapters(Fuse("a", "b"))
    perturb(model, scale=0.5)
    twin = copy.deepcopy(model)
    fast = compiled(model, fullgraph=False)
    layers = lambda m: [x for x in m.modules() if type(x).__name__ == "FusionLayer"]  # noqa: E731
    for step in range(4):
        with torch.no_grad():
            result = outputs_of(fast(input_ids=IDS, attention_mask=MASK))
            expected = outputs_of(twin(input_ids=IDS, attention_mask=MASK))
        torch.testing.assert_close(result, expected)
        assert [f.temperature for f in layers(model)] == [f.temperature for f in layers(twin)] != [50.0, 50.0]
        if step == 0:
            first = graphs()
    assert graphs() == first  # no recompile per step


def test_a_new_setup_block_with_the_same_setup_reuses_the_graph():
    model = head_model()
    fast = compiled(model)
    outputs = []
    for _ in range(3):
        with AdapterSetup(Stack("a", "b")), torch.no_grad():
            outputs.append(outputs_of(fast(input_ids=IDS, attention_mask=MASK)))
    assert graphs() == 1
    with AdapterSetup(Stack("a", "b")), torch.no_grad():
        torch.testing.assert_close(outputs[-1], outputs_of(model(input_ids=IDS, attention_mask=MASK)))


def test_threads_sharing_a_compiled_model_each_get_their_own_setup():
    model = head_model()
    setups = {"a": "a", "b": "b", "stack": Stack("a", "b"), "base": None}
    expected = {}
    for key, setup in setups.items():
        with AdapterSetup(setup, ignore_empty=True), torch.no_grad():
            expected[key] = outputs_of(model(input_ids=IDS, attention_mask=MASK))
    fast = compiled(model)
    results, errors = {key: [] for key in setups}, []
    start = threading.Barrier(len(setups))

    def work(key):
        try:
            start.wait()
            with AdapterSetup(setups[key], ignore_empty=True), torch.no_grad():
                for _ in range(8):
                    results[key].append(outputs_of(fast(input_ids=IDS, attention_mask=MASK)))
        except Exception as err:  # reported below: a thread's exception would otherwise vanish
            errors.append(err)

    threads = [threading.Thread(target=work, args=(key,)) for key in setups]
    # a thread's first call compiles once more (ThreadSlot): 4 setups x 2 would reach Dynamo's default limit of
    # 8 graphs, past which it runs eager without saying so; a higher limit that fails when hit keeps this compiled
    with dynamo.config.patch(recompile_limit=32, fail_on_recompile_limit_hit=True):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors
    assert graphs() <= 2 * len(setups)
    for key, values in results.items():
        assert len(values) == 8
        for value in values:
            torch.testing.assert_close(value, expected[key], msg=key)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("config", ["seq_bn", "lora", "prefix_tuning"])
def test_gradient_checkpointing_under_compile_gives_every_adapter_weight_its_eager_gradient(config, use_reentrant):
    """Checkpointed layers keep their forward's call state on replay; under compile each runs as its own region."""
    model, inputs = task_model("bert", config)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    _, eager = gradients(model, model, **inputs)
    _, grads = gradients(model, compiled(model, fullgraph=False), **inputs)
    assert grads.keys() == eager.keys() == trained
    for name in eager:
        torch.testing.assert_close(grads[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)


def test_train_with_torch_compile_matches_the_eager_run(tmp_path):
    tokenizer = make_tokenizer()
    states, losses = [], []
    for compile_, attention_dropout in ((False, True), (True, True), (True, False)):
        torch.manual_seed(0)
        model = tiny_adapter_model(**NO_DROPOUT)
        model.add_adapter("kw", config="seq_bn[reduction_factor=2]")
        settings = dict(learning_rate=1e-3, max_steps=4, batch_size=8, eval_strategy="steps", eval_steps=4)
        record = train(
            model,
            keyword_frame(48),
            adapter="kw",
            tokenizer=tokenizer,
            output_dir=tmp_path / f"{compile_}-{attention_dropout}",
            config=TrainConfig(
                **settings, logging_steps=1, torch_compile=compile_, attention_dropout=attention_dropout
            ),
        )
        states.append(trained_state(model, "kw"))
        losses.append(record.train_losses)
        assert record.config["torch_compile"] is compile_
    for state, loss in zip(states[1:], losses[1:], strict=True):  # without dropout, attention's changes nothing
        assert state.keys() == states[0].keys() and state
        for name in state:  # inductor orders float sums its own way, and Adam's first steps amplify that for
            # elements with near-zero gradients: well within the learning rate x steps (4e-3) the weights moved
            torch.testing.assert_close(state[name], states[0][name], rtol=1e-3, atol=1e-4, msg=name)
        assert loss == pytest.approx(losses[0], rel=1e-4)
