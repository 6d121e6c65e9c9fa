"""The sha256 of a checkpoint's weights: what the vectors depend on, wherever the files lie.

A hub cache names each LFS blob by its sha256, so a cached hub model costs nothing. Other files
are hashed once and the digest is remembered by (real path, size, mtime), so a 330 MB model is
not reread on every load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_PREFERENCE = (  # transformers' own order: safetensors first, one file before shards
    ("model.safetensors", "model.safetensors.index.json"),
    ("pytorch_model.bin", "pytorch_model.bin.index.json"),
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
CACHE_NAME = "weights-sha256.json"


def weight_files(folder: Path) -> list[Path]:
    """The weight files transformers loads from `folder`, shards in order; [] if none.

    An unreadable shard index counts as no weights: the folder is then reported as lacking them.
    """
    for single, index in _PREFERENCE:
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            try:
                weight_map = json.loads((folder / index).read_text(encoding="utf-8"))["weight_map"]
                return [folder / str(name) for name in sorted(set(weight_map.values()))]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                log.warning("%s: unreadable shard index, ignored", folder / index)
    return []


def weights_digest(files: Sequence[Path], cache_dir: Path | None) -> str:
    """sha256 hex of one weights file, or of the ordered per-shard digests ("\\n"-joined)."""
    digests = [_file_digest(Path(path), cache_dir) for path in files]
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha256("\n".join(digests).encode("ascii")).hexdigest()


def _file_digest(path: Path, cache_dir: Path | None) -> str:
    real = os.path.realpath(path)
    name = os.path.basename(real)
    if os.path.basename(os.path.dirname(real)) == "blobs" and _SHA256.fullmatch(name):
        return name  # a hub cache LFS blob: its name is its sha256
    stat = os.stat(real)
    cache = _read_cache(cache_dir)
    entry = cache.get(real)
    if entry and (entry.get("size"), entry.get("mtime_ns")) == (stat.st_size, stat.st_mtime_ns):
        return str(entry["sha256"])
    digest = _hash_file(real)
    if cache_dir is not None:
        cache[real] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        _write_cache(cache_dir, cache)
    return digest


def _hash_file(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_cache(cache_dir: Path | None) -> dict[str, dict]:
    if cache_dir is None:
        return {}
    try:
        data = json.loads((cache_dir / CACHE_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: only costs a rehash
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(cache_dir: Path, cache: dict[str, dict]) -> None:
    """Atomic replace; a read-only or full cache folder only costs a rehash next time."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=CACHE_NAME, suffix=".tmp", dir=cache_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(cache, handle, sort_keys=True)
            os.replace(tmp, cache_dir / CACHE_NAME)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.debug("cannot write the weights digest cache in %s: %s", cache_dir, exc)
