"""Writing artifacts safely: a file appears under its final name only once it is complete.

Every stage of the course writes its outputs through `atomic_path`: the data is written to a
temporary name in the same folder and renamed into place at the end. An interrupted run (an
error, Ctrl-C, a Colab reset) therefore never leaves a file that looks finished, and the
temporary file is removed when the writer fails. Two more safeguards, after the lesson:

* ``building(path)``: a lock per artifact, so that two runs on one data root (two notebooks, a
  notebook and ``make course``) never build the same file at once: the second waits and says so.
* ``remove_stale``: sweeps what a killed process left, and only that: a temporary's name carries
  its owner (process id and host), and a temporary whose owner still runs is left alone.

A full disk while writing raises ``DiskFullError``, which says where and how much space is free.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

__all__ = [
    "TEMPORARY_SUFFIX", "LOCK_SUFFIX", "atomic_path", "write_text_atomically", "write_json_atomically",
    "replace_folder", "building", "HOST", "temporary_path", "owner_is_gone", "remove_stale", "is_disk_full",
    "describe_bytes", "free_bytes", "DiskFullError", "check_free_space",
]

TEMPORARY_SUFFIX = ".partial"
LOCK_SUFFIX = ".lock"


@contextmanager
def atomic_path(path: str | Path, needed_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError.while_writing(path, needed_bytes) from exc
        raise
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write a text file (UTF-8) atomically."""
    with atomic_path(path, needed_bytes=len(text.encode("utf-8"))) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomically(path: str | Path, data: Any) -> Path:
    """Write JSON (indented, UTF-8, non-ASCII kept) atomically."""
    return write_text_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def replace_folder(new: str | Path, target: str | Path) -> Path:
    """Put the finished folder ``new`` at ``target``, renames only: readers see the old folder or the new, never half.

    The one way the course puts a whole folder in place (a generated dataset, an extracted Clotho split).
    """
    new, target = Path(new), Path(target)
    if target.exists():
        old = temporary_path(target, kind="old")
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)
    return target


# --- two runs on one data root: a lock per artifact ------------------------------------------------


_held: dict[tuple[int, Path], int] = {}  # (thread, artifact) being built: re-entrant within one thread


@contextmanager
def building(path: str | Path, timeout_seconds: float = -1) -> Iterator[Path]:
    """Hold the lock of artifact ``path`` while building it; wait (and say so) while another run holds it.

    Wrap each writer: ``with building(target): ...check it, build it if needed...``. Check again
    inside: the run that held the lock may have built the artifact meanwhile. ``timeout_seconds``
    -1 waits as long as it takes. The lock file (``.<name>.lock`` beside the artifact) stays;
    it is released by the operating system when its holder exits, even after ``kill -9``.
    """
    path = Path(path).absolute()
    key = (threading.get_ident(), path)
    if key in _held:  # this thread holds it already (a stage calling a helper that also locks)
        _held[key] += 1
        try:
            yield path
        finally:
            _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path.with_name(f".{path.name}{LOCK_SUFFIX}"))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"Another run is building {path}; waiting for it to finish (lock file {lock.lock_file}).", flush=True)
        try:
            lock.acquire(timeout=timeout_seconds)
        except filelock.Timeout:
            raise TimeoutError(
                f"Another run kept building {path} for more than {timeout_seconds:g} s. Wait for it to finish, or stop "
                f"it; if no other run is going, delete {lock.lock_file} and try again."
            ) from None
        print(f"The other run finished with {path.name}; continuing.", flush=True)
    _held[key] = 1
    try:
        yield path
    finally:
        del _held[key]
        lock.release()


# --- temporaries that name their owner -------------------------------------------------------------------

HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "localhost")  # no dots: names split on them
# .<name>.<pid>@<host>.partial (written now) or .<name>.<pid>.partial (written by older versions: this host)
_OWNER = re.compile(r"(?:[a-z]+\.)?(?P<pid>\d+)(?:@(?P<host>[A-Za-z0-9_-]+))?")


def temporary_path(path: str | Path, kind: str = "") -> Path:
    """The temporary name of ``path`` for this process: ``.<name>.[<kind>.]<pid>@<host>.partial``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind + '.' if kind else ''}{os.getpid()}@{HOST}{TEMPORARY_SUFFIX}")


def owner_is_gone(pid: int, host: str | None = None) -> bool:
    """True when the process ``pid`` on ``host`` (default: this one) has certainly exited.

    A temporary made on another machine (a shared network folder) is never judged gone, nor is
    one whose process cannot be checked (Windows without psutil): leaving it only costs disk.
    """
    if host not in (None, HOST):
        return False
    if pid == os.getpid():
        return False
    if os.name == "posix":
        try:
            os.kill(pid, 0)  # signal 0 only checks whether the process exists
        except ProcessLookupError:
            return True
        except OSError:  # it exists but belongs to someone else
            return False
        return _is_zombie(pid)
    try:
        import psutil
    except ImportError:
        return False
    return not psutil.pid_exists(pid)


def _is_zombie(pid: int) -> bool:
    """A process that exited but was not yet reaped by its parent (Linux only; False elsewhere)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def remove_stale(folder: str | Path, name: str = "*") -> list[Path]:
    """Delete the temporaries ``atomic_path`` left for ``name`` in ``folder`` whose owner process is gone."""
    removed = []
    for leftover in Path(folder).glob(f".{name}.*{TEMPORARY_SUFFIX}"):
        owner = leftover.name[len(f".{name}.") : -len(TEMPORARY_SUFFIX)] if name != "*" else leftover.name.split(".")[-2]
        match = _OWNER.fullmatch(owner)
        if match is None or not owner_is_gone(int(match["pid"]), match["host"]):
            continue  # another file's temporary, or a run that is still writing it
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


# --- a full disk ---------------------------------------------------------------------------------------------


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def describe_bytes(count: float) -> str:
    """A byte count in words a person reads at a glance: '1.2 GB', '340 MB', '12 kB'."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} bytes"


def free_bytes(folder: str | Path) -> int | None:
    """Free space of the disk holding ``folder`` (or its nearest existing parent); None when unknown."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


class DiskFullError(OSError):
    """The disk is full: the message names the folder, the free space and (when known) what is needed."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @classmethod
    def while_writing(cls, path: str | Path, needed_bytes: int | None = None) -> DiskFullError:
        """The error for a write to ``path`` that found no space left."""
        path = Path(path)
        free = free_bytes(path.parent)
        has = f"{describe_bytes(free)} are free there" if free is not None else "the free space there is unknown"
        needs = f"; this step needs about {describe_bytes(needed_bytes)}" if needed_bytes else ""
        return cls(
            f"The disk is full (no space left on device) while writing {path.name} in {path.parent}: {has}{needs}. "
            "Free disk space there, or set COURSE_DATA_DIR to a folder on a disk with more room, and run the step again."
        )


def check_free_space(folder: str | Path, needed_bytes: int, what: str) -> None:
    """Raise DiskFullError before starting ``what`` when ``folder``'s disk has less than ``needed_bytes`` free."""
    free = free_bytes(folder)
    if free is not None and free < needed_bytes:
        raise DiskFullError(
            f"Not enough disk space for {what} in {Path(folder)}: it needs about {describe_bytes(needed_bytes)}, "
            f"{describe_bytes(free)} are free. Free disk space there, or set COURSE_DATA_DIR to a folder on a disk "
            "with more room, and run it again."
        )

