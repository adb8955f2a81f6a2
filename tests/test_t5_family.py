"""T5 and mT5 (FLAN-T5 is T5): every method the spec allows acts, trains and reloads bit-exactly; generate() with
adapters equals a step-by-step greedy decode; prefix tuning keeps padding and the KV cache right; heads follow
AdapterHub's T5AdapterModel (tied heads scale the decoder output, mT5 is untied, classification on the last <eos>).

The `adapters` library's own outputs for these families are checked in tests/test_conformance.py (t5, flan-t5, mt5).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers import (
    MT5Config,
    MT5ForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
    T5ForQuestionAnswering,
    T5ForSequenceClassification,
)

import workbench
from workbench import HeadError
from workbench.core.errors import UnsupportedMethodError

SIZES = dict(vocab_size=64, d_model=32, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, d_ff=64)
FAMILIES = {
    "t5": lambda **kw: T5Config(**{**SIZES, "dropout_rate": 0.0, **kw}),
    "flan-t5": lambda **kw: T5Config(**{**SIZES, "dropout_rate": 0.0, "feed_forward_proj": "gated-gelu", **kw}),
    "mt5": lambda **kw: MT5Config(**{**SIZES, "dropout_rate": 0.0, **kw}),  # gated-gelu by default
}
EOS, PAD = 1, 0


def _model(family: str = "t5", seed: int = 0, **config) -> workbench.AdapterModel:
    torch.manual_seed(seed)
    return workbench.AutoAdapterModel.from_config(FAMILIES[family](**config)).eval()


def _batch():
    """Right-padded encoder rows of 7, 5 and 3 tokens, each closed by <eos>; decoder inputs of another length."""
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(2, 64, (3, 7), generator=gen)
    mask = torch.zeros_like(ids)
    for row, length in enumerate((7, 5, 3)):
        ids[row, length - 1] = EOS
        ids[row, length:] = PAD
        mask[row, :length] = 1
    decoder = torch.randint(2, 64, (3, 5), generator=gen)
    decoder[:, 0] = PAD  # T5 starts decoding from padding
    return ids, mask, decoder


def _perturb(model, name: str, scale: float = 0.3) -> None:
    """Move an adapter off its init (LoRA's B and bottleneck up-projections start at zero)."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if f".{name}." in key and not key.startswith("heads."):
                param.add_(scale * torch.randn(param.shape, generator=gen))


METHODS = {
    "seq_bn": "seq_bn",
    "seq_bn-cross": "seq_bn[mh_adapter=True,cross_adapter=True]",
    "par_bn": "par_bn",
    "seq_bn_inv": "seq_bn_inv",
    "lora": "lora[attn_matrices=['q','k','v'],intermediate_lora=True,output_lora=True]",
    "ia3": "ia3",
    "prefix_tuning": "prefix_tuning[prefix_length=4,bottleneck_size=16]",
    "loreft": "loreft",
}


# mT5 differs from T5 in its gated FFN (LoRA on wi_1), its untied head and its config class: a few methods suffice.
METHOD_CASES = [("t5", m) for m in METHODS] + [("mt5", m) for m in ("seq_bn-cross", "lora", "prefix_tuning")]


@pytest.mark.parametrize(("family", "method"), METHOD_CASES)
def test_method_acts_trains_and_reloads_bit_exactly(family, method, tmp_path):
    ids, mask, decoder = _batch()
    labels = torch.cat([decoder[:, 1:], torch.full((3, 1), EOS)], dim=1)
    model = _model(family)
    model.add_adapter("a", config=METHODS[method])
    model.add_seq2seq_lm_head("a")
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder, head="a").logits
    model.train_adapter("a")
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    assert params, f"{method}: nothing to train"
    optimizer = torch.optim.Adam(params, lr=1e-2)  # (weight decay would move LoReFT's orthogonal diagonal off ±1)
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1e-3, f"{family} {method}: loss did not go down ({losses[0]:.4f}, {losses[-1]:.4f})"
    model.eval()
    with torch.no_grad():
        adapted = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    assert (adapted - base).abs().max() > 1e-4, f"{family} {method}: the trained adapter does not change the output"

    model.save_adapter(str(tmp_path / "a"), "a")
    again = _model(family)
    again.load_adapter(str(tmp_path / "a"))
    again.set_active_adapters("a")
    with torch.no_grad():
        reloaded = again(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder, head="a").logits
    assert torch.equal(reloaded, adapted), f"{family} {method}: reloaded outputs differ"


def _greedy_stepwise(model, ids, mask, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding written out: the whole decoder sequence again at every step, no cache."""
    tokens = torch.full((ids.shape[0], 1), PAD)
    logits = []
    with torch.no_grad():
        for _ in range(steps):
            step = model(input_ids=ids, attention_mask=mask, decoder_input_ids=tokens, use_cache=False).logits[:, -1]
            logits.append(step)
            tokens = torch.cat([tokens, step.argmax(-1, keepdim=True)], dim=1)
    return tokens, logits


GENERATE_METHODS = {
    "bottleneck": "seq_bn[mh_adapter=True,cross_adapter=True]",
    "lora": "lora[attn_matrices=['q','k','v'],intermediate_lora=True]",
    "prefix": "prefix_tuning[prefix_length=3,bottleneck_size=16]",
    "madx": "seq_bn_inv",  # the invertible adapter acts in the encoder-only call generate() makes
}


@pytest.mark.parametrize(("family", "method"), [("t5", m) for m in GENERATE_METHODS] + [("mt5", "prefix")])
def test_generate_equals_stepwise_greedy_decoding(family, method):
    ids, mask, _ = _batch()
    model = _model(family)
    model.add_adapter("a", config=GENERATE_METHODS[method])
    model.add_seq2seq_lm_head("a")
    model.set_active_adapters("a")
    _perturb(model, "a")
    expected, step_logits = _greedy_stepwise(model, ids, mask, steps=6)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=6,
        min_new_tokens=6,  # no early stop at <eos>: every row decodes all steps
        do_sample=False,
        num_beams=1,
        output_scores=True,
        return_dict_in_generate=True,
    )
    assert torch.equal(out.sequences, expected), f"{family} {method}: cached generate() != stepwise greedy"
    eos_blocked = torch.zeros(step_logits[0].shape[-1], dtype=torch.bool)
    eos_blocked[EOS] = True
    for step, (cached, full) in enumerate(zip(out.scores, step_logits, strict=True)):
        if step < 6:  # min_new_tokens sets the <eos> score to -inf
            cached, full = cached[:, ~eos_blocked], full[:, ~eos_blocked]
        assert torch.allclose(cached, full, atol=1e-5), f"{family} {method}: step {step} logits differ with the cache"
    # beam search, with the cache and without it (prefixes are never cached; beams reorder the cache)
    beams = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False)
    no_cache = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, num_beams=3, do_sample=False, use_cache=False
    )
    assert beams.shape[0] == 3 and torch.equal(beams, no_cache), f"{family} {method}: beam search depends on the cache"


@pytest.mark.parametrize(("family", "attn"), [("t5", "eager"), ("t5", "sdpa"), ("mt5", "sdpa")])
def test_prefix_tuning_with_padding_equals_each_row_alone(family, attn):
    ids, mask, decoder = _batch()
    model = _model(family)
    model.set_attn_implementation(attn)
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=16]")
    model.add_seq2seq_lm_head("p")
    model.set_active_adapters("p")
    _perturb(model, "p")
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        model.set_active_adapters(None)
        plain = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder, head="p").logits
        model.set_active_adapters("p")
        for row, length in enumerate((7, 5, 3)):
            alone = model(input_ids=ids[row : row + 1, :length], decoder_input_ids=decoder[row : row + 1]).logits
            assert torch.allclose(batch[row], alone[0], atol=1e-5), f"{family} {attn}: row {row} depends on padding"
    assert (batch - plain).abs().max() > 1e-3, "the prefix does not change the output"


def test_prefix_tuning_gives_the_same_outputs_under_eager_and_sdpa():
    ids, mask, decoder = _batch()
    model = _model("t5")
    model.add_adapter("p", config="prefix_tuning[prefix_length=3,bottleneck_size=16]")
    model.set_active_adapters("p")
    _perturb(model, "p")
    outputs = {}
    for attn in ("eager", "sdpa"):
        model.set_attn_implementation(attn)
        with torch.no_grad():
            outputs[attn] = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).last_hidden_state
    assert torch.allclose(outputs["eager"], outputs["sdpa"], atol=1e-5)


def test_prefix_on_some_t5_self_attentions_warns_that_the_library_differs():
    model = _model("t5")
    with pytest.warns(UserWarning, match="relative position bias"):
        model.add_adapter("p", config="prefix_tuning[leave_out=[0],bottleneck_size=16]")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.add_adapter("q", config="prefix_tuning[bottleneck_size=16]")


@pytest.mark.parametrize("family", ["t5", "flan-t5"])
def test_seq2seq_head_matches_t5_for_conditional_generation(family):
    """A tied T5 (original T5) scales the decoder output before its tied head; FLAN-T5/T5 v1.1 (untied) does not."""
    ids, mask, decoder = _batch()
    tied = family == "t5"
    torch.manual_seed(0)
    reference = T5ForConditionalGeneration(FAMILIES[family](tie_word_embeddings=tied)).eval()
    model = workbench.AutoAdapterModel.from_config(FAMILIES[family](tie_word_embeddings=tied)).eval()
    model.base_model.load_state_dict(reference.state_dict(), strict=False)
    model.add_seq2seq_lm_head("lm")
    head = model.heads["lm"][0]
    assert (head.weight is model.get_input_embeddings().weight) == tied
    with torch.no_grad():
        head.weight.copy_(reference.lm_head.weight)
        want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    ("family", "cls"),
    [("t5", T5ForConditionalGeneration), ("mt5", MT5ForConditionalGeneration), ("t5", T5ForSequenceClassification)],
)
def test_task_checkpoints_load_with_their_head_as_default(family, cls, tmp_path):
    """`from_pretrained` of a `...ForConditionalGeneration` / `...ForSequenceClassification` checkpoint brings its
    head as flex head "default", computing what the task model computes (generate() included)."""
    ids, mask, decoder = _batch()
    torch.manual_seed(0)
    # (transformers' own T5 task models need the start id in the config, as real checkpoints have it)
    reference = cls(FAMILIES[family](num_labels=3, decoder_start_token_id=PAD)).eval()
    with torch.no_grad():  # an untied lm_head of its own (mT5), or a classifier off its init
        for name, param in reference.named_parameters():
            if name.startswith(("lm_head", "classification_head")):
                param.add_(0.1 * torch.randn(param.shape))
    reference.save_pretrained(tmp_path)
    model = workbench.AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert model.active_head == "default"
    with torch.no_grad():
        if cls is T5ForSequenceClassification:
            want, got = reference(input_ids=ids, attention_mask=mask), model(input_ids=ids, attention_mask=mask)
        else:
            want = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder)
            got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder)
    assert torch.allclose(got.logits, want.logits, atol=1e-5)
    if cls is not T5ForSequenceClassification:
        kwargs = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, num_beams=1)
        assert torch.equal(model.generate(**kwargs), reference.generate(**kwargs, decoder_start_token_id=PAD))


@pytest.mark.parametrize(
    ("family", "cls", "tied"),
    [("t5", T5ForConditionalGeneration, True), ("mt5", MT5ForConditionalGeneration, False),
     ("t5", T5ForQuestionAnswering, False)],
)  # fmt: skip
def test_static_heads_of_init_ed_task_models_save_and_convert_exactly(family, cls, tied, tmp_path):
    """A T5 task model is its own base model (encoder, decoder and head side by side): save_head writes only the head,
    and a flex model given the task model's state (keys without the base prefix) computes what it computes."""
    ids, mask, decoder = _batch()
    torch.manual_seed(0)
    static = workbench.init(cls(FAMILIES[family](decoder_start_token_id=PAD, tie_word_embeddings=tied)).eval())
    static.save_head(tmp_path)
    flex = workbench.AutoAdapterModel.from_config(static.config).eval()
    result = flex.load_state_dict(static.state_dict(), strict=False)
    assert not result.missing_keys
    info = {}
    flex.load_head(tmp_path, load_as="x", loading_info=info)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    with torch.no_grad():
        want = static(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder)
        got = flex(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder)
    key = "start_logits" if cls is T5ForQuestionAnswering else "logits"
    torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5)


def test_a_qa_head_of_a_tied_t5_is_not_converted(tmp_path):
    """A tied T5AdapterModel scales the decoder output before every head; T5ForQuestionAnswering's does not."""
    static = workbench.init(T5ForQuestionAnswering(FAMILIES["t5"](decoder_start_token_id=PAD)).eval())
    static.save_head(tmp_path)
    flex = workbench.AutoAdapterModel.from_config(static.config)
    with pytest.raises(workbench.HeadError, match="scales them by d_model"):
        flex.load_head(tmp_path, load_as="x")
    assert "x" not in flex.heads


def test_mt5_heads_are_untied_and_unscaled():
    ids, mask, decoder = _batch()
    model = _model("mt5")
    model.add_seq2seq_lm_head("lm")
    assert model.heads["lm"][0].weight is not model.get_input_embeddings().weight
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        model.active_head = None
        hidden = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).last_hidden_state
    assert torch.allclose(logits, model.heads["lm"].run(hidden), atol=1e-6)


def test_classification_reads_the_last_eos_of_the_shifted_input():
    ids, mask, _ = _batch()
    model = _model("t5")
    model.add_adapter("a", config="seq_bn")
    model.add_classification_head("a", num_labels=3)
    model.set_active_adapters("a")
    _perturb(model, "a")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 2, 1]))
        model.active_head = None
        shifted = torch.cat([torch.full((3, 1), PAD), ids[:, :-1]], dim=1)
        hidden = model(input_ids=ids, attention_mask=mask, decoder_input_ids=shifted).last_hidden_state
        model.active_head = "a"
    assert out.logits.shape == (3, 3) and out.loss is not None
    assert out.encoder_last_hidden_state is not None  # AdapterHub's Seq2Seq output for encoder-decoder models
    scale = model.config.d_model**-0.5  # a tied T5's output is scaled; classification pools the unscaled states
    pooled = (hidden / scale)[torch.arange(3), torch.tensor([6, 4, 2])]
    assert torch.allclose(model.heads["a"].run(pooled), out.logits, atol=1e-5)
    uneven = ids.clone()
    uneven[0, 0] = EOS
    with pytest.raises(HeadError, match="same number"):
        model(input_ids=uneven, attention_mask=mask)


def test_prompt_tuning_is_refused_and_leaves_the_model_unchanged():
    model = _model("t5")
    before = set(model.state_dict())
    with pytest.raises(UnsupportedMethodError, match="prompt_tuning"):
        model.add_adapter("p", config="prompt_tuning")
    assert set(model.state_dict()) == before and "p" not in model.adapters_config.adapters


def test_gated_ffn_lora_sits_on_wi_1_and_adapterhub_keys():
    model = _model("flan-t5")
    model.add_adapter("a", config="lora[intermediate_lora=True,output_lora=True]")
    model.add_adapter("b", config="seq_bn[mh_adapter=True,cross_adapter=True]")
    model.add_adapter("p", config="prefix_tuning[bottleneck_size=16]")
    model.add_adapter("i", config="seq_bn_inv")
    keys = set(model.state_dict())
    for key in (
        "transformer.encoder.block.0.layer.1.DenseReluDense.wi_1.loras.a.lora_A",
        "transformer.decoder.block.1.layer.2.DenseReluDense.wo.loras.a.lora_B",
        "transformer.decoder.block.0.layer.1.EncDecAttention.q.loras.a.lora_A",
        "transformer.encoder.block.0.layer.0.adapters.b.adapter_down.0.weight",
        "transformer.decoder.block.0.layer.1.adapters.b.adapter_up.weight",
        "transformer.decoder.block.1.layer.2.adapters.b.adapter_up.weight",
        "transformer.prefix_tuning.prefix_tunings.p.encoder_prefix.wte.weight",
        "transformer.prefix_tuning.prefix_tunings.p.cross_prefix.wte.weight",
        "transformer.encoder.invertible_adapters.i.F.0.weight",
    ):
        assert key in keys, key
    assert not any("wi_0.loras" in k for k in keys)
    layers = model.get_adapter("b")
    assert set(layers[2]) == {"mh_adapter", "cross_adapter", "output_adapter"}  # decoder block 0 is layer 2
