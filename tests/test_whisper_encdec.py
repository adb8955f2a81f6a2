"""Whisper (audio `input_features`, AutoAdapterModel with a seq2seq LM head) and transformers' `EncoderDecoderModel`
(two BERTs, the decoder with cross-attention, through `workbench.init`): every method their specs allow changes the
output, trains, saves and loads bit-exactly, and `generate()` with an adapter is the step-by-step greedy decode.
Outputs against the adapters library itself: tests/test_conformance.py (`whisper-*`, `encoder-decoder-*`).
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, EncoderDecoderConfig, EncoderDecoderModel, GPT2Config, WhisperConfig

import workbench
from workbench import BatchSplit, CompositionError, Parallel, Stack, UnsupportedModelError
from workbench.core.errors import UnsupportedMethodError

PAD, BOS, EOS, VOCAB = 1, 0, 2, 64
BERT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=32,
    pad_token_id=PAD,
)
# Every method the two specs allow (prompt tuning is refused, as in AdapterHub), with the places they act at.
METHODS = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",  # BERT2BERT: also after the decoder's cross-attention
    "cross_adapter": "seq_bn[cross_adapter=True]",  # Whisper's cross-attention site
    "par_bn": "par_bn",
    "seq_bn_inv": "seq_bn_inv",
    "lora": "lora[attn_matrices=['q','k','v'],intermediate_lora=True]",
    "ia3": "ia3",
    "prefix_tuning": "prefix_tuning[bottleneck_size=16]",
    "loreft": "loreft",
}
FAMILIES = ("whisper", "encoder-decoder")


def whisper_config() -> WhisperConfig:
    return WhisperConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=8,
        max_source_positions=16,
        max_target_positions=32,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        init_std=0.1,
        suppress_tokens=None,  # Whisper's defaults name token ids of its real vocabulary
        begin_suppress_tokens=None,
    )


def bert2bert_config(decoder=None) -> EncoderDecoderConfig:
    decoder = decoder or BertConfig(**BERT, is_decoder=True, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**BERT), decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = BOS, PAD, EOS
    return config


def build(family: str):
    """The same seeded base model every time (so a fresh one can load what another saved)."""
    torch.manual_seed(0)
    if family == "whisper":
        model = workbench.AutoAdapterModel.from_config(whisper_config())
        model.add_seq2seq_lm_head("lm")
    else:
        model = workbench.init(EncoderDecoderModel(bert2bert_config()))
    return model.eval()


def batch(family: str) -> dict:
    gen = torch.Generator().manual_seed(1)
    decoder = torch.randint(3, VOCAB, (3, 6), generator=gen)
    decoder[:, 0] = BOS
    if family == "whisper":
        inputs = {"input_features": torch.randn(3, 8, 32, generator=gen)}
    else:
        ids = torch.randint(3, VOCAB, (3, 7), generator=gen)
        mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 4 + [0] * 3])
        inputs = {"input_ids": ids.masked_fill(mask == 0, PAD), "attention_mask": mask}
    return {**inputs, "decoder_input_ids": decoder[:, :-1], "labels": decoder[:, 1:].contiguous()}


def add(model, name: str, config: str, noise: float = 0.3) -> None:
    """Add an adapter, activate it and move its weights off their init (LoRA's B and the par_bn up-projection start
    at zero)."""
    model.add_adapter(name, config=config)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, param in model._engine.named_parameters_of(name):
            param.add_(torch.randn(param.shape, generator=gen) * noise)
    model.set_active_adapters(name)


def logits(model, inputs: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k != "labels"}, **kwargs).logits


def allowed(family: str, method: str) -> bool:
    return not (family == "encoder-decoder" and method == "cross_adapter")  # BERT layers have no such site


CASES = [(f, m) for f in FAMILIES for m in METHODS if allowed(f, m)]


@pytest.mark.parametrize("family,method", CASES)
def test_method_changes_trains_and_reloads(family, method, tmp_path):
    model, inputs = build(family), batch(family)
    plain = logits(model, inputs)
    add(model, "a", METHODS[method])
    adapted = logits(model, inputs)
    assert (adapted - plain).abs().max() > 1e-3, f"{family} {method}: the adapter does not change the output"

    model.save_adapter(tmp_path / "a", "a")
    fresh = build(family)
    fresh.load_adapter(tmp_path / "a", load_as="a")
    fresh.set_active_adapters("a")
    assert torch.equal(logits(fresh, inputs), adapted), f"{family} {method}: reloaded adapter differs"

    model.train_adapter("a")
    base_before = {k: v.clone() for k, v in model.state_dict().items() if ".a." not in k and "heads." not in k}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(**inputs).loss
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] - 1e-3, f"{family} {method}: loss does not go down {losses}"
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base_before.items()), "training changed base weights"


def greedy_by_hand(model, family: str, inputs: dict, steps: int) -> torch.Tensor:
    """The greedy decode, one full forward (no cache) per token."""
    decoded = torch.full((inputs["decoder_input_ids"].shape[0], 1), BOS)
    encoder_inputs = {k: v for k, v in inputs.items() if k not in ("decoder_input_ids", "labels")}
    for _ in range(steps):
        step = logits(model, {**encoder_inputs, "decoder_input_ids": decoded}, use_cache=False)[:, -1]
        decoded = torch.cat([decoded, step.argmax(-1, keepdim=True)], dim=1)
    return decoded


@pytest.mark.parametrize("family", FAMILIES)
# (Not ReFT: it adapts the positions of the sequence a call starts with, so a cached decode, which adapts the prompt
# once, and a full recompute per step, which adapts each step's last positions anew, differ by design.)
@pytest.mark.parametrize("method", ["seq_bn", "lora", "prefix_tuning"])
def test_generate_is_greedy_decode(family, method):
    model, inputs = build(family), batch(family)
    add(model, "a", METHODS[method])
    encoder_inputs = {k: v for k, v in inputs.items() if k not in ("decoder_input_ids", "labels")}
    with torch.no_grad():
        generated = model.generate(
            **encoder_inputs,
            max_new_tokens=5,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=BOS,
            eos_token_id=None,
        )
    by_hand = greedy_by_hand(model, family, inputs, 5)
    assert torch.equal(generated, by_hand), f"{family} {method}: generate() {generated} != greedy {by_hand}"
    assert len(set(by_hand[:, 1:].flatten().tolist())) > 1, "degenerate decode: the test would prove nothing"
    model.set_active_adapters(None)
    with torch.no_grad():
        plain = model.generate(**encoder_inputs, max_new_tokens=5, do_sample=False, decoder_start_token_id=BOS)
    assert not torch.equal(plain[:, : by_hand.shape[1]], by_hand), "the adapter does not change what is generated"


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_and_whole_model_reload(family, tmp_path):
    """Beam search reorders the KV cache (prefixes are added after the cache update): it equals beam search without
    a cache. The whole model saved with its adapters loads back with equal outputs."""
    model, inputs = build(family), batch(family)
    add(model, "p", "prefix_tuning[bottleneck_size=8]")
    add(model, "l", "lora")
    model.set_active_adapters(Stack("p", "l"))
    encoder_inputs = {k: v for k, v in inputs.items() if k not in ("decoder_input_ids", "labels")}
    options = dict(max_new_tokens=4, num_beams=3, do_sample=False, decoder_start_token_id=BOS, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(**encoder_inputs, **options)
        uncached = model.generate(**encoder_inputs, **options, use_cache=False)
    assert torch.equal(cached, uncached), f"beam search with a cache {cached} != without {uncached}"

    model.save_pretrained(tmp_path)
    if family == "whisper":
        loaded = workbench.AutoAdapterModel.from_pretrained(tmp_path)
    else:
        loaded = workbench.load_model(tmp_path, EncoderDecoderModel)
    loaded.eval().set_active_adapters(Stack("p", "l"))
    assert torch.equal(logits(loaded, inputs), logits(model, inputs))


def test_whisper_batch_from_input_features_parallel_and_batchsplit():
    """Whisper's calls carry no input_ids: the batch comes from `input_features` (or, in generate's decoder steps,
    `decoder_input_ids`). Parallel replicates it per channel (in generate() too); BatchSplit gives each adapter its
    rows."""
    model, inputs = build("whisper"), batch("whisper")
    inputs.pop("labels")
    for name, config in (("a", "seq_bn"), ("b", "lora")):
        add(model, name, config)
        model.add_seq2seq_lm_head(name)  # a head per Parallel channel
    single = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        single[name] = logits(model, inputs)
    model.set_active_adapters(Parallel("a", "b"))
    with torch.no_grad():
        out = model(**inputs)
    assert [tuple(h.logits.shape) for h in out.head_outputs] == [(3, 5, VOCAB)] * 2
    for head_out, name in zip(out.head_outputs, "ab", strict=True):
        assert torch.allclose(head_out.logits, single[name], atol=1e-5), f"Parallel channel {name} differs"
    together = model.generate(input_features=inputs["input_features"], max_new_tokens=3)
    alone = []
    for name in ("a", "b"):  # generate() under Parallel: each channel's rows are what its adapter generates alone
        model.set_active_adapters(name)
        model.active_head = name
        alone.append(model.generate(input_features=inputs["input_features"], max_new_tokens=3))
    assert not torch.equal(alone[0], alone[1])  # the channels differ, so a mix-up would show
    assert torch.equal(together, torch.cat(alone))

    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    with torch.no_grad():
        out = model(**inputs)
    assert torch.allclose(out.head_outputs[0].logits, single["a"][:1], atol=1e-5)
    assert torch.allclose(out.head_outputs[1].logits, single["b"][1:], atol=1e-5)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 1]))
    with pytest.raises(CompositionError, match="3"):
        model(**inputs)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_tuning_is_refused(family):
    model = build(family)
    with pytest.raises(UnsupportedMethodError, match="prompt_tuning"):
        model.add_adapter("p", config="prompt_tuning")
    assert not model.adapters


def test_whisper_places_match_adapterhub():
    """Encoder then decoder layers (ids 0-3), mBART's pre-LN sites, the invertible adapter after the encoder's final
    layer norm (AdapterHub hooks `encoder.layer_norm`), prefixes keyed encoder/self/cross."""
    model = build("whisper")
    model.add_adapter("a", config="seq_bn_inv[cross_adapter=True,leave_out=[1,2]]")
    keys = {k.split(".adapters.")[0] for k in model.adapter_state_dict("a") if ".adapters." in k}
    assert keys == {
        "model.encoder.layers.0.output_adapters",
        "model.decoder.layers.1.output_adapters",
        "model.decoder.layers.1.cross_attention_adapters",
    }
    assert any(k.startswith("model.encoder.invertible_adapters.a.") for k in model.adapter_state_dict("a"))
    model.add_adapter("p", config="prefix_tuning[bottleneck_size=8]")
    pool = model.base_model.prefix_tuning.prefix_tunings["p"]
    assert set(pool) == {"encoder_prefix", "self_prefix", "cross_prefix"}


def test_encoder_decoder_layer_ids_are_per_submodel():
    """AdapterHub initialises the encoder and the decoder of an EncoderDecoderModel each on its own: layer ids start
    at 0 in both (leave_out=[0] leaves out the first layer of each), each has its own prefix pool, and the decoder's
    cross-attention is adapted like its self-attention."""
    model = build("encoder-decoder")
    model.add_adapter("a", config="lora[leave_out=[0]]")
    layers = {k.split(".attention")[0].split(".crossattention")[0] for k in model.adapter_state_dict("a")}
    assert layers == {"encoder.encoder.layer.1", "decoder.bert.encoder.layer.1"}
    assert any(".crossattention.self.query.loras.a." in k for k in model.adapter_state_dict("a"))
    model.add_adapter("b", config="double_seq_bn")
    hosts = {k.split(".adapters.")[0].split("layer.0.")[-1] for k in model.adapter_state_dict("b") if "layer.0." in k}
    assert hosts == {"attention.output", "crossattention.output", "output"}
    model.add_adapter("p", config="prefix_tuning[bottleneck_size=8]")
    assert set(model.encoder.prefix_tuning.prefix_tunings["p"]) == {"self_prefix"}
    assert set(model.decoder.bert.prefix_tuning.prefix_tunings["p"]) == {"self_prefix", "cross_prefix"}
    model.set_active_adapters("b", skip_layers=[0])  # skips layer 0 of the encoder and of the decoder
    inputs = {k: v for k, v in batch("encoder-decoder").items() if k != "labels"}
    with torch.no_grad():
        skipped = model(**inputs).logits
        model.set_active_adapters("b", skip_layers=[0, 1])
        none = model(**inputs).logits
        model.set_active_adapters(None)
        plain = model(**inputs).logits
    assert torch.equal(none, plain) and not torch.equal(skipped, plain)


def test_encoder_decoder_without_described_cross_attention_is_refused():
    """A decoder family whose cross-attention the engine cannot place (GPT-2's) is refused when the model is wrapped,
    instead of leaving its cross-attention silently unadapted."""
    decoder = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, bos_token_id=BOS, eos_token_id=EOS)
    decoder.add_cross_attention = decoder.is_decoder = True
    model = EncoderDecoderModel(bert2bert_config(decoder))
    with pytest.raises(UnsupportedModelError, match="'gpt2' decoder"):
        workbench.init(model)


def test_encoder_decoder_with_a_decoder_of_another_class_is_refused_unchanged():
    """The spec is composed from the configs (the decoder's base model at `decoder.<prefix>` of the causal-LM class
    transformers builds); a model whose decoder is some other class is refused by name, and stays as it was."""
    decoder = BertModel(BertConfig(**BERT, is_decoder=True, add_cross_attention=True))
    model = EncoderDecoderModel(encoder=BertModel(BertConfig(**BERT)), decoder=decoder)
    original = type(model)
    with pytest.raises(UnsupportedModelError, match="'decoder.bert'.*BertModel"):
        workbench.init(model)
    assert type(model) is original and not hasattr(model, "_engine")


@pytest.mark.parametrize("family", ["roberta", "electra", "bert-generation"])
def test_bert_shaped_decoders_get_cross_attention_adapters(family):
    """The BERT-shaped families share BERT's spec variant for `add_cross_attention` configs: as a decoder, each
    layer's cross-attention gets the "mh_adapter" bottleneck and the "selfattn" LoRA."""
    from transformers import AutoConfig

    sizes = {k: v for k, v in BERT.items() if family != "bert-generation" or k != "pad_token_id"}
    decoder = AutoConfig.for_model(family, **sizes, is_decoder=True, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**BERT), decoder)
    model = workbench.init(EncoderDecoderModel(config))
    model.add_adapter("a", config="double_seq_bn")
    model.add_adapter("l", config="lora")
    keys = [k for k in model.state_dict() if ".crossattention." in k]
    assert any(".adapters.a." in k for k in keys) and any("lora" in k for k in keys)
    assert all(k.startswith(f"decoder.{model.decoder.base_model_prefix}.encoder.layer.") for k in keys)


def test_whisper_generates_from_positional_features_and_its_task_head_converts(tmp_path):
    """generate(features) reads the base model's main input (input_features); WhisperForConditionalGeneration's
    `proj_out` becomes a seq2seq LM head that computes what it computes."""
    from transformers import WhisperForConditionalGeneration

    features = batch("whisper")["input_features"]
    model = build("whisper")
    add(model, "a", "seq_bn")
    settings = dict(max_new_tokens=3, do_sample=False, num_beams=1)
    assert torch.equal(model.generate(features, **settings), model.generate(input_features=features, **settings))

    torch.manual_seed(0)
    static = workbench.init(WhisperForConditionalGeneration(whisper_config()).eval())
    static.save_head(tmp_path)
    flex = workbench.AutoAdapterModel.from_config(static.config).eval()
    flex.load_state_dict(static.state_dict(), strict=False)
    flex.load_head(tmp_path, load_as="lm")
    decoder = batch("whisper")["decoder_input_ids"]
    with torch.no_grad():
        want = static(input_features=features, decoder_input_ids=decoder).logits
        got = flex(input_features=features, decoder_input_ids=decoder).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_trainer_keeps_the_audio_column(tmp_path):
    """Trainer drops the dataset columns the forward signature does not name: `input_features` must be one of them
    (an image model's `pixel_values` too), or training runs the encoder without its input."""
    import inspect

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    model = build("whisper")
    assert {"input_features", "pixel_values"} <= set(inspect.signature(model.forward).parameters)
    add(model, "a", "seq_bn")
    model.train_adapter("a")
    data = batch("whisper")
    rows = Dataset.from_dict({k: v.tolist() for k, v in data.items() if k != "decoder_input_ids"}).with_format("torch")
    before = {k: v.clone() for k, v in model._engine.named_parameters_of("a")}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=3, report_to=[],
                             use_cpu=True, learning_rate=1e-2, save_strategy="no")  # fmt: skip
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert any(not torch.equal(v, before[k]) for k, v in model._engine.named_parameters_of("a"))
