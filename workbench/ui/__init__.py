"""`workbench.ui`: the notebook workbench (ipywidgets 8 + plotly).

    from workbench.ui import Workbench
    Workbench()                      # Hub, Model, Compare, Train and Fusion panels in tabs

Each panel also works alone (`HubPanel()`, `TrainPanel(model=...)`, ...) and shares a `Session` (the model, its
tokenizer and the runs so far) with the others. The UI only calls the public engine API (`workbench`,
`workbench.hub`, `workbench.train`, `workbench.analysis`); it holds no engine logic.
"""

from .session import Session, default_session

__all__ = ["Session", "default_session"]
