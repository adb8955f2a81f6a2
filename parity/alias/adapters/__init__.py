"""`adapters` as an alias of workbench, for running the adapters library's own tests (parity/README.md).

Every module of this package only re-exports workbench names: the behaviour measured is workbench's.
"""

from workbench import *  # noqa: F401,F403
from workbench import ADAPTERS_API_VERSION as __version__  # noqa: F401  (the adapters release it implements)
from workbench import __all__  # noqa: F401
