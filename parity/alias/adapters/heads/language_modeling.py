from workbench.core.heads import *  # noqa: F401,F403
