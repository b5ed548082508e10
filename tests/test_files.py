"""course_lib.files: atomic writes leave either the old file or the complete new one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from course_lib import files
from course_lib.files import (
    HOST,
    DiskFullError,
    atomic_path,
    building,
    check_free_space,
    remove_stale,
    temporary_path,
    write_json_atomically,
)

ROOT = Path(__file__).resolve().parents[1]


def test_success_replaces_the_target_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    with atomic_path(target) as temporary:
        assert temporary.parent == target.parent and temporary != target
        temporary.write_text("complete")
    assert target.read_text() == "complete"
    assert list(target.parent.iterdir()) == [target]


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_json_round_trip_keeps_non_ascii(tmp_path):
    path = write_json_atomically(tmp_path / "info.json", {"fname": "Café terrace.wav"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"fname": "Café terrace.wav"}
    assert "Café" in path.read_text(encoding="utf-8")


def test_remove_stale_sweeps_only_leftovers(tmp_path):
    keep = tmp_path / "features.hdf5"
    keep.write_text("valid")
    leftover = tmp_path / f".features.hdf5.{finished_pid()}.partial"  # its writer has exited
    leftover.write_text("killed mid-write")
    assert remove_stale(tmp_path, "features.hdf5") == [leftover]
    assert keep.exists() and not leftover.exists()


# --- owners of temporaries, locks, a full disk ---------------------------------------------------------


def finished_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_temporary_names_its_owner(tmp_path):
    with atomic_path(tmp_path / "table.csv") as temporary:
        assert temporary.name == f".table.csv.{os.getpid()}@{HOST}.partial"
        assert temporary == temporary_path(tmp_path / "table.csv")
        temporary.write_text("done")


def test_remove_stale_keeps_what_a_running_process_is_writing(tmp_path):
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as running:
        try:
            live = tmp_path / f".features.hdf5.{running.pid}@{HOST}.partial"
            dead = tmp_path / f".features.hdf5.{finished_pid()}@{HOST}.partial"
            old_style_dead = tmp_path / f".features.hdf5.{finished_pid()}.partial"  # written by an older version
            elsewhere = tmp_path / f".features.hdf5.{finished_pid()}@another-machine.partial"  # a shared folder
            mine = temporary_path(tmp_path / "features.hdf5")
            for path in (live, dead, old_style_dead, elsewhere, mine):
                path.write_text("partial")
            dead_folder = tmp_path / f".features.hdf5.old.{finished_pid()}@{HOST}.partial"
            dead_folder.mkdir()
            (dead_folder / "inside.wav").write_text("x")
            assert sorted(remove_stale(tmp_path, "features.hdf5")) == sorted([dead, old_style_dead, dead_folder])
            assert live.exists() and elsewhere.exists() and mine.exists()
        finally:
            running.kill()


def write_slowly_script(target: Path, marker: Path) -> str:
    return textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from course_lib.files import atomic_path, building, remove_stale
        target, marker = Path({str(target)!r}), Path({str(marker)!r})
        remove_stale(target.parent, target.name)  # what every stage does first
        with building(target):
            if target.exists():
                print("reused", target.read_text(), flush=True)
                sys.exit(0)
            with atomic_path(target) as temporary:
                temporary.write_text("first half ")
                marker.write_text("writing")
                time.sleep(3)  # the other process starts meanwhile
                with open(temporary, "a") as handle:
                    handle.write("second half")
            print("built", flush=True)
        """)


def test_two_processes_building_one_artifact_wait_for_each_other(tmp_path):
    target, marker = tmp_path / "prepared" / "table.csv", tmp_path / "first_is_writing"
    script = tmp_path / "build.py"
    script.write_text(write_slowly_script(target, marker))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, str(script)]
    first = subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(600):
            if marker.exists() or first.poll() is not None:
                break
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"])
        assert marker.exists(), first.communicate()[1]
        second = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and out.strip() == "built", err  # its temporary was not swept away
    assert second.returncode == 0, second.stderr
    assert f"Another run is building {target}; waiting" in second.stdout
    assert "reused first half second half" in second.stdout
    assert target.read_text() == "first half second half"


def test_building_is_reentrant_within_a_process(tmp_path):
    target = tmp_path / "x.bin"
    with building(target):
        with building(target):  # a stage calling a helper that locks the same artifact
            target.write_text("ok")
    with building(target, timeout_seconds=0):  # released
        pass


def test_a_full_disk_names_the_folder_and_the_space(tmp_path, monkeypatch):
    target = tmp_path / "prepared" / "embeddings.npz"
    with pytest.raises(DiskFullError) as err:
        with atomic_path(target, needed_bytes=3_000_000) as temporary:
            temporary.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(err.value)
    assert "The disk is full" in message and str(target.parent) in message and "embeddings.npz" in message
    assert "are free there" in message and "needs about 3.0 MB" in message and "COURSE_DATA_DIR" in message
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert not any(target.parent.iterdir())  # nothing half-written stays


def test_check_free_space_before_a_big_write(tmp_path):
    check_free_space(tmp_path, 1, "a tiny file")
    with pytest.raises(DiskFullError, match=r"Not enough disk space for a huge dataset in .* needs about .* are free"):
        check_free_space(tmp_path, 10**18, "a huge dataset")


def test_replace_folder_swaps_a_finished_folder_in_with_renames_only(tmp_path):
    target, new = tmp_path / "Clotho", tmp_path / ".Clotho.new"
    target.mkdir()
    (target / "old.wav").write_bytes(b"old")
    new.mkdir()
    (new / "new.wav").write_bytes(b"new")
    assert files.replace_folder(new, target) == target
    assert [path.name for path in target.iterdir()] == ["new.wav"] and not new.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["Clotho"], "the old folder is removed, nothing is left"
    other = tmp_path / ".other"
    other.mkdir()
    files.replace_folder(other, tmp_path / "fresh")
    assert (tmp_path / "fresh").is_dir()
