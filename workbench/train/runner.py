"""`WorkbenchTrainer`: transformers' Trainer, saving and restoring only what a run trains.

The training loop, gradient accumulation, mixed precision, resuming, evaluation, best-checkpoint selection and
early stopping are Trainer's; this subclass changes what goes into a checkpoint folder (see `checkpoints.py`),
writes each checkpoint under a temporary name and renames it when complete (a failed write leaves no partial
checkpoint), stops on a non-finite loss, and reports each optimizer step's loss to the `EventBridge`.

Under `torchrun` / `accelerate launch` every process runs the same code; only the process Trainer lets save
(`args.should_save`: the main process, or each node's with `save_on_each_node`) writes checkpoint files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from transformers import Trainer

from ..core.transformers_api import PREFIX_CHECKPOINT_DIR, ExportableState, get_last_checkpoint, rotate_checkpoints
from .checkpoints import SavePlan, check_finite, staged_folder
from .errors import NonFiniteLossError
from .fast_dropout import fast_dropout

TRAINER_STATE_FILE = "trainer_state.json"  # the name Trainer reads back when resuming


class WorkbenchTrainer(Trainer):
    """A Trainer whose checkpoints follow a `SavePlan` (adapter + head, fusion + head, or the full model)."""

    def __init__(self, *args, plan: SavePlan, bridge=None, perplexity: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.bridge = bridge
        self.perplexity = perplexity
        self._step_loss = 0.0

    def train(self, *args, **kwargs):
        """Trainer's train; adapter and fusion runs with `fast_dropout` (see `workbench.train.fast_dropout`)."""
        fast = getattr(self.args, "fast_dropout", False) and self.plan.kind != "full"
        attention = getattr(self.args, "attention_dropout", True)
        with fast_dropout(self.accelerator.unwrap_model(self.model), fast=fast, attention=attention):
            return super().train(*args, **kwargs)

    def evaluation_loop(self, *args, **kwargs):
        """Trainer's loop; with `perplexity`, the metrics also get `<prefix>_perplexity` = exp(loss)."""
        output = super().evaluation_loop(*args, **kwargs)
        if self.perplexity:
            prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
            loss = output.metrics.get(f"{prefix}_loss")
            if loss is not None:
                output.metrics[f"{prefix}_perplexity"] = math.exp(loss) if loss < 700 else math.inf
        return output

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

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.plan.kind != "fusion":
            return result
        # AdapterFusion's regularisation keeps each value matrix near identity (AdapterHub adds it while training)
        penalty = self.accelerator.unwrap_model(model).get_fusion_regularization_loss(self.plan.fusion)
        if return_outputs:
            loss, outputs = result
            return loss + penalty.to(loss.device), outputs
        return result + penalty.to(result.device)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        check_finite(self.model)  # never write diverged weights as a checkpoint
        if not self.args.should_save:
            return
        self.plan.save(self.accelerator.unwrap_model(self.model), output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _save_checkpoint(self, model, trial) -> None:
        """What Trainer saves in a checkpoint (weights, optimizer, scheduler, RNG and trainer state), written into
        a temporary folder that becomes `checkpoint-<step>` once complete; then older checkpoints are rotated."""
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self.store_flos()
        if self.state.best_global_step:  # the state saved below names the best checkpoint (maybe this one)
            best = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}"
            if best == folder or best.is_dir():
                self.state.best_model_checkpoint = str(best)
        with staged_folder(folder, writer=self.args.should_save, barrier=self.accelerator.wait_for_everyone) as tmp:
            self.save_model(str(tmp), _internal_call=True)
            if not self.args.save_only_model:
                self._save_optimizer_and_scheduler(str(tmp))
                self._save_scaler(str(tmp))
                self._save_rng_state(str(tmp))
            if self.args.should_save:
                self._export_callback_states()
                self.state.save_to_json(str(tmp / TRAINER_STATE_FILE))
        if self.args.should_save:
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)

    def _export_callback_states(self) -> None:
        """Store the state of stateful callbacks (early stopping's patience) so a resumed run continues it."""
        for callback in [*self.callback_handler.callbacks, self.control]:
            if isinstance(callback, ExportableState):
                name = type(callback).__name__
                saved = self.state.stateful_callbacks.get(name)
                if isinstance(saved, list):
                    saved.append(callback.state())
                else:
                    self.state.stateful_callbacks[name] = callback.state()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self.plan.load(self.accelerator.unwrap_model(self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.plan.load(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)
