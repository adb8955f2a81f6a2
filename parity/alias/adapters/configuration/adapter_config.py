from workbench.core.configs import *  # noqa: F401,F403
