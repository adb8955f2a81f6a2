"""Bad input gets a clear error naming the file, key or value, and leaves the model as it was."""

import json
import pickle

import pytest
import torch
from tiny import tiny_adapter_model, tiny_base_model

import workbench
from workbench import (
    AdapterConfig,
    AdapterConfigError,
    AdapterLoadError,
    Average,
    CompositionError,
    Fuse,
    HeadError,
    Parallel,
    Stack,
    UnsupportedModelError,
)


@pytest.fixture
def saved(tmp_path):
    """A model with an adapter `a` (and head) saved to tmp_path/a."""
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a", num_labels=2)
    model.save_adapter(tmp_path / "a", "a")
    return tmp_path / "a"


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, set(model.adapters), dict(model.heads)


def assert_unchanged(model, before):
    state, adapters, heads = before
    after = model.state_dict()
    assert set(after) == set(state)
    assert all(torch.equal(after[k], state[k]) for k in state)
    assert set(model.adapters) == adapters and dict(model.heads) == heads


def test_unknown_config_name_and_key():
    model = tiny_adapter_model()
    with pytest.raises(AdapterConfigError, match="'nonsense'"):
        model.add_adapter("x", config="nonsense")
    with pytest.raises(AdapterConfigError, match="reduction_factr"):
        model.add_adapter("x", config="seq_bn[reduction_factr=4]")
    with pytest.raises(AdapterConfigError, match="init_weights"):
        workbench.SeqBnConfig(init_weights="zeros")
    assert not model.adapters


def test_duplicate_name_and_unknown_adapter():
    model = tiny_adapter_model()
    model.add_adapter("a")
    with pytest.raises(AdapterConfigError, match="already exists"):
        model.add_adapter("a")
    with pytest.raises(CompositionError, match="'b'"):
        model.set_active_adapters(Stack("a", "b"))
    with pytest.raises(AdapterConfigError, match="'b'"):
        model.delete_adapter("b")


def test_invalid_compositions():
    model = tiny_adapter_model()
    for name in "abc":
        model.add_adapter(name)
    with pytest.raises(CompositionError, match="too deeply"):
        model.set_active_adapters(Stack("a", Parallel("b", Stack("c", Average("a", "b")))))
    with pytest.raises(CompositionError, match="may not contain"):
        model.set_active_adapters(Fuse("a", Parallel("b", "c")))
    with pytest.raises(CompositionError, match="add_adapter_fusion"):
        model.set_active_adapters(Fuse("a", "b"))


def test_head_label_count_mismatch():
    model = tiny_adapter_model()
    with pytest.raises(HeadError, match="3 labels expected"):
        model.add_classification_head("h", num_labels=3, id2label={0: "x", 1: "y"})
    assert "h" not in model.heads


def test_adapter_for_another_model_type_or_size(saved):
    llama = tiny_adapter_model("llama")
    before = snapshot(llama)
    with pytest.raises(AdapterLoadError, match="model type 'bert'"):
        llama.load_adapter(str(saved))
    assert_unchanged(llama, before)
    wide = tiny_adapter_model("bert", hidden_size=64)
    with pytest.raises(AdapterLoadError, match="hidden size 32"):
        wide.load_adapter(str(saved))


def test_missing_and_corrupt_files(saved):
    model = tiny_adapter_model()
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="neither a local folder"):
        model.load_adapter(str(saved.parent / "nowhere"))
    (saved / "pytorch_adapter.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(AdapterLoadError, match="pytorch_adapter.bin"):
        model.load_adapter(str(saved))
    assert_unchanged(model, before)
    (saved / "adapter_config.json").write_text("{broken")
    with pytest.raises(AdapterLoadError, match="adapter_config.json is not valid JSON"):
        model.load_adapter(str(saved))
    (saved / "adapter_config.json").unlink()
    with pytest.raises(AdapterLoadError, match="missing file"):
        model.load_adapter(str(saved))
    assert_unchanged(model, before)


class Payload:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pickle_with_code_is_refused(saved, capsys):
    state = torch.load(saved / "pytorch_adapter.bin", weights_only=True)
    with open(saved / "pytorch_adapter.bin", "wb") as handle:
        pickle.dump({"payload": Payload(), **state}, handle)
    model = tiny_adapter_model()
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="something other than tensors"):
        model.load_adapter(str(saved))
    assert "unpickled!" not in capsys.readouterr().out
    assert_unchanged(model, before)


def test_missing_unexpected_and_misshaped_weights(saved):
    path = saved / "pytorch_adapter.bin"
    state = torch.load(path, weights_only=True)
    model = tiny_adapter_model()
    before = snapshot(model)
    first = next(iter(state))
    torch.save({k: v for k, v in state.items() if k != first}, path)
    with pytest.raises(AdapterLoadError, match="lacks weight"):
        model.load_adapter(str(saved))
    torch.save({**state, first.rsplit(".", 1)[0] + ".extra": torch.zeros(1)}, path)
    with pytest.raises(AdapterLoadError, match="unexpected weight"):
        model.load_adapter(str(saved))
    torch.save({**state, first: torch.zeros(7, 7)}, path)
    with pytest.raises(AdapterLoadError, match=r"shape \(7, 7\)"):
        model.load_adapter(str(saved))
    assert_unchanged(model, before)


def test_failed_head_load_leaves_model_as_it_was(saved):
    config = json.loads((saved / "head_config.json").read_text())
    config["config"]["num_labels"] = 5  # disagrees with the saved weights
    config["config"]["label2id"] = {f"L{i}": i for i in range(5)}
    (saved / "head_config.json").write_text(json.dumps(config))
    model = tiny_adapter_model()
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="pytorch_model_head.bin"):
        model.load_adapter(str(saved))
    assert_unchanged(model, before)


def test_unsupported_architecture():
    from transformers import FunnelConfig, FunnelModel  # a family no spec describes (T5 now has one)

    config = FunnelConfig(d_model=16, n_head=2, d_head=8, d_inner=32, block_sizes=[1, 1], vocab_size=50)
    with pytest.raises(UnsupportedModelError, match="'funnel'.*interface='auto'"):
        workbench.init(FunnelModel(config))


def test_fusion_needs_matching_adapters():
    model = tiny_base_model()
    workbench.init(model)
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="double_seq_bn")
    with pytest.raises(CompositionError, match="mh_adapter"):
        model.add_adapter_fusion(["a", "b"])


def test_failed_fusion_load_leaves_model_as_it_was(fusion_folder, tmp_path):
    model, _ = fusion_folder
    path = tmp_path / "fusion" / "pytorch_model_adapter_fusion.bin"
    state = torch.load(path, weights_only=True)
    torch.save({k: v for i, (k, v) in enumerate(state.items()) if i}, path)  # drop one weight
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="lacks weight"):
        model.load_adapter_fusion(tmp_path / "fusion")
    assert_unchanged(model, before)
    config = json.loads((tmp_path / "fusion" / "adapter_fusion_config.json").read_text())
    config["adapter_names"] = ["a", "zzz"]
    (tmp_path / "fusion" / "adapter_fusion_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterLoadError, match="'zzz'"):
        model.load_adapter_fusion(tmp_path / "fusion")
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "text, key",
    [("seq_bn[reduction_factor=banana]", "reduction_factor"), ("lora[r=x]", "r"), ("lora[alpha=[1]]", "alpha")],
)
def test_config_values_of_the_wrong_type_are_refused_with_the_key_named(text, key):
    with pytest.raises(AdapterConfigError, match=rf"\b{key}=") as caught:
        AdapterConfig.load(text)
    assert "must be" in str(caught.value)


def test_config_file_values_of_the_wrong_type_are_refused(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text('{"architecture": "lora", "r": "eight", "selfattn_lora": true}')
    with pytest.raises(AdapterConfigError, match="r='eight'"):
        AdapterConfig.load(str(path))


# --- a load under the name of an adapter on the model, refused part-way: nothing changes (found by a red-team pass) ---


def _trained_fused_model():
    model = tiny_adapter_model()
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=2)
    model.add_adapter_fusion(Fuse("a", "b"))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    model.train_adapter("a")  # "a" trainable, "b" and the fusion frozen
    model.set_active_adapters(Fuse("a", "b"))
    return model.eval()


def full_snapshot(model):
    """Values, parameter objects and flags, adapters with their configs, fusions, active setup and heads."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    flags = {n: p.requires_grad for n, p in params.items()}
    return state, params, flags, dict(model.adapters), model.adapter_fusions, (model.active_adapters, dict(model.heads))


def assert_fully_unchanged(model, before, same_objects=True):
    state, params, flags, adapters, fusions, active = before
    after = model.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert dict(model.adapters) == adapters and model.adapter_fusions == fusions
    assert (model.active_adapters, dict(model.heads)) == active
    if same_objects:
        assert all(p is params[n] for n, p in model.named_parameters())


def _spoil(folder, how):
    if how == "nan":
        path = folder / "pytorch_adapter.bin"
        weights = torch.load(path, weights_only=True)
        key = sorted(weights)[0]
        weights[key].view(-1)[0] = float("nan")
        torch.save(weights, path)
    else:  # a head file that does not fit its weights
        config = json.loads((folder / "head_config.json").read_text())
        config["config"]["num_labels"] = 3
        (folder / "head_config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("how", ["nan", "head"])
def test_failed_reload_under_an_existing_name_leaves_the_model_as_it_was(tmp_path, how):
    model = _trained_fused_model()
    model.save_adapter(tmp_path / "a", "a")
    _spoil(tmp_path / "a", how)
    with torch.no_grad():
        for _, param in model._adapter_parameters("a"):
            param.mul_(1.5)  # the model's "a" differs from the file's
    before = full_snapshot(model)
    with pytest.raises((AdapterLoadError, HeadError)):
        model.load_adapter(str(tmp_path / "a"))
    assert_fully_unchanged(model, before)


def test_failed_replacement_by_another_config_restores_the_old_adapter(tmp_path):
    # the file's "a" has another config: the model's "a" is deleted and re-added, and must come back on failure
    other = tiny_adapter_model()
    other.add_adapter("a", config="seq_bn[reduction_factor=8]")
    other.add_classification_head("a", num_labels=2)
    other.save_adapter(tmp_path / "a", "a")
    _spoil(tmp_path / "a", "head")
    model = _trained_fused_model()
    before = full_snapshot(model)
    with pytest.raises(HeadError), pytest.warns(UserWarning, match="replacing"):
        model.load_adapter(str(tmp_path / "a"))
    assert_fully_unchanged(model, before, same_objects=False)  # rebuilt modules, the old tensors and flags
    with pytest.raises(CompositionError, match="AdapterFusion 'a,b'"):  # a LoRA "a" cannot be fused
        model.add_adapter("a", config="lora", overwrite_ok=True)
    assert_fully_unchanged(model, before, same_objects=False)


def test_failed_replacement_that_the_active_setup_cannot_run_is_refused():
    model = tiny_adapter_model()
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    model.set_active_adapters(workbench.Split("a", "b", splits=2))
    before = full_snapshot(model)
    with pytest.raises(CompositionError, match="active setup"):
        model.add_adapter("a", config="lora", overwrite_ok=True)  # LoRA takes no part in Split
    assert_fully_unchanged(model, before, same_objects=False)


def test_failed_setup_reload_restores_adapters_fusions_and_weights(tmp_path):
    # load_adapter_setup is all or nothing, also where its adapters are already on the model (loaded in place)
    model = _trained_fused_model()
    model.save_adapter_setup(tmp_path, Fuse("a", "b"), head_setup="b")
    config = json.loads((tmp_path / "b" / "head_config.json").read_text())
    config["config"]["num_labels"] = 5
    (tmp_path / "b" / "head_config.json").write_text(json.dumps(config))
    with torch.no_grad():
        for owner in ("a", "fusion:a,b"):
            for _, param in model._engine.named_parameters_of(owner):
                param.mul_(1.5)  # "a" is loaded (in place) before "b" fails
    before = full_snapshot(model)
    with pytest.raises(HeadError):
        model.load_adapter_setup(tmp_path)
    assert_fully_unchanged(model, before)
