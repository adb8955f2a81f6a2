"""Encoder-decoder models (BART, mBART, PLBart): every method acts, trains and reloads bit-exactly; `generate()` with
adapters equals a step-by-step greedy decode; beam search; heads, compositions and what is refused.

Outputs against the `adapters` library itself are checked by tests/test_conformance.py (the bart/mbart/plbart cases).
"""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_adapter_model
from transformers import (
    BartConfig,
    BartForCausalLM,
    BartForConditionalGeneration,
    BartForQuestionAnswering,
    MBartConfig,
    MBartForSequenceClassification,
    PLBartConfig,
    Seq2SeqTrainingArguments,
)

import workbench
from workbench import AdapterSetup, BatchSplit, Fuse, Parallel, Stack
from workbench.core.errors import AdapterLoadError, CompositionError, HeadError, UnsupportedMethodError
from workbench.train import Seq2SeqAdapterTrainer

FAMILIES = {"bart": BartConfig, "mbart": MBartConfig, "plbart": PLBartConfig}  # post-LN, pre-LN, post-LN
SIZES = dict(
    vocab_size=64,
    d_model=16,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=32,
    decoder_ffn_dim=32,
    max_position_embeddings=32,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    decoder_start_token_id=2,
    forced_eos_token_id=None,
    dropout=0.0,
    init_std=0.2,  # a tiny model with BART's default 0.02 generates the same token over and over
)
EOS, PAD = 2, 1
# Right-padded encoder rows of 7, 5 and 3 tokens, each ending in one <eos>; labels padded with -100.
INPUT_IDS = torch.tensor([[5, 9, 14, 3, 22, 40, 2], [7, 31, 8, 17, 2, PAD, PAD], [12, 50, 2, PAD, PAD, PAD, PAD]])
MASK = (INPUT_IDS != PAD).long()
LABELS = torch.tensor([[6, 10, 15, 4, 2], [8, 32, 9, 2, -100], [13, 51, 2, -100, -100]])


def tiny(family: str = "bart", seed: int = 0) -> workbench.AdapterModel:
    torch.manual_seed(seed)
    return workbench.AutoAdapterModel.from_config(FAMILIES[family](**SIZES)).eval()


def perturb(model, name: str, std: float, seed: int = 1) -> None:
    """Move adapter `name`'s weights away from their (often identity) init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if name in key.split("."):
                param.add_(torch.randn(param.shape, generator=gen) * std)


def logits(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS, **kwargs).logits


# --- every method ----------------------------------------------------------------------------------------------

METHODS = [
    "seq_bn",
    "double_seq_bn",
    "seq_bn[cross_adapter=True,mh_adapter=True]",
    "par_bn",
    "compacter[reduction_factor=4]",
    "lora[intermediate_lora=True,output_lora=True]",
    "ia3",
    "prefix_tuning[bottleneck_size=16]",
    "seq_bn_inv",
    "loreft[prefix_positions=2,suffix_positions=1]",
]


# Every method on BART; on mBART (pre-LN residual sites) and PLBart the methods whose places differ between families
# (bottleneck sites, the embeddings, attention functions); the library conformance cases cover all of them on all three.
TRAIN_CASES = [("bart", config) for config in METHODS] + [
    (family, config)
    for family in ("mbart", "plbart")
    for config in ("seq_bn[cross_adapter=True,mh_adapter=True]", "prefix_tuning[bottleneck_size=16]", "seq_bn_inv")
]


@pytest.mark.parametrize("family, config", TRAIN_CASES)
def test_each_method_trains_changes_the_output_and_reloads_bit_exactly(family, config, tmp_path):
    model = tiny(family)
    model.add_adapter("a", config=config)
    model.add_seq2seq_lm_head("a")
    model.train_adapter("a")
    shared = model.base_model.shared.weight.detach().clone()  # the LM head's (tied) weight: frozen
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=3e-2)
    losses = []
    for _ in range(3):
        loss = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    model.eval()
    assert torch.equal(model.base_model.shared.weight, shared)
    adapted = logits(model)
    with AdapterSetup(None):
        assert not torch.allclose(logits(model), adapted, atol=1e-4)

    model.save_adapter(str(tmp_path), "a")
    fresh = tiny(family)
    fresh.load_adapter(str(tmp_path), set_active=True)
    fresh.active_head = "a"
    assert torch.equal(logits(fresh), adapted)


# --- generation --------------------------------------------------------------------------------------------------


def greedy_without_cache(model, steps: int) -> torch.Tensor:
    """Decode token by token, re-running the whole decoder text each step (no cache)."""
    decoded = torch.full((INPUT_IDS.shape[0], 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(steps):
            out = model(input_ids=INPUT_IDS, attention_mask=MASK, decoder_input_ids=decoded, use_cache=False)
            decoded = torch.cat([decoded, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return decoded


GENERATE = dict(attention_mask=MASK, max_new_tokens=6, do_sample=False, num_beams=1, eos_token_id=None)
GENERATE_CASES = [  # (family, adapters stacked, noise std that makes the tiny model's generations vary)
    ("bart", ["seq_bn[cross_adapter=True]"], 0.2),
    ("bart", ["lora"], 0.4),
    ("bart", ["prefix_tuning[bottleneck_size=16]"], 0.4),
    ("bart", ["seq_bn_inv"], 0.2),
    ("bart", ["loreft"], 1.0),
    ("mbart", ["seq_bn_inv", "lora", "prefix_tuning[bottleneck_size=16]"], 0.6),
    ("plbart", ["double_seq_bn", "ia3", "prefix_tuning[bottleneck_size=16,cross_prefix=False]"], 0.6),
]


@pytest.mark.parametrize("family, configs, std", GENERATE_CASES)
def test_generate_with_adapters_equals_a_greedy_decode_without_cache(family, configs, std):
    """Padded encoder rows, a KV cache in generate() (prefixes and ReFT meet it in every decoder step)."""
    model = tiny(family)
    names = [f"a{i}" for i in range(len(configs))]
    for name, config in zip(names, configs, strict=True):
        model.add_adapter(name, config=config)
        perturb(model, name, std=std, seed=len(name) + 7 * names.index(name))
    model.add_seq2seq_lm_head("lm")
    with torch.no_grad():
        plain = model.generate(input_ids=INPUT_IDS, **GENERATE)
    model.set_active_adapters(Stack(*names))
    with torch.no_grad():
        generated = model.generate(input_ids=INPUT_IDS, **GENERATE)
    assert generated.shape == (3, 7)  # no <eos> stops it: it runs its length
    assert not torch.equal(generated, plain)  # the adapters act on generation
    assert len(set(generated[:, 1:].flatten().tolist())) >= 2  # not one token over and over
    assert torch.equal(generated, greedy_without_cache(model, steps=6))


def sequence_log_prob(model, decoded: torch.Tensor) -> torch.Tensor:
    """The sum of log-probabilities of the tokens after the start token, teacher-forced."""
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS[:1], attention_mask=MASK[:1], decoder_input_ids=decoded[:, :-1])
    log_probs = out.logits.log_softmax(-1)
    return log_probs.gather(-1, decoded[:, 1:, None]).squeeze(-1).sum(-1)


def test_beam_search_returns_its_best_scored_sequence():
    model = tiny("bart")
    model.add_adapter("a", config="lora[selfattn_lora=True,intermediate_lora=True]")
    perturb(model, "a", std=0.6)
    model.add_seq2seq_lm_head("a")
    model.set_active_adapters("a")
    kwargs = dict(attention_mask=MASK[:1], max_new_tokens=4, num_beams=4, do_sample=False, eos_token_id=None,
                  length_penalty=0.0, early_stopping=True)  # fmt: skip
    with torch.no_grad():
        beams = model.generate(input_ids=INPUT_IDS[:1], num_return_sequences=4, output_scores=True,
                               return_dict_in_generate=True, **kwargs)  # fmt: skip
        best = model.generate(input_ids=INPUT_IDS[:1], **kwargs)
    scores = beams.sequences_scores
    assert torch.all(scores[:-1] >= scores[1:])  # best first
    assert torch.equal(best, beams.sequences[:1])
    # with length_penalty=0 a beam's score is its log-probability, which a teacher-forced forward reproduces
    torch.testing.assert_close(sequence_log_prob(model, beams.sequences), scores, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["seq_bn", "lora", "prefix_tuning[prefix_length=3]"])
def test_generate_under_parallel_continues_each_channel_as_its_adapter_alone(method):
    """AdapterHub replicates the prompt per channel: the rows of channel i are what adapter i generates alone."""
    model = tiny("bart")
    for name in ("a", "b"):
        model.add_adapter(name, config=method)
        model.add_seq2seq_lm_head(name)
        perturb(model, name, std=0.5, seed=len(name) + ord(name))
    model.set_active_adapters(Parallel("a", "b"))
    together = model.generate(input_ids=INPUT_IDS, **GENERATE)
    alone = []
    for name in ("a", "b"):
        model.set_active_adapters(name)
        model.active_head = name
        alone.append(model.generate(input_ids=INPUT_IDS, **GENERATE))
    assert not torch.equal(alone[0], alone[1])  # the channels differ, so a mix-up would show
    assert torch.equal(together, torch.cat(alone))


def test_generate_refuses_a_parallel_it_cannot_split_into_adapters():
    model = tiny("bart")
    for name in ("a", "b", "c"):
        model.add_adapter(name, config="seq_bn")
        model.add_seq2seq_lm_head(name)
    model.set_active_adapters(Parallel(Stack("a", "b"), "c"))
    with pytest.raises(CompositionError, match="only a Parallel of single adapters"):
        model.generate(input_ids=INPUT_IDS, **GENERATE)
    model.set_active_adapters(Parallel("a", "b"))
    model.active_head = ["a", "b"]
    with torch.no_grad():
        encoded = model.get_encoder()(input_ids=INPUT_IDS, attention_mask=MASK)
    with pytest.raises(CompositionError, match="encoder_outputs would have to be replicated"):
        model.generate(encoder_outputs=encoded, **GENERATE)


# --- heads ------------------------------------------------------------------------------------------------------


def test_classification_reads_the_last_eos_and_refuses_uneven_eos_counts():
    model = tiny("bart")
    model.add_adapter("a", config="seq_bn")
    perturb(model, "a", std=0.3)
    model.add_classification_head("a", num_labels=3)
    model.set_active_adapters("a")
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS, attention_mask=MASK, output_hidden_states=True)
        hidden = model.base_model(input_ids=INPUT_IDS, attention_mask=MASK).last_hidden_state
        at_eos = hidden[torch.arange(3), MASK.sum(1) - 1]  # each row's (only) <eos> is its last real token
        expected = model.heads["a"].run(at_eos)
    torch.testing.assert_close(out.logits, expected)
    assert out.encoder_last_hidden_state.shape == (3, 7, 16)  # a Seq2Seq output, as AdapterHub's head gives

    uneven = INPUT_IDS.clone()
    uneven[0, 2] = EOS  # row 0 now holds two <eos>
    with pytest.raises(HeadError, match=r"same number .*<eos>.*\[2, 1, 1\]"):
        model(input_ids=uneven, attention_mask=MASK)
    with torch.no_grad():  # the model is unchanged
        assert torch.equal(model(input_ids=INPUT_IDS, attention_mask=MASK).logits, out.logits)


def test_prompt_tuning_is_refused_when_added():
    model = tiny("mbart")
    with pytest.raises(UnsupportedMethodError, match="prompt_tuning.*'mbart'"):
        model.add_adapter("p", config="prompt_tuning")
    assert "p" not in model.adapters_config.adapters and not any("prompt" in k for k in model.state_dict())


@pytest.mark.parametrize("family", ["bart", "mbart", "plbart"])
def test_labels_become_the_families_decoder_inputs(family):
    """As transformers' seq2seq models: BART starts with decoder_start_token_id, mBART/PLBart wrap the last token."""
    model = tiny(family)
    shifted = model.prepare_decoder_input_ids_from_labels(LABELS)
    assert shifted.tolist() == [[2, 6, 10, 15, 4], [2, 8, 32, 9, 2], [2, 13, 51, 2, PAD]]  # rows ending in <eos>
    language_id = model.prepare_decoder_input_ids_from_labels(torch.tensor([[5, 6, 9, PAD]]))[0].tolist()
    assert language_id == ([2, 5, 6, 9] if family == "bart" else [9, 5, 6, 9])
    model.add_seq2seq_lm_head("lm")
    with torch.no_grad():
        implicit = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS)
        explicit = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS, decoder_input_ids=shifted)
    torch.testing.assert_close(implicit.loss, explicit.loss)


def test_only_encoder_decoder_models_offer_decoder_inputs_from_labels():
    """transformers' DataCollatorForSeq2Seq asks `hasattr(model, "prepare_decoder_input_ids_from_labels")`."""
    assert not hasattr(tiny_adapter_model("gpt2"), "prepare_decoder_input_ids_from_labels")


# --- compositions -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_adapters():
    model = tiny("bart")
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config="seq_bn[cross_adapter=True]")
        perturb(model, name, std=0.4, seed=i)
        model.add_seq2seq_lm_head(name)
    return model


def test_parallel_and_batchsplit_give_each_row_group_its_own_adapter_and_head(two_adapters):
    model = two_adapters
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone[name] = logits(model)
    model.set_active_adapters(Parallel("a", "b"))
    parallel = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS).head_outputs
    for out, name in zip(parallel, ("a", "b"), strict=True):
        torch.testing.assert_close(out.logits, alone[name], atol=1e-5, rtol=1e-5)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
    split = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS).head_outputs
    torch.testing.assert_close(split[0].logits, alone["a"][:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(split[1].logits, alone["b"][1:], atol=1e-5, rtol=1e-5)


def test_stack_and_fuse_run_on_bart(two_adapters):
    model = two_adapters
    model.set_active_adapters("b")
    only_b = logits(model)
    model.set_active_adapters(Stack("a", "b"))
    stacked = logits(model)
    assert stacked.shape == only_b.shape and not torch.allclose(stacked, only_b, atol=1e-4)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.set_active_adapters(Fuse("a", "b"))
    model.active_head = "a"
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS, attention_mask=MASK, labels=LABELS, output_adapter_fusion_attentions=True)
    attentions = out.adapter_fusion_attentions["a,b"]
    assert sorted(attentions) == [0, 1, 2, 3]  # encoder layers 0-1, decoder layers 2-3
    assert attentions[2]["cross_adapter"].shape == (3, LABELS.shape[1], 2)  # decoder rows x positions x adapters
    assert torch.isfinite(out.loss)


# --- training with the trainer ----------------------------------------------------------------------------------


def test_seq2seq_adapter_trainer_trains_and_predicts_with_generate(tmp_path):
    model = tiny("bart")
    model.add_adapter("a", config="seq_bn")
    model.add_seq2seq_lm_head("a")
    model.train_adapter("a")
    rows = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(INPUT_IDS, MASK, LABELS, strict=True)]
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=3, per_device_eval_batch_size=3, max_steps=4,
        learning_rate=3e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        predict_with_generate=True, generation_max_length=5, generation_num_beams=1,
    )  # fmt: skip
    collate = lambda batch: {k: torch.stack([row[k] for row in batch]) for k in batch[0]}  # noqa: E731
    trainer = Seq2SeqAdapterTrainer(
        model=model, args=args, train_dataset=rows, eval_dataset=rows, data_collator=collate
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0], losses
    prediction = trainer.predict(rows)
    model.eval()
    with torch.no_grad():
        expected = model.generate(input_ids=INPUT_IDS, attention_mask=MASK, max_length=5, num_beams=1, do_sample=False)
    got = torch.as_tensor(prediction.predictions)
    assert torch.equal(got[:, : expected.shape[1]], expected)
    assert "test_loss" in prediction.metrics


# --- transformers' task classes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "family, task_class",
    [
        ("bart", BartForConditionalGeneration),
        ("bart", BartForQuestionAnswering),
        ("mbart", MBartForSequenceClassification),
    ],
)
def test_static_heads_of_task_classes_convert_to_equal_flex_heads(family, task_class, tmp_path):
    """As AdapterHub: a head saved from an init()-ed `...For<Task>` model loads into a flex model as that flex head."""
    torch.manual_seed(0)
    static = workbench.init(task_class(FAMILIES[family](**SIZES)).eval())
    static.save_head(str(tmp_path))
    flex = tiny(family)
    flex.base_model.load_state_dict(static.base_model.state_dict())
    flex.load_head(str(tmp_path), load_as="task")
    with torch.no_grad():
        want, got = static(input_ids=INPUT_IDS, attention_mask=MASK), flex(input_ids=INPUT_IDS, attention_mask=MASK)
    for key in ("logits", "start_logits", "end_logits"):
        if key in want:
            torch.testing.assert_close(got[key], want[key])


def test_a_non_zero_final_logits_bias_is_not_dropped_silently(tmp_path):
    torch.manual_seed(0)
    static = workbench.init(BartForConditionalGeneration(BartConfig(**SIZES)).eval())
    static.final_logits_bias.fill_(0.5)  # a flex seq2seq_lm head has no logits bias
    static.save_head(str(tmp_path))
    flex = tiny("bart")
    with pytest.raises(AdapterLoadError, match="final_logits_bias"):
        flex.load_head(str(tmp_path), load_as="task")
    assert "task" not in flex.heads


def test_bart_for_causal_lm_takes_adapters_on_its_decoder():
    """Its base model is a decoder wrapper whose decoder the task model calls: layers numbered from 0."""
    torch.manual_seed(0)
    model = workbench.init(BartForCausalLM(BartConfig(**SIZES)).eval())
    with torch.no_grad():
        plain = model(input_ids=INPUT_IDS, attention_mask=MASK).logits
    model.add_adapter("a", config="seq_bn[mh_adapter=True]")
    model.add_adapter("b", config="prefix_tuning[bottleneck_size=16]")
    perturb(model, "a", std=0.5)
    perturb(model, "b", std=0.5, seed=2)
    assert sorted(model.get_adapter("a")) == [0, 1]
    model.set_active_adapters(Stack("a", "b"))
    with torch.no_grad():
        adapted = model(input_ids=INPUT_IDS, attention_mask=MASK).logits
        generated = model.generate(input_ids=INPUT_IDS[:1, :4], max_new_tokens=4, do_sample=False, eos_token_id=None)
        decoded = INPUT_IDS[:1, :4]
        for _ in range(4):
            step = model(input_ids=decoded, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            decoded = torch.cat([decoded, step], dim=1)
    assert not torch.allclose(adapted, plain, atol=1e-4)
    assert torch.equal(generated, decoded)
    with pytest.raises(UnsupportedMethodError, match="invertible"):  # they live on the encoder, which it lacks
        model.add_adapter("inv", config="seq_bn_inv")
