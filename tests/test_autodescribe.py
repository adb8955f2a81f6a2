"""`init(model, interface="auto")`: decoder families the workbench does not ship, described automatically from their
module layout and checked by a probe forward pass; what cannot be verified is refused, naming what was found."""

import pytest
import torch
from custom_decoder import block_decoder
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

import workbench
from workbench import AdapterModelInterface, AutoAdapterModel, UnsupportedModelError
from workbench.core.autodescribe import describe_model
from workbench.core.families import ARCHITECTURES

SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=100)
TOKENS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {  # model type -> (config overrides, MLP in/out, methods beyond bottleneck/lora/reft)
    "stablelm": ({"num_key_value_heads": 2}, ("mlp.up_proj", "mlp.down_proj"), ["prefix_tuning", "invertible"]),
    "starcoder2": ({"num_key_value_heads": 2}, ("mlp.c_fc", "mlp.c_proj"), ["prefix_tuning", "invertible"]),
    "olmo": ({"num_key_value_heads": 2}, ("mlp.up_proj", "mlp.down_proj"), ["prefix_tuning", "invertible"]),
}
LLAMA_LAYOUT = dict(
    model_embeddings="embed_tokens",
    model_layers="layers",
    layer_self_attn="self_attn",
    layer_cross_attn=None,
    attn_q_proj="q_proj",
    attn_k_proj="k_proj",
    attn_v_proj="v_proj",
    attn_o_proj="o_proj",
    layer_pre_self_attn="input_layernorm",
    layer_pre_ffn="post_attention_layernorm",
)
CONFIGS = ["seq_bn", "lora", "loreft", "prefix_tuning[prefix_length=3]"]
IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 0, 0]])
MASK = (IDS != 0).long()


def config(model_type, **overrides):
    extra = FAMILIES[model_type][0] if model_type in FAMILIES else {}
    return AutoConfig.for_model(model_type, **{**SIZES, **TOKENS, **extra, **overrides})


def causal_lm(model_type, **overrides):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config(model_type, **overrides)).eval()


def logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def perturb(model, name):
    torch.manual_seed(1)
    with torch.no_grad():
        for key, param in model._adapter_parameters(name):
            if "parametrizations" not in key:  # LoReFT's Householder factors: see test_interface_custom_model
                param.add_(torch.randn_like(param) * 0.2)


def state_of(model):
    """What describing a model must leave as it was."""
    return (
        type(model),
        model.config._attn_implementation,
        [m.training for m in model.modules()],
        sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        sorted(n for n, _ in model.named_modules()),
        {k: v.clone() for k, v in model.state_dict().items()},
    )


def assert_same_state(before, after):
    *facts, weights = before
    *now, now_weights = after
    assert facts == now
    assert weights.keys() == now_weights.keys() and all(torch.equal(weights[k], now_weights[k]) for k in weights)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_the_description_names_the_layout_and_leaves_the_model_as_it_was(model_type):
    assert model_type not in ARCHITECTURES  # otherwise "auto" would use the shipped spec instead
    model = causal_lm(model_type)
    model.train()  # the probe runs in eval mode and must restore the modes it found
    before = state_of(model)
    interface = describe_model(model)
    _, (mlp_in, mlp_out), extra = FAMILIES[model_type]
    methods = ["bottleneck", "reft", "lora", *extra]
    expected = AdapterModelInterface(
        adapter_methods=methods, layer_intermediate_proj=mlp_in, layer_output_proj=mlp_out, **LLAMA_LAYOUT
    )
    assert interface == expected
    assert_same_state(before, state_of(model))


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_method_acts_trains_and_reloads_on_a_described_family(model_type, tmp_path):
    model = workbench.init(causal_lm(model_type), interface="auto")
    plain = logits(model)
    for i, config_name in enumerate(CONFIGS):
        name = f"a{i}"
        model.add_adapter(name, config=config_name, set_active=True)
        perturb(model, name)
        out = logits(model)
        assert (out - plain).abs().max() > 1e-3, config_name
        # the padded row gives what it gives alone
        torch.testing.assert_close(logits(model, IDS[1:, :4], MASK[1:, :4]), out[1:, :4], atol=1e-5, rtol=1e-4)
    model.save_pretrained(tmp_path)
    restored = workbench.load_model(tmp_path, AutoModelForCausalLM)
    assert restored._engine.interface == model._engine.interface
    for i in range(len(CONFIGS)):
        model.set_active_adapters(f"a{i}")
        restored.set_active_adapters(f"a{i}")
        torch.testing.assert_close(logits(restored), logits(model), atol=0, rtol=0)

    labels = IDS.masked_fill(MASK == 0, -100)
    for i in range(len(CONFIGS)):
        model.train_adapter(f"a{i}")
        trained = list({id(p): p for _, p in model._adapter_parameters(f"a{i}")}.values())  # prefix: shared pool
        optimizer = torch.optim.Adam(trained, lr=1e-2)
        losses = []
        for _ in range(5):
            loss = model(input_ids=IDS, attention_mask=MASK, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        assert losses[-1] < losses[0], (CONFIGS[i], losses)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_prefix_tuning_generates_the_same_with_and_without_the_kv_cache(model_type):
    model = workbench.init(causal_lm(model_type), interface="auto")
    model.add_adapter("p", config="prefix_tuning[prefix_length=3]", set_active=True)
    perturb(model, "p")
    prompt = dict(input_ids=IDS[:1, :4], attention_mask=MASK[:1, :4], max_new_tokens=4, do_sample=False)
    cached = model.generate(**prompt, use_cache=True)
    assert torch.equal(cached, model.generate(**prompt, use_cache=False))


def test_a_fused_qkv_family_without_the_attention_registry_gets_neither_lora_nor_prefix_tuning():
    """Sequential Falcon: fused `query_key_value` with heads interleaved, its own attention code: the probe cannot
    see how q|k|v are laid out (LoRA splits a fused projection in thirds) nor reach the attention function."""
    sequential = dict(parallel_attn=False, new_decoder_architecture=False)
    model = workbench.init(causal_lm("falcon", **sequential), interface="auto")
    interface = model._engine.interface
    assert (interface.attn_qkv_proj, interface.attn_o_proj, interface.layer_output_proj) == (
        "query_key_value",
        "dense",
        "mlp.dense_4h_to_h",
    )
    assert interface.adapter_methods == ["bottleneck", "reft", "invertible"]
    for refused in ("prefix_tuning", "lora"):
        with pytest.raises(UnsupportedModelError, match=f"{refused} adapters are not available"):
            model.add_adapter("x", config=refused)
    model.add_adapter("b", config="seq_bn", set_active=True)
    perturb(model, "b")
    assert (logits(model) - logits(causal_lm("falcon", **sequential))).abs().max() > 1e-3
    assert model.adapters.keys() == {"b"}


@pytest.mark.parametrize(
    "model_type, overrides, lora",
    [
        ("phi3", {"num_key_value_heads": 4}, True),  # all q, then all k, then all v
        ("phi3", {"num_key_value_heads": 2}, True),  # the same with grouped-query attention: k and v narrower
        ("persimmon", {}, False),  # q, k, v interleaved head by head
        ("gpt_bigcode", {"multi_query": False}, False),  # interleaved too
    ],
)
def test_lora_on_a_fused_qkv_projection_only_where_its_parts_are_q_k_v_in_order(model_type, overrides, lora):
    model = causal_lm(model_type, **overrides)
    interface = describe_model(model)
    assert interface.attn_qkv_proj and ("lora" in interface.adapter_methods) == lora
    model = workbench.init(model, interface=interface)
    if not lora:
        with pytest.raises(UnsupportedModelError, match="lora adapters are not available"):
            model.add_adapter("l", config="lora")
        return
    fused = model.base_model.layers[0].get_submodule(interface.layer_self_attn).get_submodule(interface.attn_qkv_proj)
    outputs = []
    fused.register_forward_hook(lambda module, args, out: outputs.append(out.detach()))
    logits(model)
    model.add_adapter("l", config="lora", set_active=True)  # attn_matrices q and v
    perturb(model, "l")
    logits(model)
    config = model.config
    dim = config.hidden_size // config.num_attention_heads
    widths = [n * dim for n in (config.num_attention_heads, config.num_key_value_heads, config.num_key_value_heads)]
    plain, adapted = (out.split(widths, dim=-1) for out in outputs)
    changed = [not torch.equal(a, b) for a, b in zip(plain, adapted, strict=True)]
    assert changed == [True, False, True]  # q and v moved, k did not


@pytest.mark.parametrize(
    "model_type, overrides, message",
    [
        ("cohere", {}, r"mlp.up_proj reads input_layernorm, as self_attn does: parallel attention/MLP"),
        ("gpt_neox", {}, r"mlp.dense_h_to_4h reads input_layernorm, as attention does: parallel"),
        ("granite", {"residual_multiplier": 0.5}, r"post_attention_layernorm does not read the residual stream"),
        ("olmo3", {}, r"no norm feeds self_attn \(norms: post_attention_layernorm, post_feedforward_layernorm\)"),
    ],
)
def test_layouts_the_probe_cannot_verify_are_refused_and_the_model_is_unchanged(model_type, overrides, message):
    model = causal_lm(model_type, **overrides)
    before = state_of(model)
    with pytest.raises(UnsupportedModelError, match=message):  # describe_model: "auto" would use a shipped spec
        describe_model(model)
    assert_same_state(before, state_of(model))


def test_unknown_module_names_are_refused_naming_layer_0s_children():
    model = block_decoder()
    before = state_of(model)
    with pytest.raises(UnsupportedModelError) as err:
        workbench.init(model, interface="auto")
    assert "no self-attention module with q/k/v (or fused qkv) and output projections in layer 0 of 'blocks'" in str(
        err.value
    )
    assert "children: norm_mixer (LayerNorm), mixer (Mixer), norm_ffn (LayerNorm), ffn (FeedForward)" in str(err.value)
    assert_same_state(before, state_of(model))


def test_an_encoder_decoder_is_refused_as_several_stacks():
    model = AutoModel.from_config(
        AutoConfig.for_model(
            "marian",
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=100,
            decoder_start_token_id=0,
            pad_token_id=0,
        )
    )
    with pytest.raises(
        UnsupportedModelError, match=r"several layer stacks of 2 layers \(encoder.layers, decoder.layers"
    ):
        workbench.init(model, interface="auto")


def test_auto_is_opt_in_and_uses_the_shipped_spec_where_there_is_one():
    with pytest.raises(UnsupportedModelError, match="'olmo' is not supported.*interface='auto'"):
        workbench.init(causal_lm("olmo"))
    llama = AutoModel.from_config(AutoConfig.for_model("llama", **SIZES, num_key_value_heads=2))
    model = workbench.init(llama, interface="auto")
    assert model._engine.interface is None and model._engine.spec is ARCHITECTURES["llama"]


def test_auto_adapter_model_describes_builds_saves_and_reloads(tmp_path):
    model = AutoAdapterModel.from_config(config("olmo"), interface="auto").eval()
    model.add_adapter("a", config="seq_bn")
    model.add_causal_lm_head("a")
    perturb(model, "a")
    model.set_active_adapters("a")
    expected = logits(model)
    model.save_pretrained(tmp_path)
    restored = AutoAdapterModel.from_pretrained(tmp_path).eval()  # adapter_interface.json: no second probe needed
    restored.set_active_adapters("a")
    assert restored._engine.interface == model._engine.interface
    torch.testing.assert_close(logits(restored), expected, atol=0, rtol=0)
