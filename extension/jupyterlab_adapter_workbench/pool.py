"""A bounded pool for the extension's blocking Hub calls, so a slow Hub cannot stall the Jupyter server.

Hub calls get their own few threads instead of the event loop's default executor (which other Jupyter handlers
share). At most `workers + queue` calls are admitted at a time: a call that times out still holds its slot until its
thread finishes, so a stalled Hub cannot pile up threads; further requests are refused at once (`PoolFull`, a 503)
rather than queued without end. Every call is answered within `timeout` seconds (`CallTimedOut`, a 504).

The threads are daemons, not a `ThreadPoolExecutor`'s: Python joins an executor's threads at exit without a limit,
so one Hub call stalled in a socket read would keep a stopped server's process alive. `shutdown` (the server's
stop) cancels queued calls and ends idle threads at once; a thread stuck in a Hub call is left behind, not waited on.
"""

from __future__ import annotations

import asyncio
import os
import queue as queues
import threading
import time
from concurrent.futures import Future
from itertools import count

TIMEOUT_ENV = "WORKBENCH_EXTENSION_TIMEOUT"  # seconds a request may wait for the Hub, queueing included
WORKERS_ENV = "WORKBENCH_EXTENSION_WORKERS"  # threads that call the Hub
QUEUE_ENV = "WORKBENCH_EXTENSION_QUEUE"  # requests that may wait for a thread; beyond that: 503
DEFAULTS = {TIMEOUT_ENV: 15.0, WORKERS_ENV: 8, QUEUE_ENV: 32}
THREAD_PREFIX = "adapter-workbench-hub"  # a pool's threads are named f"{THREAD_PREFIX}-<pool>-<thread>"
_pool_numbers = count(1)


class PoolFull(RuntimeError):
    """Every worker is busy and the queue is full."""


class PoolClosed(PoolFull):
    """The server is stopping: the pool takes no more calls."""


class CallTimedOut(TimeoutError):
    """The Hub call did not finish within the timeout."""


class HubPool:
    def __init__(self, workers: int, queue: int, timeout: float):
        self.workers, self.queue, self.timeout = workers, queue, timeout
        self._slots = threading.BoundedSemaphore(workers + queue)
        self._jobs: queues.SimpleQueue = queues.SimpleQueue()  # (future, fn, args); None ends a thread
        self._lock = threading.Lock()  # orders submissions against `shutdown`, so no call is queued after it
        self.closed = False
        self.thread_prefix = f"{THREAD_PREFIX}-{next(_pool_numbers)}-"
        self._threads = [
            threading.Thread(target=self._work, name=f"{self.thread_prefix}{i}", daemon=True) for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

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
        future: Future = Future()
        with self._lock:
            if self.closed:
                raise PoolClosed(f"{what}: the server is shutting down")
            if not self._slots.acquire(blocking=False):
                raise PoolFull(
                    f"{what}: the server is busy ({self.workers} Hub calls running, {self.queue} waiting); try again"
                )
            future.add_done_callback(lambda _: self._slots.release())  # on finish, or on cancel while still queued
            self._jobs.put((future, fn, args))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:
            raise CallTimedOut(
                f"{what}: the Hub did not answer within {self.timeout:g} s (set {TIMEOUT_ENV} to wait longer)"
            ) from None
        except asyncio.CancelledError:
            if future.cancelled() and self.closed:  # cancelled by `shutdown`, not by the caller
                raise PoolClosed(f"{what}: the server is shutting down") from None
            raise

    def shutdown(self) -> None:
        """Refuse new calls, cancel the queued ones and tell every thread to end after its current call. Returns
        at once; `wait_stopped` waits for the threads."""
        with self._lock:
            self.closed = True
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queues.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            for _ in self._threads:
                self._jobs.put(None)

    async def wait_stopped(self, seconds: float) -> bool:
        """Wait (without blocking the event loop) up to `seconds` for the threads to end; True if they all did."""
        deadline = time.monotonic() + seconds
        while any(thread.is_alive() for thread in self._threads):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            _call(*job)
            job = None  # drop the finished call's references while waiting for the next


def _call(future: Future, fn, args) -> None:
    if not future.set_running_or_notify_cancel():  # cancelled while queued (timed out, or shut down)
        return
    try:
        result = fn(*args)
    except BaseException as err:  # noqa: BLE001 - handed to the waiting request, as an executor does
        future.set_exception(err)
    else:
        future.set_result(result)
