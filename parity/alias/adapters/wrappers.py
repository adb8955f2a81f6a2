from workbench.core.adapter_model import *  # noqa: F401,F403
