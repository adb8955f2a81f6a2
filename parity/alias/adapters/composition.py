from workbench.core.composition import *  # noqa: F401,F403
