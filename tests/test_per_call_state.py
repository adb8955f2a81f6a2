"""Per-call state: threads sharing one model, nested setups, and gradient checkpointing replaying layers."""

from __future__ import annotations

import asyncio
import threading
import warnings

import pytest
import torch
from test_train import keyword_frame, make_tokenizer
from tiny import tiny_adapter_model, tiny_base_model

import workbench
from workbench import AdapterSetup, BatchSplit, CompositionError, Parallel, Stack
from workbench.core.context import current_call
from workbench.core.rows import current_plan
from workbench.core.thread_slot import ThreadSlot
from workbench.train import TrainConfig, train

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])


def perturb(model, name, scale=0.2):
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * scale)


def hidden(model):
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK)[0]


def model_with(configs: dict, model_type="bert"):
    torch.manual_seed(0)
    model = tiny_adapter_model(model_type)
    for name, config in configs.items():
        model.add_adapter(name, config=config)
        perturb(model, name)
    return model


SETUPS = {
    "a": "a",
    "b": "b",
    "stack": Stack("a", "b"),
    "parallel": Parallel("a", "c"),
    "batchsplit": BatchSplit("b", "c", batch_sizes=[1, 1]),
    "none": None,
}


@pytest.mark.parametrize("model_type", ["bert", "llama"])
def test_threads_sharing_one_model_each_get_their_own_setup(model_type):
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]", "c": "prefix_tuning"}, model_type)
    expected = {}
    for key, setup in SETUPS.items():
        with AdapterSetup(setup, ignore_empty=True):
            expected[key] = hidden(model)
    assert not torch.allclose(expected["a"], expected["b"])
    results, errors = {key: [] for key in SETUPS}, []
    start = threading.Barrier(len(SETUPS))

    def worker(key):
        try:
            start.wait()
            for _ in range(6):
                with AdapterSetup(SETUPS[key], ignore_empty=True):
                    results[key].append(hidden(model))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(key,)) for key in SETUPS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for key, outputs in results.items():
        assert len(outputs) == 6
        for out in outputs:
            torch.testing.assert_close(out, expected[key], atol=0, rtol=0, msg=f"thread running {key}")


def test_a_thread_without_a_scope_uses_the_active_setup_while_another_runs_a_scope():
    model = model_with({"a": "seq_bn", "b": "seq_bn"})
    model.set_active_adapters("a")
    active = hidden(model)
    with AdapterSetup("b"):
        scoped = hidden(model)
        seen = []
        thread = threading.Thread(target=lambda: seen.append(hidden(model)))
        thread.start()
        thread.join()
    torch.testing.assert_close(seen[0], active, atol=0, rtol=0)
    assert not torch.allclose(scoped, active)


def test_setups_nest_and_unwind():
    model = model_with({"a": "seq_bn", "b": "seq_bn"})
    plain = hidden(model)
    with AdapterSetup("a"):
        a = hidden(model)
        with AdapterSetup("b"):
            b = hidden(model)
        torch.testing.assert_close(hidden(model), a, atol=0, rtol=0)
    torch.testing.assert_close(hidden(model), plain, atol=0, rtol=0)
    assert not torch.allclose(a, b)


def test_a_scoped_setup_is_checked_before_the_forward_runs():
    model = model_with({"a": "seq_bn"})
    with pytest.raises(CompositionError, match="ghost"), AdapterSetup("ghost"):
        hidden(model)
    with pytest.raises(CompositionError, match="batch_sizes"), AdapterSetup(BatchSplit("a", "a", batch_sizes=[1, 5])):
        hidden(model)
    torch.testing.assert_close(hidden(model), model_with({})(input_ids=IDS, attention_mask=MASK)[0].detach())


def test_a_failed_forward_leaves_no_call_state_behind():
    model = model_with({"a": "seq_bn"})
    plain = hidden(model)
    with pytest.raises(Exception), AdapterSetup("a"):  # noqa: B017 - any error in the middle of the forward
        model(input_ids=torch.tensor([[500]]))  # index out of the vocabulary
    torch.testing.assert_close(hidden(model), plain, atol=0, rtol=0)


def _interrupt(module, args, output):
    raise KeyboardInterrupt  # a notebook cell stopped in the middle of a forward


@pytest.mark.parametrize("kind", ["adapter_model", "init"])
def test_a_forward_stopped_by_keyboard_interrupt_leaves_nothing_for_the_next_call(kind):
    """torch runs no clean-up hook for a KeyboardInterrupt: the next call of the model drops what was left."""
    torch.manual_seed(0)
    model = tiny_adapter_model() if kind == "adapter_model" else workbench.init(tiny_base_model())
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        perturb(model, name)
    model.set_active_adapters("a")
    expected = hidden(model)
    engine = model._engine
    layer = engine.layer_refs[1].module
    handle = layer.register_forward_hook(_interrupt)
    with pytest.raises(KeyboardInterrupt):
        model(input_ids=IDS, attention_mask=MASK, adapter_names=["b", "__base__"])
    handle.remove()
    assert current_call(engine) is not None  # what the interrupted call left behind
    torch.testing.assert_close(hidden(model), expected, atol=0, rtol=0)
    assert current_call(engine) is None and current_plan() is None


def test_an_interrupted_calls_rows_reach_neither_another_model_nor_the_base_model():
    """The rows of an interrupted `adapter_names` call are dropped by the next call of any model in the thread."""
    torch.manual_seed(0)
    models = [tiny_adapter_model(), tiny_adapter_model()]
    for model in models:
        for name in ("a", "b"):
            model.add_adapter(name, config="seq_bn")
            perturb(model, name)
        model.set_active_adapters("a")
    first, second = models
    expected_base = hidden(first.base_model)
    expected_other = hidden(second)
    handle = first._engine.layer_refs[1].module.register_forward_hook(_interrupt)
    with pytest.raises(KeyboardInterrupt):
        first(input_ids=IDS, attention_mask=MASK, adapter_names=["b", "__base__"])
    handle.remove()
    torch.testing.assert_close(hidden(second), expected_other, atol=0, rtol=0)
    assert current_plan() is None
    with pytest.raises(KeyboardInterrupt):
        handle = first._engine.layer_refs[1].module.register_forward_hook(_interrupt)
        try:
            first(input_ids=IDS, attention_mask=MASK, adapter_names=["b", "__base__"])
        finally:
            handle.remove()
    torch.testing.assert_close(hidden(first.base_model), expected_base, atol=0, rtol=0)
    assert current_plan() is None


def test_one_setup_block_entered_by_several_threads_restores_each_threads_own_state():
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]"})
    block = AdapterSetup("b")
    expected = {"a": None, "b": None}
    with AdapterSetup("a"):
        expected["a"] = hidden(model)
    with block:
        expected["b"] = hidden(model)
    inside, errors = threading.Barrier(2), []

    def work():
        try:
            with AdapterSetup("a"):
                with block:
                    inside.wait()
                    torch.testing.assert_close(hidden(model), expected["b"])
                    inside.wait()
                torch.testing.assert_close(hidden(model), expected["a"])  # its own outer block again
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_asyncio_tasks_sharing_a_thread_each_keep_their_own_setup_block():
    """Blocks held across an `await` belong to their task (a context variable), also when they exit out of order,
    and `asyncio.to_thread` carries the block into its worker."""
    model = model_with({"a": "seq_bn", "b": "lora[init_weights=bert]"})
    expected = {None: hidden(model)}
    for name in ("a", "b"):
        with AdapterSetup(name):
            expected[name] = hidden(model)

    async def in_block(name, linger):
        with AdapterSetup(name):
            await asyncio.sleep(0)  # the other task enters its block meanwhile
            out = hidden(model)
            await asyncio.sleep(linger)  # "b" lingers: "a" leaves first
        return out

    async def main():
        a, b = await asyncio.gather(in_block("a", 0), in_block("b", 0.05))
        with AdapterSetup("a"):
            threaded = await asyncio.to_thread(hidden, model)
        return a, b, threaded

    a, b, threaded = asyncio.run(main())
    torch.testing.assert_close(a, expected["a"], atol=0, rtol=0)
    torch.testing.assert_close(b, expected["b"], atol=0, rtol=0)
    torch.testing.assert_close(threaded, expected["a"], atol=0, rtol=0)
    torch.testing.assert_close(hidden(model), expected[None], atol=0, rtol=0)  # nothing left behind


def test_a_token_resets_only_its_own_slot_in_its_own_thread():
    slot = ThreadSlot("test")
    outer = slot.set("outer")
    inner = slot.set("inner")
    seen, errors = [], []

    def other():
        seen.append(slot.get())
        try:
            slot.reset(inner)
        except ValueError as err:
            errors.append(str(err))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen == [None] and "another thread" in errors[0] and slot.get() == "inner"
    slot.reset(inner)
    assert slot.get() == "outer"
    slot.reset(outer)
    assert slot.get() is None
    with pytest.raises(ValueError, match="'other'"):
        slot.reset(ThreadSlot("other").set(1))


# --- gradient checkpointing -----------------------------------------------------------------------------------


def adapter_grads(model_type, config, checkpointing, init=False):
    """Gradients of adapter `a` after one backward (dropout off, so the runs are comparable)."""
    torch.manual_seed(0)
    model = workbench.init(tiny_base_model(model_type)) if init else tiny_adapter_model(model_type)
    model.add_adapter("a", config=config)
    perturb(model, "a", 0.1)
    model.train_adapter("a")  # frozen base, embeddings included
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if checkpointing is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers 5 renames it activation_checkpointing_*
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing})
    out = model(input_ids=IDS, attention_mask=MASK)[0]
    out.pow(2).sum().backward()
    return {k: p.grad for k, p in model._adapter_parameters("a")}


ARCHS = ("bert", "roberta", "xlm-roberta", "distilbert", "gpt2", "llama", "mistral", "qwen2")
METHODS = ("seq_bn", "lora", "prefix_tuning", "double_seq_bn_inv", "ia3", "par_bn", "compacter[reduction_factor=8]",
           "mam[bottleneck_size=16]", "unipelt", "loreft[prefix_positions=2,suffix_positions=2]",
           "adapterplus[reduction_factor=8]")  # fmt: skip  (adapterplus: its stochastic depth replays its draw)
CHECKPOINT_CASES = [(model_type, config) for model_type in ARCHS for config in METHODS] + [
    (model_type, "prompt_tuning") for model_type in ("bert", "distilbert")
]


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("model_type, config", CHECKPOINT_CASES)
def test_gradient_checkpointing_gives_adapters_the_same_gradients(model_type, config, use_reentrant):
    reference = adapter_grads(model_type, config, None)
    checkpointed = adapter_grads(model_type, config, use_reentrant)
    assert reference and all(g is not None for g in reference.values())
    for key, grad in reference.items():
        assert checkpointed[key] is not None, f"{key} got no gradient under checkpointing"
        torch.testing.assert_close(checkpointed[key], grad, atol=1e-5, rtol=1e-4, msg=key)


def test_gradient_checkpointing_on_an_init_model_and_with_a_fusion():
    reference = adapter_grads("bert", "seq_bn", None, init=True)
    checkpointed = adapter_grads("bert", "seq_bn", True, init=True)
    for key, grad in reference.items():
        torch.testing.assert_close(checkpointed[key], grad, atol=1e-5, rtol=1e-4)

    def fusion_grads(checkpointing):
        model = model_with({"x": "seq_bn", "y": "seq_bn"})
        model.add_adapter_fusion(["x", "y"])
        model.train_adapter_fusion(workbench.Fuse("x", "y"))
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        if checkpointing:
            model.activation_checkpointing_enable()
        model(input_ids=IDS, attention_mask=MASK)[0].pow(2).sum().backward()
        return {k: p.grad for k, p in model._fusion_parameters("x,y")}

    plain, checkpointed = fusion_grads(False), fusion_grads(True)
    for key, grad in plain.items():
        torch.testing.assert_close(checkpointed[key], grad, atol=1e-5, rtol=1e-4)


def test_train_with_gradient_checkpointing(tmp_path):
    """TrainConfig(gradient_checkpointing=True) reaches Trainer, which checkpoints the layers; the adapter trains."""
    model = tiny_adapter_model()
    config = TrainConfig(max_steps=3, batch_size=8, eval_strategy="no", save_steps=100, gradient_checkpointing=True)
    model.add_adapter("a", config="seq_bn")
    before = {k: p.detach().clone() for k, p in model._adapter_parameters("a")}
    train(model, {"train": keyword_frame(32)}, adapter="a", tokenizer=make_tokenizer(), output_dir=tmp_path,
          config=config)  # fmt: skip
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    changed = [k for k, p in model._adapter_parameters("a") if not torch.equal(p, before[k])]
    assert len(changed) == len(before)  # every adapter weight got gradients and moved
