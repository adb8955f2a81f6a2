"""`TrainConfig` and `train()` refuse bad settings and data before touching the model, and a `train()` that fails
at any point (bad input, or an error in the middle of training) leaves the model exactly as it was."""

import math

import pandas as pd
import pytest
import torch
from test_train import adapter_model, fast, keyword_frame, make_tokenizer

from workbench.train import CheckpointError, ConfigError, DataError, StepEvent, TrainConfig, train


def snapshot(model) -> dict:
    """Everything a run may change: weights (keys and values), adapters, fusions, heads, the active setup and
    head, requires_grad of each weight and the train/eval mode of each module."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "adapters": sorted(model.adapters),
        "fusions": sorted(model.adapter_fusions),
        "heads": sorted(model.heads),
        "active": repr(model.active_adapters),
        "active_head": model.active_head,
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    changed = [k for k in before["state"] if not torch.equal(before["state"][k], after["state"][k])]
    assert changed == []
    assert {k: v for k, v in before.items() if k != "state"} == {k: v for k, v in after.items() if k != "state"}


def model_with_head():
    """The tiny model with adapter 'kw' active and a head, in eval mode: a state a run would change."""
    model = adapter_model()
    model.add_classification_head("kw", num_labels=2, id2label={0: "no", 1: "yes"})
    model.set_active_adapters("kw")
    model.eval()
    return model


def fails_unchanged(tmp_path, error, match=None, model=None, data=None, **kwargs):
    model = model or model_with_head()
    before = snapshot(model)
    kwargs = {"adapter": "new", "adapter_config": "seq_bn", "config": fast(), **kwargs}
    with pytest.raises(error, match=match) as caught:
        train(
            model,
            keyword_frame(32) if data is None else data,
            tokenizer=make_tokenizer(),
            **kwargs,
            output_dir=tmp_path / "run",
        )
    assert_same(before, snapshot(model))
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").glob("checkpoint-*"))
    return caught.value


def test_every_bad_field_is_listed_at_once():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(
            learning_rate=math.nan,
            batch_size=0,
            gradient_accumulation_steps=0,
            max_steps=0,
            metric_for_best_model="acc",
            weight_decay=math.inf,
            lr_scheduler_type="sometimes",
            eval_batch_size="8",
            fast_dropout=1,
        )
    text = str(caught.value)
    for part in (
        "learning_rate=nan",
        "batch_size=0",
        "gradient_accumulation_steps=0",
        "max_steps=0",
        "metric_for_best_model='acc'",
        "weight_decay=inf",
        "lr_scheduler_type='sometimes'",
        "eval_batch_size='8': must be a whole number",
        "fast_dropout=1: must be True or False",
    ):
        assert part in text
    assert len(caught.value.problems) == 9 and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "field, value",
    [
        ("learning_rate", -1),
        ("learning_rate", math.inf),
        ("num_train_epochs", 0),
        ("max_grad_norm", math.nan),
        ("eval_steps", 0),
        ("save_total_limit", 0),
        ("logging_steps", 0),
        ("seed", -1),
        ("warmup_steps", -0.5),
        ("eval_strategy", "often"),
        ("precision", "fp8"),
        ("dataloader_num_workers", -1),
        ("max_length", 1.5),
    ],
)
def test_each_bad_value_names_its_field(field, value):
    with pytest.raises(ConfigError, match=f"TrainConfig.{field}="):
        TrainConfig(**{field: value})


def test_good_configs_pass():
    TrainConfig()
    TrainConfig(learning_rate=3e-4, max_steps=5, metric_for_best_model="eval_f1", warmup_steps=0.1)
    TrainConfig(metric_for_best_model="perplexity", eval_strategy="no", save_total_limit=None)


def test_a_config_broken_after_it_was_made_is_refused_before_the_model_is_touched(tmp_path):
    config = fast()
    config.batch_size = 0
    fails_unchanged(tmp_path, ConfigError, "batch_size=0", config=config)


def test_a_metric_the_task_does_not_report(tmp_path):
    error = fails_unchanged(
        tmp_path,
        ConfigError,
        "task 'classification' reports accuracy, f1, loss",
        config=fast(metric_for_best_model="perplexity"),
    )
    assert "metric_for_best_model='perplexity'" in str(error)


def test_fp16_without_a_gpu_is_refused(tmp_path, monkeypatch):
    # Trainer trained in fp32 on a CPU while the record said fp16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    match = r"TrainConfig.precision='fp16': fp16 training needs a CUDA GPU and this machine has none; use 'bf16'"
    fails_unchanged(tmp_path, ConfigError, match, config=fast(precision="fp16"))
    with pytest.raises(ConfigError, match=match):
        fast(precision="fp16").training_args(tmp_path / "args")


def test_doc_stride_is_checked_for_qa_only(tmp_path):
    # max_length=32 or less was refused for every task because of QA's default doc_stride=32
    config = fast(max_length=16)
    assert config.task_problems("classification") == [] and config.task_problems("causal_lm") == []
    match = r"TrainConfig.doc_stride=32: must be below max_length=16"
    fails_unchanged(tmp_path, ConfigError, match, task="qa", config=config)
    with pytest.raises(ConfigError, match=r"TrainConfig.doc_stride=-1: must be 0 or more"):
        TrainConfig(doc_stride=-1)


def test_bad_kind_and_task_are_listed_together(tmp_path):
    error = fails_unchanged(tmp_path, ConfigError, kind="lora", task="summaries")
    assert "kind='lora'" in str(error) and "task='summaries'" in str(error)


def test_resume_without_a_checkpoint(tmp_path):
    fails_unchanged(tmp_path, CheckpointError, "nothing to resume", resume=True)
    fails_unchanged(tmp_path, CheckpointError, "nothing to resume", resume_from_checkpoint=True)


def test_none_and_numbers_in_the_text_column(tmp_path):
    frame = keyword_frame(40)
    frame.loc[[3, 8], "text"] = None
    fails_unchanged(tmp_path, DataError, r"text column 'text': no text \(None\)", data=frame)
    mixed = pd.DataFrame({"text": [*keyword_frame(39).text, 7], "label": [*keyword_frame(39).label, "no"]})
    fails_unchanged(tmp_path, DataError, "column text", data=mixed)


class Boom(RuntimeError):
    pass


def explode(event):
    raise Boom(f"callback failed at {type(event).__name__}")


@pytest.mark.parametrize("kind", ["adapter", "full"])
def test_a_failure_at_the_first_step_restores_the_model(tmp_path, kind):
    """The head and adapter added, the adapter activated and trained for a step, then a callback raises."""
    extra = {"adapter": None, "adapter_config": None} if kind == "full" else {}
    fails_unchanged(tmp_path, Boom, kind=kind, callbacks=[explode], **extra)


def test_a_failure_training_an_existing_adapter_restores_its_weights(tmp_path):
    fails_unchanged(tmp_path, Boom, adapter="kw", head="kw", callbacks=[explode])


def test_a_failure_with_gradient_checkpointing_turns_it_off_again(tmp_path):
    model = model_with_head()
    fails_unchanged(tmp_path, Boom, model=model, config=fast(gradient_checkpointing=True), callbacks=[explode])
    assert not model.is_activation_checkpointing


def test_a_config_that_is_not_a_train_config(tmp_path):
    fails_unchanged(tmp_path, ConfigError, "pass a TrainConfig", config={"batch_size": 8})


def test_numpy_numbers_are_numbers_and_bools_are_not():
    import numpy as np

    assert TrainConfig(batch_size=np.int64(8), learning_rate=np.float32(1e-4)).batch_size == 8
    with pytest.raises(ConfigError, match="batch_size=True: must be a whole number"):
        TrainConfig(batch_size=True)
    with pytest.raises(ConfigError, match="save_total_limit='2': must be a whole number or None"):
        TrainConfig(save_total_limit="2")


def test_a_failed_fusion_run_removes_the_fusion_it_added(tmp_path):
    model = model_with_head()
    model.add_adapter("other", config="seq_bn")
    fails_unchanged(tmp_path, Boom, model=model, kind="fusion", adapter=["kw", "other"], callbacks=[explode])
    assert "kw,other" not in model.adapter_fusions


def with_buffers_a_run_changes(model):
    """Buffers changed by training forward passes: a BatchNorm-like running mean on the adapter, the base model's
    position ids shifted in place, and a head counter whose dtype a hook converts (the tensor is replaced)."""
    adapter = model.bert.encoder.layer[0].output.adapters["kw"]
    adapter.register_buffer("running_mean", torch.zeros(32))
    embeddings = model.bert.embeddings
    head = model.heads["kw"]
    head.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def track(module, args, output):
        if module.training:
            hidden = output[0] if isinstance(output, tuple) else output
            module.running_mean.mul_(0.9).add_(hidden.detach().float().mean((0, 1)), alpha=0.1)

    def shift(module, args, output):
        if module.training:
            module.position_ids.copy_(module.position_ids.roll(1, -1))

    def count(module, args, output):
        if module.training:
            module._buffers["seen"] = module.seen.double() + 1  # a new tensor of another dtype
            module.register_buffer("added", torch.ones(2))  # a buffer the run adds

    hooks = [adapter.register_forward_hook(track), embeddings.register_forward_hook(shift)]
    return hooks + [head.register_forward_hook(count)]


def all_buffers(model) -> dict:
    return {name: (buffer.detach().clone(), buffer.dtype, buffer.device) for name, buffer in model.named_buffers()}


def test_a_failure_after_some_steps_restores_every_buffer(tmp_path):
    model = model_with_head()
    hooks = with_buffers_a_run_changes(model)
    objects = {name: buffer for name, buffer in model.named_buffers()}
    buffers = all_buffers(model)
    changed = {}

    def fail_at_third_step(event):
        if isinstance(event, StepEvent) and event.step == 3:
            now = dict(model.named_buffers())
            changed.update({n: b for n, b in now.items() if n not in buffers or not torch.equal(b, buffers[n][0])})
            raise Boom("failed after three steps")

    fails_unchanged(tmp_path, Boom, model=model, adapter="kw", head="kw", callbacks=[fail_at_third_step])
    adapter_mean = "bert.encoder.layer.0.output.adapters.kw.running_mean"
    ran = {adapter_mean, "bert.embeddings.position_ids", "heads.kw.seen", "heads.kw.added"}
    assert set(changed) == ran and changed["heads.kw.seen"].dtype == torch.float64  # what the run did change
    after = all_buffers(model)
    assert after.keys() == buffers.keys()
    for name, (value, dtype, device) in buffers.items():
        assert torch.equal(after[name][0], value) and after[name][1:] == (dtype, device), name
        assert dict(model.named_buffers())[name] is objects[name], name  # the same tensor objects
    for hook in hooks:
        hook.remove()
