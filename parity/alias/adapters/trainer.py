from workbench.train.adapter_trainer import *  # noqa: F401,F403
