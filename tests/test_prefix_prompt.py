"""Prefix tuning and prompt tuning on tiny models: padding, output shapes, compositions, save/load."""

import pytest
import torch
from transformers import AutoConfig, AutoModel

import workbench
from workbench import Average, BatchSplit, CompositionError, Parallel, Stack, UnsupportedModelError

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
LENGTHS = [6, 4, 2]


def tiny(model_type: str, attn: str = "eager"):
    extra = {"num_key_value_heads": 2} if model_type in ("llama", "mistral", "qwen2") else {}
    config = AutoConfig.for_model(model_type, **SIZES, **extra)
    config.pad_token_id = 0
    torch.manual_seed(0)
    return workbench.init(AutoModel.from_config(config, attn_implementation=attn).eval())


def batch():
    torch.manual_seed(1)
    ids = torch.randint(2, 100, (len(LENGTHS), max(LENGTHS)))
    mask = (torch.arange(max(LENGTHS))[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    return ids * mask, mask


def hidden(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def assert_rows_match_unpadded(model, offset=0):
    """Every row of a padded batch equals that row run alone without padding (on its real positions)."""
    ids, mask = batch()
    padded = hidden(model, ids, mask)
    for row, length in enumerate(LENGTHS):
        alone = hidden(model, ids[row : row + 1, :length])
        torch.testing.assert_close(padded[row, : offset + length], alone[0], atol=1e-5, rtol=1e-4)


def randomize(model):
    """Adapters start near identity in places; perturb them so tests see a real effect."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "prefix" in name or "prompt" in name:
                param.add_(torch.randn_like(param) * 0.5)


@pytest.mark.parametrize("model_type", ["bert", "llama", "gpt2", "distilbert"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_respects_padding(model_type, attn):
    model = tiny(model_type, attn)
    ids, mask = batch()
    before = hidden(model, ids, mask)
    model.add_adapter("p", config=workbench.PrefixTuningConfig(prefix_length=5), set_active=True)
    randomize(model)
    assert not torch.allclose(hidden(model, ids, mask), before)
    assert_rows_match_unpadded(model)


def test_prefix_keys_duplicate_the_pool_per_layer_and_attention_is_restored():
    model = tiny("llama", "sdpa")
    model.add_adapter("p", config="prefix_tuning_flat")
    assert model._engine.base.config._attn_implementation != "sdpa"
    keys = sorted(model.adapter_state_dict("p"))
    assert keys == [
        "layers.0.self_attn.prefix_tuning.pool.prefix_tunings.p.self_prefix.control_trans",
        "layers.1.self_attn.prefix_tuning.pool.prefix_tunings.p.self_prefix.control_trans",
        "prefix_tuning.prefix_tunings.p.self_prefix.control_trans",
    ]
    assert model.adapter_state_dict("p")[keys[0]].shape == (30 * 2 * 2 * 2 * 8,)  # P * L * 2 * Hkv * D
    model.delete_adapter("p")
    assert model._engine.base.config._attn_implementation == "sdpa"


def test_prefix_parallel_and_batch_split_match_single_adapters():
    model = tiny("bert", "sdpa")
    for name, length in (("a", 4), ("b", 7)):
        model.add_adapter(name, config=workbench.PrefixTuningConfig(prefix_length=length))
    randomize(model)
    ids, mask = batch()
    singles = {}
    for name in "ab":
        model.set_active_adapters(name)
        singles[name] = hidden(model, ids, mask)
    model.set_active_adapters(Parallel("a", "b"))
    both = hidden(model, ids, mask)
    torch.testing.assert_close(both[:3], singles["a"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[3:], singles["b"], atol=1e-5, rtol=1e-4)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    split = hidden(model, ids, mask)
    torch.testing.assert_close(split[:1], singles["a"][:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(split[1:], singles["b"][1:], atol=1e-5, rtol=1e-4)
    model.set_active_adapters(Stack("a", "b"))
    assert_rows_match_unpadded(model)


def test_average_of_prefixes_is_refused():
    model = tiny("bert")
    model.add_adapter("a", config="prefix_tuning")
    model.add_adapter("b", config="prefix_tuning")
    with pytest.raises(CompositionError, match="Average"):
        model.set_active_adapters(Average("a", "b"))
    with pytest.raises(CompositionError, match="Average"), workbench.AdapterSetup(Average("a", "b")):
        hidden(model, *batch())


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_prompt_tuning_adds_positions_and_respects_padding(model_type):
    model = tiny(model_type)
    model.add_adapter("p", config=workbench.PromptTuningConfig(prompt_length=3), set_active=True)
    ids, mask = batch()
    assert hidden(model, ids, mask).shape == (3, max(LENGTHS) + 3, 32)
    weights = model.adapter_state_dict("p")
    assert weights["prompt_tuning.prompt_tunings.p.prompt_embedding.weight"].shape == (3, 32)
    assert_rows_match_unpadded(model, offset=3)


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_prompt_tuning_unsupported_on_decoders(model_type):
    model = tiny(model_type)
    with pytest.raises(UnsupportedModelError):
        model.add_adapter("p", config="prompt_tuning")


@pytest.mark.parametrize("safetensors", [False, True])
@pytest.mark.parametrize("config", ["prefix_tuning", "prefix_tuning_flat", "prompt_tuning", "mam", "unipelt"])
def test_save_load_round_trip(tmp_path, config, safetensors):
    """Also as safetensors, which holds no shared tensors: the pool copies under every attention are written apart."""
    model = tiny("bert")
    model.add_adapter("p", config=config, set_active=True)
    randomize(model)
    ids, mask = batch()
    expected = hidden(model, ids, mask)
    model.save_adapter(tmp_path, "p", use_safetensors=safetensors)
    fresh = tiny("bert")
    fresh.load_adapter(str(tmp_path), set_active=True)
    torch.testing.assert_close(hidden(fresh, ids, mask), expected, atol=0, rtol=0)


def test_prefix_survives_a_later_attention_switch():
    model = tiny("llama", "sdpa")
    model.add_adapter("p", config="prefix_tuning", set_active=True)
    randomize(model)
    ids, mask = batch()
    expected = hidden(model, ids, mask)
    model.set_attn_implementation("eager")
    torch.testing.assert_close(hidden(model, ids, mask), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["masked_lm", "tagging"])
def test_prompt_positions_get_no_label(head):
    """Token labels of the input's length work with a prompt in front: its positions are ignored in the loss, as in
    AdapterHub (labels already padded for the prompt give the same loss)."""
    torch.manual_seed(0)
    model = workbench.AutoAdapterModel.from_config(AutoConfig.for_model("bert", **SIZES, pad_token_id=0)).eval()
    model.add_adapter("p", config="prompt_tuning[prompt_length=3]", set_active=True)
    getattr(model, f"add_{head}_head")("h")
    ids, mask = batch()
    labels = torch.where(mask.bool(), ids % 2 if head == "tagging" else ids, -100)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    padded = torch.cat([torch.full((ids.shape[0], 3), -100), labels], dim=1)
    torch.testing.assert_close(loss, model(input_ids=ids, attention_mask=mask, labels=padded).loss)


def test_files_without_the_pool_copies_of_left_out_layers_load(tmp_path):
    """Workbench wrote the pool's copies only under the prefixed attentions before it wrote them under every one (as
    AdapterHub does): such a file still loads, and gives the saved outputs."""
    model = tiny("bert")
    model.add_adapter("p", config="prefix_tuning[leave_out=[0]]", set_active=True)
    randomize(model)
    ids, mask = batch()
    expected = hidden(model, ids, mask)
    model.save_adapter(tmp_path, "p")
    weights = tmp_path / "pytorch_adapter.bin"
    state = torch.load(weights, weights_only=True)
    older = {k: v for k, v in state.items() if not k.startswith("encoder.layer.0.")}
    assert len(older) < len(state)
    torch.save(older, weights)
    fresh = tiny("bert")
    fresh.load_adapter(str(tmp_path), set_active=True)
    torch.testing.assert_close(hidden(fresh, ids, mask), expected, atol=0, rtol=0)
