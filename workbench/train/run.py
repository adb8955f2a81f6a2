"""`train()`: one entry point for an adapter run, an AdapterFusion run and the full fine-tuning baseline."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch
from transformers import (
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    PrinterCallback,
)

from ..core.composition import Fuse
from . import data as data_mod
from . import qa
from .checkpoints import folder_bytes, free_folder, recover_run, run_in_folder, run_parts, staged_folder
from .checks import check_data_before_training
from .config import TrainConfig
from .errors import CheckpointError, ConfigError, OutputDirError, RunFolderInUseError
from .events import EndEvent, EventBridge, RunControl, dispatch
from .metrics import metrics_for
from .overwrite import discard, recover_aside, set_aside
from .records import VALIDATION_KEPT, RunRecord
from .runlock import RunLock
from .runner import WorkbenchTrainer
from .setup import ModelSnapshot, ensure_head, head_labels, planned_head, prepare_model, set_trainable

KINDS = ("adapter", "fusion", "full")


def train(
    model,
    data,
    *,
    kind: str = "adapter",
    adapter: str | Fuse | list[str] | None = None,
    adapter_config=None,
    task: str = "classification",
    head: str | None = None,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    question_column: str = "question",
    context_column: str = "context",
    answers_column: str = "answers",
    tokenizer=None,
    output_dir: str | Path = "runs/run",
    config: TrainConfig | None = None,
    callbacks=(),
    control: RunControl | None = None,
    resume_from_checkpoint: str | Path | bool | None = None,
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    label_names: dict | None = None,
) -> RunRecord:
    """Train `model` (an `AdapterModel`) on `data` and return the run's record.

    Args:
        kind: "adapter" trains `adapter` (added with `adapter_config` if missing) and its head; "fusion" trains an
            AdapterFusion over the loaded adapters `adapter` (a `Fuse` or a list of names) and its head; "full"
            trains every weight, the baseline.
        task: "classification", "multilabel", "tagging" (text column of word lists, label column of tag lists),
            "qa" or "causal_lm".
            "qa" is extractive question answering on SQuAD-layout columns `question_column`, `context_column` and
            `answers_column` ({"text": [...], "answer_start": [...]}; the first answer is the target, an empty list
            means no answer). It needs a fast tokenizer. A context too long for `config.max_length` is split into
            windows overlapping by `config.doc_stride` tokens (the question is never truncated); a window that does
            not hold the whole answer targets position 0 (CLS). Evaluation takes each example's best span over its
            windows (at most `config.max_answer_length` tokens, by start + end logit) as text and scores it
            against all gold answers: SQuAD exact_match and f1 on normalized text (see `workbench.train.qa`).
            "causal_lm" trains next-token prediction on `text_column`; labels are the input ids with padding set to
            -100 (the head shifts them). Metric: perplexity, exp(eval loss); `metric_for_best_model="perplexity"`
            is minimized unless `greater_is_better` says otherwise.
        head: the head's name (default: the adapter or fusion name, or the task for "full"). A missing head is
            added with the labels found in the data (a QA or causal LM head for those tasks); an existing one keeps
            its labels, which the data must use.
        label_names: names for the label values, {value: name} (e.g. {0: "negative", 1: "positive"}): a new
            head's id2label holds the names, in this order.
        data: a Hub dataset id ("owner/name"), a CSV/TSV/JSON(L) path, a folder (of data files, or saved with
            `save_to_disk`), a DataFrame, a Dataset/DatasetDict, or a dict of splits.
        output_dir: checkpoints go to `checkpoint-<step>/`, the final (best) weights to `final/`. Each folder is
            written as `.partial-<name>/` and renamed when complete; a failed write (disk full, file too large,
            unwritable) raises `OutputDirError` naming the folder and keeps the checkpoints written before. A
            folder replaced (`final/`) is complete at every instant, old or new, even if the process is killed.
            One run at a time: the run holds `.workbench-run.lock` in the folder until it ends, and a second
            `train()` into it raises `RunLockedError` naming the holder's pid (a dead holder's lock is taken over).
        callbacks: `TrainingCallback`s or callables receiving `StepEvent`, `EvalEvent` and `EndEvent`.
        control: a `RunControl` whose `stop()` ends the run after the current optimizer step, with a checkpoint.
        resume_from_checkpoint: a checkpoint folder of an earlier run of the same setup, or True for the last one
            in `output_dir` (as `resume=True`).
        resume: continue the run in `output_dir` from its last `checkpoint-<step>` to the planned total. The
            checkpoint restores everything the run had: the trained weights (for adapter and fusion runs, the
            adapter or fusion and the head; the whole model for "full"), the optimizer and learning-rate scheduler
            state, the random number generators and Trainer's state (step, epoch, best checkpoint, log history).
        overwrite: replace the `checkpoint-*` and `final/` folders `output_dir` holds (nothing else, nothing
            outside it). They are moved aside (renamed into a hidden folder in `output_dir`) before training and
            deleted once this run has written its `final/`; if it fails (an error, an interrupt, a killed process:
            the next `train()` into the folder puts them back), the old run is put back and this one's folders
            removed. Without `resume` or `overwrite`, an `output_dir` that already holds a
            run's checkpoints or `final/` raises `RunFolderInUseError` naming a free folder, before anything is
            written: two runs never mix their checkpoints.

    Launched with `torchrun` or `accelerate launch`, every process calls `train()` with the same arguments and
    gets the record; the main process alone writes checkpoints and `final/` and sends events to `callbacks`, and a
    `control.stop()` there stops every process.
    """
    config = config if config is not None else TrainConfig()
    _check_arguments(kind, task, config, resume_from_checkpoint)  # before the data is loaded or the model touched
    config = config.for_kind(kind)  # a learning rate left open: the default for the kind
    control = control or RunControl()
    existed = Path(output_dir).exists()
    output = _writable(Path(output_dir))
    lock = _lock(output)  # no other train() writes into this folder until this one ends
    try:
        if isinstance(lock, RunLock):  # the main process alone: two processes recovering would race
            recover_run(output)  # a `final/` (or checkpoint) whose replacement was killed half way: back in place
        resume_from_checkpoint = _claim(
            output, resume or resume_from_checkpoint is True, overwrite, resume_from_checkpoint
        )
    except BaseException:
        lock.release()
        _drop_if_empty(output, existed)
        raise
    try:
        args = config.training_args(output)  # sets up the process group when launched on several processes
        snapshot = ModelSnapshot(model)  # a failure from here on puts the model back as it is now
        overwriting = overwrite and args.should_save
    except BaseException:
        lock.release()
        _drop_if_empty(output, existed)
        raise
    try:
        columns = data_mod.Columns(
            text_column, text_pair_column, label_column, question_column, context_column, answers_column
        )
        with args.main_process_first(desc="loading and tokenizing the data"):  # others then reuse datasets' cache
            splits = data_mod.load_splits(data, config.validation_fraction, config.seed)
            splits = data_mod.rename_labels(splits, columns, task, label_names or {})
            existing = head_labels(model, planned_head(kind, adapter, head, task), task)
            check_data_before_training(splits, columns, task, existing)  # every problem at once, nothing trained yet
            tokenizer = tokenizer or _tokenizer_of(model)

            plan, method = prepare_model(model, kind, adapter, adapter_config, head, task)
            label2id = ensure_head(
                model, plan.head, task, splits, columns, [str(n) for n in (label_names or {}).values()]
            )
            set_trainable(model, plan)
            snapshot.keep_trained_values()  # the weights this run moves, as they are before it
            labels = data_mod.LabelMap(label2id, label_column)
            encoded = data_mod.tokenize(splits, tokenizer, columns, task, labels, config.max_length, config.doc_stride)

        compute_metrics = metrics_for(task, len(label2id))
        if task == "qa":  # the windows' metadata map predictions back to the examples' text
            validation = (encoded["validation"], splits["validation"])
            compute_metrics = qa.SquadMetrics(*validation, columns, config.max_answer_length)
            encoded = encoded.remove_columns(list(qa.METADATA))

        if task == "qa":
            args.label_names = ["start_positions", "end_positions"]
        if task == "causal_lm" and config.metric_for_best_model == "perplexity" and config.greater_is_better is None:
            args.greater_is_better = False
        collator_cls = {"tagging": DataCollatorForTokenClassification, "causal_lm": data_mod.CausalLMCollator}.get(
            task, DataCollatorWithPadding
        )
        bridge = EventBridge(callbacks, control, config.batch_size * config.gradient_accumulation_steps)
        extra = []
        if config.early_stopping_patience is not None:
            extra.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
        trainer = WorkbenchTrainer(
            model=model,
            args=args,
            train_dataset=encoded["train"],
            eval_dataset=encoded["validation"],
            data_collator=collator_cls(tokenizer, pad_to_multiple_of=8 if args.bf16 or args.fp16 else None),
            compute_metrics=compute_metrics,
            callbacks=[bridge, *extra],
            plan=plan,
            bridge=bridge,
            perplexity=task == "causal_lm",
            sort_eval=task not in ("qa", "causal_lm"),  # QA matches by position; LM loss is batch-weighted
        )

        trainer.remove_callback(PrinterCallback)  # the run reports through its own events
        if overwriting:  # only now: a bad setting or bad data above has moved nothing
            set_aside(output, run_parts)  # the old run, kept until this one has completed
        trainer.accelerator.wait_for_everyone()
        start = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
        wall = time.perf_counter() - start
        evals = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
        if not evals:
            evals.append({**trainer.evaluate(), "step": trainer.state.global_step})
        final_dir = output / "final"
        with staged_folder(final_dir, writer=args.should_save, barrier=trainer.accelerator.wait_for_everyone) as tmp:
            trainer.save_model(str(tmp))  # written by the main process only
        trainer.accelerator.wait_for_everyone()

        record = RunRecord(
            name=name or f"{kind}:{method}",
            kind=kind,
            method=method,
            task=task,
            trainable_params=_count(model, trainable=True),
            total_params=_count(model, trainable=False),
            saved_bytes=folder_bytes(final_dir),
            saved_path=str(final_dir),
            output_dir=str(output),
            wall_time_s=wall,
            train_samples_per_second=float(result.metrics.get("train_samples_per_second", 0.0)),
            peak_memory_bytes=torch.cuda.max_memory_allocated() if torch.cuda.is_available() else bridge.peak_rss,
            memory_kind="cuda" if torch.cuda.is_available() else "rss",
            global_step=trainer.state.global_step,
            stop_reason=_stop_reason(trainer, bridge, extra),
            final_metrics=_metrics_only(evals[-1]),
            best_metrics=_metrics_only(_best_eval(evals, trainer.state.best_global_step)),
            best_checkpoint=trainer.state.best_model_checkpoint,
            train_losses=list(bridge.step_losses),
            config=config.to_dict(),
            validation=_validation_examples(splits["validation"], columns, labels, task),
            **_shares(model, plan),
        )
    except BaseException:
        try:
            snapshot.restore()
            if overwriting:
                recover_aside(output, run_parts)  # the old run back, what this one wrote removed
        finally:
            lock.release()  # even when putting things back fails: the folder must not stay locked
            _drop_if_empty(output, existed)  # (after the release: the lock file is in the folder)
        raise
    if overwriting:
        _discard_old_run(output)
    lock.release()  # before the end event: a callback may start the next run into this folder
    if trainer.is_world_process_zero():
        dispatch(bridge.callbacks, EndEvent(record))
    return record


def _discard_old_run(output: Path) -> None:
    """The run completed: delete the run it replaced. A failure here must not undo a finished run; the next
    `train()` into the folder deletes what is left (`recover_run`)."""
    try:
        discard(output)
    except OSError as err:
        message = f"the run {output} replaced is not deleted completely ({err}); the next run there deletes it"
        warnings.warn(message, stacklevel=3)


def _validation_examples(split, columns, labels, task: str) -> dict[str, list]:
    """The first validation rows of a classification run as texts (and pairs) with their label names."""
    if task != "classification" or len(split) == 0:
        return {}
    rows = split.select(range(min(len(split), VALIDATION_KEPT)))
    names = {i: name for name, i in labels.label2id.items()}
    kept = {"text": [str(t) for t in rows[columns.text]], "label": [names[labels(v)] for v in rows[columns.label]]}
    if columns.text_pair:
        kept["text_pair"] = [str(t) for t in rows[columns.text_pair]]
    return kept


def _check_arguments(kind: str, task: str, config, resume_from_checkpoint) -> None:
    """Every bad argument at once, before the data is loaded or the model touched."""
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config={config!r}: pass a TrainConfig")
    problems = config.problems()  # a config changed after it was made is checked again
    if kind not in KINDS:
        problems.append(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    if task not in data_mod.TASKS:
        problems.append(f"task={task!r}: use one of {', '.join(data_mod.TASKS)}")
    else:
        problems += config.task_problems(task)
    problems += config.device_problems()
    if problems:
        raise ConfigError("; ".join(problems), problems)
    if isinstance(resume_from_checkpoint, (str, Path)) and not Path(resume_from_checkpoint).is_dir():
        raise CheckpointError(f"no checkpoint folder {resume_from_checkpoint}")


def _drop_if_empty(folder: Path, existed: bool) -> None:
    """Remove the output folder a failed run created when nothing was written in it."""
    if not existed and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _claim(output: Path, resume: bool, overwrite: bool, checkpoint) -> str | Path | None:
    """The checkpoint to resume from (None: a fresh run); raises unless `output` may take this run."""
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True: choose one (continue the run, or replace it)")
    if overwrite and checkpoint and Path(checkpoint).resolve().parent == output.resolve():
        raise ValueError(
            f"overwrite=True replaces the run in {output}, and resume_from_checkpoint={str(checkpoint)!r} is part of "
            "it: choose one (continue the run, or replace it)"
        )
    existing = run_in_folder(output)
    if resume and not isinstance(checkpoint, (str, Path)):
        if existing is None or existing.last_checkpoint is None:
            raise CheckpointError(f"nothing to resume in {output}: it holds no checkpoint-<step> folder")
        return existing.last_checkpoint
    if existing is None or overwrite:
        return checkpoint or None
    if checkpoint and Path(checkpoint).resolve().parent == output.resolve():
        return checkpoint  # continuing this folder's own run
    suggestion = free_folder(output)
    last = existing.last_checkpoint
    resume_hint = f"resume=True to continue it from {last.name}, or " if last is not None else ""
    raise RunFolderInUseError(
        f"the output folder {output} already holds a run ({existing.describe()}): use a free folder such as "
        f"{suggestion}, or pass {resume_hint}overwrite=True to delete its checkpoints first",
        folder=output,
        suggestion=suggestion,
        last_checkpoint=last,
    )


class _NoLock:
    def release(self) -> None:
        pass


def _lock(output: Path) -> RunLock | _NoLock:
    """The folder's run lock, taken by the main process only (every process of a launch calls `train()`)."""
    if int(os.environ.get("RANK", 0) or 0) != 0:
        return _NoLock()
    return RunLock(output).acquire()


def _writable(folder: Path) -> Path:
    """Create `folder` and prove it is writable now, before any training time is spent."""
    probe = folder / f".workbench-write-test-{os.environ.get('RANK', 0)}-{os.getpid()}"  # one per process
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise OutputDirError(f"cannot write to the output folder {folder}: {err.strerror or err}") from None
    return folder


def _tokenizer_of(model):
    from transformers import AutoTokenizer

    source = getattr(model.config, "name_or_path", "")
    if not source:
        raise ValueError("pass tokenizer=...: the model was not loaded from a checkpoint that names its tokenizer")
    return AutoTokenizer.from_pretrained(source)


def _count(model, trainable: bool) -> int:
    params = {id(p): p for p in model.parameters() if p.requires_grad or not trainable}
    return sum(p.numel() for p in params.values())


def _shares(model, plan) -> dict[str, int]:
    """`base_params` and `adapter_params` by `adapter_summary()`'s definition, so the run's share equals the
    Model panel's (base = the base model without any adapter; the adapter's own parameters, no head)."""
    if not hasattr(model, "adapter_summary"):
        return {}
    rows = model.adapter_summary(as_dict=True)
    base = rows[-1]["#param"]
    if plan.kind == "fusion":
        own = {id(p): p for _, p in model._fusion_parameters(plan.fusion)}
        return {"base_params": base, "adapter_params": sum(p.numel() for p in own.values())}
    counts = {row["name"]: row["#param"] for row in rows[:-1]}
    return {"base_params": base, "adapter_params": counts.get(plan.adapters[0], 0) if plan.adapters else 0}


def _stop_reason(trainer, bridge: EventBridge, extra) -> str:
    if bridge.stopped_by_request:
        return "stop_request"
    if extra and trainer.state.global_step < trainer.state.max_steps:
        return "early_stopping"
    return "completed"


def _metrics_only(entry: dict) -> dict[str, float]:
    return {
        k: float(v) for k, v in entry.items() if k.startswith("eval_") and not k.endswith(("_runtime", "per_second"))
    }


def _best_eval(evals: list[dict], best_step: int | None) -> dict:
    return next((e for e in evals if e.get("step") == best_step), evals[-1])
