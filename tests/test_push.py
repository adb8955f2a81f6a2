"""Sharing adapters and setups: push to the fake Hub (tests/fakehub.py), list, load back, and the errors."""

import json
import tempfile

import pytest
import torch
import yaml
from huggingface_hub import HfApi
from tiny import tiny_adapter_model, tiny_base_model

import workbench
from workbench import AdapterConfigError, AdapterLoadError, BatchSplit, Fuse, Stack, list_adapters
from workbench.core.files import SETUP_CONFIG_NAME
from workbench.hub import HubPushError

MODEL = "org/tiny-bert"  # the base model, served by the fake Hub like any model repo
TOKEN = "hf_alice_write"
INPUT = torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0], [2, 4, 4, 4, 3]])


@pytest.fixture
def hub(fake_hub, tmp_path, monkeypatch):
    """The fake Hub with the tiny BERT as `org/tiny-bert`, user alice (token TOKEN), and an empty temp folder
    (tempfile's default) to check that pushes leave nothing behind."""
    tiny_base_model().save_pretrained(tmp_path / "base")
    fake_hub.add_folder(MODEL, tmp_path / "base")
    fake_hub.add_user("alice", TOKEN, orgs=["alice-lab"])
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    fake_hub.temp = temp
    return fake_hub


def hub_model():
    return workbench.AutoAdapterModel.from_pretrained(MODEL).eval()


def perturb(model, name):
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(0.3 * torch.randn_like(param))


def sentiment_model():
    model = hub_model()
    model.add_adapter("sst", config="seq_bn")
    model.add_classification_head("sst", num_labels=2, id2label={0: "neg", 1: "pos"})
    perturb(model, "sst")
    model.set_active_adapters("sst")
    return model


def card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_pushed_adapter_is_listed_and_loads_back_identically(hub):
    model = sentiment_model()
    commit = model.push_adapter_to_hub("alice/my-sentiment", "sst", token=TOKEN)
    assert commit.startswith(hub.url + "/alice/my-sentiment/commit/") and commit.pr_url is None
    assert set(hub.files("alice/my-sentiment")) == {
        ".gitattributes",
        "README.md",
        "adapter_config.json",
        "pytorch_adapter.bin",
        "head_config.json",
        "pytorch_model_head.bin",
    }
    assert [c["summary"] for c in hub.commits("alice/my-sentiment")] == ["Upload adapter 'sst'"]
    creates = [r for r in hub.requests if r["path"] == "/api/repos/create"]
    assert json.loads(creates[0]["body"]) == {"name": "my-sentiment", "organization": "alice"}
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in hub.requests if r["method"] == "POST")

    listed = {i.adapter_id: i for i in list_adapters(source="hf", model_name=MODEL)}
    assert list(listed) == ["alice/my-sentiment"]  # a free-form name: found by its base_model:adapter tag
    info = listed["alice/my-sentiment"]
    assert (info.model_name, info.username, info.library) == (MODEL, "alice", "adapters")
    assert {"adapter-transformers", "adapters", f"base_model:adapter:{MODEL}", "text-classification"} <= set(info.tags)

    again = hub_model()
    name = again.load_adapter("alice/my-sentiment", source="hf", set_active=True)
    assert name == "sst" and again.heads["sst"].id2label == {0: "neg", 1: "pos"}
    assert torch.equal(model(input_ids=INPUT).logits, again(input_ids=INPUT).logits)
    assert not list(hub.temp.iterdir())  # the temporary working folder is gone


def test_model_card_has_the_hub_metadata_and_usage(hub):
    model = sentiment_model()
    model.push_adapter_to_hub(
        "alice/card",
        "sst",
        datasets_tag="glue",
        token=TOKEN,
        adapter_card_kwargs={"metrics": ["accuracy"], "language": "en", "license": "apache-2.0", "tags": ["nice"]},
    )
    card = hub.files("alice/card")["README.md"].decode()
    meta = card_metadata(card)
    assert meta["library_name"] == "adapter-transformers" and meta["base_model"] == MODEL
    assert meta["tags"][:4] == ["adapter-transformers", "adapters", "bert", f"base_model:adapter:{MODEL}"]
    assert "nice" in meta["tags"] and meta["pipeline_tag"] == "text-classification"
    assert (meta["datasets"], meta["metrics"], meta["language"], meta["license"]) == (
        ["glue"],
        ["accuracy"],
        "en",
        "apache-2.0",
    )
    assert 'model = AutoAdapterModel.from_pretrained("org/tiny-bert")' in card
    assert 'model.load_adapter("alice/card", source="hf", set_active=True)' in card  # workbench
    assert (
        "from adapters import AutoAdapterModel" in card and 'model.load_adapter("alice/card", set_active=True)' in card
    )
    assert "prediction head for classification" in card and "[glue](https://huggingface.co/datasets/glue)" in card
    served = hub.info("alice/card")  # what the Hub derives from the card, as listings see it
    assert served["library_name"] == "adapter-transformers" and served["pipeline_tag"] == "text-classification"
    assert {"dataset:glue", "en", "license:apache-2.0", f"base_model:{MODEL}", "nice"} <= set(served["tags"])
    assert served["config"]["adapter_transformers"]["model_name"] == MODEL


def test_private_repo_needs_the_token(hub):
    model = sentiment_model()
    model.push_adapter_to_hub("alice/secret", "sst", private=True, token=TOKEN)
    create = next(r for r in hub.requests if r["path"] == "/api/repos/create")
    assert json.loads(create["body"])["visibility"] == "private" and hub.info("alice/secret")["private"] is True
    assert not list_adapters(source="hf", model_name=MODEL)  # anonymous: not listed
    other = hub_model()
    with pytest.raises(AdapterLoadError, match="alice/secret"):
        other.load_adapter("alice/secret", source="hf")
    hub.add_user("bob", "hf_bob")
    with pytest.raises(AdapterLoadError, match="alice/secret"):
        other.load_adapter("alice/secret", source="hf", token="hf_bob")
    assert not other.adapters
    assert other.load_adapter("alice/secret", source="hf", token=TOKEN, set_active=True) == "sst"
    assert torch.equal(model(input_ids=INPUT).logits, other(input_ids=INPUT).logits)


def test_token_from_the_environment_and_organisation_repos(hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    model = sentiment_model()
    model.push_adapter_to_hub("alice-lab/shared", "sst")
    assert "pytorch_adapter.bin" in hub.files("alice-lab/shared")
    assert hub.info("alice-lab/shared")["author"] == "alice-lab"


def test_existing_card_is_kept_unless_overwritten(hub, tmp_path):
    model = sentiment_model()
    model.push_adapter_to_hub("alice/kept", "sst", token=TOKEN)
    HfApi().upload_file(
        path_or_fileobj=b"---\nlibrary_name: adapter-transformers\n---\n# My own card\n",
        path_in_repo="README.md",
        repo_id="alice/kept",
        token=TOKEN,
    )
    perturb(model, "sst")
    model.push_adapter_to_hub("alice/kept", "sst", token=TOKEN, commit_message="Retrained")
    files = hub.files("alice/kept")
    assert files["README.md"].endswith(b"# My own card\n")
    assert hub.commits("alice/kept")[-1]["summary"] == "Retrained"
    assert "pytorch_adapter.bin" in hub.commits("alice/kept")[-1]["paths"]
    model.push_adapter_to_hub("alice/kept", "sst", token=TOKEN, overwrite_adapter_card=True)
    assert b"# Adapter `alice/kept`" in hub.files("alice/kept")["README.md"]

    folder = tmp_path / "work"  # local_path: the working copy stays, and its own card is kept
    folder.mkdir()
    (folder / "README.md").write_text("# Local card\n")
    (folder / "notes.txt").write_text("not part of the upload\n")
    model.push_adapter_to_hub("alice/local", "sst", token=TOKEN, local_path=str(folder))
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "head_config.json",
        "notes.txt",
        "pytorch_adapter.bin",
        "pytorch_model_head.bin",
    ]
    assert (folder / "README.md").read_text() == "# Local card\n"
    uploaded = hub.files("alice/local")
    assert "notes.txt" not in uploaded and "README.md" not in uploaded and "pytorch_adapter.bin" in uploaded


def test_create_pr_and_revision(hub):
    model = sentiment_model()
    model.push_adapter_to_hub("alice/reviewed", "sst", token=TOKEN)
    main_before = hub.files("alice/reviewed")
    perturb(model, "sst")
    commit = model.push_adapter_to_hub("alice/reviewed", "sst", token=TOKEN, create_pr=True)
    assert commit.pr_url == f"{hub.url}/alice/reviewed/discussions/1" and commit.pr_num == 1
    assert hub.files("alice/reviewed") == main_before  # main untouched until the PR is merged
    assert hub.files("alice/reviewed", "refs/pr/1")["pytorch_adapter.bin"] != main_before["pytorch_adapter.bin"]
    other = hub_model()
    other.load_adapter("alice/reviewed", source="hf", version="refs/pr/1", set_active=True)
    assert torch.equal(model(input_ids=INPUT).logits, other(input_ids=INPUT).logits)

    model.push_adapter_to_hub("alice/reviewed", "sst", token=TOKEN, revision="dev", commit_description="wip")
    last = hub.commits("alice/reviewed")[-1]
    assert (last["ref"], last["description"]) == ("dev", "wip") and "pytorch_adapter.bin" in hub.files(
        "alice/reviewed", "dev"
    )
    assert hub.files("alice/reviewed") == main_before


def setup_model():
    """Adapters a, b, c, a fusion of a and b, heads head_a and head_b; Stack(Fuse(a, b), c) with a BatchSplit head."""
    model = hub_model()
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="seq_bn")
        perturb(model, name)
    model.add_adapter_fusion(["a", "b"])
    with torch.no_grad():
        for _, param in model._fusion_parameters("a,b"):
            param.add_(0.2 * torch.randn_like(param))
    model.add_classification_head("head_a", num_labels=2)
    model.add_classification_head("head_b", num_labels=3)
    setup, heads = Stack(Fuse("a", "b"), "c"), BatchSplit("head_a", "head_b", batch_sizes=[2, 1])
    model.set_active_adapters(setup)
    model.active_head = heads
    return model, setup, heads


def outputs(model):
    return [o.logits for o in model(input_ids=INPUT).head_outputs]


def test_push_adapter_setup_and_load_it_back(hub):
    model, setup, heads = setup_model()
    model.push_adapter_setup_to_hub("alice/fused", setup, head_setup=heads, token=TOKEN, datasets_tag="glue")
    files = hub.files("alice/fused")
    expected = {SETUP_CONFIG_NAME, "a/adapter_config.json", "c/pytorch_adapter.bin", "a,b/adapter_fusion_config.json"}
    assert expected <= set(files)
    assert {"head_a/head_config.json", "head_b/pytorch_model_head.bin", "README.md"} <= set(files)
    card = files["README.md"].decode()
    assert card_metadata(card)["pipeline_tag"] == "text-classification"
    assert 'model.load_adapter_setup("alice/fused", source="hf", set_active=True)' in card

    other = hub_model()
    loaded, loaded_heads = other.load_adapter_setup("alice/fused", source="hf", set_active=True)
    assert (loaded, loaded_heads) == (setup, heads)
    assert other.active_adapters == setup and other.active_head == heads
    assert set(other.adapters) == {"a", "b", "c"} and other.adapter_fusions == {"a,b": ["a", "b"]}
    for mine, theirs in zip(outputs(model), outputs(other), strict=True):
        assert torch.equal(mine, theirs)


def test_setup_files_use_the_adapters_library_layout(tmp_path):
    model = tiny_adapter_model()
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["a", "b"])
    model.add_classification_head("head_a", num_labels=2)
    model.add_classification_head("head_b", num_labels=2)
    model.save_adapter_setup(
        tmp_path, Stack(Fuse("a", "b"), "c"), head_setup=BatchSplit("head_a", "head_b", batch_sizes=[2, 1])
    )
    data = json.loads((tmp_path / SETUP_CONFIG_NAME).read_text())
    single = [{"type": "single", "children": [n]} for n in ("a", "b", "c", "head_a", "head_b")]
    assert data["adapter_setup"] == {
        "type": "Stack",
        "children": [{"type": "Fuse", "children": single[:2]}, single[2]],
    }
    assert data["head_setup"] == {"type": "BatchSplit", "children": single[3:], "kwargs": {"batch_sizes": [2, 1]}}
    assert data["version"].startswith("adapters.")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a",
        "a,b",
        "adapter_setup.json",
        "b",
        "c",
        "head_a",
        "head_b",
    ]

    fresh = tiny_adapter_model()
    assert fresh.load_adapter_setup(tmp_path) == (
        Stack(Fuse("a", "b"), "c"),
        BatchSplit("head_a", "head_b", batch_sizes=[2, 1]),
    )
    assert fresh.active_adapters is None  # set_active=False: loaded, not activated


def test_load_adapter_setup_is_all_or_nothing(tmp_path):
    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
    model.save_adapter_setup(tmp_path / "s", Stack("a", "b"))
    other = tiny_adapter_model()
    other.add_adapter("b", config="lora")
    (tmp_path / "s" / "b" / "pytorch_adapter.bin").write_bytes(b"not a checkpoint")  # "a" loads, then "b" fails
    with pytest.raises(AdapterLoadError, match="pytorch_adapter.bin"):
        other.load_adapter_setup(tmp_path / "s", set_active=True)
    assert list(other.adapters) == ["b"] and other.adapters["b"].architecture == "lora"
    assert other.active_adapters is None

    (tmp_path / "s" / "b" / "adapter_config.json").rename(tmp_path / "b_config.json")
    (tmp_path / "s" / "b" / "pytorch_adapter.bin").rename(tmp_path / "b_weights.bin")
    (tmp_path / "s" / "b").rmdir()
    with pytest.raises(AdapterLoadError, match=r"names \['b'\], but .* has no such sub-folder"):
        other.load_adapter_setup(tmp_path / "s")
    data = json.loads((tmp_path / "s" / SETUP_CONFIG_NAME).read_text())
    data["adapter_setup"]["children"][0]["children"] = ["../../outside"]
    (tmp_path / "s" / SETUP_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(AdapterLoadError, match="outside"):
        tiny_adapter_model().load_adapter_setup(tmp_path / "s")
    with pytest.raises(AdapterLoadError, match="missing file"):
        tiny_adapter_model().load_adapter_setup(tmp_path)
    with pytest.raises(AdapterConfigError, match="no adapter named 'x'"):
        model.save_adapter_setup(tmp_path / "t", Stack("a", "x"))
    assert not (tmp_path / "t").exists()  # checked before anything is written


def test_bad_arguments_fail_before_any_request(hub):
    model = sentiment_model()
    hub.reset_log()
    for bad in ("a/b/c", "bad id!", "", "alice/../x", None):
        with pytest.raises(AdapterConfigError, match="repo_id"):
            model.push_adapter_to_hub(bad, "sst", token=TOKEN)
    with pytest.raises(AdapterConfigError, match="no adapter named 'nope'"):
        model.push_adapter_to_hub("alice/x", "nope", token=TOKEN)
    with pytest.raises(AdapterConfigError, match="no adapter named 'zz'"):
        model.push_adapter_setup_to_hub("alice/x", Stack("sst", "zz"), token=TOKEN)
    (hub.temp / "f").write_text("")
    with pytest.raises(AdapterConfigError, match="local_path=.* is a file"):
        model.push_adapter_to_hub("alice/x", "sst", token=TOKEN, local_path=hub.temp / "f")
    (hub.temp / "f").unlink()
    with pytest.raises(AdapterConfigError, match="'colour'"):
        model.push_adapter_to_hub("alice/x", "sst", token=TOKEN, adapter_card_kwargs={"colour": "red"})
    assert not hub.requests


def test_auth_failures_name_the_repo(hub):
    model = sentiment_model()
    with pytest.raises(HubPushError, match=r"'alice/x'.*HTTP 401.*token="):
        model.push_adapter_to_hub("alice/x", "sst", token=False)
    with pytest.raises(HubPushError, match=r"'alice/x'.*HTTP 401"):
        model.push_adapter_to_hub("alice/x", "sst", token="hf_unknown")
    hub.add_user("bob", "hf_bob")
    with pytest.raises(HubPushError, match=r"'alice/x'.*HTTP 403"):
        model.push_adapter_to_hub("alice/x", "sst", token="hf_bob")
    hub.add_user("carol", "hf_read_only", write=False)
    with pytest.raises(HubPushError, match="HTTP 403"):
        model.push_adapter_to_hub("carol/x", "sst", token="hf_read_only")
    model.push_adapter_to_hub("alice/secret", "sst", token=TOKEN, private=True)
    with pytest.raises(HubPushError, match=r"'alice/secret'.*HTTP 403"):  # bob may not even see it
        model.push_adapter_to_hub("alice/secret", "sst", token="hf_bob")
    assert "alice/x" not in {r["path"] for r in hub.requests if "commit" in r["path"]}
    assert not list(hub.temp.iterdir())


def test_network_faults_leave_nothing_behind(hub, monkeypatch):
    model = sentiment_model()
    hub.fail("/commit/", "status", code=500)
    with pytest.raises(HubPushError, match=r"uploading adapter 'sst' to 'alice/flaky'.*HTTP 500"):
        model.push_adapter_to_hub("alice/flaky", "sst", token=TOKEN)
    assert set(hub.files("alice/flaky")) == {".gitattributes"} and not list(hub.temp.iterdir())
    hub.clear_faults()
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(HubPushError, match=r"creating repo 'alice/flaky' on http://127.0.0.1:9: could not reach"):
        model.push_adapter_to_hub("alice/flaky", "sst", token=TOKEN)


def test_card_of_a_model_loaded_from_a_folder(tmp_path):
    from workbench.hub import adapter_card

    tiny_base_model().save_pretrained(tmp_path / "base")
    model = workbench.AutoAdapterModel.from_pretrained(tmp_path / "base")
    model.add_adapter("x", config="lora")
    meta = card_metadata(adapter_card(model, "alice/x", adapter_name="x"))  # a local path is no base_model
    assert "base_model" not in meta and meta["tags"] == ["adapter-transformers", "adapters", "bert"]
    assert "pipeline_tag" not in meta  # no head
    meta = card_metadata(adapter_card(model, "alice/x", adapter_name="x", base_model=MODEL, tags="mine"))
    assert meta["base_model"] == MODEL and meta["tags"][-2:] == [f"base_model:adapter:{MODEL}", "mine"]


def test_token_true_without_a_stored_token(hub):
    model = sentiment_model()
    with pytest.raises(HubPushError, match="no token is stored"):
        model.push_adapter_to_hub("alice/x", "sst", token=True)
