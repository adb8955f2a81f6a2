"""A bounded pool for the extension's blocking Hub calls, so a slow Hub cannot stall the Jupyter server.

Hub calls get their own few threads instead of the event loop's default executor (which other Jupyter handlers
share). At most `workers + queue` calls are admitted at a time: a call that times out still holds its slot until its
thread finishes, so a stalled Hub cannot pile up threads; further requests are refused at once (`PoolFull`, a 503)
rather than queued without end. Every call is answered within `timeout` seconds (`CallTimedOut`, a 504).
"""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

TIMEOUT_ENV = "WORKBENCH_EXTENSION_TIMEOUT"  # seconds a request may wait for the Hub, queueing included
WORKERS_ENV = "WORKBENCH_EXTENSION_WORKERS"  # threads that call the Hub
QUEUE_ENV = "WORKBENCH_EXTENSION_QUEUE"  # requests that may wait for a thread; beyond that: 503
DEFAULTS = {TIMEOUT_ENV: 15.0, WORKERS_ENV: 8, QUEUE_ENV: 32}


class PoolFull(RuntimeError):
    """Every worker is busy and the queue is full."""


class CallTimedOut(TimeoutError):
    """The Hub call did not finish within the timeout."""


class HubPool:
    def __init__(self, workers: int, queue: int, timeout: float):
        self.workers, self.queue, self.timeout = workers, queue, timeout
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="adapter-workbench-hub")
        self._slots = threading.BoundedSemaphore(workers + queue)

    @classmethod
    def from_env(cls) -> HubPool:
        """The pool as configured by the WORKBENCH_EXTENSION_* variables; a bad value is an error naming it."""
        values = {}
        for name, default in DEFAULTS.items():
            raw = os.environ.get(name, "")
            try:
                value = type(default)(raw) if raw.strip() else default
            except ValueError:
                value = None
            if value is None or value < 0 or (value == 0 and name != QUEUE_ENV):
                least = "0 or more" if name == QUEUE_ENV else "positive"
                raise ValueError(f"{name} must be a {least} {type(default).__name__}, not {raw!r}")
            values[name] = value
        return cls(values[WORKERS_ENV], values[QUEUE_ENV], values[TIMEOUT_ENV])

    async def run(self, what: str, fn, *args):
        """`fn(*args)` on a pool thread; `what` names the call in the errors."""
        if not self._slots.acquire(blocking=False):
            raise PoolFull(
                f"{what}: the server is busy ({self.workers} Hub calls running, {self.queue} waiting); try again"
            )
        try:
            future = self._executor.submit(fn, *args)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())  # on finish, or on cancel while still queued
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            raise CallTimedOut(
                f"{what}: the Hub did not answer within {self.timeout:g} s (set {TIMEOUT_ENV} to wait longer)"
            ) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
