"""One trainer per run: an exclusive lock on `<run>/.lock`, released by the OS when the process dies."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path


class RunLockedError(RuntimeError):
    """Another live process is training the same run."""


class RunLock:
    """An exclusive advisory lock on `<run_dir>/.lock`, held while a trainer works on the run."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise RunLockedError(
                f"{self.path.parent} is being trained by {holder}; wait for it to finish or stop it first"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
