"""Reading labelled image paths: a `path,label` CSV or class subfolders (ImageFolder layout)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from vitdex.probes.errors import LabelError
from vitdex.storage import canonical


@dataclass(frozen=True, slots=True)
class Example:
    path: str  # canonical (symlinks resolved), the one spelling the library stores
    label: str


def absolute_path(path: str | Path, base: Path | None = None) -> str:
    """The spelling the library stores: canonical, so any spelling of a file finds its image."""
    path = Path(path).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return canonical(path)


def read_csv_labels(csv_path: str | Path) -> list[Example]:
    """Rows of a CSV with a `path,label` header; relative paths are relative to the CSV's folder."""
    csv_path = Path(csv_path).expanduser()
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            if "path" not in header or "label" not in header:
                raise LabelError(
                    f"{csv_path}: the first line must be a `path,label` header,"
                    f" got {reader.fieldnames}"
                )
            reader.fieldnames = header
            base = csv_path.absolute().parent
            examples = []
            for line, row in enumerate(reader, start=2):
                path, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                if not path or not label:
                    raise LabelError(f"{csv_path}:{line}: a row needs both a path and a label")
                examples.append(Example(absolute_path(path, base), label))
    except OSError as exc:
        raise LabelError(f"{csv_path}: cannot read ({exc.strerror or exc})") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise LabelError(f"{csv_path}: not a readable CSV ({exc})") from exc
    if not examples:
        raise LabelError(f"{csv_path}: no labelled rows")
    return examples


def read_folder_labels(root: str | Path) -> list[Example]:
    """Every file below each subfolder of `root`, labelled with the subfolder's name."""
    root_path = Path(absolute_path(root))
    if not root_path.is_dir():
        raise LabelError(f"{root_path}: not a folder")
    examples = []
    folders = sorted(p for p in root_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            examples.extend(
                Example(canonical(os.path.join(dirpath, name)), folder.name)
                for name in sorted(filenames)
                if not name.startswith(".")
            )
    if not examples:
        raise LabelError(f"{root_path}: no files in class subfolders (expected ROOT/LABEL/IMAGE)")
    return examples
