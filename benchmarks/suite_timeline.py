"""How `make check` (or `make test`) spends its time: each test worker's files over time, and the slowest items.

Usage: python benchmarks/suite_timeline.py [--test]

Runs `make check` (`make test` with --test) in this checkout with a small pytest plugin
(_suite_timeline_plugin.py) that records when each test phase starts and stops and on which xdist worker.
Prints the wall time, when the first test started, each worker's files of 2 s or more (start, end, seconds) and
when it fell idle, and the ten slowest tests (setup + call + teardown); saves benchmarks/results/suite_timeline.json
(suite_timeline.test.json with --test). Run it on a fresh clone with nothing else running: the figures are the
machine's, and a second program on two cores changes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import machine_info, save_results  # noqa: E402

SHOWN_FILE_SECONDS = 2.0


def run_suite(target: str, timeline: Path) -> tuple[float, int, str]:
    """Runs `make <target>` with the timeline plugin; its wall seconds, exit code and last output line with 'passed'."""
    env = {**os.environ, "SUITE_TIMELINE": str(timeline),
           "PYTEST_ADDOPTS": f"{os.environ.get('PYTEST_ADDOPTS', '')} -p _suite_timeline_plugin".strip(),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    start = time.monotonic()
    done = subprocess.run(["make", target], cwd=HERE.parent, env=env, capture_output=True, text=True)
    wall = time.monotonic() - start
    sys.stdout.write(done.stdout[-4000:])
    sys.stderr.write(done.stderr[-2000:])
    summary = next((line.strip("= ") for line in reversed(done.stdout.splitlines()) if " passed" in line), "")
    return wall, done.returncode, summary


def main_session(timeline: Path) -> tuple[float, float, list[dict]]:
    """The pytest session with the most test phases (make test also runs the widget tests in a session of their own)."""
    sessions: list[dict] = []
    for line in timeline.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["event"] == "session_start":
            sessions.append({"start": row["time"], "end": row["time"], "phases": []})
        elif row["event"] == "session_end":
            sessions[-1]["end"] = row["time"]
        else:
            sessions[-1]["phases"].append(row)
    session = max(sessions, key=lambda s: len(s["phases"]))
    return session["start"], session["end"], session["phases"]


def worker_timelines(start: float, phases: list[dict]) -> dict[str, dict]:
    """Per worker: when it fell idle and its files in the order it ran them (seconds from the session's start)."""
    workers: dict[str, dict] = defaultdict(lambda: {"files": {}, "idle_at_s": 0.0})
    for phase in sorted(phases, key=lambda p: p["start"]):
        worker = workers[phase["worker"]]
        name = phase["nodeid"].split("::")[0]
        begin, end = phase["start"] - start, phase["stop"] - start
        first, last = worker["files"].get(name, (begin, end))
        worker["files"][name] = (min(first, begin), max(last, end))
        worker["idle_at_s"] = max(worker["idle_at_s"], end)
    return {name: {"idle_at_s": round(worker["idle_at_s"], 1),
                   "files": [{"file": file, "start_s": round(a, 1), "end_s": round(b, 1), "seconds": round(b - a, 1)}
                             for file, (a, b) in worker["files"].items()]}
            for name, worker in sorted(workers.items())}


def slowest(phases: list[dict], count: int = 10) -> list[dict]:
    """The tests that took longest, setup, call and teardown together."""
    seconds: dict[str, float] = defaultdict(float)
    for phase in phases:
        seconds[phase["nodeid"]] += phase["stop"] - phase["start"]
    ranked = sorted(seconds.items(), key=lambda item: -item[1])[:count]
    return [{"test": nodeid, "seconds": round(value, 1)} for nodeid, value in ranked]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", action="store_true", help="time `make test` instead of `make check`")
    target = "test" if parser.parse_args().test else "check"
    info = machine_info()
    with tempfile.TemporaryDirectory() as folder:
        timeline = Path(folder) / "timeline.jsonl"
        wall, code, summary = run_suite(target, timeline)
        start, end, phases = main_session(timeline)
    workers = worker_timelines(start, phases)
    result = {"command": f"make {target}", "exit_code": code, "wall_s": round(wall, 1), "pytest_s": round(end - start, 1),
              "first_test_s": round(min(p["start"] for p in phases) - start, 1), "summary": summary,
              "workers": workers, "slowest": slowest(phases), "machine": info}
    print(f"\nmake {target}: {result['wall_s']} s wall (exit {code}); pytest {result['pytest_s']} s, first test at "
          f"{result['first_test_s']} s; {summary}")
    for name, worker in workers.items():
        print(f"{name}: idle at {worker['idle_at_s']} s")
        for row in worker["files"]:
            if row["seconds"] >= SHOWN_FILE_SECONDS:
                print(f"  {row['start_s']:6.1f} - {row['end_s']:6.1f} s  {row['seconds']:6.1f} s  {row['file']}")
    print("slowest tests:")
    for row in result["slowest"]:
        print(f"  {row['seconds']:6.1f} s  {row['test']}")
    save_results("suite_timeline.test" if target == "test" else "suite_timeline", result)
    return code


if __name__ == "__main__":
    sys.exit(main())
