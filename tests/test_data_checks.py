"""The data checks before training (`workbench.train.check_data`) and `train()` refusing bad data before any step.

Each check: bad data gives a problem naming the column and the values, good data gives none, and `train()` raises
the problem before it touches the model or writes a checkpoint.
"""

import logging

import pandas as pd
import pytest
from test_train import adapter_model, fast, keyword_frame, make_tokenizer

from workbench.train import (
    DataCheckError,
    DataError,
    MissingColumnError,
    TrainConfig,
    UnknownLabelError,
    check_data,
    train,
)
from workbench.train.checks import FEW_ROWS_PER_LABEL, MIN_ROWS_PER_LABEL


def errors(problems) -> list[str]:
    return [p.message for p in problems if p.is_error]


def warnings_of(problems) -> list[str]:
    return [p.message for p in problems if not p.is_error]


def refused(tmp_path, data, error=DataError, match=None, **kwargs):
    """train() raises `error` before training: no adapter or head added, no checkpoint written."""
    model = adapter_model()
    adapters, heads = set(model.adapters), set(model.heads)
    kwargs = {"adapter": "kw", **kwargs}
    with pytest.raises(error, match=match) as caught:
        train(model, data, tokenizer=make_tokenizer(), output_dir=tmp_path / "run", config=fast(), **kwargs)
    assert set(model.adapters) == adapters and set(model.heads) == heads
    assert not list((tmp_path / "run").glob("checkpoint-*")) and not (tmp_path / "run" / "final").exists()
    return caught.value


def test_good_data_has_no_problems():
    assert check_data(keyword_frame(64)) == []
    tags = pd.DataFrame({"tokens": [["w5", "w6"], ["w7", "w5"]] * 10, "tags": [["K", "O"], ["O", "K"]] * 10})
    assert check_data(tags, "tagging", text_column="tokens", label_column="tags") == []
    multi = keyword_frame(40).assign(label=lambda d: [["a", "b"] if y == "yes" else ["a"] for y in d.label])
    assert check_data(multi, "multilabel") == []


def test_missing_label_column_is_named_with_the_columns_there(tmp_path):
    frame = keyword_frame(40).rename(columns={"label": "target"})
    assert errors(check_data(frame)) == ["label column 'label' is not in the 'train' split (columns: text, target)"]
    refused(tmp_path, frame, MissingColumnError, r"label column 'label' is not in the 'train' split")


def test_the_issues_csv_without_a_label_column_never_trains_on_a_constant_column(tmp_path):
    """The bug: a CSV with text and a constant column trained on the constant column and reported accuracy 1.0."""
    path = tmp_path / "reviews.csv"
    keyword_frame(40).drop(columns="label").assign(source="web").to_csv(path, index=False)
    problems = errors(check_data(path, label_column="source"))
    assert len(problems) == 1
    assert "label column 'source' holds one value only ('web') in all 36 training rows" in problems[0]
    refused(tmp_path, path, DataCheckError, r"'source' holds one value only", label_column="source")


def test_constant_labels_of_multilabel_and_tagging_are_refused():
    multi = keyword_frame(20).assign(label=[["a", "b"]] * 20)
    assert "holds one value only" in errors(check_data(multi, "multilabel"))[0]
    tags = pd.DataFrame({"tokens": [["w5", "w6"]] * 20, "tags": [["O", "O"]] * 20})
    assert (
        "holds one value only ('O')"
        in errors(check_data(tags, "tagging", text_column="tokens", label_column="tags"))[0]
    )


def test_too_few_rows_per_label_names_the_labels_and_counts(tmp_path):
    frame = keyword_frame(60)
    frame.loc[0, "label"] = "maybe"  # one row: an error
    validation = keyword_frame(20, seed=1)
    data = {"train": frame, "validation": validation}
    assert errors(check_data(data)) == [
        f"too few training rows for label(s) 'maybe' (1 row) in column 'label': each label needs at least "
        f"{MIN_ROWS_PER_LABEL}"
    ]
    refused(tmp_path, data, DataCheckError, r"'maybe' \(1 row\)")

    frame.loc[1, "label"] = "maybe"  # two rows: trains, with a warning
    problems = check_data({"train": frame, "validation": validation})
    assert errors(problems) == []
    assert warnings_of(problems) == [
        "few training rows for label(s) 'maybe' (2 rows) in column 'label': results for them will be unreliable"
    ]
    assert FEW_ROWS_PER_LABEL > 2


def test_a_label_column_of_distinct_values_is_questioned():
    frame = keyword_frame(40)
    problems = errors(check_data(frame.assign(label=[f"id{i}" for i in range(40)])))
    assert len(problems) == 1 and "36 different values in 36 training rows" in problems[0]
    assert problems[0].endswith("is it the label column?")


def test_labels_in_validation_never_seen_in_training(tmp_path):
    validation = keyword_frame(10, seed=1)
    validation.loc[[0, 1], "label"] = "maybe"
    data = {"train": keyword_frame(40), "validation": validation}
    assert errors(check_data(data)) == [
        "label(s) 'maybe' (2 rows) of the validation split in column 'label' are never seen in training: add "
        "training rows for them or remove them from the validation data"
    ]
    refused(tmp_path, data, DataCheckError, r"'maybe' \(2 rows\) of the validation split")


def test_rows_without_a_label(tmp_path):
    frame = keyword_frame(40)
    frame.loc[[3, 8], "label"] = None
    data = {"train": frame, "validation": keyword_frame(10, seed=1)}
    assert errors(check_data(data)) == ["2 training rows have no label in column 'label' (rows 3, 8)"]
    refused(tmp_path, data, DataCheckError, "2 training rows have no label")


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (list(range(40)), "text column 'text' holds numbers, not text (e.g. 0, 1, 2, 3, 4 and 35 more)"),
        ([["w5", "w6"]] * 40, "text column 'text' holds lists, not text (e.g. ['w5', 'w6']); word lists are for task"),
        (["w5 w6"] * 10 + [""] * 20 + [None] * 10, "text column 'text' is mostly empty: 30 of 40 training rows"),
    ],
    ids=["numbers", "lists", "mostly-empty"],
)
def test_text_column_that_is_not_text(tmp_path, column, message):
    frame = keyword_frame(40).assign(text=column)
    data = {"train": frame, "validation": keyword_frame(10, seed=1)}
    found = errors(check_data(data))
    assert len(found) == 1 and found[0].startswith(message)
    refused(tmp_path, data, DataCheckError, "text column 'text'")


def test_validation_texts_are_checked_as_training_texts_are(tmp_path):
    # a validation row with no text was evaluated as the word "None"
    validation = keyword_frame(10, seed=1)
    validation.loc[2, "text"] = None
    data = {"train": keyword_frame(40), "validation": validation}
    assert errors(check_data(data)) == ["text column 'text': no text (None) in validation rows 2"]
    refused(tmp_path, data, DataCheckError, r"no text \(None\) in validation rows 2")
    validation = keyword_frame(10, seed=1).assign(text=list(range(10)))
    found = errors(check_data({"train": keyword_frame(40), "validation": validation}))
    assert found == ["text column 'text' in the validation rows holds numbers, not text (e.g. 0, 1, 2, 3, 4 and 5 "
                     "more): pick the column with the text"]  # fmt: skip


def test_some_empty_texts_are_a_warning_and_the_same_column_twice_an_error():
    frame = keyword_frame(40)
    frame.loc[[1, 2], "text"] = ""
    problems = check_data({"train": frame, "validation": keyword_frame(10, seed=1)})
    assert errors(problems) == [] and warnings_of(problems) == ["text column 'text' is empty in 2 of 40 training rows"]
    problems = errors(check_data(keyword_frame(40), text_column="label"))
    assert "column 'label' is picked as both the text and the label" in problems


def test_every_problem_at_once_in_one_error(tmp_path):
    frame = keyword_frame(40).assign(text=list(range(40)), label="yes")
    data = {"train": frame, "validation": keyword_frame(10, seed=1)}
    error = refused(tmp_path, data, DataCheckError, "the data has 3 problems")
    text = str(error)
    assert "holds numbers" in text and "one value only" in text and "never seen in training" in text
    assert len(error.problems) == 3 and all(p.is_error for p in error.problems)


def test_labels_outside_an_existing_head(tmp_path):
    frame = keyword_frame(64)
    frame.loc[3, "label"] = "maybe"
    found = errors(check_data(frame, head_labels=["no", "yes"]))
    assert found == ["label(s) 'maybe' in column 'label' are not in the head's labels ('no', 'yes')"]
    model = adapter_model()
    model.add_classification_head("kw", num_labels=2, id2label={0: "no", 1: "yes"})
    with pytest.raises(UnknownLabelError, match="'maybe'.*not in the head's labels"):
        train(model, frame, adapter="kw", tokenizer=make_tokenizer(), output_dir=tmp_path, config=fast())


def test_warnings_are_logged_and_training_goes_ahead(tmp_path, caplog):
    frame = pd.concat([keyword_frame(40), pd.DataFrame({"text": ["w6 w7"] * 3, "label": ["rare"] * 3})])
    data = {"train": frame, "validation": keyword_frame(10, seed=1)}
    with caplog.at_level(logging.WARNING, logger="workbench.train.checks"):
        record = train(
            adapter_model(),
            data,
            adapter="kw",
            tokenizer=make_tokenizer(),
            output_dir=tmp_path,
            config=fast(max_steps=1, eval_steps=1),
        )
    assert record.global_step == 1
    assert "few training rows for label(s) 'rare' (3 rows)" in caplog.text


def test_label_names_name_the_heads_labels_in_the_order_given(tmp_path):
    frame = keyword_frame(48).assign(label=lambda d: (d.label == "yes").astype(int))
    model = adapter_model()
    names = {1: "positive", 0: "negative"}
    assert check_data(frame, label_names=names) == []
    train(
        model,
        frame,
        adapter="kw",
        label_names=names,
        tokenizer=make_tokenizer(),
        output_dir=tmp_path,
        config=fast(max_steps=1, eval_steps=1),
    )
    assert model.heads["kw"].id2label == {0: "positive", 1: "negative"}


def test_learning_rate_left_open_is_the_default_for_the_kind_and_settings_reach_the_trainer(tmp_path):
    open_rate = TrainConfig(seed=7, lr_scheduler_type="cosine", warmup_steps=0.25, weight_decay=0.01)
    assert open_rate.for_kind("adapter").learning_rate == 1e-4
    assert open_rate.for_kind("fusion").learning_rate == 5e-5
    assert open_rate.for_kind("full").learning_rate == 2e-5
    assert TrainConfig(learning_rate=3e-4).for_kind("full").learning_rate == 3e-4  # a given rate is kept
    args = open_rate.training_args(tmp_path)
    assert (args.seed, args.lr_scheduler_type, args.warmup_steps, args.weight_decay) == (7, "cosine", 0.25, 0.01)
    with pytest.raises(ValueError, match="weight_decay=-1.*must be 0 or more; .*lr_scheduler_type='sometimes'"):
        TrainConfig(weight_decay=-1, lr_scheduler_type="sometimes")

    frame = keyword_frame(32)
    config = TrainConfig(max_steps=1, batch_size=8, eval_strategy="steps", eval_steps=1, lr_scheduler_type="constant")
    full = train(
        adapter_model(), frame, kind="full", tokenizer=make_tokenizer(), output_dir=tmp_path / "f", config=config
    )
    assert full.config["learning_rate"] == 2e-5 and full.config["lr_scheduler_type"] == "constant"
