"""What a Train or Fusion panel run is, and the same run as Python ("show as code").

`RunSpec` holds the settings the panel collected; `train_kwargs()` is what the panel passes to
`workbench.train.train`, and `as_code(spec)` prints the equivalent script, so a run started from the panel can
be repeated from code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
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
    baseline_config: TrainConfig | None = None  # the baseline's settings (default: `config` with the learning rate
    # left to the engine's default for a full fine-tuning run)
    label_names: dict | None = None  # {value in the data: name in the head}

    @property
    def name(self) -> str:
        return ",".join(self.adapter) if isinstance(self.adapter, list) else self.adapter

    def train_kwargs(self) -> dict:
        """The keyword arguments of `train()` for the run (without model, data, tokenizer and callbacks)."""
        kwargs = {"kind": self.kind, "adapter": self._adapter_value(), "task": self.task, **self.columns}
        if self.kind == "adapter" and self.adapter_config:
            kwargs["adapter_config"] = self.adapter_config
        if self.label_names:
            kwargs["label_names"] = dict(self.label_names)
        return {**kwargs, "output_dir": self.output_dir, "config": self.config, "name": f"{self.kind}:{self.name}"}

    def baseline_kwargs(self) -> dict:
        """The same data and settings for the full fine-tuning baseline (on a copy of the model)."""
        kwargs = {"kind": "full", "task": self.task, **self.columns}
        if self.label_names:
            kwargs["label_names"] = dict(self.label_names)
        output = f"{self.output_dir}-full"
        return {**kwargs, "output_dir": output, "config": self.full_config, "name": f"full:{self.name}"}

    @property
    def full_config(self) -> TrainConfig:
        """The baseline's settings: `baseline_config`, else `config` with the full fine-tuning learning rate."""
        if self.baseline_config is not None:
            return self.baseline_config
        return dataclasses.replace(self.config, learning_rate=None)

    def _adapter_value(self):
        if self.kind == "fusion":
            from workbench import Fuse

            return Fuse(*self.adapter)
        return self.adapter


def as_code(spec: RunSpec) -> str:
    """A Python script that runs `spec` with the public API, as the panel does; it holds no path of this Python
    installation (a model installed as a package is found through the package), so it runs where it is pasted."""
    stdlib, body = [], []
    if spec.model_source:
        source, package = _source_code(spec.model_source)
        stdlib += ["from importlib.resources import files"] if package else []
        body += [
            source,
            "model = workbench.AutoAdapterModel.from_pretrained(model_source)",
            "tokenizer = AutoTokenizer.from_pretrained(model_source)",
        ]
    else:
        body.append("# model, tokenizer: the model and tokenizer the panel trained (e.g. from the Model panel)")
    body += [*_data_code(spec.data), f"config = {_config_code(spec.config)}", ""]
    body.append(_call("record = train", ["model", "data", *_kwargs_code(spec.train_kwargs()), "tokenizer=tokenizer"]))
    records = "[record]"
    if spec.baseline:
        stdlib.insert(0, "import copy")
        body += [
            "",
            "# the baseline trains every weight: a copy of the model (the adapters' base model stays as it is), with",
            "# its own settings (a smaller learning rate)",
            f"baseline_config = {_config_code(spec.full_config)}",
            _call(
                "baseline = train",
                [
                    "copy.deepcopy(model)",
                    "data",
                    *_kwargs_code(spec.baseline_kwargs(), "baseline_config"),
                    "tokenizer=tokenizer",
                ],
            ),
        ]
        records = "[record, baseline]"
    third_party = ["from transformers import AutoTokenizer", ""] if spec.model_source else []
    imports = [*stdlib, *([""] if stdlib else []), *third_party]
    ours = ["import workbench", "from workbench.train import TrainConfig, compare_runs, train", ""]
    return "\n".join([*imports, *ours, *body, f"compare_runs({records})", ""])


def _call(head: str, arguments: list[str]) -> str:
    return f"{head}(\n" + "".join(f"    {argument},\n" for argument in arguments) + ")"


def _source_code(source: str) -> tuple[str, str | None]:
    """`model_source = ...` and the package it is found through: a folder inside an installed package (e.g. the
    offline MiniLM) is named through the package, never by this installation's path."""
    parts = Path(source).parts
    inside = next((i for i, part in enumerate(parts) if part in ("site-packages", "dist-packages")), None)
    if inside is None or inside + 1 >= len(parts):
        return f"model_source = {source!r}", None
    package, rest = parts[inside + 1], "/".join(parts[inside + 2 :])
    where = f"files({package!r})" + (f" / {rest!r}" if rest else "")
    return f"model_source = str({where})  # installed with the {package} package", package


def _data_code(data) -> list[str]:
    if isinstance(data, str):
        return [f"data = {data!r}"]
    if isinstance(data, dict):
        train = data.get("train")
        lines = [] if isinstance(train, str) else ["# train_frame: the DataFrame given to the panel"]
        parts = ", ".join(f"{k!r}: {v!r}" if isinstance(v, str) else f"{k!r}: train_frame" for k, v in data.items())
        return [*lines, f"data = {{{parts}}}"]
    return ["# data: the DataFrame given to the panel"]


def _config_code(config: TrainConfig) -> str:
    default = TrainConfig()
    changed = [
        f"{f.name}={getattr(config, f.name)!r}"
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    ]
    return f"TrainConfig({', '.join(changed)})"


def _kwargs_code(kwargs: dict, config: str = "config") -> list[str]:
    parts = []
    for key, value in kwargs.items():
        if key == "config":
            parts.append(f"config={config}")
        elif type(value).__name__ == "Fuse":
            names = ", ".join(repr(n) for n in value.names())
            parts.append(f"{key}=workbench.Fuse({names})")
        else:
            parts.append(f"{key}={value!r}")
    return parts
