"""Writing artifacts safely: a file appears under its final name only once it is complete.

Every stage of the course writes its outputs through `atomic_path`: the data is written to a
temporary name in the same folder and renamed into place at the end. An interrupted run (an
error, Ctrl-C, a Colab reset) therefore never leaves a file that looks finished, and the
temporary file is removed when the writer fails. `remove_stale` sweeps what a killed process
could not clean up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMPORARY_SUFFIX = ".partial"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file (UTF-8) atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, UTF-8, non-ASCII kept) atomically."""
    return write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def remove_stale(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete temporary files that ``atomic_path`` left for ``name`` in ``folder`` (after a hard kill)."""
    removed = []
    for leftover in Path(folder).glob(f".{name}.*{TEMPORARY_SUFFIX}"):
        if leftover.is_file():
            leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed
