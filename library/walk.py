"""Finding image files under folders without hanging on symlink loops or failing on bad entries."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FoundFile:
    path: str
    size: int
    mtime_ns: int
    claims_image: bool  # its name says image (.jpg, .heic, ...)
    is_folder: bool = False  # a folder named like an image: reported, and still walked into


def walk_files(roots: list[Path], image_suffixes: frozenset[str]) -> Iterator[FoundFile]:
    """Every regular file below `roots`, each real folder visited once.

    Folder symlinks are followed (photo libraries often link albums) but a folder already visited,
    by (device, inode), is skipped, so loops end. Broken links and unreadable folders are logged
    and skipped.
    """
    visited: set[tuple[int, int]] = set()
    for root in roots:
        root = Path(root).absolute()
        try:
            st = root.stat()
        except OSError as exc:
            log.warning("%s: cannot read (%s)", root, exc.strerror or exc)
            continue
        if not os.path.isdir(root):
            yield FoundFile(
                str(root), st.st_size, st.st_mtime_ns, _claims(root.name, image_suffixes)
            )
            continue
        stack = [str(root)]
        while stack:
            folder = stack.pop()
            try:
                key = os.stat(folder)
                ident = (key.st_dev, key.st_ino)
                if ident in visited:
                    log.info("%s: already visited (symlink loop or alias), skipped", folder)
                    continue
                visited.add(ident)
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as exc:
                log.warning("%s: cannot read folder (%s)", folder, exc.strerror or exc)
                continue
            subfolders = []
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=True):
                        subfolders.append(entry.path)
                        if _claims(entry.name, image_suffixes):
                            st = entry.stat(follow_symlinks=True)
                            yield FoundFile(entry.path, 0, st.st_mtime_ns, True, is_folder=True)
                        continue
                    if not entry.is_file(follow_symlinks=True):
                        if entry.is_symlink():
                            log.warning("%s: broken symbolic link, skipped", entry.path)
                        continue
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    log.warning("%s: cannot read (%s)", entry.path, exc.strerror or exc)
                    continue
                yield FoundFile(
                    entry.path, st.st_size, st.st_mtime_ns, _claims(entry.name, image_suffixes)
                )
            stack.extend(reversed(subfolders))


def _claims(name: str, image_suffixes: frozenset[str]) -> bool:
    return os.path.splitext(name)[1].lower() in image_suffixes
