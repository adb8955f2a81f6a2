"""The current decoder families (issue 12, item 4) on tiny models with grouped-query attention.

GPT-J, GPT-NeoX (parallel and sequential residual), Gemma, Gemma 2, Gemma 3 text, Phi, Phi-3, Qwen3, OLMo 2 and
the Llama family as used today (Llama 3 rope scaling, SmolLM's tied embeddings). For every method a family's spec
allows: a bottleneck adapter whose up-projection is zero leaves the model exactly as it was (the residual handling
is right), the method changes the output, a few steps lower the loss, and save/load into a fresh model reproduces
the outputs bit for bit; `generate()` with an adapter equals greedy decoding by hand without a cache; the
classification head reads the last non-pad token; what a family cannot run is refused when added, model unchanged;
a transformers task checkpoint's head becomes an equal flex head in `AutoAdapterModel.from_pretrained`.
Outputs against the `adapters` library (GPT-J, Gemma 2/3, Qwen3, Phi): tests/test_conformance.py.
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_config
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

import workbench
from workbench.core.errors import UnsupportedModelError

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}
FAMILIES = {  # test id -> (model type, config overrides); sizes in tests/tiny.py (2 key/value heads where GQA)
    "gptj": ("gptj", {}),
    "gpt_neox": ("gpt_neox", {}),
    "gpt_neox-sequential": ("gpt_neox", {"use_parallel_residual": False}),
    "gemma": ("gemma", {}),
    "gemma2": ("gemma2", {}),
    "gemma3_text": ("gemma3_text", {}),
    "phi": ("phi", {}),
    "phi3": ("phi3", {}),
    "qwen3": ("qwen3", {}),
    "olmo2": ("olmo2", {}),
    "llama3": ("llama", {"rope_scaling": LLAMA3_ROPE, "rope_theta": 500000.0}),
    "smollm": ("llama", {"tie_word_embeddings": True}),
}
FUSED_QKV = {"gpt_neox", "gpt_neox-sequential", "phi3"}  # DoRA/VeRA cannot split a fused q|k|v projection

METHODS = {
    "seq_bn": "seq_bn",
    "par_bn": "par_bn",
    "double_seq_bn": "double_seq_bn",
    "compacter": "compacter[reduction_factor=8]",
    "seq_bn_inv": "seq_bn_inv",
    "lora": "lora[output_lora=True]",
    "ia3": "ia3",
    "dora": "dora[intermediate_lora=True]",
    "vera": "vera[attn_matrices=['k','v']]",
    "prefix_tuning": "prefix_tuning[prefix_length=3,bottleneck_size=16]",
    "loreft": "loreft[prefix_positions=2,suffix_positions=1]",
}
FFN_ONLY = "[selfattn_lora=False,intermediate_lora=True,output_lora=True]"
BOTTLENECK = {"seq_bn", "par_bn", "double_seq_bn", "compacter", "seq_bn_inv"}
# The Llama variants share Llama's spec (covered everywhere else): what is new is the rope scaling and tied embeddings.
LLAMA_METHODS = ("seq_bn", "lora", "prefix_tuning")
REFUSED = {  # (family, method) -> why (the error names it)
    ("phi", "par_bn"): "parallel bottleneck",  # Phi's FFN has no residual under AdapterHub's interface
    ("gemma2", "adapterplus"): "original_ln_after=False",  # hooked sites: the layer adds residual and norms
    ("gemma3_text", "adapterplus"): "original_ln_after=False",
    ("phi", "adapterplus"): "original_ln_after=False",
    ("phi3", "dora"): "fused q|k|v",
    ("gpt_neox", "vera"): "fused q|k|v",
    ("olmo2", "prompt_tuning"): "prompt_tuning",  # no prompt tuning on decoders (as AdapterHub)
    ("gemma2", "prompt_tuning"): "prompt_tuning",
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy machine the second thread only spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def config_of(family: str, method: str) -> str:
    if family in FUSED_QKV and method in ("dora", "vera"):
        return method + FFN_ONLY
    return METHODS.get(method, method)


def build(family: str, head: bool = True) -> workbench.AdapterModel:
    """The family's tiny model (the same weights on every call) with a causal LM head "a" (trained with adapter "a")."""
    model_type, overrides = FAMILIES[family]
    torch.manual_seed(0)
    model = workbench.AutoAdapterModel.from_config(tiny_config(model_type, **overrides))
    if head:
        model.add_causal_lm_head("a")
    return model.eval()


IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 0, 0, 0]])
MASK = (IDS != 0).long()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK).logits * MASK[..., None]


def loss(model) -> torch.Tensor:
    labels = IDS.masked_fill(MASK == 0, -100)
    return model(input_ids=IDS, attention_mask=MASK, labels=labels).loss


def perturb(model, name: str) -> None:
    with torch.no_grad():
        for _, param in model._adapter_parameters(name):
            param.add_(torch.randn_like(param) * 0.2)


def zero_up_projections(model, name: str) -> None:
    with torch.no_grad():
        for key, param in model._adapter_parameters(name):
            if ".adapter_up." in key:
                param.zero_()


def cases():
    for family in FAMILIES:
        methods = LLAMA_METHODS if family in ("llama3", "smollm") else METHODS
        for method in methods:
            if (family, method) not in REFUSED:
                yield family, method


@pytest.mark.parametrize(("family", "method"), list(cases()))
def test_method_acts_trains_and_reloads_exactly(family, method, tmp_path):
    model = build(family)
    base = logits(model)
    model.add_adapter("a", config=config_of(family, method), set_active=True)
    if method in BOTTLENECK and method != "seq_bn_inv":  # (the invertible coupling acts whatever the bottleneck does)
        zero_up_projections(model, "a")
        assert torch.allclose(logits(model), base, atol=1e-5), "a zero bottleneck adapter must leave the model as is"
    perturb(model, "a")
    adapted = logits(model)
    assert not torch.allclose(adapted, base, atol=1e-3), f"{method} does not change {family}'s output"

    model.train_adapter("a")
    with torch.no_grad():
        before = loss(model.eval()).item()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, "train_adapter left nothing to train"
    optimizer = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(4):
        optimizer.zero_grad()
        loss(model).backward()
        optimizer.step()
    with torch.no_grad():
        after = loss(model.eval()).item()
    assert after < before, f"training {method} on {family} did not lower the loss ({before:.4f} -> {after:.4f})"

    trained = logits(model)
    model.save_adapter(str(tmp_path / "a"), "a")  # with its head
    fresh = build(family, head=False)
    fresh.load_adapter(str(tmp_path / "a"), load_as="a", set_active=True)
    fresh.active_head = "a"
    assert torch.equal(logits(fresh), trained), f"{method} on {family} does not reload bit for bit"


@pytest.mark.parametrize("method", ["lora", "seq_bn", "prefix_tuning"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_generate_equals_greedy_decoding_without_cache(family, method):
    model = build(family)
    model.add_adapter("a", config=config_of(family, method), set_active=True)
    perturb(model, "a")
    prompt = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])  # left padded
    mask = (prompt != 0).long()
    generated = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=4, do_sample=False)
    ids = prompt
    with torch.no_grad():
        for _ in range(4):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False)
            ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    assert torch.equal(generated, ids), f"generate() with {method} on {family} differs from decoding by hand"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_classification_head_reads_the_last_non_pad_token(family):
    model = build(family)
    model.add_adapter("a", config="lora", set_active=True)
    perturb(model, "a")
    model.add_classification_head("c", num_labels=3)
    with torch.no_grad():
        batch = model(input_ids=IDS, attention_mask=MASK).logits
        alone = model(input_ids=IDS[1:, :4]).logits
    assert batch.shape == (2, 3)
    assert torch.allclose(batch[1:], alone, atol=1e-5), "the padded row is not pooled on its last real token"


@pytest.mark.parametrize("family", ["gemma2", "phi3"])
def test_heads_that_do_not_fit_a_decoder_are_refused(family):
    """AdapterHub has no AdapterModel class for these families: they offer the decoder heads, not an image
    classifier or a masked LM."""
    model = build(family)
    model.add_causal_lm_head("lm")
    for add in (model.add_image_classification_head, model.add_masked_lm_head):
        with pytest.raises(workbench.HeadError, match="its head types: classification, .*causal_lm"):
            add("wrong")
    assert "wrong" not in model.heads


@pytest.mark.parametrize(("family", "method"), sorted(REFUSED))
def test_refused_methods_leave_the_model_unchanged(family, method):
    model = build(family)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = logits(model)
    config = METHODS.get(method, method)
    assert not model.supports_adapter(config)
    with pytest.raises(UnsupportedModelError, match=REFUSED[family, method]):
        model.add_adapter("a", config=config)
    assert "a" not in model.adapters_config.adapters
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(logits(model), base)


CHECKPOINTS = [  # (family, task model class): a transformers checkpoint's head becomes flex head "default"
    ("gptj", AutoModelForCausalLM),  # lm_head with a bias, as AdapterHub's head_utils
    ("gptj", AutoModelForSequenceClassification),
    ("gpt_neox", AutoModelForCausalLM),
    ("gemma", AutoModelForCausalLM),  # tied
    ("gemma2", AutoModelForSequenceClassification),
    ("gemma3_text", AutoModelForCausalLM),
    ("phi", AutoModelForCausalLM),
    ("phi3", AutoModelForTokenClassification),
    ("qwen3", AutoModelForCausalLM),
    ("olmo2", AutoModelForSequenceClassification),
    ("smollm", AutoModelForCausalLM),
]


@pytest.mark.parametrize(("family", "task"), CHECKPOINTS, ids=lambda v: getattr(v, "__name__", v))
def test_task_checkpoint_heads_convert_to_equal_flex_heads(family, task, tmp_path):
    model_type, overrides = FAMILIES[family]
    torch.manual_seed(0)
    original = task.from_config(tiny_config(model_type, **overrides)).eval()
    original.save_pretrained(tmp_path)
    flex, info = workbench.AutoAdapterModel.from_pretrained(tmp_path, output_loading_info=True)
    assert flex.active_head == "default" and not info["unexpected_keys"] and not info["missing_keys"]
    flex.eval()
    ids = IDS[:, :4] + 1  # no padding
    with torch.no_grad():
        assert torch.allclose(flex(input_ids=ids).logits, original(input_ids=ids).logits, atol=1e-5)


def test_soft_capped_causal_lm_heads_are_not_converted(tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_config("gemma2")).save_pretrained(tmp_path)  # final_logit_softcapping=30
    with pytest.warns(UserWarning, match="soft-caps its logits"):
        flex = workbench.AutoAdapterModel.from_pretrained(tmp_path)
    assert "default" not in flex.heads


def _fused_parts(family: str, model) -> tuple[str, dict[str, torch.Tensor]]:
    """The fused q|k|v projection of layer 0 and its q/k/v output features, written out from the modeling code:
    Phi-3 stacks q (4 heads), k and v (2 key/value heads each); GPT-NeoX interleaves [q k v] per head."""
    config = model.config
    if family == "phi3":
        q, kv = config.num_attention_heads * 8, config.num_key_value_heads * 8
        features = torch.arange(q + 2 * kv)
        return "model.layers.0.self_attn.qkv_proj", dict(q=features[:q], k=features[q : q + kv], v=features[q + kv :])
    per_head = torch.arange(3 * 32).view(4, 3, 8)  # 4 heads of [q k v], 8 wide
    parts = {m: per_head[:, i].flatten() for i, m in enumerate("qkv")}
    return "gpt_neox.layers.0.attention.query_key_value", parts


@pytest.mark.parametrize("family", ["phi3", "gpt_neox"])
@pytest.mark.parametrize("matrices", [["v"], ["q", "k"]])
def test_fused_qkv_lora_adapts_only_its_parts_and_merges_exactly(family, matrices, tmp_path):
    model = build(family)
    path, parts = _fused_parts(family, model)
    projection = model.get_submodule(path)
    seen = []
    projection.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    logits(model)
    model.add_adapter("a", config=f"lora[attn_matrices={matrices!r}]", set_active=True)
    perturb(model, "a")
    adapted = logits(model)
    base_out, lora_out = seen[0], seen[-1]
    for matrix, features in parts.items():
        changed = not torch.allclose(base_out[..., features], lora_out[..., features])
        assert changed == (matrix in matrices), f"LoRA on {matrices} {'changed' if changed else 'left'} {matrix}"

    weight = projection.weight.detach().clone()
    model.merge_adapter("a")
    assert torch.allclose(logits(model), adapted, atol=1e-5)
    model.reset_adapter()
    assert torch.equal(projection.weight, weight)

    model.save_adapter(str(tmp_path / "peft"), "a", format="peft")  # one block-diagonal B for the fused projection
    fresh = build(family)
    fresh.load_adapter(str(tmp_path / "peft"), load_as="a", set_active=True)
    assert torch.allclose(logits(fresh), adapted, atol=1e-5)


@pytest.mark.parametrize("family", ["gptj", "gpt_neox", "gemma2", "phi"])
def test_each_parallel_channel_and_batch_slice_equals_its_adapter_alone(family):
    """At parallel-block and hooked sites too, also when one channel has no adapter at the attention site."""
    model = build(family)
    model.add_adapter("a", config="seq_bn")  # output site only
    model.add_adapter("b", config="double_seq_bn")
    perturb(model, "a")
    perturb(model, "b")
    alone = {}
    for name in "ab":
        model.set_active_adapters(name)
        alone[name] = logits(model)
    model.set_active_adapters(workbench.Parallel("a", "b"))
    with torch.no_grad():
        both = model(input_ids=IDS, attention_mask=MASK, head="a").logits * MASK.repeat(2, 1)[..., None]
    assert torch.allclose(both[:2], alone["a"], atol=1e-5) and torch.allclose(both[2:], alone["b"], atol=1e-5)
    model.set_active_adapters(workbench.BatchSplit("a", "b", batch_sizes=[1, 1]))
    split = logits(model)
    assert torch.allclose(split[:1], alone["a"][:1], atol=1e-5) and torch.allclose(split[1:], alone["b"][1:], atol=1e-5)
