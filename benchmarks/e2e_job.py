"""One end-to-end SST-2 job, raw TSV to an evaluated adapter on disk, timed inside its own process.

`e2e_train.py` starts it once per contender and seed, with the contender's venv (this file imports only what
that contender needs). Each contender is written the way its library's own guide writes it:

- workbench-seq_bn, workbench-lora: `workbench.train.train` on the TSV paths (project venv);
- adapters-seq_bn, adapters-lora: the `adapters` library's training notebook (01_Adapter_Training): `datasets`
  reads the TSV, the tokenizer pads every example to max length, `AdapterTrainer`, `save_adapter`
  (.venv-adapters, transformers 4.57);
- adapters-seq_bn-dynamic: the same with dynamic padding (`DataCollatorWithPadding`), a stronger peer than the
  notebook's shape;
- peft-lora: PEFT's sequence classification example: `get_peft_model` with LoRA on query/value, dynamic padding,
  transformers' `Trainer`, `save_pretrained` (project venv).

Prints one JSON object: the phases' seconds, dev accuracy, steps and peak RSS.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

CONTENDERS = (
    "workbench-seq_bn",
    "workbench-lora",
    "adapters-seq_bn",
    "adapters-seq_bn-dynamic",
    "peft-lora",
    "adapters-lora",  # not run by default: a notebook-shaped job is the longest, and seq_bn's tells the same
    "workbench-seq_bn-compile",  # not run by default: TrainConfig(torch_compile=True), compiling inside the job
)


class Phases:
    """Seconds per named phase, in order, from one clock."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def end(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._last
        self._last = now


def accuracy(prediction) -> dict:
    import numpy as np

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return {"accuracy": float((np.argmax(logits, axis=-1) == prediction.label_ids).mean())}


def run_workbench(args, phases: Phases) -> dict:
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's `workbench`
    from workbench import AutoAdapterModel
    from workbench.train import TrainConfig, train

    phases.end("import")
    method = args.contender.removeprefix("workbench-").removesuffix("-compile")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoAdapterModel.from_pretrained(args.model)
    phases.end("load")
    config = TrainConfig(
        learning_rate=args.lr,
        num_train_epochs=1,
        batch_size=args.batch,
        eval_batch_size=args.batch,
        max_length=args.max_length,
        warmup_steps=args.warmup,
        seed=args.seed,
        logging_steps=50,
        torch_compile=args.contender.endswith("-compile"),
    )
    record = train(
        model,
        {"train": args.train, "validation": args.dev},
        adapter="sst2",
        adapter_config=method,
        text_column="sentence",
        tokenizer=tokenizer,
        output_dir=args.out,
        config=config,
    )
    phases.end("data+train+eval+save")
    return {"accuracy": record.final_metrics["eval_accuracy"], "steps": record.global_step}


def _training_arguments(TrainingArguments, args, **extra):
    """The same settings for every Trainer-based peer; the warm-up is a ratio (its name differs by version)."""
    fields = TrainingArguments.__dataclass_fields__
    warmup = {"warmup_ratio": args.warmup} if "warmup_ratio" in fields else {"warmup_steps": args.warmup}
    return TrainingArguments(
        output_dir=args.out,
        learning_rate=args.lr,
        num_train_epochs=1,
        per_device_train_batch_size=args.batch,
        per_device_eval_batch_size=args.batch,
        seed=args.seed,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        **warmup,
        **extra,
    )


def _tokenized_tsv(args, tokenizer, pad_to_max_length: bool):
    """The peers' data, as their guides read it: `datasets` reads the TSVs, the tokenizer truncates (and pads)."""
    from datasets import load_dataset

    data = load_dataset("csv", data_files={"train": args.train, "validation": args.dev}, delimiter="\t")
    padding = {"padding": "max_length"} if pad_to_max_length else {}

    def encode(batch):
        return tokenizer(batch["sentence"], max_length=args.max_length, truncation=True, **padding)

    return data.map(encode, batched=True, remove_columns=["sentence"]).rename_column("label", "labels")


def run_adapters(args, phases: Phases) -> dict:
    from adapters import AdapterTrainer, AutoAdapterModel
    from transformers import AutoTokenizer, DataCollatorWithPadding, TrainingArguments

    phases.end("import")
    dynamic = args.contender.endswith("-dynamic")
    method = args.contender.removeprefix("adapters-").removesuffix("-dynamic")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoAdapterModel.from_pretrained(args.model)
    model.add_adapter("sst2", config=method)
    model.add_classification_head("sst2", num_labels=2)
    model.train_adapter("sst2")
    phases.end("load")

    data = _tokenized_tsv(args, tokenizer, pad_to_max_length=not dynamic)
    if not dynamic:
        data.set_format(type="torch", columns=["input_ids", "attention_mask", "labels"])
    phases.end("data")
    trainer = AdapterTrainer(
        model=model,
        args=_training_arguments(TrainingArguments, args),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        compute_metrics=accuracy,
        data_collator=DataCollatorWithPadding(tokenizer) if dynamic else None,
    )
    result = trainer.train()
    phases.end("train")
    metrics = trainer.evaluate()
    phases.end("eval")
    model.save_adapter(str(Path(args.out) / "sst2"), "sst2")
    phases.end("save")
    return {"accuracy": metrics["eval_accuracy"], "steps": result.global_step}


def run_peft(args, phases: Phases) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    phases.end("import")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    lora = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"])
    model = get_peft_model(model, lora)
    phases.end("load")
    data = _tokenized_tsv(args, tokenizer, pad_to_max_length=False)
    phases.end("data")
    trainer = Trainer(
        model=model,
        args=_training_arguments(TrainingArguments, args),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        compute_metrics=accuracy,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    result = trainer.train()
    phases.end("train")
    metrics = trainer.evaluate()
    phases.end("eval")
    model.save_pretrained(str(Path(args.out) / "sst2"))
    phases.end("save")
    return {"accuracy": metrics["eval_accuracy"], "steps": result.global_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contender", choices=CONTENDERS, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--dev", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=float, default=0.06)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    phases = Phases()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run = {"workbench": run_workbench, "adapters": run_adapters, "peft": run_peft}[args.contender.split("-")[0]]
    result = run(args, phases)
    result.update(
        phases=phases.seconds,
        process_s=time.perf_counter() - STARTED,
        job_s=sum(s for name, s in phases.seconds.items() if name != "import"),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threads=torch.get_num_threads(),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
