"""course_lib.download.fetch: each kind of failure, against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
from clotho_fixtures import FileServer, fill_disk_when_writing

from course_lib import download
from course_lib.download import DownloadError, fetch

NAME = "weights.bin"
BODY = bytes(range(256)) * 4000  # about 1 MB: several chunks
MD5 = hashlib.md5(BODY).hexdigest()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: None))  # no pause between retries
    running = FileServer({NAME: BODY})
    yield running
    running.close()


@pytest.fixture
def target(tmp_path):
    return tmp_path / "downloads" / NAME


def get(server, target, **kwargs):
    return fetch(f"{server.url}/{NAME}", kwargs.pop("md5", MD5), target, progress=False, **kwargs)


def leftovers(folder):
    """What a fetch left beside the file, besides its lock file (which stays, empty, on purpose)."""
    return [path.name for path in folder.iterdir() if path.name not in (NAME, f".{NAME}.lock")] if folder.is_dir() else []


def test_good_download_then_reuse_without_a_request(server, target):
    assert get(server, target) == target
    assert target.read_bytes() == BODY and server.requests == [NAME]
    assert get(server, target) == target
    assert server.requests == [NAME]  # the md5 of the file on disk matched: no second request
    assert leftovers(target.parent) == []


def test_a_wrong_file_on_disk_is_downloaded_again(server, target, capsys):
    target.parent.mkdir()
    target.write_bytes(b"an older version")
    get(server, target)
    assert target.read_bytes() == BODY and "does not match md5" in capsys.readouterr().out


def test_checksum_mismatch_removes_the_file_and_does_not_retry(server, target):
    server.corrupt.add(NAME)
    with pytest.raises(DownloadError, match=f"has md5 [0-9a-f]{{32}}, not the published {MD5}") as err:
        get(server, target)
    assert err.value.kind == "checksum" and server.requests == [NAME]
    assert not target.exists() and leftovers(target.parent) == []


@pytest.mark.parametrize("url", ["htp://127.0.0.1/files/weights.bin", "127.0.0.1/files/weights.bin", "http://"])
def test_a_malformed_url_is_named_and_not_retried(target, url, monkeypatch):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: pytest.fail("retried")))
    with pytest.raises(DownloadError, match="is not a valid download address") as err:
        fetch(url, MD5, target, progress=False)
    assert err.value.kind == "url" and repr(url) in str(err.value) and "md5" not in str(err.value)
    assert leftovers(target.parent) == []


def test_not_found_is_not_retried_and_says_where_to_save(server, target):
    url = f"{server.url}/moved.bin"
    with pytest.raises(DownloadError, match=r"not found \(404\)") as err:
        fetch(url, MD5, target, progress=False)
    assert err.value.kind == "http" and url in str(err.value) and f"save it as {target}" in str(err.value)
    assert server.requests == ["moved.bin"] and leftovers(target.parent) == []


def test_forbidden_is_not_retried(server, target):
    server.status[NAME] = 403
    with pytest.raises(DownloadError, match=r"refused .*\(403 Forbidden\)") as err:
        get(server, target)
    assert err.value.kind == "http" and server.requests == [NAME]


def test_server_errors_are_retried_then_blame_the_connection(server, target):
    server.status[NAME] = 503
    with pytest.raises(DownloadError, match="after 3 tries .*Check your internet connection") as err:
        get(server, target)
    assert err.value.kind == "connection" and server.requests == [NAME] * 3
    assert not target.exists() and leftovers(target.parent) == []


def test_a_broken_transfer_restarts_and_succeeds(server, target):
    server.break_once.add(NAME)
    get(server, target)
    assert server.requests == [NAME, NAME] and target.read_bytes() == BODY
    assert leftovers(target.parent) == []


def test_no_server_is_a_connection_error_after_retries(target, monkeypatch):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadError, match="after 2 tries") as err:
        fetch(f"http://127.0.0.1:{port}/{NAME}", MD5, target, retries=2, timeout_seconds=5, progress=False)
    assert err.value.kind == "connection" and isinstance(err.value.__cause__, OSError)


def test_a_folder_that_cannot_be_created_is_a_local_problem(server, tmp_path):
    blocker = tmp_path / "downloads"
    blocker.write_text("a file where the folder should be")  # refused even to root, unlike chmod
    target = blocker / "sub" / NAME
    with pytest.raises(DownloadError, match="The problem is on this machine") as err:
        get(server, target)
    assert err.value.kind == "local" and str(target.parent) in str(err.value)
    assert server.requests == []


def test_a_full_disk_during_the_transfer_is_a_local_problem_and_not_retried(server, target, monkeypatch):
    fill_disk_when_writing(monkeypatch, download, "incomplete")
    with pytest.raises(DownloadError) as err:
        get(server, target)
    message = str(err.value)
    assert err.value.kind == "local" and server.requests == [NAME]
    assert f"The disk is full (no space left on device) while writing {NAME} in {target.parent}" in message
    assert "are free there; this step needs about 1.0 MB" in message and "not the server" in message
    assert not target.exists() and leftovers(target.parent) == []


def test_the_partial_file_of_a_killed_download_is_swept(server, target, capsys):
    target.parent.mkdir()
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    stale = target.parent / f".{NAME}.{finished.pid}.partial"  # an older version's temporary; its writer has exited
    stale.write_bytes(BODY[:500])
    others = [target.parent / "tmpabcd1234", target.parent / ".other.bin.4242.partial"]
    for path in others:
        path.write_bytes(b"not ours")
    get(server, target)
    assert not stale.exists() and all(path.exists() for path in others)
    assert "removed the partial file of an interrupted download" in capsys.readouterr().out


def test_an_md5_is_required(target):
    with pytest.raises(ValueError, match="published md5"):
        fetch("http://127.0.0.1/x", "", target)


def test_host_reachable_answers_quickly_either_way():
    import socket

    from course_lib.download import host_reachable

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert host_reachable(f"http://127.0.0.1:{port}/file", timeout_seconds=1.0)
    assert not host_reachable(f"http://127.0.0.1:{port}/file", timeout_seconds=1.0)  # closed now
    assert not host_reachable("not a url")


# --- resuming, keeping the old file, two runs at once ------------------------------------------------------

def closed_port_url() -> str:
    with socket.socket() as probe:  # a port nobody listens on once the probe is closed
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/{NAME}"


def test_a_broken_transfer_resumes_where_it_stopped(server, target, capsys):
    server.break_once.add(NAME)
    get(server, target)
    assert target.read_bytes() == BODY and server.requests == [NAME, NAME]
    first, resumed_at = server.range_starts
    assert first is None and 0 < resumed_at <= len(BODY) // 2  # the second request asked only for the rest
    assert "resuming the interrupted download after" in capsys.readouterr().out
    assert leftovers(target.parent) == []


def test_a_download_interrupted_in_an_earlier_run_resumes(server, target):
    target.parent.mkdir()
    download.incomplete_path(target).write_bytes(BODY[:300_000])  # what a killed run received
    get(server, target)
    assert target.read_bytes() == BODY and server.range_starts == [300_000]


def test_without_range_support_the_download_restarts_cleanly(server, target, capsys):
    server.no_ranges.add(NAME)
    server.break_once.add(NAME)
    get(server, target)
    assert target.read_bytes() == BODY and server.range_starts[0] is None and server.range_starts[1] > 0  # asked: got all
    assert "cannot resume the interrupted download; starting again from byte 0" in capsys.readouterr().out


def test_a_resumed_file_that_fails_its_md5_is_downloaded_again_whole(server, target, capsys):
    target.parent.mkdir()
    download.incomplete_path(target).write_bytes(b"x" * 1000)  # bytes of another version of the file
    get(server, target)
    assert target.read_bytes() == BODY and server.range_starts == [1000, None]
    assert "does not match md5" in capsys.readouterr().out


def test_a_complete_incomplete_file_is_checked_not_downloaded(server, target):
    target.parent.mkdir()
    download.incomplete_path(target).write_bytes(BODY)  # killed after the last byte, before the rename
    get(server, target)
    assert target.read_bytes() == BODY and server.range_starts == [len(BODY)]  # answered 416: nothing left to send


def test_offline_a_mismatching_file_is_kept_until_a_replacement_arrives(target, monkeypatch, capsys):
    monkeypatch.setattr(download, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    target.parent.mkdir()
    target.write_bytes(b"an edited copy")
    with pytest.raises(DownloadError) as err:
        fetch(closed_port_url(), MD5, target, retries=1, progress=False)
    assert err.value.kind == "connection" and target.read_bytes() == b"an edited copy"
    assert "kept until the new one has arrived and matches" in capsys.readouterr().out


def test_an_interrupted_download_says_it_will_resume(server, target):
    server.break_once.add(NAME)
    with pytest.raises(DownloadError, match=r"The [0-9.]+ kB received so far are kept in .*; the next run resumes") as err:
        get(server, target, retries=1)
    assert err.value.kind == "connection" and 0 < download.incomplete_path(target).stat().st_size <= len(BODY) // 2


def test_two_processes_fetching_one_file_download_it_once(server, target, tmp_path):
    server.slow.add(NAME)  # about two seconds, so that the second run starts while the first downloads
    script = tmp_path / "fetch.py"
    script.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from course_lib.download import fetch
        fetch({server.url + "/" + NAME!r}, {MD5!r}, Path({str(target)!r}), progress=False)
        print("fetched")
        """))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    first = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        incomplete = download.incomplete_path(target)
        for _ in range(600):  # wait until the first run is downloading
            if incomplete.exists() or first.poll() is not None:
                break
            subprocess.run([sys.executable, "-c", "import time; time.sleep(0.05)"])
        second = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0 and out.strip() == "fetched", err
    assert second.returncode == 0, second.stderr
    assert f"Another run is building {target}; waiting" in second.stdout and "fetched" in second.stdout
    assert server.requests == [NAME] and target.read_bytes() == BODY  # one transfer, not two
