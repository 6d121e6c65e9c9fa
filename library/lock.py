"""The library's write lock: one ingest (or rebuild) at a time, searches never blocked."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vitdex.library.errors import LibraryBusyError

LOCK_NAME = "write.lock"


@contextmanager
def write_lock(folder: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the library's exclusive write lock; an OS lock, so a killed holder releases it."""
    with open(Path(folder) / LOCK_NAME, "a+") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise LibraryBusyError(
                        f"library {folder} is being written by {holder}; wait for it to finish"
                        " or pass --wait"
                    ) from None
                time.sleep(0.2)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield


def is_locked(folder: Path) -> bool:
    """Whether a writer holds the lock now (searches then keep their index changes in memory)."""
    path = Path(folder) / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
