"""One `train()` per output folder at a time: a lock file in the folder naming the run that holds it.

Where the OS has `fcntl` the file is held with `flock`, which the kernel drops when the process ends however it
ends, so a killed run never blocks the folder. Elsewhere the file is created exclusively, and one whose pid is dead
on this host is taken over. The file's JSON (pid, host, start time) names the holder in the error a second run gets.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import psutil

from .errors import OutputDirError, RunLockedError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".workbench-run.lock"


class RunLock:
    """The lock on `folder` (which must exist); `acquire()` raises `RunLockedError` naming the holder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd = None

    def acquire(self) -> RunLock:
        for _ in range(10):  # retried only when the file was replaced between opening and locking it
            try:
                if self._try_acquire():
                    return self
            except RunLockedError:
                raise
            except OSError as err:
                raise OutputDirError(f"cannot create the run lock {self.path}: {err.strerror or err}") from None
        raise RunLockedError(f"the output folder {self.folder} is in use by another run", folder=self.folder)

    def release(self) -> None:
        """Delete the lock file and drop the lock (with flock the file first, so nobody locks a file that is gone;
        Windows deletes no open file)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing drops the flock
            if fcntl is None:
                self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _try_acquire(self) -> bool:
        if fcntl is None:
            return self._try_exclusive()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            self._refuse(read_holder(self.path))
        if not _same_file(fd, self.path):  # released and deleted by its holder after we opened it: try again
            os.close(fd)
            return False
        self._fd = fd
        self._write_record()
        return True

    def _try_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_holder(self.path)
            if not _is_dead(holder):
                self._refuse(holder)
            self.path.unlink(missing_ok=True)  # a run that ended without releasing it
            return False
        self._fd = fd
        self._write_record()
        return True

    def _write_record(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, (json.dumps(record) + "\n").encode())

    def _refuse(self, holder: dict):
        who = f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
        raise RunLockedError(
            f"the output folder {self.folder} is in use by another run ({who}; lock file {self.path}): wait for it "
            "to end, or choose another output folder",
            folder=self.folder,
            holder=holder,
        )


def read_holder(path: str | Path) -> dict:
    """The lock file's record ({} when it cannot be read: it is being written or was just deleted)."""
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _is_dead(holder: dict) -> bool:
    """Whether the lock's process has ended (known only for this host; a record being written counts as alive)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or holder.get("host") != socket.gethostname():
        return False
    return not psutil.pid_exists(pid)  # (not os.kill(pid, 0): on Windows that ends the process)
