"""What a Train or Fusion panel run is, and the same run as Python ("show as code").

`RunSpec` holds the settings the panel collected; `train_kwargs()` is what the panel passes to
`workbench.train.train`, and `as_code(spec)` prints the equivalent script, so a run started from the panel can
be repeated from code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from workbench.train import TrainConfig


@dataclass
class RunSpec:
    """One run (and its optional full fine-tuning baseline) as set up in a panel."""

    kind: str  # "adapter" or "fusion"
    data: Any  # a path or dataset id, or a DataFrame
    adapter: str | list[str]  # the adapter to train, or the adapters to fuse
    task: str = "classification"
    columns: dict[str, str] = field(default_factory=dict)  # train()'s column arguments, e.g. text_column
    adapter_config: str | None = None
    config: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/run"
    baseline: bool = False
    model_source: str | None = None  # hub id or folder the model came from, for the script

    @property
    def name(self) -> str:
        return ",".join(self.adapter) if isinstance(self.adapter, list) else self.adapter

    def train_kwargs(self) -> dict:
        """The keyword arguments of `train()` for the run (without model, data, tokenizer and callbacks)."""
        kwargs = {"kind": self.kind, "adapter": self._adapter_value(), "task": self.task, **self.columns}
        if self.kind == "adapter" and self.adapter_config:
            kwargs["adapter_config"] = self.adapter_config
        return {**kwargs, "output_dir": self.output_dir, "config": self.config, "name": f"{self.kind}:{self.name}"}

    def baseline_kwargs(self) -> dict:
        """The same data and settings for the full fine-tuning baseline (on a copy of the model)."""
        return {
            "kind": "full",
            "task": self.task,
            **self.columns,
            "output_dir": f"{self.output_dir}-full",
            "config": self.config,
            "name": f"full:{self.name}",
        }

    def _adapter_value(self):
        if self.kind == "fusion":
            from workbench import Fuse

            return Fuse(*self.adapter)
        return self.adapter


def as_code(spec: RunSpec) -> str:
    """A Python script that runs `spec` with the public API, as the panel does."""
    lines = ["import workbench", "from workbench.train import TrainConfig, compare_runs, train", ""]
    if spec.model_source:
        lines += [
            "from transformers import AutoTokenizer",
            "",
            f"model = workbench.AutoAdapterModel.from_pretrained({spec.model_source!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({spec.model_source!r})",
        ]
    else:
        lines.append("# model, tokenizer: the model and tokenizer the panel trained (e.g. from the Model panel)")
    if isinstance(spec.data, str):
        lines.append(f"data = {spec.data!r}")
    else:
        lines.append("# data: the DataFrame given to the panel")
    lines += [f"config = {_config_code(spec.config)}", ""]
    lines.append(f"record = train(model, data, {_kwargs_code(spec.train_kwargs())}, tokenizer=tokenizer)")
    records = "[record]"
    if spec.baseline:
        lines += [
            "",
            "import copy  # the baseline trains every weight: give it a copy, so the adapters' base model stays",
            f"baseline = train(copy.deepcopy(model), data, {_kwargs_code(spec.baseline_kwargs())}, "
            "tokenizer=tokenizer)",
        ]
        records = "[record, baseline]"
    lines += [f"compare_runs({records})", ""]
    return "\n".join(lines)


def _config_code(config: TrainConfig) -> str:
    default = TrainConfig()
    changed = [
        f"{f.name}={getattr(config, f.name)!r}"
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    ]
    return f"TrainConfig({', '.join(changed)})"


def _kwargs_code(kwargs: dict) -> str:
    parts = []
    for key, value in kwargs.items():
        if key == "config":
            parts.append("config=config")
        elif type(value).__name__ == "Fuse":
            names = ", ".join(repr(n) for n in value.names())
            parts.append(f"{key}=workbench.Fuse({names})")
        else:
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)
