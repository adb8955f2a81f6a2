from workbench.core.adapter_model import *  # noqa: F401,F403
from workbench.core.model_classes import *  # noqa: F401,F403
