"""workbench.train's "qa" and "causal_lm" tasks on tiny models: learning, metrics, checkpoints, bad input."""

import math
import random

import pandas as pd
import pytest
import torch
from test_train import WORDS, fast, make_tokenizer
from tiny import tiny_adapter_model

from workbench.train import MissingColumnError, train
from workbench.train.data import CausalLMCollator, load_splits


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def qa_frame(rows: int = 96, seed: int = 0) -> pd.DataFrame:
    """The answer is always the word w7, somewhere in a context of other words: learnable in a few dozen steps."""
    rng = random.Random(seed)
    questions, contexts, answers = [], [], []
    for _ in range(rows):
        words = rng.sample(WORDS[10:60], 6)
        words[rng.randrange(6)] = "w7"
        context = " ".join(words)
        questions.append("w4 w5")
        contexts.append(context)
        answers.append({"text": ["w7"], "answer_start": [context.index("w7")]})
    return pd.DataFrame({"question": questions, "context": contexts, "answers": answers})


def lm_frame(rows: int = 64, seed: int = 0) -> pd.DataFrame:
    """Runs of consecutive words (w12 w13 w14 ...): the next word always follows from the current one."""
    rng = random.Random(seed)
    texts = []
    for _ in range(rows):
        start = rng.randrange(4, 80)
        texts.append(" ".join(WORDS[start : start + rng.randrange(6, 12)]))
    return pd.DataFrame({"text": texts})


def qa_model():
    torch.manual_seed(0)
    model = tiny_adapter_model()
    model.add_adapter("qa", config="lora")
    return model


def lm_model():
    torch.manual_seed(0)
    model = tiny_adapter_model("gpt2")
    model.add_adapter("lm", config="lora")
    return model


def learning_config(steps: int = 40, learning_rate: float = 1e-2):
    return fast(
        learning_rate=learning_rate, lr_scheduler_type="constant", batch_size=16, max_steps=steps, eval_steps=steps
    )


def mean(values) -> float:
    return sum(values) / len(values)


def checkpoint_files(folder) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_perplexity_is_per_predicted_token_whatever_the_evaluation_batch_size(tokenizer, tmp_path):
    """exp of the mean loss over the validation split's predicted tokens (texts of 6 to 11 words), the same for
    any eval_batch_size; Trainer's eval_loss weights each batch's token mean by its rows."""
    frame = lm_frame(rows=40)
    perplexity = {}
    for size in (1, 4, 64):
        model = lm_model()
        record = train(
            model,
            frame,
            adapter="lm",
            task="causal_lm",
            tokenizer=tokenizer,
            output_dir=tmp_path / str(size),
            config=fast(max_steps=1, learning_rate=1e-12, eval_batch_size=size, eval_strategy="no"),
        )
        perplexity[size] = record.final_metrics["eval_perplexity"]
    validation = load_splits(frame, fast().validation_fraction, fast().seed)["validation"]
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for text in validation["text"]:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    by_hand = math.exp(total / tokens)
    for size, value in perplexity.items():
        assert value == pytest.approx(by_hand, rel=1e-5), size


def test_qa_run_learns_records_and_saves_adapter_and_head(tokenizer, tmp_path):
    model = qa_model()
    record = train(
        model, qa_frame(), adapter="qa", task="qa", tokenizer=tokenizer, output_dir=tmp_path, config=learning_config()
    )
    losses = record.train_losses
    assert len(losses) == 40 and mean(losses[-8:]) < mean(losses[:8]) * 0.7
    assert record.task == "qa" and "question_answering" == model.heads["qa"].config["head_type"]
    assert {"eval_loss", "eval_exact_match", "eval_f1"} <= set(record.final_metrics)
    assert 0 <= record.final_metrics["eval_exact_match"] <= record.final_metrics["eval_f1"] <= 1
    assert record.final_metrics["eval_exact_match"] > 0.5  # the toy task is learnt
    names = checkpoint_files(tmp_path / "checkpoint-40")
    assert "qa/pytorch_adapter.bin" in names and "qa/pytorch_model_head.bin" in names
    assert not any(n.endswith((".safetensors", "pytorch_model.bin")) for n in names)
    assert all(n.startswith("qa/") for n in names if n.endswith(".bin") and "/" in n)


def test_causal_lm_run_learns_records_perplexity_and_saves_adapter_and_head(tokenizer, tmp_path):
    model = lm_model()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    record = train(
        model,
        lm_frame(),
        adapter="lm",
        task="causal_lm",
        tokenizer=tokenizer,
        output_dir=tmp_path,
        config=learning_config(learning_rate=3e-2),
    )
    losses = record.train_losses
    assert len(losses) == 40 and mean(losses[-8:]) < mean(losses[:8]) * 0.9  # the tied output projection is frozen
    assert model.heads["lm"].config["head_type"] == "causal_lm"
    metrics = record.final_metrics
    assert {"eval_loss", "eval_perplexity"} <= set(metrics)
    assert metrics["eval_perplexity"] < 100  # below the uniform guess over the tiny vocabulary
    assert torch.equal(model.get_input_embeddings().weight, embeddings)  # the tied output projection stayed frozen
    assert record.trainable_params < record.total_params / 4
    names = checkpoint_files(tmp_path / "checkpoint-40")
    assert "lm/pytorch_adapter.bin" in names and "lm/pytorch_model_head.bin" in names
    assert not any(n.endswith((".safetensors", "pytorch_model.bin")) for n in names)


@pytest.mark.parametrize(
    ("task", "frame", "kwargs", "missing"),
    [
        ("qa", qa_frame, {"context_column": "passage"}, "passage"),
        ("qa", lambda: qa_frame().drop(columns="answers"), {}, "answers"),
        ("causal_lm", lm_frame, {"text_column": "body"}, "body"),
    ],
)
def test_missing_column_is_named(tokenizer, tmp_path, task, frame, kwargs, missing):
    model = qa_model() if task == "qa" else lm_model()
    with pytest.raises(MissingColumnError, match=f"'{missing}'.*'train'"):
        train(
            model,
            frame(),
            adapter="qa" if task == "qa" else "lm",
            task=task,
            tokenizer=tokenizer,
            output_dir=tmp_path,
            config=fast(),
            **kwargs,
        )


def test_causal_lm_collator_masks_only_padding(tokenizer):
    batch = CausalLMCollator(tokenizer)([{"input_ids": [2, 5, 0, 3]}, {"input_ids": [2, 6]}])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"].tolist() == [[2, 5, 0, 3], [2, 6, -100, -100]]  # a real id 0 is kept, padding is not
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
