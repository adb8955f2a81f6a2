"""Model outputs for a few texts under one adapter setup: labels with scores, tags, generated text or a span.

    predict(model, tok, ["great film"], setup="sst")          # [Prediction(label="pos", scores={...}), ...]
    predict(model, tok, texts, setup="Stack(lang, task)")
    model, tok = load_checkpoint("runs/full/final"); predict(model, tok, texts)

The setup is applied with `AdapterSetup` for the call only: the model's active adapters, head and train/eval
mode are left as they were. Many texts run in length-sorted chunks of `batch_size` (padded to each chunk's
longest), so thousands of texts cost little padding and bounded memory; results keep the caller's order. On a
CPU the linear layers multiply through oneDNN (`core.onednn_linear`), about twice as fast on AMD processors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core.composition import Parallel
from ..core.context import AdapterSetup
from ..core.onednn_linear import onednn_linears
from .setups import check_setup, heads_for

QA_SEPARATOR = "|||"  # "question ||| context" for question-answering heads
MAX_LENGTH = 128  # tokens per text, as TrainConfig's default
HEAD_KINDS = ("classification", "multilabel", "regression", "tagging", "qa", "causal_lm", "masked_lm", "none")


@dataclass
class Prediction:
    """What a model made of one text. `kind` is one of `HEAD_KINDS`; `summary` is one readable line."""

    text: str
    kind: str
    summary: str
    label: str | None = None
    scores: dict[str, float] = field(default_factory=dict)  # label -> probability; output name -> value (regression)
    value: float | None = None  # the model's output (regression)
    tags: list[tuple[str, str]] = field(default_factory=list)  # (token, label) (tagging)
    generated: str | None = None  # causal LM continuation, or masked LM fill-ins
    answer: str | None = None  # QA span
    branches: dict[str, Prediction] = field(default_factory=dict)  # per head of a Parallel setup


def predict(
    model,
    tokenizer,
    texts: list[str],
    setup=None,
    head: str | None = None,
    max_new_tokens: int = 8,
    max_length: int = MAX_LENGTH,
    batch_size: int = 64,
) -> list[Prediction]:
    """Outputs of `model` for `texts` under `setup` (None: the base model; a name; a composition or its text).

    `head` picks a prediction head of an `AdapterModel`; by default it is the head named after the setup
    (AdapterHub's convention), and the base model runs without a head. A transformers model with its own head
    (e.g. `...ForSequenceClassification` with `workbench.init`) always uses that head. `batch_size` texts run
    per forward, longest first (a causal LM generates one text at a time).
    """
    texts = _check_texts(texts)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    block = check_setup(model, setup)
    heads = [head] if head else heads_for(model, block)
    has_flex_heads = hasattr(model, "heads")
    for name in heads:
        if has_flex_heads and name not in model.heads:
            raise ValueError(f"no head named {name!r} (heads: {', '.join(model.heads) or 'none'})")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), onednn_linears(model), AdapterSetup(block, head_setup=_head_setup(block, heads)):
            if isinstance(block, Parallel) and len(heads) > 1:
                return _predict_parallel(model, tokenizer, texts, heads, max_length, batch_size)
            kind = head_kind(model, heads[0] if heads else None)
            if kind == "causal_lm":
                return [_generate(model, tokenizer, text, max_new_tokens) for text in texts]
            forward = model.base_model if has_flex_heads and not heads else model  # no head: hidden states
            head_name = heads[0] if heads else None
            return _in_chunks(
                model,
                tokenizer,
                texts,
                kind,
                max_length,
                batch_size,
                lambda chunk, inputs: _interpret(model, tokenizer, chunk, inputs, forward(**inputs), kind, head_name),
            )
    finally:
        model.train(was_training)


def _in_chunks(model, tokenizer, texts, kind, max_length, batch_size, run_chunk) -> list[Prediction]:
    """`run_chunk(chunk_texts, inputs)` over chunks of texts of similar token length; results in `texts` order.

    Sorting by length (one tokenizer pass without padding) keeps each chunk's padding small; a stable sort keeps
    equal-length texts in the caller's order. Longest first: the first chunk takes the most memory, and the later,
    smaller ones reuse it (ascending chunks grow the process's memory with every new, larger shape).
    """
    if len(texts) <= 1:
        order = list(range(len(texts)))
    else:
        lengths = [len(ids) for ids in _tokenize(tokenizer, texts, kind, max_length, padding=False)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    results: list[Prediction | None] = [None] * len(texts)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        chunk = [texts[i] for i in rows]
        predictions = run_chunk(chunk, _encode(model, tokenizer, chunk, kind, max_length))
        for i, prediction in zip(rows, predictions, strict=True):
            results[i] = prediction
    return results


def _check_texts(texts) -> list[str]:
    """The texts as a list; an empty one is refused, not dropped: the i-th prediction is for the i-th text."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no input texts: give at least one non-empty text")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {text!r}, not a string")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        where = ", ".join(f"texts[{i}]" for i in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise ValueError(
            f"{where} {'is' if len(empty) == 1 else 'are'} empty or only whitespace: predictions line up with "
            "the texts by position, so remove or fill the empty ones first"
        )
    return texts


def _head_setup(block, heads: list[str]):
    if not heads:
        return None
    return heads if isinstance(block, Parallel) and len(heads) > 1 else heads[0]


def head_kind(model, head: str | None) -> str:
    """The kind of output a head gives (one of `HEAD_KINDS`), for a workbench head or a transformers model."""
    if hasattr(model, "heads"):
        if head is None:
            return "none"
        head_type = model.heads[head].head_type
        if head_type == "classification" and model.heads[head].config.get("num_labels") == 1:
            return "regression"  # AdapterHub's regression head (e.g. STS-B): one output, mean squared error
        return {
            "classification": "classification",
            "multilabel_classification": "multilabel",
            "tagging": "tagging",
            "question_answering": "qa",
            "causal_lm": "causal_lm",
            "masked_lm": "masked_lm",
        }.get(head_type, "classification")
    name = type(model).__name__
    for suffix, kind in (
        ("ForSequenceClassification", "classification"),
        ("ForTokenClassification", "tagging"),
        ("ForQuestionAnswering", "qa"),
        ("ForCausalLM", "causal_lm"),
        ("LMHeadModel", "causal_lm"),
        ("ForMaskedLM", "masked_lm"),
    ):
        if name.endswith(suffix):
            return _sequence_kind(model.config) if kind == "classification" else kind
    return "none"


def _sequence_kind(config) -> str:
    """As transformers picks the loss: `problem_type`, else one label means regression."""
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification":
        return "multilabel"
    if problem == "regression" or (problem is None and getattr(config, "num_labels", 2) == 1):
        return "regression"
    return "classification"


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _tokenize(tokenizer, texts: list[str], kind: str, max_length: int, padding: bool, **kwargs):
    if kind == "qa":
        pairs = [_split_qa(t) for t in texts]
        return tokenizer(
            [q for q, _ in pairs],
            [c for _, c in pairs],
            padding=padding,
            truncation="only_second",
            max_length=max_length,
            **kwargs,
        )
    return tokenizer(texts, padding=padding, truncation=True, max_length=max_length, **kwargs)


def _encode(model, tokenizer, texts: list[str], kind: str, max_length: int):
    """The model's inputs as tensors, kept a `BatchEncoding`: a fast tokenizer's says which tokens are the context."""
    return _tokenize(tokenizer, texts, kind, max_length, padding=True, return_tensors="pt").to(_device(model))


def _split_qa(text: str) -> tuple[str, str]:
    if QA_SEPARATOR not in text:
        raise ValueError(f"a question-answering head needs 'question {QA_SEPARATOR} context', got {text!r}")
    question, context = text.split(QA_SEPARATOR, 1)
    return question.strip(), context.strip()


def _id2label(model, head: str | None, count: int) -> dict[int, str]:
    mapping = None
    if head is not None and hasattr(model, "heads"):
        mapping = model.heads[head].id2label
    elif not hasattr(model, "heads"):
        mapping = getattr(model.config, "id2label", None)
    mapping = {int(k): str(v) for k, v in (mapping or {}).items()}
    return {i: mapping.get(i, f"LABEL_{i}") for i in range(count)}


def _interpret(model, tokenizer, texts, inputs, outputs, kind, head) -> list[Prediction]:
    if kind == "none":
        return _no_head(texts, inputs, outputs)
    if kind == "qa":
        return _spans(tokenizer, texts, inputs, outputs)
    logits = outputs.logits.float().cpu()
    if kind == "masked_lm":
        return _fill_masks(tokenizer, texts, inputs, logits)
    labels = _id2label(model, head, logits.shape[-1])
    if kind == "regression":
        return _values(texts, logits, labels[0])
    if kind == "tagging":
        return _tags(tokenizer, texts, inputs, logits, labels)
    return _classes(texts, logits, labels, multilabel=kind == "multilabel")


def _classes(texts, logits, labels, multilabel: bool) -> list[Prediction]:
    probs = torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=-1)
    results = []
    for text, row in zip(texts, probs, strict=True):
        scores = {labels[i]: float(p) for i, p in enumerate(row)}
        if multilabel:
            chosen = [name for name, p in scores.items() if p >= 0.5]
            label = ", ".join(chosen) or "(none)"
            summary = f"{label} ({', '.join(f'{n} {p:.2f}' for n, p in scores.items())})"
            kind = "multilabel"
        else:
            label = max(scores, key=scores.get)
            summary = f"{label} ({scores[label]:.2f})"
            kind = "classification"
        results.append(Prediction(text, kind, summary, label=label, scores=scores))
    return results


def _values(texts, logits, name: str) -> list[Prediction]:
    """A regression head's output as it is: a softmax over one logit would be 1.0 for every text."""
    shown = "value" if name == "LABEL_0" else name  # the default name says nothing
    return [
        Prediction(text, "regression", f"{shown} {float(v):.4g}", scores={name: float(v)}, value=float(v))
        for text, v in zip(texts, logits.view(len(texts), -1)[:, 0], strict=True)
    ]


def _tags(tokenizer, texts, inputs, logits, labels) -> list[Prediction]:
    results = []
    special = set(tokenizer.all_special_ids)
    for i, text in enumerate(texts):
        ids = inputs["input_ids"][i].tolist()
        mask = inputs["attention_mask"][i].tolist() if "attention_mask" in inputs else [1] * len(ids)
        tags = [
            (tokenizer.convert_ids_to_tokens(tok), labels[int(logits[i, j].argmax())])
            for j, (tok, keep) in enumerate(zip(ids, mask, strict=True))
            if keep and tok not in special
        ]
        summary = " ".join(f"{t}/{label}" for t, label in tags)
        results.append(Prediction(text, "tagging", summary, tags=tags))
    return results


def _spans(tokenizer, texts, inputs, outputs) -> list[Prediction]:
    results = []
    start_logits, end_logits = outputs.start_logits.float().cpu(), outputs.end_logits.float().cpu()
    for i, text in enumerate(texts):
        context = _context_positions(inputs, i, set(tokenizer.all_special_ids))
        if not context:
            raise ValueError(f"no context tokens in {text!r} (an empty context, or one cut off by max_length)")
        start = max(context, key=lambda j: start_logits[i, j])
        end = max((j for j in context if j >= start), key=lambda j: end_logits[i, j])
        answer = tokenizer.decode(inputs["input_ids"][i][start : end + 1].tolist(), skip_special_tokens=True).strip()
        results.append(Prediction(text, "qa", answer or "(empty span)", answer=answer))
    return results


def _context_positions(inputs, row: int, special: set[int]) -> list[int]:
    """Token positions of the context (the second sequence), where an answer may start and end, as in training.

    A fast tokenizer's `sequence_ids` say which tokens those are; a slow one needs token type ids that do (many
    models, DistilBERT and RoBERTa among them, have none or all zeros: any text token would do, question too).
    """
    if getattr(inputs, "encodings", None):
        return [j for j, sequence in enumerate(inputs.sequence_ids(row)) if sequence == 1]
    types, mask, ids = inputs.get("token_type_ids"), inputs.get("attention_mask"), inputs["input_ids"][row].tolist()
    if types is None or not types[row].any():
        raise ValueError("a question-answering head needs a fast tokenizer here, to tell the context from the question")
    return [
        j for j, tok in enumerate(ids) if types[row, j] == 1 and (mask is None or mask[row, j]) and tok not in special
    ]


def _fill_masks(tokenizer, texts, inputs, logits) -> list[Prediction]:
    results = []
    for i, text in enumerate(texts):
        positions = (inputs["input_ids"][i] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        if tokenizer.mask_token_id is None or not positions:
            results.append(Prediction(text, "masked_lm", f"no {tokenizer.mask_token or 'mask'} token in the text"))
            continue
        words = [tokenizer.decode([int(logits[i, j].argmax())]).strip() for j in positions]
        results.append(Prediction(text, "masked_lm", " | ".join(words), generated=" ".join(words)))
    return results


def _no_head(texts, inputs, outputs) -> list[Prediction]:
    hidden = outputs[0].float()
    mask = inputs.get("attention_mask", torch.ones(hidden.shape[:2], device=hidden.device)).unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return [
        Prediction(text, "none", f"no head (mean embedding norm {float(norm):.3f})", scores={"norm": float(norm)})
        for text, norm in zip(texts, pooled.norm(dim=-1).cpu(), strict=True)
    ]


def _generate(model, tokenizer, text: str, max_new_tokens: int) -> Prediction:
    encoded = tokenizer(text, return_tensors="pt").to(_device(model))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad)
    continuation = tokenizer.decode(output[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return Prediction(text, "causal_lm", continuation.strip() or "(nothing generated)", generated=continuation)


def _predict_parallel(model, tokenizer, texts, heads, max_length, batch_size) -> list[Prediction]:
    kinds = [head_kind(model, h) for h in heads]
    if any(k in ("causal_lm", "qa") for k in kinds):
        raise ValueError(f"a Parallel setup compares classification/tagging heads here, not {', '.join(kinds)}")
    return _in_chunks(
        model,
        tokenizer,
        texts,
        "classification",
        max_length,
        batch_size,
        lambda chunk, inputs: _parallel_chunk(model, tokenizer, chunk, inputs, heads, kinds),
    )


def _parallel_chunk(model, tokenizer, texts, inputs, heads, kinds) -> list[Prediction]:
    """One chunk under a Parallel setup: one forward, each head's outputs read as its own kind."""
    outputs = model(**inputs)
    per_head = [
        _interpret(model, tokenizer, texts, inputs, out, kind, name)
        for name, kind, out in zip(heads, kinds, outputs.head_outputs, strict=True)
    ]
    results = []
    for i, text in enumerate(texts):
        branches = {name: preds[i] for name, preds in zip(heads, per_head, strict=True)}
        summary = " | ".join(f"{name}: {p.summary}" for name, p in branches.items())
        results.append(Prediction(text, "parallel", summary, branches=branches))
    return results


def load_checkpoint(folder: str | Path, tokenizer=None):
    """Load a full fine-tuned model folder for `predict`: `(model, tokenizer)`.

    A workbench `AdapterModel` folder (base model plus `heads/`, `adapters/`, `fusions/`) or a transformers model
    folder whose `config.json` names a transformers class. Never runs remote code; weights load through
    transformers (safetensors, or `.bin` with `weights_only`). The tokenizer comes from the folder when it has
    one, else `tokenizer`.
    """
    import transformers

    from ..core.adapter_model import AutoAdapterModel

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: {folder} is not a saved model folder")
    config = transformers.AutoConfig.from_pretrained(folder, trust_remote_code=False)
    architecture = (getattr(config, "architectures", None) or [""])[0]
    model_cls = getattr(transformers, architecture, None)
    is_task_model = model_cls is not None and ("For" in architecture or architecture.endswith("LMHeadModel"))
    if (folder / "heads").is_dir() or (folder / "adapters").is_dir() or not is_task_model:
        model = AutoAdapterModel.from_pretrained(folder)  # with the adapters, fusions and heads saved beside it
    else:
        model = model_cls.from_pretrained(folder, trust_remote_code=False)
    model.eval()
    if any(folder.glob("tokenizer*.json")) or (folder / "vocab.txt").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tokenizer is None:
        raise ValueError(f"{folder} has no tokenizer files: pass the tokenizer to use")
    return model, tokenizer
