from workbench.core.methods.lora import *  # noqa: F401,F403
