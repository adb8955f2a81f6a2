"""Data by dataset id (`datasets.load_dataset` against the fake Hub) and by local folder, and their errors."""

import io

import pytest
from datasets import DatasetDict
from test_train import adapter_model, fast, keyword_frame, make_tokenizer

from workbench.train import DataError, train
from workbench.train.data import load_splits


def parquet(frame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


@pytest.fixture
def keyword_dataset(fake_hub):
    """A dataset repo in the Hub's usual layout: one parquet file per split under data/."""
    frame = keyword_frame(60)
    fake_hub.add_repo(
        "org/keywords",
        {
            "README.md": b"# keywords\n",
            "data/train-00000-of-00001.parquet": parquet(frame.iloc[:48]),
            "data/validation-00000-of-00001.parquet": parquet(frame.iloc[48:]),
        },
        repo_type="dataset",
    )
    return fake_hub


def test_dataset_id_is_loaded_from_the_hub_and_trains(keyword_dataset, tmp_path):
    splits = load_splits("org/keywords")
    assert (len(splits["train"]), len(splits["validation"])) == (48, 12)  # its own validation split, none held out
    assert splits["train"].column_names == ["text", "label"]
    assert splits["train"]["text"] == keyword_frame(60).text[:48].tolist()
    paths = [r["path"] for r in keyword_dataset.requests if r["status"] == 200]
    assert any(p.startswith("/api/datasets/org/keywords") for p in paths)
    assert any(
        p.startswith("/datasets/org/keywords/resolve/") and p.endswith("train-00000-of-00001.parquet") for p in paths
    )

    record = train(
        adapter_model(),
        "org/keywords",
        adapter="kw",
        tokenizer=make_tokenizer(),
        output_dir=tmp_path / "run",
        config=fast(max_steps=2, eval_steps=2),
    )
    assert record.global_step == 2 and "eval_accuracy" in record.final_metrics


def test_unknown_dataset_id_is_a_clear_error_and_nothing_changes(fake_hub, tmp_path):
    model = adapter_model()
    before = set(model.heads)
    with pytest.raises(DataError, match=r"no dataset 'org/absent': it is not a local file or folder, and not a"):
        train(model, "org/absent", adapter="kw", tokenizer=make_tokenizer(), output_dir=tmp_path / "run")
    assert any(r["path"].startswith("/datasets/org/absent/") for r in fake_hub.requests)  # the Hub was asked
    assert set(model.heads) == before and not (tmp_path / "run").exists()  # the folder it made is gone again


def test_dataset_id_offline_without_a_cached_copy_is_a_clear_error():
    # the tests run with HF_HUB_OFFLINE=1 (conftest.py) and no fake Hub: datasets cannot reach any Hub
    with pytest.raises(DataError, match=r"cannot load the dataset 'org/never-cached': .*Hub"):
        load_splits("org/never-cached")


def test_local_folder_of_data_files_and_saved_dataset(tmp_path):
    frame = keyword_frame(30)
    files = tmp_path / "files"
    files.mkdir()
    frame.iloc[:20].to_csv(files / "train.csv", index=False)
    frame.iloc[20:].to_csv(files / "validation.csv", index=False)
    splits = load_splits(files)
    assert (len(splits["train"]), len(splits["validation"])) == (20, 10)
    assert splits["validation"]["label"] == frame.label[20:].tolist()

    saved = tmp_path / "saved"
    DatasetDict(train=splits["train"], dev=splits["validation"]).save_to_disk(str(saved))
    again = load_splits(str(saved))
    assert again["train"]["text"] == splits["train"]["text"] and len(again["validation"]) == 10

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty: cannot load it as a dataset folder"):
        load_splits(empty)


def test_tsv_has_no_quoting_a_quote_is_text_and_csv_keeps_its_quoting(tmp_path):
    # GLUE/SST-2 TSVs are unquoted: a text opening with a quote once swallowed the rows up to the next quote
    texts = [f"w{i} w{i + 1}" for i in range(12)]
    texts[2], texts[7] = '"w9 the so-called hit', 'w8 said "yes"'
    (tmp_path / "rows.tsv").write_text("text\tlabel\n" + "".join(f"{t}\t{i % 2}\n" for i, t in enumerate(texts)))
    splits = load_splits({"train": tmp_path / "rows.tsv", "dev": tmp_path / "rows.tsv"})
    assert splits["train"]["text"] == texts and splits["train"]["label"] == [i % 2 for i in range(12)]

    (tmp_path / "tab.tsv").write_text("text\tlabel\nw4 w5\t0\nw6\tw7\t1\n")  # a tab inside a text: not TSV
    with pytest.raises(DataError, match=r"tab.tsv: cannot read it"):
        load_splits(tmp_path / "tab.tsv")

    (tmp_path / "rows.csv").write_text('text,label\n"w4, ""w5""",0\nw6,1\n')  # CSV quoting stays
    assert load_splits({"train": tmp_path / "rows.csv", "dev": tmp_path / "rows.csv"})["train"]["text"] == [
        'w4, "w5"', "w6"]
