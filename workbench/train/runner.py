"""`WorkbenchTrainer`: transformers' Trainer, saving and restoring only what a run trains.

The training loop, gradient accumulation, mixed precision, resuming, evaluation, best-checkpoint selection and
early stopping are Trainer's; this subclass changes what goes into a checkpoint folder (see `checkpoints.py`),
stops on a non-finite loss, and reports each optimizer step's loss to the `EventBridge`.

Under `torchrun` / `accelerate launch` every process runs the same code; only the process Trainer lets save
(`args.should_save`: the main process, or each node's with `save_on_each_node`) writes checkpoint files.
"""

from __future__ import annotations

import math
import os

import torch
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .checkpoints import SavePlan, check_finite
from .errors import NonFiniteLossError, OutputDirError


class WorkbenchTrainer(Trainer):
    """A Trainer whose checkpoints follow a `SavePlan` (adapter + head, fusion + head, or the full model)."""

    def __init__(self, *args, plan: SavePlan, bridge=None, perplexity: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.plan = plan
        self.bridge = bridge
        self.perplexity = perplexity
        self._step_loss = 0.0

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
        penalty = self.accelerator.unwrap_model(model).adapter_fusion_regularization_loss(self.plan.fusion)
        if return_outputs:
            loss, outputs = result
            return loss + penalty.to(loss.device), outputs
        return result + penalty.to(result.device)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        check_finite(self.model)  # never write diverged weights as a checkpoint
        if not self.args.should_save:
            return
        try:
            self.plan.save(self.accelerator.unwrap_model(self.model), output_dir)
            torch.save(self.args, os.path.join(output_dir, "training_args.bin"))
        except OSError as err:
            raise OutputDirError(f"cannot write the checkpoint {output_dir}: {err}") from err

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        self.plan.load(self.accelerator.unwrap_model(self.model), resume_from_checkpoint)

    def _load_best_model(self) -> None:
        self.plan.load(self.accelerator.unwrap_model(self.model), self.state.best_model_checkpoint)
