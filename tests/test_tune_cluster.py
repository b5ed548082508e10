"""course_lib.tune on a real Ray cluster started with `ray start`, and Ray's helper processes at exit.

Split from test_tune.py so that pytest-xdist runs these two slow tests (each starts Ray of its own) beside
the rest of the Tune tests instead of after them. Ray is optional: skipped without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.long(80)]  # make test runs it, first; make check leaves it out (pyproject.toml)

REPO = Path(__file__).resolve().parents[1]
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed: pip install -e ".[tune]"')


RAY_EXIT = textwrap.dedent(
    """
    import json, psutil
    from course_lib import tune as course_tune

    def running(pids):
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        return alive

    course_tune.start_ray(num_cpus=1)
    first = [process.pid for process in psutil.Process().children(recursive=True)]
    course_tune.stop_ray()
    left = running(first)
    course_tune.start_ray(num_cpus=1)
    second = [process.pid for process in psutil.Process().children(recursive=True)]
    print(json.dumps({"first": first, "left": left, "second": second}))
    """  # and ends without stop_ray
)


@needs_ray
def test_rays_helper_processes_stop_with_stop_ray_and_at_exit() -> None:
    import psutil

    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    done = subprocess.run([sys.executable, "-c", RAY_EXIT], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(report["first"]) >= 2 and len(report["second"]) >= 2, "a local Ray runs helper processes (GCS, raylet, ...)"
    assert report["left"] == [], "stop_ray returns once its helper processes have ended"
    left = [pid for pid in report["second"] if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert left == [], "a program that ends without stop_ray leaves no Ray process behind"


# --- a real cluster on this machine --------------------------------------------------------------

CLIENT = textwrap.dedent(
    """
    import json, sys
    from course_lib import tune as course_tune
    from course_lib.config import load_config
    from ray import tune
    address, data_root, yaml_path, storage = sys.argv[1:5]
    resources = course_tune.start_ray(address=address)
    cfg = load_config("synthetic", data_root=data_root, yaml_path=yaml_path)
    space = {"recipe": "baseline", "lr": tune.grid_search([1e-3, 2e-3]), "batch_size": 4, "max_epochs": 1}
    results = course_tune.make_tuner(cfg, space, storage_path=storage, name="on-cluster").fit()
    table = course_tune.results_table(results)
    print(json.dumps({"cpus": resources.get("CPU"), "errors": len(results.errors), "epochs": table["epochs"].tolist(),
                      "nodes": sorted({str(r.metrics.get("node_ip")) for r in results})}))
    course_tune.stop_ray()
    """
)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def stop_cluster(temp_dir: Path) -> None:
    """Stop the Ray processes of the cluster whose temporary folder is temp_dir, and their children.

    `ray stop` would stop every Ray process on the machine; this stops only the cluster the test started.
    """
    import psutil

    roots = [proc for proc in psutil.process_iter(["cmdline"]) if any(str(temp_dir) in arg for arg in proc.info["cmdline"] or [])]
    procs = list({proc.pid: proc for root in roots for proc in [root, *root.children(recursive=True)]}.values())
    for proc in procs:
        proc.terminate()
    for proc in psutil.wait_procs(procs, timeout=20)[1]:
        proc.kill()


@needs_ray
def test_a_search_runs_on_a_cluster_started_with_ray_start(tune_profile, tmp_path) -> None:
    """`ray start --head` on a free port with its own temporary folder and token; a client with the token runs 2 trials."""
    temp_dir = Path(f"/tmp/ray-test-{secrets.token_hex(4)}")  # short: Ray's socket paths must stay under 107 characters
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    # Head and client on this machine talk over 127.0.0.1 only (Ray would otherwise use the machine's address).
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    gcs, node_manager, object_manager, agent_grpc, agent_http, metrics, runtime_env = free_ports(7)
    ray_bin = Path(sys.executable).parent / "ray"
    start = [str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
             "--node-manager-port", str(node_manager), "--object-manager-port", str(object_manager),
             "--dashboard-agent-grpc-port", str(agent_grpc), "--dashboard-agent-listen-port", str(agent_http),
             "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
             "--temp-dir", str(temp_dir), "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"]
    try:
        started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        root = tune_profile.data_root
        arguments = [f"127.0.0.1:{gcs}", str(root), str(root.parent / "tiny.yaml"), str(tmp_path)]
        client = subprocess.run([sys.executable, "-c", CLIENT, *arguments], env=env, capture_output=True, text=True,
                                timeout=400, cwd=REPO)
        assert client.returncode == 0, client.stderr[-3000:]
        report = json.loads(client.stdout.strip().splitlines()[-1])
        assert report == {"cpus": 2.0, "errors": 0, "epochs": [1, 1], "nodes": ["127.0.0.1"]}
    finally:
        stop_cluster(temp_dir)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def test_stop_ray_leaves_child_processes_that_are_not_rays_alone() -> None:
    """The course's process pool (multiprocessing's fork server and workers) must survive stop_ray."""
    import multiprocessing
    import time

    from course_lib import tune as course_tune

    other = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(30,))
    other.start()
    try:
        assert other.pid not in {process.pid for process in course_tune._local_ray_processes()}
    finally:
        other.kill()
        other.join()
