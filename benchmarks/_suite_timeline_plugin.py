"""A pytest plugin for suite_timeline.py: the controller writes each test phase's worker, start and stop as JSON lines.

Loaded with ``-p _suite_timeline_plugin`` (benchmarks/ on PYTHONPATH); writes to the file named by SUITE_TIMELINE.
Under pytest-xdist only the controller writes (the workers' reports reach it with their worker's id).
"""

from __future__ import annotations

import json
import os
import time
from typing import IO

import pytest

_out: list[IO[str]] = []


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("SUITE_TIMELINE") and not hasattr(config, "workerinput"):
        _out.append(open(os.environ["SUITE_TIMELINE"], "a", encoding="utf-8"))  # closed at unconfigure
        _write({"event": "session_start", "time": time.time()})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    node = getattr(report, "node", None)
    worker = node.gateway.id if node is not None else "main"
    _write({"event": "phase", "worker": worker, "nodeid": report.nodeid, "when": report.when, "start": report.start,
            "stop": report.stop, "outcome": report.outcome})


def pytest_unconfigure(config: pytest.Config) -> None:
    if _out:
        _write({"event": "session_end", "time": time.time()})
        _out.pop().close()


def _write(row: dict) -> None:
    if _out:
        _out[0].write(json.dumps(row) + "\n")
        _out[0].flush()
