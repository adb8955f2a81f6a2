"""`AdapterTrainer` on tiny models: what a checkpoint holds, resuming, the best checkpoint, fusions, errors."""

import logging

import pytest
import torch
from tiny import tiny_adapter_model
from transformers import TrainingArguments

import workbench
from workbench import AdapterTrainer, Fuse, Stack
from workbench.train import CheckpointError, Seq2SeqAdapterTrainer
from workbench.train import adapter_trainer as adapter_trainer_mod


def rows(count: int = 16, seed: int = 0) -> list[dict]:
    """Token sequences labelled by whether token 7 occurs in them."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(count):
        ids = torch.randint(4, 100, (8,), generator=generator)
        label = int(bool((ids == 7).any())) if torch.rand((), generator=generator) < 0.5 else 1
        if label:
            ids[3] = 7
        data.append({"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": label})
    return data


def args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path),
        max_steps=4,
        save_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        lr_scheduler_type="constant",  # a run cut at step 2 follows the same schedule as a longer one
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    return TrainingArguments(**{**options, **overrides})


def adapter_model(seed: int = 1) -> workbench.AdapterModel:
    torch.manual_seed(seed)
    model = tiny_adapter_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.add_adapter("task", config="seq_bn")
    model.add_adapter("other", config="lora")
    model.add_classification_head("task", num_labels=2)
    model.train_adapter("task")
    return model


def fusion_model(seed: int = 1) -> workbench.AdapterModel:
    torch.manual_seed(seed)
    model = tiny_adapter_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.add_adapter_fusion(Fuse("a", "b"))
    model.add_classification_head("a,b", num_labels=2)
    model.train_adapter_fusion(Fuse("a", "b"))
    return model


def weights(model, *parts: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if any(p in k for p in parts)}


def test_checkpoint_holds_adapters_and_heads_in_adapterhubs_layout(tmp_path):
    model = adapter_model()
    base = weights(model, "bert.")
    base = {k: v for k, v in base.items() if not workbench.core.keys.is_engine_key(k)}
    trainer = AdapterTrainer(model=model, args=args(tmp_path), train_dataset=rows())
    trainer.train()
    checkpoint = tmp_path / "checkpoint-4"
    names = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    # AdapterHub's trainer saves every adapter (with the head of its name) and every head; never the base model
    assert {"task/adapter_config.json", "task/pytorch_adapter.bin", "task/head_config.json"} <= names
    assert {"task/pytorch_model_head.bin", "other/adapter_config.json", "trainer_state.json"} <= names
    assert not any(n.endswith(("model.safetensors", "pytorch_model.bin")) for n in names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial-")]
    # the folder loads with the engine's own loader: adapter and head in one call
    fresh = tiny_adapter_model()
    fresh.load_adapter(str(checkpoint / "task"))
    assert "task" in fresh.heads and "task" in fresh.adapters
    # the base model did not change; the optimizer only holds weights that train
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in base.items())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    assert model.active_adapters == Stack("task") and model.active_head == "task"


@pytest.mark.parametrize("last", [False, True], ids=["path", "true"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, last):
    straight = adapter_model()
    AdapterTrainer(model=straight, args=args(tmp_path / "straight"), train_dataset=rows()).train()

    first = adapter_model()
    AdapterTrainer(model=first, args=args(tmp_path / "cut", max_steps=2), train_dataset=rows()).train()
    resumed = adapter_model()
    with torch.no_grad():  # other adapter and head weights: they must all come from the checkpoint
        for param in resumed.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param))
    frozen_before = {k for k, p in resumed.named_parameters() if not p.requires_grad}
    trainer = AdapterTrainer(model=resumed, args=args(tmp_path / "cut"), train_dataset=rows())
    trainer.train(resume_from_checkpoint=True if last else str(tmp_path / "cut" / "checkpoint-2"))

    assert trainer.state.global_step == 4
    assert frozen_before == {k for k, p in resumed.named_parameters() if not p.requires_grad}
    expected = weights(straight, "adapters.task.", "heads.task.")
    got = weights(resumed, "adapters.task.", "heads.task.")
    assert expected.keys() == got.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)


def test_load_best_model_at_end_reloads_the_best_checkpoint(tmp_path, caplog):
    calls = []

    def first_is_best(prediction):
        calls.append(1)
        return {"score": 1.0 if len(calls) == 1 else 0.0}

    model = adapter_model()
    trainer = AdapterTrainer(
        model=model,
        args=args(
            tmp_path,
            eval_strategy="steps",
            eval_steps=2,
            load_best_model_at_end=True,
            metric_for_best_model="score",
            greater_is_better=True,
        ),
        train_dataset=rows(),
        eval_dataset=rows(4, seed=1),
        compute_metrics=first_is_best,
    )
    with caplog.at_level(logging.INFO, logger=adapter_trainer_mod.logger.name):
        trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    assert any("Loading best adapter(s) from" in r.getMessage() for r in caplog.records)
    best = tiny_adapter_model()
    best.load_adapter(str(tmp_path / "checkpoint-2" / "task"))
    for key, value in weights(best, "adapters.task.", "heads.task.").items():
        assert torch.equal(model.state_dict()[key], value), key
    assert model.active_adapters == Stack("task")
    assert all(p.requires_grad for k, p in model.named_parameters() if "adapters.task." in k)


def test_fusion_training_saves_and_resumes_the_fusion(tmp_path):
    model = fusion_model()
    adapters_before = weights(model, "adapters.a.", "adapters.b.")
    fusion_before = weights(model, "adapter_fusion_layer")
    trainer = AdapterTrainer(model=model, args=args(tmp_path), train_dataset=rows())
    assert trainer.train_adapter_fusion
    value = [n for n in fusion_before if n.endswith(".value.weight")]
    assert value and not set(value) & set(trainer.get_decay_parameter_names(model))
    trainer.train()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in adapters_before.items())
    assert any(not torch.equal(model.state_dict()[k], v) for k, v in fusion_before.items())
    checkpoint = tmp_path / "checkpoint-4"
    assert (checkpoint / "a,b" / "pytorch_model_adapter_fusion.bin").is_file()
    assert (checkpoint / "a,b" / "head_config.json").is_file() and (checkpoint / "a" / "adapter_config.json").is_file()

    resumed = fusion_model(seed=3)
    AdapterTrainer(model=resumed, args=args(tmp_path), train_dataset=rows()).train(resume_from_checkpoint=True)
    for key, tensor in weights(model, "adapter_fusion_layer", "adapters.", "heads.").items():
        assert torch.equal(resumed.state_dict()[key], tensor), key


def test_weight_decay_leaves_loreft_projections_orthogonal(tmp_path):
    """A decay step would turn the +-1 diagonal of the Householder form into 0 (torch reads it with .int()): the
    projection would become zeros and the intervention a silent no-op."""
    torch.manual_seed(1)
    model = tiny_adapter_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model.add_adapter("r", config="loreft")
    model.add_classification_head("r", num_labels=2)
    model.train_adapter("r")
    trainer = AdapterTrainer(model=model, args=args(tmp_path, weight_decay=0.1, save_steps=10), train_dataset=rows())
    decayed = trainer.get_decay_parameter_names(model)
    assert not [n for n in decayed if ".parametrizations." in n] and [n for n in decayed if ".refts.r." in n]
    trainer.train()
    projections = [m.weight for n, m in model.named_modules() if ".refts.r." in n and n.endswith(".projection")]
    assert projections
    for projection in projections:
        eye = torch.eye(min(projection.shape))
        gram = projection @ projection.T if projection.shape[0] <= projection.shape[1] else projection.T @ projection
        torch.testing.assert_close(gram, eye, atol=1e-5, rtol=0)


def test_fusion_regularization_is_added_to_the_training_loss_only(tmp_path):
    model = fusion_model()
    with torch.no_grad():  # move the value matrices away from identity so that the penalty is not 0
        for name, param in model.named_parameters():
            if name.endswith(".value.weight"):
                param.add_(0.1)
    trainer = AdapterTrainer(model=model, args=args(tmp_path), train_dataset=rows())
    batch = trainer.data_collator(rows(4))
    penalty = model.get_fusion_regularization_loss()
    assert penalty is not None and penalty.item() > 0
    model.train()
    with_penalty = trainer.compute_loss(model, batch)
    trainer.train_adapter_fusion = False
    plain = trainer.compute_loss(model, batch)
    torch.testing.assert_close(with_penalty - plain, penalty)
    trainer.train_adapter_fusion = True
    model.eval()
    torch.testing.assert_close(trainer.compute_loss(model, batch), model(**batch).loss)


def test_loading_a_checkpoint_keeps_which_weights_train(tmp_path):
    model = adapter_model()
    model.add_adapter("extra", config="seq_bn")
    AdapterTrainer(model=model, args=args(tmp_path, max_steps=2), train_dataset=rows()).train()
    resumed = adapter_model()  # has no "extra": it is loaded from the checkpoint, frozen
    trainer = AdapterTrainer(model=resumed, args=args(tmp_path, max_steps=2), train_dataset=rows())
    trainer._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    assert "extra" in resumed.adapters
    assert not any(p.requires_grad for k, p in resumed.named_parameters() if "adapters.extra." in k)
    assert all(p.requires_grad for k, p in resumed.named_parameters() if "adapters.task." in k)


def test_errors(tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("task", config="seq_bn")
    with pytest.raises(ValueError, match="active adapter setup"):
        AdapterTrainer(model=model, args=args(tmp_path), train_dataset=rows())
    model.set_active_adapters("task")  # active, but the base model is not frozen
    trainer = AdapterTrainer(model=model, args=args(tmp_path), train_dataset=rows())
    with pytest.raises(ValueError, match="not frozen"):
        trainer.train()

    model = adapter_model()
    trainer = AdapterTrainer(model=model, args=args(tmp_path), train_dataset=rows())
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no adapter"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "empty"))


def test_a_checkpoint_that_does_not_fit_changes_nothing(tmp_path):
    model = adapter_model()
    AdapterTrainer(model=model, args=args(tmp_path, max_steps=2), train_dataset=rows()).train()
    adapter_file = tmp_path / "checkpoint-2" / "task" / "pytorch_adapter.bin"
    state = torch.load(adapter_file, weights_only=True)
    torch.save({k: v for k, v in state.items() if "adapter_up" not in k}, adapter_file)
    other = adapter_model(seed=4)
    other.add_classification_head("task", num_labels=3, overwrite_ok=True)  # another config: would be replaced
    other.train_adapter("task")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    trainer = AdapterTrainer(model=other, args=args(tmp_path), train_dataset=rows())
    with pytest.raises(CheckpointError, match="lacks trained weight.*adapter_up"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-2"))
    assert before.keys() == other.state_dict().keys()
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in before.items())


def test_constructor_takes_adapterhubs_arguments(tmp_path):
    model = adapter_model()
    model.set_active_adapters(None)
    tokenizer = _tokenizer()
    trainer = AdapterTrainer(model=model, args=args(tmp_path), tokenizer=tokenizer, adapter_names=["task"])
    assert trainer.processing_class is tokenizer and model.active_adapters == Stack("task")
    assert trainer.label_names == ["labels"]
    model.add_qa_head("qa")
    model.active_head = "qa"
    trainer = AdapterTrainer(model=model, args=args(tmp_path))
    assert trainer.label_names == ["start_positions", "end_positions"]
    trainer.save_model(str(tmp_path / "saved"))
    assert (tmp_path / "saved" / "task" / "adapter_config.json").is_file()
    assert issubclass(Seq2SeqAdapterTrainer, AdapterTrainer) and workbench.AdapterTrainer is AdapterTrainer


def _tokenizer():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1}, unk_token="[UNK]"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
