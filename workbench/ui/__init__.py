"""`workbench.ui`: the notebook workbench (ipywidgets 8 + plotly).

    from workbench.ui import Workbench
    Workbench()                      # Hub, Model, Compare, Train and Fusion panels in tabs

Each panel also works alone (`HubPanel()`, `TrainPanel(model=...)`, ...) and shares a `Session` (the model, its
tokenizer and the runs so far) with the others. The UI only calls the public engine API (`workbench`,
`workbench.hub`, `workbench.train`, `workbench.analysis`); it holds no engine logic.
"""

import importlib

from .session import Session, default_session

# imported on first use: `import workbench.ui` stays light, and one panel's import problem does not hide the others
_LAZY = {
    "Workbench": "workbench",
    "HubPanel": "hub_panel",
    "ModelPanel": "model_panel",
    "ComparePanel": "compare_panel",
    "TrainPanel": "train_panel",
    "FusionPanel": "fusion_panel",
}

__all__ = ["Session", "default_session", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
