"""`TrainConfig`: the hyper-parameters shared by adapter, fusion and full fine-tuning runs."""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import SchedulerType, TrainingArguments

from .errors import ConfigError

# peak learning rates when TrainConfig leaves it open: an adapter's few new weights take a large step (AdapterHub's
# examples train adapters at 1e-4), AdapterFusion layers 5e-5 (as in the AdapterFusion paper), and the full
# fine-tuning baseline, which moves every pre-trained weight, 2e-5 (BERT's usual fine-tuning range)
DEFAULT_LEARNING_RATES = {"adapter": 1e-4, "fusion": 5e-5, "full": 2e-5}
SCHEDULERS = (  # the schedules that need no extra arguments (the Train panel offers these)
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)

EVAL_STRATEGIES = ("epoch", "steps", "no")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TASK_METRICS = {  # what each task's evaluation reports (see metrics.py, qa.py and WorkbenchTrainer)
    "classification": {"loss", "accuracy", "f1"},
    "multilabel": {"loss", "accuracy", "f1"},
    "tagging": {"loss", "accuracy", "f1"},
    "qa": {"loss", "exact_match", "f1"},
    "causal_lm": {"loss", "perplexity"},
}


@dataclass
class TrainConfig:
    """Settings of one run; the same object can drive an adapter run and its full fine-tuning baseline.

    Steps are optimizer steps (after gradient accumulation). `eval_strategy` also sets when checkpoints are
    saved, so the best checkpoint can be selected (by `metric_for_best_model`) and restored at the end.
    """

    learning_rate: float | None = field(
        default=None, metadata={"help": "peak learning rate (AdamW); None: the run kind's DEFAULT_LEARNING_RATES"}
    )
    num_train_epochs: float = 3.0
    max_steps: int = field(default=-1, metadata={"help": "if > 0, overrides num_train_epochs"})
    batch_size: int = 16
    eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    weight_decay: float = 0.0
    warmup_steps: float = field(default=0, metadata={"help": "steps, or a fraction of all steps if < 1"})
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = field(default="linear", metadata={"help": "a transformers scheduler name"})
    max_length: int = field(default=128, metadata={"help": "tokens per example (longer ones are truncated)"})
    doc_stride: int = field(default=32, metadata={"help": "qa: tokens shared by consecutive windows of a context"})
    max_answer_length: int = field(default=30, metadata={"help": "qa: longest predicted answer, in tokens"})
    eval_strategy: str = field(default="epoch", metadata={"help": "'epoch', 'steps' or 'no'"})
    eval_steps: int | None = None
    save_steps: int = field(default=500, metadata={"help": "checkpoint interval when eval_strategy is 'no'"})
    logging_steps: int = 10
    save_total_limit: int | None = 2
    metric_for_best_model: str = field(default="loss", metadata={"help": "an eval metric: loss, accuracy, f1"})
    greater_is_better: bool | None = None
    early_stopping_patience: int | None = field(default=None, metadata={"help": "evaluations without improvement"})
    early_stopping_threshold: float = 0.0
    validation_fraction: float = field(default=0.1, metadata={"help": "held out from train when no validation"})
    seed: int = 42
    precision: str = field(
        default="auto",
        metadata={"help": "'auto' (bf16/fp16 on a GPU, fp32 on a CPU), 'fp32', 'bf16' (CPU autocast too), 'fp16'"},
    )
    dataloader_num_workers: int = 0
    group_by_length: bool = field(
        default=True,
        metadata={"help": "train batches of examples of similar length: less padding, faster (seeded per epoch)"},
    )
    fast_dropout: bool = field(
        default=True, metadata={"help": "adapter/fusion runs on CPU: dropout with cheaper random numbers (same p)"}
    )
    attention_dropout: bool = field(
        default=True, metadata={"help": "False: no attention-probability dropout in training (faster; opt-in)"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute each layer in backward: less memory, about a third more time"}
    )
    gradient_checkpointing_kwargs: dict | None = field(
        default=None, metadata={"help": "for torch.utils.checkpoint, e.g. {'use_reentrant': False} (the default)"}
    )
    torch_compile: bool = field(
        default=False,
        metadata={"help": "torch.compile the model (inductor): faster steps after a first slow one that compiles"},
    )

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems), problems)

    def problems(self) -> list[str]:
        """Every bad field, one plain sentence each naming the field and its value (the Train panel and
        `ConfigError` list them all at once)."""
        found = [_type_problem(self, f) for f in dataclasses.fields(self)]
        found = [p for p in found if p]
        bad_type = {p.split("=")[0].removeprefix("TrainConfig.") for p in found}

        def check(name: str, ok, rule: str) -> None:
            value = getattr(self, name)
            if name not in bad_type and value is not None and not ok(value):
                found.append(f"TrainConfig.{name}={value!r}: {rule}")
                bad_type.add(name)  # one sentence per field

        for name in _REAL_FIELDS:  # nan and inf first: they compare False with every bound below
            check(name, math.isfinite, "must be a finite number")
        for name in ("learning_rate", "weight_decay", "early_stopping_threshold"):
            check(name, lambda v: v >= 0, "must be 0 or more")
        check("num_train_epochs", lambda v: v > 0, "must be above 0")
        check("max_grad_norm", lambda v: v > 0, "must be above 0")
        check("warmup_steps", lambda v: v >= 0, "use steps (1 or more) or a fraction below 1")
        check("max_steps", lambda v: v == -1 or v > 0, "must be 1 or more (or -1: from num_train_epochs)")
        for name in ("batch_size", "eval_batch_size", "max_length", "gradient_accumulation_steps", *_STEP_FIELDS):
            check(name, lambda v: v >= 1, "must be 1 or more")
        for name in ("eval_steps", "save_total_limit", "early_stopping_patience"):
            check(name, lambda v: v >= 1, "must be 1 or more, or None")
        check("validation_fraction", lambda v: 0 < v < 1, "must be in (0, 1)")
        check("seed", lambda v: 0 <= v < 2**32, "must be in [0, 2**32)")
        check("dataloader_num_workers", lambda v: v >= 0, "must be 0 or more")
        check("eval_strategy", lambda v: v in EVAL_STRATEGIES, "use 'epoch', 'steps' or 'no'")
        check("precision", lambda v: v in PRECISIONS, "use 'auto', 'fp32', 'bf16' or 'fp16'")
        check(
            "lr_scheduler_type", lambda v: v in {s.value for s in SchedulerType}, f"use one of {', '.join(SCHEDULERS)}"
        )
        known = sorted(set().union(*TASK_METRICS.values()))
        check("metric_for_best_model", lambda v: _metric(v) in known, f"use one of {', '.join(known)}")
        check("doc_stride", lambda v: v >= 0, "must be 0 or more")  # below max_length: for "qa" (task_problems)
        if self.eval_strategy == "steps" and self.eval_steps is None:
            found.append("TrainConfig.eval_strategy='steps' needs eval_steps")
        if self.early_stopping_patience is not None and self.eval_strategy == "no":
            found.append("TrainConfig.early_stopping_patience needs an eval_strategy other than 'no'")
        return found

    def task_problems(self, task: str) -> list[str]:
        """What this config cannot do for `task`: a `metric_for_best_model` the task's evaluation never reports;
        for "qa", a `doc_stride` as long as a window (only QA has windows: other tasks ignore it)."""
        found = []
        if task == "qa" and not self.doc_stride < self.max_length:
            found.append(f"TrainConfig.doc_stride={self.doc_stride!r}: must be below max_length={self.max_length}")
        metrics = TASK_METRICS.get(task)
        if self.eval_strategy == "no" or metrics is None or _metric(self.metric_for_best_model) in metrics:
            return found
        return [
            *found,
            f"TrainConfig.metric_for_best_model={self.metric_for_best_model!r}: task {task!r} reports "
            f"{', '.join(sorted(metrics))}",
        ]

    def device_problems(self) -> list[str]:
        """What this machine cannot do: fp16 mixed precision needs CUDA (on a CPU, Trainer would train in fp32 while
        the run's record said fp16). bf16 runs on a CPU too, under torch's CPU autocast."""
        if self.precision == "fp16" and not torch.cuda.is_available():
            return ["TrainConfig.precision='fp16': fp16 training needs a CUDA GPU and this machine has none; "
                    "use 'bf16' (CPU autocast) or 'fp32'"]  # fmt: skip
        return []

    def for_kind(self, kind: str) -> TrainConfig:
        """This config with the learning rate filled in for a run of `kind` when it was left open (None)."""
        if self.learning_rate is not None:
            return self
        default = DEFAULT_LEARNING_RATES.get(kind, DEFAULT_LEARNING_RATES["adapter"])
        return dataclasses.replace(self, learning_rate=default)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_args(self, output_dir: str | Path) -> WorkbenchTrainingArguments:
        """Trainer's arguments: checkpoints follow evaluations so the best one is kept and restored at the end."""
        if problems := self.device_problems():
            raise ConfigError("; ".join(problems), problems)
        gpu = torch.cuda.is_available()
        auto = self.precision == "auto"
        bf16 = self.precision == "bf16" or (gpu and auto and torch.cuda.is_bf16_supported())
        fp16 = self.precision == "fp16" or (gpu and auto and not bf16)
        evaluate = self.eval_strategy != "no"
        return WorkbenchTrainingArguments(
            output_dir=str(output_dir),
            fast_dropout=self.fast_dropout,
            attention_dropout=self.attention_dropout,
            learning_rate=self.for_kind("adapter").learning_rate,
            num_train_epochs=self.num_train_epochs,
            max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size,
            per_device_eval_batch_size=self.eval_batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            max_grad_norm=self.max_grad_norm,
            lr_scheduler_type=self.lr_scheduler_type,
            eval_strategy=self.eval_strategy,
            eval_steps=self.eval_steps,
            save_strategy=self.eval_strategy if evaluate else "steps",
            save_steps=self.eval_steps if self.eval_strategy == "steps" else self.save_steps,
            save_total_limit=self.save_total_limit,
            logging_steps=self.logging_steps,
            load_best_model_at_end=evaluate,
            metric_for_best_model=self.metric_for_best_model if evaluate else None,
            greater_is_better=self.greater_is_better,
            seed=self.seed,
            bf16=bf16,
            fp16=fp16,
            use_cpu=not gpu,
            report_to="none",
            disable_tqdm=True,
            remove_unused_columns=False,  # the tokenized splits hold model inputs and labels only
            label_names=["labels"],
            dataloader_num_workers=self.dataloader_num_workers,
            train_sampling_strategy="group_by_length" if self.group_by_length else "random",
            activation_checkpointing=self.gradient_checkpointing,
            activation_checkpointing_kwargs=self.gradient_checkpointing_kwargs,
            torch_compile=self.torch_compile,
        )


_REAL_FIELDS = (
    "learning_rate",
    "num_train_epochs",
    "weight_decay",
    "early_stopping_threshold",
    "max_grad_norm",
    "warmup_steps",
    "validation_fraction",
)
_STEP_FIELDS = ("logging_steps", "save_steps", "max_answer_length")


def _metric(name) -> str:
    return name.removeprefix("eval_") if isinstance(name, str) else name


def _type_problem(config: TrainConfig, f: dataclasses.Field) -> str | None:
    """A sentence when the field's value is not of its declared type (a bool is no number here; numpy numbers
    are)."""
    value, declared = getattr(config, f.name), str(f.type)
    kind, word = _FIELD_TYPES.get(declared.removesuffix(" | None"), (None, ""))
    if kind is None or (value is None and declared.endswith(" | None")):
        return None
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        return f"TrainConfig.{f.name}={value!r}: must be {word}" + (" or None" if declared.endswith("None") else "")
    return None


_FIELD_TYPES = {  # declared type (as written above, without "| None") -> accepted type, in words
    "float": (numbers.Real, "a number"),
    "int": (numbers.Integral, "a whole number"),
    "str": (str, "a string"),
    "bool": (bool, "True or False"),
    "dict": (dict, "a dict"),
}


@dataclass
class WorkbenchTrainingArguments(TrainingArguments):
    """Trainer's arguments plus the dropout settings that `WorkbenchTrainer.train` applies (see TrainConfig)."""

    fast_dropout: bool = True
    attention_dropout: bool = True
