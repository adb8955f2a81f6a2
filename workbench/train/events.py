"""Events a run reports (for the UI or a notebook) and the handle that asks a run to stop.

A callback is either a `TrainingCallback` (override `on_step`, `on_evaluate`, `on_end`) or a plain callable that
receives every event. `RunControl.stop()` ends training after the current optimizer step, which is then saved
as a checkpoint.

With several processes (`torchrun`, `accelerate launch`) the events go to the callbacks of the main process
only, each step's loss is the mean over the processes, and a stop requested there stops every process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psutil
import torch
import torch.distributed as dist
from transformers import TrainerCallback


class RunControl:
    """A stop handle, safe to call from another thread (a UI button) or from a callback."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self.reason: str | None = None

    def stop(self, reason: str = "stop requested") -> None:
        self.reason = reason
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()


@dataclass
class StepEvent:
    """After each optimizer step: the step's loss, throughput and the estimated time left."""

    step: int
    max_steps: int
    epoch: float
    loss: float | None
    learning_rate: float | None
    samples_per_second: float
    eta_seconds: float
    control: RunControl = field(repr=False)


@dataclass
class EvalEvent:
    """After each evaluation: its metrics (eval_loss, eval_accuracy, eval_f1, ...)."""

    step: int
    epoch: float
    metrics: dict[str, float]
    control: RunControl = field(repr=False)


@dataclass
class EndEvent:
    """When the run has finished, with its record."""

    record: object


class TrainingCallback:
    """Base class for run observers; every method is optional."""

    def on_step(self, event: StepEvent) -> None:
        pass

    def on_evaluate(self, event: EvalEvent) -> None:
        pass

    def on_end(self, event: EndEvent) -> None:
        pass


def dispatch(callbacks, event) -> None:
    """Send `event` to each callback: its `on_*` method, or the callback itself when it is a plain callable."""
    method = {StepEvent: "on_step", EvalEvent: "on_evaluate", EndEvent: "on_end"}[type(event)]
    for callback in callbacks:
        if isinstance(callback, TrainingCallback) or hasattr(callback, method):
            getattr(callback, method)(event)
        else:
            callback(event)


class EventBridge(TrainerCallback):
    """Turns Trainer hooks into workbench events, honours stop requests and samples peak memory."""

    def __init__(self, callbacks, control: RunControl, samples_per_step: int):
        self.callbacks = list(callbacks)
        self.control = control
        self.samples_per_step = samples_per_step
        self.step_losses: list[float] = []
        self.pending_loss: float | None = None
        self.peak_rss = 0
        self.stopped_by_request = False
        self._start = time.perf_counter()
        self._first_step = 0

    def sample_memory(self) -> None:
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._first_step = state.global_step
        self.sample_memory()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs):
        self.sample_memory()
        loss, self.pending_loss = self.pending_loss, None
        if args.world_size > 1 and loss is not None:
            loss = _all_reduce(loss, args.device, dist.ReduceOp.SUM) / args.world_size
        if loss is not None:
            self.step_losses.append(loss)
        done = state.global_step - self._first_step
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        lr = kwargs["lr_scheduler"].get_last_lr()[0] if kwargs.get("lr_scheduler") is not None else None
        event = StepEvent(
            step=state.global_step,
            max_steps=state.max_steps,
            epoch=float(state.epoch or 0.0),
            loss=loss,
            learning_rate=lr,
            samples_per_second=done * self.samples_per_step / elapsed,
            eta_seconds=(state.max_steps - state.global_step) * elapsed / max(done, 1),
            control=self.control,
        )
        if state.is_world_process_zero:
            dispatch(self.callbacks, event)
        stop = self.control.stop_requested
        if args.world_size > 1:  # every process must stop at the same step
            stop = bool(_all_reduce(float(stop), args.device, dist.ReduceOp.MAX))
        if stop:
            self.stopped_by_request = True
            control.should_training_stop = True
            control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """A stop mid-epoch breaks Trainer's epoch loop into its epoch-end hook: no evaluation (and no second save)
        of the partial epoch, which an uninterrupted run never makes; it could become the best checkpoint or count
        against early stopping. A stop on an epoch's last step keeps that epoch's evaluation."""
        if self.stopped_by_request and not float(state.epoch or 0.0).is_integer():
            control.should_evaluate = False
            control.should_save = False  # the stop's step is saved already (on_step_end)
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.sample_memory()
        if state.is_world_process_zero:  # the metrics are already gathered over the processes
            event = EvalEvent(state.global_step, float(state.epoch or 0.0), dict(metrics or {}), self.control)
            dispatch(self.callbacks, event)
        return control


def _all_reduce(value: float, device, op) -> float:
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=op)
    return float(tensor.item())
