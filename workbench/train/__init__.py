"""`workbench.train`: adapter, AdapterFusion and full fine-tuning runs on transformers' Trainer.

    record = train(model, df, adapter="sst", adapter_config="seq_bn", tokenizer=tok, output_dir="runs/sst")
    compare_runs([record, baseline])

Checkpoints of adapter and fusion runs hold only the trained parts (AdapterHub files); every run returns a
`RunRecord`; `RunControl.stop()` ends a run after the current optimizer step.
"""

from .adapter_trainer import AdapterTrainer, Seq2SeqAdapterTrainer
from .checkpoints import RunFolder, clear_run, free_folder, run_in_folder
from .checks import Problem, check_data
from .config import TrainConfig
from .data import LABELLED_TASKS, TASKS, load_splits
from .errors import (
    CheckpointError,
    ConfigError,
    DataCheckError,
    DataError,
    EmptyDatasetError,
    MissingColumnError,
    NonFiniteLossError,
    OutputDirError,
    RunFolderInUseError,
    RunLockedError,
    TrainingError,
    UnknownLabelError,
)
from .events import EndEvent, EvalEvent, RunControl, StepEvent, TrainingCallback
from .records import RunRecord, compare_runs
from .run import train

__all__ = [
    "LABELLED_TASKS",
    "TASKS",
    "AdapterTrainer",
    "CheckpointError",
    "ConfigError",
    "DataCheckError",
    "DataError",
    "EmptyDatasetError",
    "EndEvent",
    "EvalEvent",
    "MissingColumnError",
    "NonFiniteLossError",
    "OutputDirError",
    "Problem",
    "RunControl",
    "RunFolder",
    "RunFolderInUseError",
    "RunLockedError",
    "RunRecord",
    "Seq2SeqAdapterTrainer",
    "StepEvent",
    "TrainConfig",
    "TrainingCallback",
    "TrainingError",
    "UnknownLabelError",
    "clear_run",
    "check_data",
    "compare_runs",
    "free_folder",
    "load_splits",
    "run_in_folder",
    "train",
]
