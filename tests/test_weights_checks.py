"""Hostile weights files: pickles that trip the weights-only unpickler, links out of the adapter folder, NaN/inf
values (and the opt-in that lets them in), integer weights. Each is an AdapterLoadError naming the file (and the
key), and the model is unchanged."""

import io
import os
import zipfile

import pytest
import torch
from test_errors import assert_unchanged, snapshot
from tiny import tiny_adapter_model

from workbench import AdapterError, AdapterLoadError
from workbench.core import files
from workbench.core.model_files import ALLOW_NON_FINITE_ENV


@pytest.fixture
def model():
    model = tiny_adapter_model()
    model.add_adapter("keep", config="seq_bn")
    return model


@pytest.fixture(params=[False, True], ids=["bin", "safetensors"])
def saved(request, tmp_path):
    """An adapter `a` (with its head) saved to tmp_path/a; returns (folder, weights path)."""
    source = tiny_adapter_model()
    source.add_adapter("a", config="seq_bn")
    source.add_classification_head("a", num_labels=2)
    source.save_adapter(tmp_path / "a", "a", use_safetensors=request.param)
    name = files.SAFE_WEIGHTS_NAME if request.param else files.WEIGHTS_NAME
    return tmp_path / "a", tmp_path / "a" / name


def with_pickle(pickle_bytes: bytes) -> bytes:
    """A torch.save archive whose data.pkl is replaced by `pickle_bytes` (a well-formed zip otherwise)."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name in source.namelist():
            archive.writestr(name, pickle_bytes if name.endswith("data.pkl") else source.read(name))
    return out.getvalue()


@pytest.mark.parametrize(
    "pickle_bytes, what",
    [
        (b"\x80\x02h\x06.", "KeyError"),  # BINGET of a memo entry that was never stored
        (b"\x80\x02.", "IndexError"),  # STOP on an empty stack
        (b"\x80\x02]q\x00(e0.", "Unsupported operand"),  # an opcode the weights-only unpickler refuses
        (b"\x80\x02cos\nsystem\nq\x00.", "other than tensors"),  # a global: never unpickled
    ],
)
def test_pickles_that_trip_the_unpickler_are_load_errors(tmp_path, model, pickle_bytes, what):
    folder = tmp_path / "a"
    source = tiny_adapter_model()
    source.add_adapter("a", config="seq_bn")
    source.save_adapter(folder, "a", with_head=False)
    path = folder / files.WEIGHTS_NAME
    path.write_bytes(with_pickle(pickle_bytes))
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match=what) as caught:
        model.load_adapter(str(folder), load_as="fresh")
    assert str(path) in str(caught.value)
    assert_unchanged(model, before)


def test_a_weights_file_linking_outside_its_folder_is_refused(tmp_path, model, saved):
    folder, path = saved
    outside = tmp_path / "elsewhere" / path.name
    outside.parent.mkdir()
    path.rename(outside)
    path.symlink_to(outside)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="outside its folder") as caught:
        model.load_adapter(str(folder), load_as="fresh")
    assert str(path) in str(caught.value) and str(outside) in str(caught.value)
    assert_unchanged(model, before)


def test_links_inside_the_folder_and_into_the_hub_cache_blobs_load(tmp_path, model, saved):
    folder, path = saved
    inside = folder / "stored.bytes"
    path.rename(inside)
    path.symlink_to(inside.name)  # a relative link to a file beside it
    assert model.load_adapter(str(folder), load_as="inside") == "inside"

    # the Hugging Face cache: snapshots/<rev>/ files are links into the repo's blobs/
    repo = tmp_path / "models--org--adapter"
    snapshot_folder = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot_folder.mkdir(parents=True)
    for file in folder.iterdir():
        if file.is_file() and not file.is_symlink():
            blob = repo / "blobs" / f"blob-{file.name}"
            blob.write_bytes(file.read_bytes())
            (snapshot_folder / file.name).symlink_to(os.path.relpath(blob, snapshot_folder))
    blob = repo / "blobs" / "weights"
    blob.write_bytes(inside.read_bytes())
    (snapshot_folder / path.name).symlink_to(os.path.relpath(blob, snapshot_folder))
    assert model.load_adapter(str(snapshot_folder), load_as="cached") == "cached"


def test_a_link_out_of_a_snapshot_but_not_into_blobs_is_refused(tmp_path, model, saved):
    folder, path = saved
    repo = tmp_path / "models--org--adapter"
    (repo / "blobs").mkdir(parents=True)
    snapshot_folder = repo / "snapshots" / "abc123"
    snapshot_folder.mkdir(parents=True)
    for file in folder.iterdir():
        if file.is_file():
            (snapshot_folder / file.name).write_bytes(file.read_bytes())
    weights = snapshot_folder / path.name
    weights.unlink()
    weights.symlink_to(path)  # into some other folder, not the repo's blobs
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="outside its folder"):
        model.load_adapter(str(snapshot_folder), load_as="fresh")
    assert_unchanged(model, before)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_unless_allowed(model, saved, monkeypatch, value):
    folder, path = saved
    weights = files.read_weights(path)
    key = sorted(weights)[0]
    weights[key] = weights[key].clone()
    weights[key].view(-1)[0] = value
    files.write_weights(path, weights)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="NaN or infinite") as caught:
        model.load_adapter(str(folder), load_as="fresh")
    assert str(path) in str(caught.value) and ALLOW_NON_FINITE_ENV in str(caught.value)
    assert key.rsplit(".a.", 1)[-1] in str(caught.value)
    assert_unchanged(model, before)

    monkeypatch.setenv(ALLOW_NON_FINITE_ENV, "1")
    assert model.load_adapter(str(folder), load_as="fresh") == "fresh"
    loaded = dict(model.named_parameters())
    assert any(not torch.isfinite(p).all() for n, p in loaded.items() if ".fresh." in n)


def test_non_finite_head_weights_are_refused(model, saved):
    folder, _ = saved
    head_path = files.find_weights(folder, files.HEAD_WEIGHTS_NAME, files.SAFE_HEAD_WEIGHTS_NAME)
    weights = files.read_weights(head_path)
    key = sorted(weights)[0]
    weights[key] = torch.full_like(weights[key], float("nan"))
    files.write_weights(head_path, weights)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="NaN or infinite") as caught:
        model.load_adapter(str(folder), load_as="fresh")
    assert str(head_path) in str(caught.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_weights_are_named_not_cast(model, saved, dtype):
    folder, path = saved
    weights = files.read_weights(path)
    key = sorted(weights)[-1]
    weights[key] = weights[key].to(dtype)
    files.write_weights(path, weights)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="not floating point") as caught:
        model.load_adapter(str(folder), load_as="fresh")
    message = str(caught.value)
    assert str(path) in message and str(dtype) in message and "torch.float32 expected" in message
    assert key.rsplit(".a.", 1)[-1] in message
    assert_unchanged(model, before)


# --- fusion and head config files are type-checked like adapter configs ---------------------------------


def fusion_model_and_folder(tmp_path):
    model = tiny_adapter_model()
    for name in ("x", "y"):
        model.add_adapter(name, config="seq_bn")
    model.add_adapter_fusion(["x", "y"])
    model.save_adapter_fusion(tmp_path / "f", ["x", "y"])
    model.delete_adapter_fusion(["x", "y"])
    return model, tmp_path / "f"


@pytest.mark.parametrize(
    "key, value",
    [
        ("config.temperature", "very"),
        ("config.key", 1),
        ("config.dropout_prob", "x"),
        ("adapter_names", ["x", "x"]),
        ("adapter_names", {"x": 1, "y": 2}),
        ("adapter_names", "x,y"),
        ("adapter_names", []),
    ],
)
def test_bad_fusion_config_files_name_the_key(tmp_path, key, value):
    model, folder = fusion_model_and_folder(tmp_path)
    path = folder / files.ADAPTERFUSION_CONFIG_NAME
    data = files.read_json(path)
    *parents, last = key.split(".")
    target = data
    for part in parents:
        target = target[part]
    target[last] = value
    files.write_json(path, data)
    before = snapshot(model)
    with pytest.raises(AdapterLoadError) as caught:
        model.load_adapter_fusion(str(folder))
    assert str(path) in str(caught.value) and last in str(caught.value) and repr(value) in str(caught.value)
    assert_unchanged(model, before)
    assert not model.adapter_fusions


@pytest.mark.parametrize("key, value", [("num_labels", 0), ("num_labels", "2"), ("layers", 0)])
def test_bad_head_config_files_name_the_key(tmp_path, model, key, value):
    source = tiny_adapter_model()
    source.add_adapter("a", config="seq_bn")
    source.add_classification_head("a", num_labels=2)
    source.save_adapter(tmp_path / "a", "a")
    path = tmp_path / "a" / files.HEAD_CONFIG_NAME
    data = files.read_json(path)
    data["config"][key] = value
    files.write_json(path, data)
    before = snapshot(model)
    with pytest.raises(AdapterError) as caught:
        model.load_adapter(str(tmp_path / "a"), load_as="fresh")
    assert str(path) in str(caught.value) and key in str(caught.value) and repr(value) in str(caught.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("damage", ["KeyError", "IndexError", "link"])
def test_damaged_or_linked_embedding_files_are_load_errors(tmp_path, model, damage):
    model.save_embeddings(tmp_path / "emb", "default")
    path = tmp_path / "emb" / files.EMBEDDING_FILE
    if damage == "link":
        outside = tmp_path / files.EMBEDDING_FILE
        path.rename(outside)
        path.symlink_to(outside)
    else:
        path.write_bytes(with_pickle(b"\x80\x02h\x06." if damage == "KeyError" else b"\x80\x02."))
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="outside its folder" if damage == "link" else damage) as caught:
        model.load_embeddings(tmp_path / "emb", "copy")
    assert str(path) in str(caught.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("first_safetensors", [True, False], ids=["safetensors-then-bin", "bin-then-safetensors"])
def test_a_save_in_the_other_format_replaces_the_earlier_file(tmp_path, first_safetensors):
    """A folder saved again in the other format loads the last save (the earlier file is removed)."""
    torch.manual_seed(0)
    source = tiny_adapter_model()
    source.add_adapter("a", config="seq_bn")
    source.add_classification_head("a", num_labels=2)
    source.save_adapter(tmp_path / "a", "a", use_safetensors=first_safetensors)
    with torch.no_grad():
        for param in [p for _, p in source._adapter_parameters("a")] + list(source.heads["a"].parameters()):
            param.add_(0.5)
    source.save_adapter(tmp_path / "a", "a", use_safetensors=not first_safetensors)
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert (files.SAFE_WEIGHTS_NAME in names) != (files.WEIGHTS_NAME in names)
    assert (files.SAFE_HEAD_WEIGHTS_NAME in names) != (files.HEAD_WEIGHTS_NAME in names)
    torch.manual_seed(0)
    loaded = tiny_adapter_model()  # the same base weights
    loaded.load_adapter(tmp_path / "a", set_active=True)
    source.set_active_adapters("a")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, source(input_ids=ids).logits)


def test_a_folder_holding_both_formats_loads_the_newer_file_and_says_so(tmp_path, saved):
    folder, path = saved
    other = folder / (files.WEIGHTS_NAME if path.name == files.SAFE_WEIGHTS_NAME else files.SAFE_WEIGHTS_NAME)
    (tmp_path / "copy").mkdir()
    files.write_weights(tmp_path / "copy" / other.name, files.read_weights(path))
    os.replace(tmp_path / "copy" / other.name, other)  # an older tool's file beside this save's
    os.utime(other, ns=(path.stat().st_mtime_ns - 10**9,) * 2)
    with pytest.warns(UserWarning, match=f"loading the newer, {path.name}"):
        assert files.find_weights(folder, files.WEIGHTS_NAME, files.SAFE_WEIGHTS_NAME) == path
    os.utime(other, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    with pytest.warns(UserWarning, match=f"loading the newer, {other.name}"):
        assert files.find_weights(folder, files.WEIGHTS_NAME, files.SAFE_WEIGHTS_NAME) == other
