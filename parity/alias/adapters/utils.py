from workbench.core.files import *  # noqa: F401,F403
from workbench.hub import *  # noqa: F401,F403
