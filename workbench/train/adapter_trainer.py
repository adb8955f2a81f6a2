"""`AdapterTrainer`: transformers' `Trainer` for training adapters, as AdapterHub's `adapters.AdapterTrainer` (1.3).

It takes the same arguments (plus `adapter_names`, the setup to activate, and `tokenizer` as the old name of
`processing_class`) and differs from Trainer in what it trains and saves:

- it refuses a model without an active adapter setup (fine-tune a whole model with Trainer) and, when training
  starts, one whose base model is not frozen (call `train_adapter` or `train_adapter_fusion` first);
- the optimizer takes only the weights that train, with no weight decay on fusion value matrices (their
  regularization pulls them towards identity instead);
- while the active setup has a `Fuse` block (`train_adapter_fusion`), the fusions' value regularization
  (`get_fusion_regularization_loss`) is added to each training loss;
- a checkpoint holds the model's adapters and heads, and its fusions when one is active, one folder each in
  AdapterHub's layout (`checkpoint-8/<adapter>/adapter_config.json`, `.../<head>/head_config.json`), never the base
  model; it appears only once complete (written under a temporary name). `resume_from_checkpoint` and
  `load_best_model_at_end` copy them back into the model in place (`checkpoints.load_parts`).

`WorkbenchTrainer` (`runner.py`, behind `workbench.train.train`) builds on it.
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback

from ..core.composition import Block, Fuse
from ..core.model_mixin import ModelAdaptersMixin
from ..core.transformers_api import PREFIX_CHECKPOINT_DIR, ExportableState, rotate_checkpoints
from .checkpoints import CheckpointParts, load_parts, save_parts, staged_folder

__all__ = ["AdapterTrainer", "AdapterTrainerCallback", "Seq2SeqAdapterTrainer", "logger"]

logger = logging.getLogger(__name__)

TRAINER_STATE_FILE = "trainer_state.json"  # the name Trainer reads back when resuming
TRAINING_ARGS_FILE = "training_args.bin"


class AdapterTrainer(Trainer):
    """A Trainer that trains, saves and restores a model's adapters, fusions and heads (see the module doc)."""

    def __init__(
        self,
        model=None,
        args=None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        tokenizer=None,
        processing_class=None,
        model_init=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        preprocess_logits_for_metrics=None,
        adapter_names=None,
        **kwargs,
    ):
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class if processing_class is not None else tokenizer,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=[AdapterTrainerCallback(self), *(callbacks or [])],
            optimizers=optimizers,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            **kwargs,
        )
        if adapter_names is not None:
            self.model.set_active_adapters(adapter_names)
        self.train_adapter_fusion = _trains_fusion(self.model)
        if self._trains_adapters() and getattr(self.model, "active_adapters", None) is None:
            raise ValueError(
                "Expected a model with an active adapter setup. If you want to fully finetune the model use the "
                "Trainer class."
            )
        if self.args.label_names is None and getattr(self.model, "active_head", None) is not None:
            self.label_names = _head_label_names(self.model)

    def _set_signature_columns_if_needed(self) -> None:
        """Trainer keeps only the data columns the model's forward names; an AdapterModel passes its base model's
        inputs (`pixel_values`, `input_features`, ...) through `**kwargs`, so those columns are kept too."""
        if self._signature_columns is not None:
            return
        super()._set_signature_columns_if_needed()
        base = getattr(self.model, "base_model", None)
        if isinstance(base, torch.nn.Module) and base is not self.model:
            named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            params = inspect.signature(base.forward).parameters.values()
            extra = [p.name for p in params if p.kind in named and p.name not in self._signature_columns]
            self._signature_columns += extra

    def _trains_adapters(self) -> bool:
        """Whether this trainer trains adapters (WorkbenchTrainer's full fine-tuning runs do not)."""
        return True

    def _check_frozen(self, model) -> None:
        """Called when training starts: the base model's weights must be frozen."""
        self.train_adapter_fusion = _trains_fusion(model)
        if self._trains_adapters() and not getattr(model.base_model, "model_frozen", False):
            raise ValueError(
                "The pre-trained model weights are not frozen. For training adapters, please call the "
                "train_adapter() method"
            )

    # --- optimization ------------------------------------------------------------------------------------

    def get_decay_parameter_names(self, model) -> list[str]:
        """Trainer's, less the fusion value matrices (regularized towards identity, not towards zero) and the
        factors of orthogonal parametrizations (LoReFT's projection): decaying them regularizes nothing (the matrix
        stays orthogonal), but torch reads the signs of its Householder form as `diagonal.int()`, so the first decay
        step turns the diagonal's +-1 into 0 and the projection into zeros."""
        names = super().get_decay_parameter_names(model)
        orthogonal = _orthogonal_factors(model)
        return [name for name in names if not _is_fusion_value(name) and name not in orthogonal]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Trainer's loss, plus the fusion regularization while training with a `Fuse` block active."""
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not (self.train_adapter_fusion and model.training):
            return result
        penalty = _fusion_penalty(self.accelerator.unwrap_model(model))
        if penalty is None:
            return result
        if self._loss_scaled_for_accumulation(num_items_in_batch):  # Trainer will not divide this loss
            penalty = penalty / self.current_gradient_accumulation_steps  # once per optimizer step in all
        loss = result[0] if return_outputs else result
        loss = loss + penalty.to(loss.device)
        return (loss, result[1]) if return_outputs else loss

    def _loss_scaled_for_accumulation(self, num_items_in_batch) -> bool:
        """Trainer's rule for a loss it does not divide by the gradient accumulation steps (`training_step`)."""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        accepts = getattr(self, "model_accepts_loss_kwargs", False)
        return bool(accepts and num_items_in_batch is not None) or self.compute_loss_func is not None

    # --- saving and restoring ----------------------------------------------------------------------------

    def _checkpoint_parts(self, model) -> CheckpointParts:
        """What a checkpoint holds: as AdapterHub, every adapter and head, and the fusions when one trains."""
        fusions = list(model.adapter_fusions) if self.train_adapter_fusion else []
        return CheckpointParts(list(model.adapters), fusions, list(getattr(model, "heads", {})))

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, ModelAdaptersMixin):
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return None
        logger.info(f"Saving adapter checkpoint to {output_dir}")
        save_parts(model, output_dir, self._checkpoint_parts(model))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_FILE))
        return None

    def _save_checkpoint(self, model, trial) -> None:
        """What Trainer saves in a checkpoint (weights, optimizer, scheduler, RNG and trainer state), written into
        a temporary folder that becomes `checkpoint-<step>` once complete; then older checkpoints are rotated."""
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.hp_search_backend is None and trial is None:
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
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(folder))
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
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if not isinstance(target, ModelAdaptersMixin):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info(f"Loading adapters from {resume_from_checkpoint}")
        load_parts(target, resume_from_checkpoint)
        return None

    def _load_best_model(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        if not isinstance(model, ModelAdaptersMixin):
            return super()._load_best_model()
        best, score = self.state.best_model_checkpoint, self.state.best_metric
        logger.info(f"Loading best adapter(s) from {best} (score: {score}).")
        if self.train_adapter_fusion:
            logger.info(f"Loading best adapter fusion(s) from {best} (score: {score}).")
        load_parts(model, best)
        return None


class AdapterTrainerCallback(TrainerCallback):
    """Checks, when training starts, that the model trains adapters only (its base model is frozen)."""

    def __init__(self, trainer: AdapterTrainer):
        super().__init__()
        self.trainer = trainer

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.trainer._check_frozen(model)


class Seq2SeqAdapterTrainer(AdapterTrainer, Seq2SeqTrainer):
    """`AdapterTrainer` with `Seq2SeqTrainer`'s generation-based evaluation."""


def _walk(setup):
    yield setup
    for child in setup.children if isinstance(setup, Block) else []:
        yield from _walk(child)


def _trains_fusion(model) -> bool:
    """AdapterHub's `train_adapter_fusion`: a frozen base model with a `Fuse` block in the active setup."""
    setup = getattr(model, "active_adapters", None)
    frozen = getattr(getattr(model, "base_model", None), "model_frozen", False)
    return bool(frozen and setup is not None and any(isinstance(block, Fuse) for block in _walk(setup)))


def _fusion_penalty(model) -> torch.Tensor | None:
    base = model.base_model  # AdapterHub calls it there (its tests patch it there)
    penalty = getattr(base, "get_fusion_regularization_loss", model.get_fusion_regularization_loss)()
    return penalty if penalty is not None and penalty.requires_grad else None


def _is_fusion_value(name: str) -> bool:
    return ".adapter_fusion_layer." in name and name.endswith(".value.weight")


def _head_label_names(model) -> list[str]:
    """The label names the active heads read (Trainer passes them and uses them to compute the eval loss)."""
    active = model.active_head
    names = []
    for head in [active] if isinstance(active, str) else list(active):
        kind = model.heads[head].config.get("head_type")
        for label in ["start_positions", "end_positions"] if kind == "question_answering" else ["labels"]:
            if label not in names:
                names.append(label)
    return names


def _orthogonal_factors(model) -> set[str]:
    """Names of the parameters behind `torch.nn.utils.parametrizations.orthogonal` weights."""
    from torch.nn.utils import parametrize

    names = set()
    for path, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name, parametrizations in module.parametrizations.items():
            if any(type(p).__name__ == "_Orthogonal" for p in parametrizations):
                names.update(
                    f"{path}.parametrizations.{tensor_name}.{n}".lstrip(".")
                    for n, _ in parametrizations.named_parameters(recurse=False)
                )
    return names
