"""`WorkbenchTrainer`: the `AdapterTrainer` behind `train()`, saving only what a run trains.

Checkpoints, their atomic writing, resuming and best-checkpoint reloading are `AdapterTrainer`'s (see
`adapter_trainer.py`); this subclass saves only the run's parts (`SavePlan`: the adapter or the fusion, and the
head; the whole model for the full fine-tuning baseline) with a `workbench_run.json` that names the kind of run,
stops on a non-finite loss, reports each optimizer step's loss to the `EventBridge`, adds perplexity to causal LM
metrics and trains with fast dropout (`fast_dropout.py`).

Under `torchrun` / `accelerate launch` every process runs the same code; only the process Trainer lets save
(`args.should_save`: the main process, or each node's with `save_on_each_node`) writes checkpoint files.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch.utils.data import SequentialSampler
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import has_length

from ..core.onednn_linear import onednn_linears
from ..core.transformers_api import get_last_checkpoint
from .adapter_trainer import TRAINING_ARGS_FILE, AdapterTrainer
from .checkpoints import SavePlan, check_finite, load_full, save_full
from .errors import NonFiniteLossError
from .fast_dropout import fast_dropout


class WorkbenchTrainer(AdapterTrainer):
    """An `AdapterTrainer` whose checkpoints follow a `SavePlan` (adapter + head, fusion + head, or the full
    model)."""

    def __init__(self, *args, plan: SavePlan, bridge=None, perplexity: bool = False, sort_eval: bool = True, **kwargs):
        self.plan = plan  # read by the checks in AdapterTrainer's __init__
        self.sort_eval = sort_eval
        super().__init__(*args, **kwargs)
        self.bridge = bridge
        self.perplexity = perplexity
        self._step_loss = 0.0

    def _trains_adapters(self) -> bool:
        return self.plan.kind != "full"

    def train(self, *args, **kwargs):
        """Trainer's train; adapter and fusion runs with `fast_dropout` (see `workbench.train.fast_dropout`), and
        their frozen linears on a CPU through oneDNN (`core.onednn_linear`). A compiled model (`torch_compile`) needs
        neither: inductor draws its own dropout masks and picks its own matrix kernels."""
        eager_adapters = self._trains_adapters() and not self.args.torch_compile
        fast = getattr(self.args, "fast_dropout", False) and eager_adapters
        attention = getattr(self.args, "attention_dropout", True)
        model = self.accelerator.unwrap_model(self.model)
        frozen = onednn_linears(model) if eager_adapters else contextlib.nullcontext()
        with fast_dropout(model, fast=fast, attention=attention), frozen:
            return super().train(*args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        """Length-grouped batches drawn from the run's own generator, seeded per epoch: a resumed run (and every
        process of a launch) sees exactly the batches of an uninterrupted one. Trainer's sampler shuffles with
        torch's global generator, which a resume restores only after the epoch's order is drawn."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or "input_ids" not in getattr(
            dataset, "column_names", ()
        ):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        lengths = [len(ids) for ids in dataset["input_ids"]]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return EpochSeededLengthSampler(batch, lengths=lengths, seed=seed)

    def _get_eval_sampler(self, eval_dataset):
        """Evaluation batches of similar length (less padding), longest first; in the data's order for QA, whose
        predictions are matched to their windows by position. Several processes: accelerate shards in order."""
        if self.args.world_size > 1 or eval_dataset is None or not has_length(eval_dataset):
            return None
        if not self.sort_eval or "input_ids" not in getattr(eval_dataset, "column_names", ()):
            return SequentialSampler(eval_dataset)
        lengths = [len(ids) for ids in eval_dataset["input_ids"]]
        return sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)

    def evaluate(self, *args, **kwargs):
        """Trainer's evaluate, leaving torch's random state as it found it: evaluating draws from it (the eval
        DataLoader's seed), so without this, training after an evaluation (dropout masks) would depend on whether
        and when it evaluated, and the random state a checkpoint saves after one would not be the run's."""
        with _training_rng_kept():
            return super().evaluate(*args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        """Trainer's loop, with oneDNN linears on a CPU (`core.onednn_linear`); with `perplexity`, the metrics also
        get `<prefix>_perplexity`: exp of the mean loss per predicted token. (Trainer's `eval_loss` averages each
        batch's token mean over rows, so its exp would change with the evaluation batch size.)"""
        model = self.accelerator.unwrap_model(self.model)
        self._token_nll = [torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)]
        with onednn_linears(model) if not self.args.torch_compile else contextlib.nullcontext():
            output = super().evaluation_loop(*args, **kwargs)
        total, tokens = self._token_nll
        self._token_nll = None
        if self.perplexity and tokens > 0:
            if self.args.world_size > 1:
                total, tokens = self.accelerator.reduce(torch.stack([total, tokens]).to(self.args.device), "sum")
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            mean = float(total / tokens)
            output.metrics[f"{prefix}_perplexity"] = math.exp(mean) if mean < 700 else math.inf
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's step; with `perplexity`, also the batch's summed loss over its predicted tokens (a causal LM's
        loss is the mean over the labels after the first position that are not -100)."""
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        accumulating = getattr(self, "_token_nll", None)
        if self.perplexity and accumulating is not None and loss is not None and "labels" in inputs:
            tokens = (inputs["labels"][..., 1:] != -100).sum().cpu().double()
            accumulating[0] += loss.detach().double().cpu() * tokens
            accumulating[1] += tokens
        return loss, logits, labels

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = float(loss)
        if not torch.isfinite(loss).all():
            last = get_last_checkpoint(self.args.output_dir) if os.path.isdir(self.args.output_dir) else None
            raise NonFiniteLossError(
                f"the training loss became {value} at step {self.state.global_step + 1}; training stopped "
                f"(last good checkpoint: {last or 'none yet'})"
            )
        self._step_loss += value
        if self.bridge is not None and self.accelerator.sync_gradients:
            self.bridge.pending_loss, self._step_loss = self._step_loss, 0.0
        return loss

    def _checkpoint_parts(self, model):
        return self.plan.parts()

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        check_finite(self.model)  # never write diverged weights as a checkpoint
        if not self.args.should_save:
            return
        if self.plan.kind == "full":
            save_full(self.accelerator.unwrap_model(self.model), output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_FILE))
        else:
            super()._save(output_dir, state_dict)
        self.plan.write(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self._load_plan(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.plan.check(self.state.best_model_checkpoint)
        if self.plan.kind == "full":
            load_full(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint, self.plan.head)
        else:
            super()._load_best_model()

    def _load_plan(self, folder: str) -> None:
        self.plan.check(folder)
        if self.plan.kind == "full":
            load_full(self.accelerator.unwrap_model(self.model), folder, self.plan.head)
        else:
            super()._load_from_checkpoint(folder)


def _training_rng_kept():
    """torch's CPU generator and, once CUDA is in use, every CUDA device's, restored on exit."""
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    return torch.random.fork_rng(devices=devices)


class EpochSeededLengthSampler(LengthGroupedSampler):
    """transformers' length-grouped order, drawn from a generator seeded with `seed + epoch` (Trainer calls
    `set_epoch` at each epoch's start), so the order depends on the epoch alone."""

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + int(epoch))
