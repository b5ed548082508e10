"""course_lib.files: atomic writes leave either the old file or the complete new one."""

from __future__ import annotations

import json

import pytest

from course_lib.files import atomic_path, remove_stale, write_json_atomically


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
    leftover = tmp_path / ".features.hdf5.4242.partial"
    leftover.write_text("killed mid-write")
    assert remove_stale(tmp_path, "features.hdf5") == [leftover]
    assert keep.exists() and not leftover.exists()
