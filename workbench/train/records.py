"""`RunRecord`: what one run was and cost; `compare_runs` puts several side by side."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd

VALIDATION_KEPT = 2000


@dataclass
class RunRecord:
    """The outcome of a run. Memory is process RSS on CPU, `torch.cuda.max_memory_allocated` on GPU."""

    name: str
    kind: str
    method: str
    task: str
    trainable_params: int
    total_params: int
    saved_bytes: int
    saved_path: str
    output_dir: str
    wall_time_s: float
    train_samples_per_second: float
    peak_memory_bytes: int
    memory_kind: str
    global_step: int
    stop_reason: str
    final_metrics: dict[str, float] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: str | None = None
    train_losses: list[float] = field(default_factory=list, repr=False)
    config: dict = field(default_factory=dict, repr=False)
    # classification runs: the validation texts and their label names (at most VALIDATION_KEPT rows), so the
    # confusion matrix and the misclassified examples can be shown later without the data at hand
    validation: dict[str, list] = field(default_factory=dict, repr=False)

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(self.total_params, 1)

    def to_dict(self) -> dict:
        return asdict(self)

    def row(self) -> dict:
        """One flat row: the scalar fields plus `final_<metric>` and `best_<metric>` columns."""
        row = {k: v for k, v in self.to_dict().items() if not isinstance(v, (dict, list))}
        row["trainable_percent"] = self.trainable_percent
        for prefix, metrics in (("final", self.final_metrics), ("best", self.best_metrics)):
            for key, value in metrics.items():
                row[f"{prefix}_{key.removeprefix('eval_')}"] = value
        return row


def compare_runs(records: list[RunRecord]) -> pd.DataFrame:
    """A DataFrame with one row per run (indexed by run name) to compare methods on the same data."""
    return pd.DataFrame([r.row() for r in records]).set_index("name")
