"""course_lib._pool: results in order, workers that die with their parent, scripts without the main guard."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from course_lib._pool import map_in_processes, run_jobs

ROOT = Path(__file__).resolve().parents[1]


def process_id(_: int) -> int:
    return os.getpid()


def test_results_come_in_order_from_worker_processes():
    assert run_jobs(math.sqrt, [1, 4, 9, 16, 25], workers=2) == [1, 2, 3, 4, 5]
    pids = set(run_jobs(process_id, range(8), workers=2, chunksize=1))
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


def test_one_worker_runs_here_and_preload_is_imported():
    assert run_jobs(process_id, range(3), workers=1) == [os.getpid()] * 3
    assert run_jobs(math.sqrt, [4, 9], workers=2, preload=["json"]) == [2, 3]


def test_an_error_in_a_job_reaches_the_caller():
    with pytest.raises(ValueError, match="math domain error"):
        run_jobs(math.sqrt, [1, -1, 4], workers=2)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_script(tmp_path: Path, code: str) -> subprocess.Popen:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.skipif(sys.platform != "linux", reason="checks processes through /proc")
def test_workers_exit_when_their_parent_is_killed(tmp_path):
    parent = run_script(tmp_path, """
        import os, time
        from course_lib._pool import map_in_processes

        def work(_):
            time.sleep(0.2)
            return os.getpid()

        if __name__ == "__main__":
            results = map_in_processes(work, range(6), workers=2, chunksize=1)
            pids = {next(results) for _ in range(4)}
            print(" ".join(map(str, sorted(pids))), flush=True)
            time.sleep(600)  # the pool stays open, its workers idle: then the parent is killed
        """)
    try:
        line = parent.stdout.readline()
        workers = [int(pid) for pid in line.split()]
        assert workers, parent.stderr.read()
        assert all(alive(pid) for pid in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 30  # generous on a busy machine; they normally go within a second
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed parent"


def test_a_script_without_the_main_guard_runs_in_one_process_and_says_why(tmp_path):
    script = run_script(tmp_path, """
        import math
        from course_lib._pool import run_jobs
        print("top level", flush=True)
        print(run_jobs(math.sqrt, [1, 4, 9, 16], workers=2))
        """)
    out, err = script.communicate(timeout=120)
    assert script.returncode == 0, err
    assert out.splitlines() == ["top level", "[1.0, 2.0, 3.0, 4.0]"]  # the script ran once, not once a worker
    assert 'if __name__ == "__main__":' in err and "script.py" in err and "one process" in err


def test_a_guarded_script_uses_workers_without_a_note(tmp_path):
    script = run_script(tmp_path, """
        import os
        from course_lib._pool import run_jobs

        def pid(_):
            return os.getpid()

        if __name__ == "__main__":
            print(os.getpid() in run_jobs(pid, range(4), workers=2, chunksize=1))
        """)
    out, err = script.communicate(timeout=120)
    assert script.returncode == 0, err
    assert out.strip() == "False" and "__main__" not in err


def test_closing_early_cancels_the_rest():
    results = map_in_processes(math.sqrt, range(200), workers=2, chunksize=1)
    assert next(results) == 0
    results.close()  # no hang: the jobs not yet started are dropped
