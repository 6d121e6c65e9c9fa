"""Finding image files below folders: each real file once, by its canonical path.

Roots are made canonical (absolute, normalised, symlinks resolved) and a root inside another is
dropped, so `photos/../photos`, a symlink to the folder and the same path given twice all walk
one tree once. Folder symlinks are followed, each real folder once by (device, inode), so loops
end; a file reached by a symlink is reported by its target's path; a real file reached twice
(a symlink beside its target, a hard link) is reported once. Only regular files are reported as
files: a FIFO or a device given by name is reported as a failure, never opened.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vitdex.storage import FileIdentity, canonical, display
from vitdex.storage.files import kind_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FoundFile:
    file: FileIdentity
    claims_image: bool  # its name says image (.jpg, .heic, ...)
    problem: str | None = None  # why it cannot be read as an image file (it is not ingested)

    @property
    def path(self) -> str:
        return self.file.path


def canonical_roots(paths: list[str | Path]) -> list[str]:
    """Canonical roots, each once, none inside another."""
    roots: list[str] = []
    for path in sorted({canonical(p) for p in paths}):
        if not any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            roots.append(path)
    return roots


def walk_files(roots: list[str], image_suffixes: frozenset[str]) -> Iterator[FoundFile]:
    """Every regular file below canonical `roots`, each real file once."""
    visited: set[int] = set()  # folders, by device << 64 | inode
    seen_files: set[int] = set()  # files, likewise: one small int each, even at 1M files

    def found(path: str, st: os.stat_result, name: str) -> Iterator[FoundFile]:
        key = st.st_dev << 64 | st.st_ino
        if key in seen_files:
            log.info("%s: already found by another path, skipped", display(path))
            return
        seen_files.add(key)
        yield FoundFile(FileIdentity.of(path, st), _claims(name, image_suffixes))

    for root in roots:
        try:
            st = os.stat(root)
        except OSError as exc:
            log.warning("%s: cannot read (%s)", display(root), exc.strerror or exc)
            continue
        if not stat.S_ISDIR(st.st_mode):
            if stat.S_ISREG(st.st_mode):
                yield from found(root, st, os.path.basename(root))
            else:
                problem = f"{kind_of(st.st_mode)}, not a regular file"
                yield FoundFile(FileIdentity.of(root, st), True, problem)
            continue
        stack = [root]
        while stack:
            folder = stack.pop()  # canonical
            try:
                key = os.stat(folder)
                ident = key.st_dev << 64 | key.st_ino
                if ident in visited:
                    continue
                visited.add(ident)
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                log.warning("%s: cannot read folder (%s)", display(folder), exc.strerror or exc)
                continue
            subfolders = []
            for entry in entries:
                try:
                    path = os.path.realpath(entry.path) if entry.is_symlink() else entry.path
                    st = os.stat(path)
                except OSError as exc:
                    if entry.is_symlink():
                        log.warning("%s: broken symbolic link, skipped", display(entry.path))
                    else:
                        log.warning("%s: cannot read (%s)", display(entry.path), exc.strerror)
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subfolders.append(path)
                    if _claims(entry.name, image_suffixes):
                        yield FoundFile(FileIdentity.of(path, st), True, "a folder named like an"
                                        " image file")  # fmt: skip
                elif stat.S_ISREG(st.st_mode):
                    yield from found(path, st, os.path.basename(path))
                elif _claims(entry.name, image_suffixes):
                    problem = f"{kind_of(st.st_mode)}, not a regular file"
                    yield FoundFile(FileIdentity.of(path, st), True, problem)
            stack.extend(reversed(subfolders))


def _claims(name: str, image_suffixes: frozenset[str]) -> bool:
    return os.path.splitext(name)[1].lower() in image_suffixes
