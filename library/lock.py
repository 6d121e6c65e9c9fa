"""The library's write lock: one writer at a time (ingest, rebuild, probe train and predict --all,
forget), readers never blocked. filelock gives an OS lock on every platform, released by the OS
when its holder dies, so a kill -9 never leaves a library locked. A library in PostgreSQL is
also locked on the server (an advisory lock, freed when its holder's connection dies), so one
writer runs at a time across every machine that shares it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from vitdex.library.errors import LibraryBusyError

if TYPE_CHECKING:
    from vitdex.storage import Store

LOCK_NAME = "write.lock"
HOLDER_NAME = "write.holder"  # who holds the lock, for the busy message


@contextmanager
def write_lock(folder: Path, *, wait: bool = False) -> Iterator[None]:
    """Hold the library's exclusive write lock; without `wait`, a busy library raises at once."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)  # a PostgreSQL library's folder may be new here
    lock = FileLock(folder / LOCK_NAME, timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except Timeout:
        raise LibraryBusyError(
            f"library {folder} is being written by {_holder(folder)}; wait for it to finish"
            " or pass --wait"
        ) from None
    try:
        (folder / HOLDER_NAME).write_text(f"pid {os.getpid()}")
        yield
    finally:
        lock.release()


@contextmanager
def shared_write_lock(store: Store, *, wait: bool = False) -> Iterator[None]:
    """The writer lock of a library in a shared database (PostgreSQL): held by one process on
    any machine; without `wait`, a busy library raises at once, naming the holder."""
    lock = store.writer_lock(wait=wait)
    if lock is None:
        raise LibraryBusyError(
            f"library {store.location} is being written by {store.writer_holder()}; wait for it"
            " to finish or pass --wait"
        )
    try:
        yield
    finally:
        lock.release()


def try_write_lock(folder: Path) -> FileLock | None:
    """The write lock if it is free now, else None (for a reader that may save an index)."""
    lock = FileLock(Path(folder) / LOCK_NAME, timeout=0)
    try:
        lock.acquire()
    except (Timeout, OSError):
        return None
    return lock


def _holder(folder: Path) -> str:
    try:
        return (folder / HOLDER_NAME).read_text().strip() or "another process"
    except OSError:
        return "another process"
