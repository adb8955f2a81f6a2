"""The server extension as a jupyter_server `ExtensionApp`: it owns the Hub pool, so the server's stop ends it.

(A module-level `_load_jupyter_server_extension` has no stop hook in jupyter_server 2; an `ExtensionApp` gets
`stop_extension` when the server stops, on Ctrl-C or SIGTERM as well.)
"""

from __future__ import annotations

from jupyter_server.extension.application import ExtensionApp

from .handlers import POOL_SETTING, ROUTES
from .pool import HubPool


class AdapterWorkbenchApp(ExtensionApp):
    """Registers the REST routes under `/adapter-workbench` and runs their Hub calls on its own `HubPool`."""

    name = "jupyterlab_adapter_workbench"

    pool: HubPool | None = None

    def initialize_settings(self) -> None:
        self.pool = HubPool.from_env()  # configured by WORKBENCH_EXTENSION_*; a bad value stops the load, named
        self.settings[POOL_SETTING] = self.pool

    def initialize_handlers(self) -> None:
        self.handlers.extend(ROUTES)
        self.log.info("jupyterlab_adapter_workbench: routes under /adapter-workbench registered")

    async def stop_extension(self) -> None:
        """Cancel queued Hub calls and end the pool's threads, waiting for a running call no longer than the
        per-request timeout (its request has had its 504 by then); a thread still stuck in the Hub is a daemon
        and does not hold up the process's exit."""
        if self.pool is None:
            return
        self.pool.shutdown()
        if not await self.pool.wait_stopped(self.pool.timeout):
            self.log.warning("jupyterlab_adapter_workbench: a Hub call still running at stop was left behind")
