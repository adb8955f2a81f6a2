"""workbench.train on tiny models: adapter, fusion and full runs, checkpoints, resume, stop, bad input."""

import json
import math
import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny import tiny_adapter_model
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

import workbench
from workbench.train import (
    EmptyDatasetError,
    EvalEvent,
    MissingColumnError,
    NonFiniteLossError,
    OutputDirError,
    RunControl,
    RunFolderInUseError,
    StepEvent,
    TrainConfig,
    TrainingCallback,
    UnknownLabelError,
    compare_runs,
    train,
)
from workbench.train.data import load_splits

WORDS = [f"w{i}" for i in range(4, 100)]


def make_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over WORDS, built in memory."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i for i, w in enumerate(WORDS, start=4)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def keyword_frame(rows: int = 64, seed: int = 0) -> pd.DataFrame:
    """label 'yes' when the text holds the word w5: learnable in a few dozen steps."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(rows):
        words = rng.sample(WORDS[2:40], 5)
        if i % 2:
            words[rng.randrange(5)] = "w5"
        texts.append(" ".join(words))
        labels.append("yes" if "w5" in words else "no")
    return pd.DataFrame({"text": texts, "label": labels})


def fast(**overrides) -> TrainConfig:
    settings = dict(learning_rate=1e-3, max_steps=6, batch_size=8, eval_strategy="steps", eval_steps=3, logging_steps=1)
    return TrainConfig(**{**settings, **overrides})


def adapter_model(name: str = "kw", config: str = "seq_bn", adapter_seed: int | None = None):
    """The same tiny base model every time (adapter checkpoints rely on it), with a new adapter."""
    torch.manual_seed(0)
    model = tiny_adapter_model()
    if adapter_seed is not None:
        torch.manual_seed(adapter_seed)
    model.add_adapter(name, config=config)
    return model


def trained_state(model, name: str) -> dict:
    """On the CPU: a run on a GPU leaves the model there (as Trainer does), and the tests compare with CPU models."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters() if name in k and v.requires_grad}


def test_adapter_run_learns_and_records(tokenizer, tmp_path):
    record = train(  # LoRA: a default bottleneck on hidden size 32 has only 2 dimensions
        adapter_model(config="lora"),
        keyword_frame(96),
        adapter="kw",
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=fast(learning_rate=1e-2, lr_scheduler_type="constant", batch_size=16, max_steps=60, eval_steps=30),
    )
    losses = record.train_losses
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 * 0.7
    assert record.kind == "adapter" and record.method == "lora" and record.task == "classification"
    assert 0 < record.trainable_params < record.total_params
    assert record.saved_bytes > 0 and record.wall_time_s > 0 and record.train_samples_per_second > 0
    assert record.peak_memory_bytes > 0 and record.memory_kind == ("cuda" if torch.cuda.is_available() else "rss")
    assert record.global_step == 60 and record.stop_reason == "completed"
    assert {"eval_loss", "eval_accuracy", "eval_f1"} <= set(record.final_metrics)
    assert record.best_metrics and record.best_checkpoint
    frame = compare_runs([record, record])
    assert isinstance(frame, pd.DataFrame) and "final_accuracy" in frame.columns and len(frame) == 2


def test_checkpoint_holds_only_adapter_and_head(tokenizer, tmp_path):
    model = adapter_model()
    train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path, config=fast())
    checkpoint = tmp_path / "checkpoint-6"
    names = {p.relative_to(checkpoint).as_posix() for p in checkpoint.rglob("*") if p.is_file()}
    assert "kw/pytorch_adapter.bin" in names and "kw/pytorch_model_head.bin" in names
    assert not any(n.endswith((".safetensors", "pytorch_model.bin")) for n in names)
    full_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    weights = [p for p in checkpoint.rglob("*.bin") if p.name != "training_args.bin"]
    assert sum(p.stat().st_size for p in weights) < full_bytes / 4
    # the saved head keeps the label names, and the final folder loads with the engine's own loader
    fresh = tiny_adapter_model()
    fresh.load_adapter(str(tmp_path / "final" / "kw"))
    fresh.load_head(str(tmp_path / "final" / "kw"))
    assert fresh.heads["kw"].id2label == {0: "no", 1: "yes"}


def test_adapter_run_beside_another_adapters_head_trains_only_its_own(tokenizer, tmp_path):
    model = adapter_model()
    model.add_adapter("other", config="seq_bn")
    model.add_classification_head("other", num_labels=3)
    other_head = {k: v.clone() for k, v in model.heads["other"].state_dict().items()}
    record = train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path, config=fast())
    assert record.global_step == 6
    assert not any(p.requires_grad for p in model.heads["other"].parameters())
    assert all(torch.equal(v, model.heads["other"].state_dict()[k].cpu()) for k, v in other_head.items())
    assert not (tmp_path / "final" / "other").exists()


def test_resume_continues_from_the_same_state(tokenizer, tmp_path):
    data = keyword_frame()
    config = fast(eval_strategy="no", save_steps=3, max_steps=6)
    straight = adapter_model()
    train(straight, data, adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "a", config=config)

    resumed = adapter_model(adapter_seed=123)  # another initialisation: the checkpoint must override it
    steps = []
    record = train(
        resumed,
        data,
        adapter="kw",
        tokenizer=tokenizer,
        output_dir=tmp_path / "b",
        config=config,
        resume_from_checkpoint=tmp_path / "a" / "checkpoint-3",
        callbacks=[lambda e: steps.append(e.step) if isinstance(e, StepEvent) else None],
    )
    assert steps == [4, 5, 6] and record.global_step == 6
    expected, got = trained_state(straight, "kw"), trained_state(resumed, "kw")
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], msg=key)


def _stopped_run(tokenizer, folder, stop_at=2, max_steps=6):
    """A run stopped by a request after step `stop_at` (a checkpoint there and `final/`), and its model."""
    control, model = RunControl(), adapter_model()

    def stop(event):
        if isinstance(event, StepEvent) and event.step == stop_at:
            control.stop("test")

    config = fast(eval_strategy="no", save_steps=100, max_steps=max_steps)
    record = train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=folder, config=config,
                   callbacks=[stop], control=control)  # fmt: skip
    assert record.stop_reason == "stop_request" and record.global_step == stop_at
    return model, config


def test_a_folder_holding_a_run_is_refused_with_a_free_name(tokenizer, tmp_path):
    folder = tmp_path / "kw"
    _stopped_run(tokenizer, folder)
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    with pytest.raises(RunFolderInUseError) as caught:
        train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=folder, config=fast())
    message = str(caught.value)
    assert f"the output folder {folder} already holds a run (checkpoint-2 and final/)" in message
    assert str(tmp_path / "kw-2") in message and "resume=True" in message and "overwrite=True" in message
    assert caught.value.suggestion == tmp_path / "kw-2" and caught.value.last_checkpoint == folder / "checkpoint-2"
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before  # nothing written
    with pytest.raises(ValueError, match="choose one"):
        train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=folder,
              resume=True, overwrite=True)  # fmt: skip


def test_resume_continues_a_stopped_run_to_the_planned_total(tokenizer, tmp_path):
    folder = tmp_path / "kw"
    _, config = _stopped_run(tokenizer, folder, stop_at=2, max_steps=6)
    straight = adapter_model()  # the same run without the stop, for the weights it should end with
    train(straight, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "straight",
          config=config)  # fmt: skip

    steps = []
    resumed = adapter_model(adapter_seed=99)  # another initialisation: the checkpoint must override it
    record = train(resumed, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=folder, config=config,
                   resume=True, callbacks=[lambda e: steps.append(e.step) if isinstance(e, StepEvent) else None],
                   )  # fmt: skip
    assert steps == [3, 4, 5, 6] and record.global_step == 6 and record.stop_reason == "completed"
    assert (folder / "checkpoint-6").is_dir() and (folder / "final" / "kw").is_dir()
    expected, got = trained_state(straight, "kw"), trained_state(resumed, "kw")
    for key in expected:  # optimizer, scheduler and data order restored too: the same weights as straight through
        torch.testing.assert_close(got[key], expected[key], msg=key)


def test_a_run_stopped_mid_epoch_with_epoch_evaluation_resumes_to_the_uninterrupted_weights(tokenizer, tmp_path):
    # evaluating drew from torch's generator, and the stop evaluated its partial epoch before saving the random
    # state: with dropout on, the resumed run drew other masks (and that evaluation could become the best)
    config = fast(eval_strategy="epoch", num_train_epochs=2, max_steps=-1, save_total_limit=None)
    assert tiny_adapter_model().config.hidden_dropout_prob > 0
    straight = adapter_model()
    done = train(straight, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "straight",
                 config=config)  # fmt: skip
    control = RunControl()
    stop = lambda e: control.stop("test") if isinstance(e, StepEvent) and e.step == 3 else None  # noqa: E731
    stopped = train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "kw",
                    config=config, callbacks=[stop], control=control)  # fmt: skip
    assert stopped.global_step == 3 and stopped.stop_reason == "stop_request"
    resumed = adapter_model(adapter_seed=99)
    record = train(resumed, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "kw",
                   config=config, resume=True)  # fmt: skip
    assert record.global_step == done.global_step == 16 and record.stop_reason == "completed"
    def evaluated(folder):
        history = json.loads((folder / "checkpoint-16" / "trainer_state.json").read_text())["log_history"]
        return [entry["step"] for entry in history if "eval_loss" in entry]

    assert evaluated(tmp_path / "kw") == evaluated(tmp_path / "straight") == [8, 16]  # not the stop's step 3
    assert Path(record.best_checkpoint).name == Path(done.best_checkpoint).name
    expected, got = trained_state(straight, "kw"), trained_state(resumed, "kw")  # the best checkpoint, reloaded
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def test_evaluating_does_not_change_the_training(tokenizer, tmp_path):
    # an evaluation draws from torch's generator: without keeping it, the dropout masks after it differed
    assert tiny_adapter_model().config.hidden_dropout_prob > 0
    at_step_5 = {}
    for every in (2, 3, 100):  # evaluations at steps 2 and 4, at 3, none
        model = adapter_model()

        def keep(event, model=model, every=every):
            if isinstance(event, StepEvent) and event.step == 5:
                at_step_5[every] = trained_state(model, "kw")

        train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / str(every),
              config=fast(eval_steps=every), callbacks=[keep])  # fmt: skip
    for key in at_step_5[100]:
        assert torch.equal(at_step_5[2][key], at_step_5[100][key]), key
        assert torch.equal(at_step_5[3][key], at_step_5[100][key]), key


def test_bf16_trains_under_autocast_on_any_device(tokenizer, tmp_path):
    # on a CPU, precision="bf16" used to train in fp32 while the record said bf16
    model, seen = adapter_model(), set()
    dense = model.bert.encoder.layer[0].output.dense
    dense.register_forward_hook(lambda module, args, out: seen.add(out.dtype) if module.training else None)
    record = train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path,
                   config=fast(max_steps=2, eval_strategy="no", precision="bf16"))  # fmt: skip
    assert seen == {torch.bfloat16} and record.config["precision"] == "bf16"
    assert all(p.dtype == torch.float32 for p in trained_state(model, "kw").values())  # autocast: fp32 weights


def test_resume_without_a_checkpoint_says_so(tokenizer, tmp_path):
    with pytest.raises(workbench.train.CheckpointError, match="nothing to resume in .*empty"):
        train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "empty",
              resume=True)  # fmt: skip


def test_overwrite_deletes_only_the_old_run(tokenizer, tmp_path):
    folder = tmp_path / "kw"
    _stopped_run(tokenizer, folder, stop_at=4)
    (folder / "notes.txt").write_text("mine")
    (tmp_path / "beside.txt").write_text("also mine")
    record = train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=folder,
                   config=fast(eval_strategy="no", save_steps=3, max_steps=3), overwrite=True)  # fmt: skip
    assert record.global_step == 3
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3", "final", "notes.txt"]  # checkpoint-4 gone
    assert (tmp_path / "beside.txt").read_text() == "also mine"


def test_overwrite_with_bad_data_deletes_nothing(tokenizer, tmp_path):
    folder = tmp_path / "kw"
    _stopped_run(tokenizer, folder)
    with pytest.raises(MissingColumnError):
        train(adapter_model(), keyword_frame().rename(columns={"label": "y"}), adapter="kw", tokenizer=tokenizer,
              output_dir=folder, overwrite=True)  # fmt: skip
    assert (folder / "checkpoint-2").is_dir() and (folder / "final").is_dir()


def test_overwrite_resuming_from_a_checkpoint_of_the_run_it_replaces_is_refused(tokenizer, tmp_path):
    folder = tmp_path / "kw"
    _stopped_run(tokenizer, folder)
    model = adapter_model()
    before = sorted(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match=r"overwrite=True replaces the run in .*checkpoint-2.*choose one"):
        train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=folder, overwrite=True,
              resume_from_checkpoint=folder / "checkpoint-2")  # fmt: skip
    assert sorted(p.name for p in folder.iterdir()) == before and set(model.heads) == set()


def test_record_share_equals_the_model_summary(tokenizer, tmp_path):
    model = adapter_model()
    model.add_adapter("other", config="seq_bn")  # a second adapter must not count in the denominator
    record = train(model, keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path, config=fast())
    row = next(r for r in model.adapter_summary(as_dict=True) if r["name"] == "kw")
    assert record.adapter_params == row["#param"] and record.adapter_percent == pytest.approx(row["%param"])
    assert compare_runs([record]).loc[record.name, "adapter_percent"] == pytest.approx(row["%param"])


def test_early_stopping_stops(tokenizer, tmp_path):
    config = fast(learning_rate=0.0, max_steps=30, eval_steps=1, save_total_limit=None, early_stopping_patience=2)
    record = train(
        adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=tmp_path, config=config
    )
    assert record.global_step == 3 and record.stop_reason == "early_stopping"
    assert record.best_checkpoint.endswith("checkpoint-1")


def test_stop_request_ends_within_one_step_with_a_checkpoint(tokenizer, tmp_path):
    control = RunControl()
    seen = []

    class StopAtTwo(TrainingCallback):
        def on_step(self, event):
            seen.append(event.step)
            assert event.eta_seconds >= 0 and event.samples_per_second > 0 and event.loss is not None
            if event.step == 2:
                control.stop("user")

    model = adapter_model()
    record = train(
        model,
        keyword_frame(),
        adapter="kw",
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=fast(max_steps=50, eval_steps=10),
        callbacks=[StopAtTwo()],
        control=control,
    )
    assert seen == [1, 2] and record.global_step == 2 and record.stop_reason == "stop_request"
    fresh = tiny_adapter_model()
    fresh.load_adapter(str(tmp_path / "checkpoint-2" / "kw"))
    for key, value in trained_state(model, "adapters.kw").items():
        torch.testing.assert_close(dict(fresh.named_parameters())[key], value)


def test_full_fine_tuning_trains_everything(tokenizer, tmp_path):
    model = tiny_adapter_model()
    record = train(model, keyword_frame(), kind="full", tokenizer=tokenizer, output_dir=tmp_path, config=fast())
    assert record.kind == "full" and record.trainable_params == record.total_params
    assert (tmp_path / "checkpoint-6" / "model.safetensors").is_file()
    assert record.best_checkpoint is not None


def test_fusion_run_trains_only_fusion_and_head(tokenizer, tmp_path):
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    before = {k: v.detach().clone() for k, v in model.named_parameters() if ".adapters." in k}
    record = train(
        model,
        keyword_frame(),
        kind="fusion",
        adapter=workbench.Fuse("a", "b"),
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=fast(),
    )
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("adapter_fusion_layer" in k or k.startswith("heads.a,b.") for k in trainable)
    assert record.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    for key, value in before.items():
        torch.testing.assert_close(dict(model.named_parameters())[key].cpu(), value)
    assert (tmp_path / "checkpoint-6" / "a,b" / "pytorch_model_adapter_fusion.bin").is_file()


def test_data_from_csv_with_text_pairs_and_multilabel(tokenizer, tmp_path):
    frame = keyword_frame(32).assign(other=lambda d: d.text.str.upper().str.lower())
    path = tmp_path / "pairs.csv"
    frame.to_csv(path, index=False)
    record = train(
        adapter_model("lora", "lora"),
        path,
        adapter="lora",
        text_pair_column="other",
        tokenizer=tokenizer,
        output_dir=tmp_path / "out",
        config=fast(max_steps=2, eval_steps=2),
    )
    assert record.method == "lora"
    multi = keyword_frame(32).assign(label=lambda d: [["a", "b"] if y == "yes" else ["a"] for y in d.label])
    record = train(
        adapter_model(),
        multi,
        adapter="kw",
        task="multilabel",
        tokenizer=tokenizer,
        output_dir=tmp_path / "multi",
        config=fast(max_steps=2, eval_steps=2),
    )
    assert "eval_f1" in record.final_metrics


def test_tagging_run(tokenizer, tmp_path):
    frame = keyword_frame(32)
    rows = pd.DataFrame(
        {
            "tokens": [t.split() for t in frame.text],
            "tags": [["K" if w == "w5" else "O" for w in t.split()] for t in frame.text],
        }
    )
    model = adapter_model()
    record = train(
        model,
        rows,
        adapter="kw",
        task="tagging",
        text_column="tokens",
        label_column="tags",
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=fast(max_steps=2, eval_steps=2),
    )
    assert model.heads["kw"].config["head_type"] == "tagging" and "eval_accuracy" in record.final_metrics


def test_tagging_run_with_tags_as_text(tokenizer, tmp_path):
    # "O K O" (a CSV/TSV cell) was split on commas for the head's labels, on whitespace for the encoding
    frame = keyword_frame(32)
    rows = frame.assign(label=[" ".join("K" if w == "w5" else "O" for w in t.split()) for t in frame.text])
    model = adapter_model()
    train(model, rows, adapter="kw", task="tagging", tokenizer=tokenizer, output_dir=tmp_path,
          config=fast(max_steps=1, eval_strategy="no"))  # fmt: skip
    assert sorted(model.heads["kw"].config["label2id"]) == ["K", "O"]


def test_missing_column(tokenizer, tmp_path):
    with pytest.raises(MissingColumnError, match="'sentence'.*'train'"):
        train(
            adapter_model(),
            keyword_frame(),
            adapter="kw",
            text_column="sentence",
            tokenizer=tokenizer,
            output_dir=tmp_path,
            config=fast(),
        )


def test_label_outside_the_heads_labels(tokenizer, tmp_path):
    model = adapter_model()
    model.add_classification_head("kw", num_labels=2, id2label={0: "no", 1: "yes"})
    frame = keyword_frame()
    frame.loc[3, "label"] = "maybe"
    with pytest.raises(UnknownLabelError, match="'maybe'.*'label'"):
        train(model, frame, adapter="kw", tokenizer=tokenizer, output_dir=tmp_path, config=fast())


def test_empty_dataset(tokenizer, tmp_path):
    with pytest.raises(EmptyDatasetError, match="'train' split is empty"):
        train(adapter_model(), keyword_frame().iloc[:0], adapter="kw", tokenizer=tokenizer, output_dir=tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(EmptyDatasetError, match="empty.csv"):
        train(adapter_model(), empty, adapter="kw", tokenizer=tokenizer, output_dir=tmp_path / "out")


def test_unwritable_output_folder(tokenizer, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirError, match="file/run"):
        train(adapter_model(), keyword_frame(), adapter="kw", tokenizer=tokenizer, output_dir=blocker / "run")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tokenizer, tmp_path):
    model = adapter_model()

    class Poison(TrainingCallback):
        def on_step(self, event):
            if event.step == 3:
                with torch.no_grad():
                    model.heads["kw"][-1].weight.fill_(math.inf)

    with pytest.raises(NonFiniteLossError, match="loss became (nan|inf).*checkpoint-2"):
        train(
            model,
            keyword_frame(),
            adapter="kw",
            tokenizer=tokenizer,
            output_dir=tmp_path,
            config=fast(eval_strategy="no", save_steps=2, max_steps=10),
            callbacks=[Poison()],
        )
    good = tmp_path / "checkpoint-2"
    assert not (tmp_path / "checkpoint-4").exists()
    fresh = tiny_adapter_model()
    fresh.load_adapter(str(good / "kw"))
    fresh.load_head(str(good / "kw"))
    assert all(torch.isfinite(p).all() for p in fresh.parameters())


def test_gradient_accumulation_and_events(tokenizer, tmp_path):
    events = []
    record = train(
        adapter_model(),
        keyword_frame(),
        adapter="kw",
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=fast(gradient_accumulation_steps=2, batch_size=4, max_steps=4, eval_steps=2),
        callbacks=[events.append],
    )
    steps = [e for e in events if isinstance(e, StepEvent)]
    evals = [e for e in events if isinstance(e, EvalEvent)]
    assert [e.step for e in steps] == [1, 2, 3, 4] and all(0.3 < e.loss < 1.5 for e in steps)
    assert [e.step for e in evals] == [2, 4] and "eval_accuracy" in evals[0].metrics
    assert steps[-1].eta_seconds == 0 and record.global_step == 4
    assert type(events[-1]).__name__ == "EndEvent" and events[-1].record is record


def test_local_files_and_given_validation_split(tmp_path):
    frame = keyword_frame(20)
    frame.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    frame.to_csv(tmp_path / "rows.tsv", sep="\t", index=False)
    for name in ("rows.jsonl", "rows.tsv"):
        splits = load_splits(tmp_path / name, validation_fraction=0.25)
        assert (len(splits["train"]), len(splits["validation"])) == (15, 5)
        assert splits["train"].column_names == ["text", "label"]
    given = load_splits({"train": frame, "dev": frame.iloc[:3]})
    assert len(given["train"]) == 20 and len(given["validation"]) == 3
