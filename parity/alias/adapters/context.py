from workbench.core.context import *  # noqa: F401,F403
