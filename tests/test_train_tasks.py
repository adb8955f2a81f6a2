"""workbench.train's "qa" and "causal_lm" tasks on tiny models: learning, metrics, checkpoints, bad input."""

import math
import random

import pandas as pd
import pytest
import torch
from test_train import WORDS, fast, make_tokenizer
from tiny import tiny_adapter_model

from workbench.train import MissingColumnError, train
from workbench.train.data import CausalLMCollator


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
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
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
