"""What a file is: one canonical path per real file, its device and inode, and how paths are stored.

A path is canonical when it is absolute, normalised and free of symlinks (`os.path.realpath`): so
`photos/../photos/a.jpg`, a symlink to a folder and a symlink to a file all name the one real file,
and it is stored once. Paths are `str` in Python as the OS gives them (undecodable bytes kept as
surrogate escapes) and raw bytes in the database, so a name that is not UTF-8 round-trips
losslessly and paths compare byte by byte (case-sensitive, the same on every database).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import BinaryIO


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A regular file as it was when seen: enough to tell later whether it is still that file."""

    path: str  # canonical
    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileIdentity:
        return cls(path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def same_file(self, st: os.stat_result) -> bool:
        """Whether `st` (of a regular file, symlinks not followed) is this file, unchanged."""
        return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            self.device,
            self.inode,
            self.size,
            self.mtime_ns,
        )


class NotRegularFileError(OSError):
    """The path is a FIFO, a device, a socket or a folder: vitdex reads only regular files."""


def canonical(path: str | os.PathLike[str]) -> str:
    """The one absolute, normalised, symlink-free spelling of a path."""
    return os.path.realpath(os.path.expanduser(os.fspath(path)))


def to_db(path: str) -> bytes:
    """A path as stored: its OS bytes (undecodable names included)."""
    return os.fsencode(path)


def from_db(raw: bytes) -> str:
    return os.fsdecode(raw)


def display(path: str) -> str:
    """A path as shown to a person: bytes that are not UTF-8 become U+FFFD, never an error."""
    return os.fsencode(path).decode("utf-8", "replace")


def under_range(folder: str) -> tuple[bytes, bytes]:
    """[low, high) bounds of the stored paths strictly below `folder`, for a range query.

    Every such path starts with folder + "/"; "0" is the byte right after "/", so the range is
    exactly the prefix and uses the path index.
    """
    prefix = to_db(folder.rstrip(os.sep) + os.sep)
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str, expect: FileIdentity | None = None) -> BinaryIO:
    """Open a regular file for reading without ever blocking on a FIFO or reading a device.

    With `expect`, the opened file must also be that very file, unchanged (same device, inode,
    size and mtime), and the path may not be a symlink: the caller serves or deletes what it
    ingested, not whatever the path points to now.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    if expect is not None:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(f"{display(path)}: {kind_of(st.st_mode)}, not a regular file")
        if expect is not None and not expect.same_file(st):
            raise NotRegularFileError(f"{display(path)}: no longer the file that was ingested")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def still_same(identity: FileIdentity) -> bool:
    """Whether the stored path still names the file that was ingested (not a symlink, unchanged)."""
    try:
        return identity.same_file(os.lstat(identity.path))
    except OSError:
        return False
