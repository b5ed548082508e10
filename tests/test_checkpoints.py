"""course_lib.checkpoints: files read with weights_only=True, fingerprints and identities, random states, a full disk,
and one training per run folder (two real processes)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import TINY_RECIPE, tiny_run, write_course_yaml, write_tiny_profile

from course_lib.checkpoints import (
    HOLDER_NOTE,
    CheckpointError,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    seed_everything,
    set_rng_states,
)
from course_lib.files import DiskFullError, temporary_path
from course_lib.model import run_dir_for
from course_lib.train import fit, read_history

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"recipe": "tiny", "settings": {"lr": 0.001}, "width": 0.125, "text_dim": 16}


def small_checkpoint(path: Path, identity: dict | None = None) -> Path:
    """A checkpoint with one recognisable tensor (0, 1, ..., 1023 as float32) and an identity."""
    model = {"fc.weight": torch.arange(1024, dtype=torch.float32).reshape(32, 32), "fc.bias": torch.zeros(32)}
    return save_checkpoint({"model": model, "identity": identity or IDENTITY, "epoch": 3, "history": [{"val_loss": 1.5}]},
                           path)


def test_a_checkpoint_holds_plain_values_only_and_restores_every_random_state(tmp_path: Path) -> None:
    seed_everything(3)
    loader_rng = torch.Generator().manual_seed(5)
    for draw in (random.random, np.random.standard_normal, lambda: torch.rand(2), lambda: torch.rand(2, generator=loader_rng)):
        draw()  # states part-way through their sequences (NumPy's with a cached Gaussian)
    save_checkpoint({"model": {"w": torch.ones(2)}, "identity": IDENTITY, "rng": rng_states(loader_rng)}, tmp_path / "a.pt")
    draws = lambda generator: (random.random(), np.random.rand(), np.random.standard_normal(), torch.rand(3).tolist(),  # noqa: E731
                               torch.rand(3, generator=generator).tolist())
    expected = draws(loader_rng)
    seed_everything(99)
    other = torch.Generator().manual_seed(99)
    plain = torch.load(tmp_path / "a.pt", weights_only=True)  # torch's own safe loader, nothing allowed beyond its defaults
    set_rng_states(plain["rng"], other)
    assert draws(other) == expected
    assert load_checkpoint(tmp_path / "a.pt", IDENTITY)["rng"]["python"] == plain["rng"]["python"]


def test_a_value_weights_only_could_not_read_back_is_refused_when_saving(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="float64"):
        save_checkpoint({"model": {"w": torch.ones(2)}, "identity": IDENTITY, "val_loss": np.float64(1.0)}, tmp_path / "a.pt")
    assert not (tmp_path / "a.pt").exists()


def _garble(data: bytes) -> bytes:
    """Flip one byte inside the recognisable tensor's stored values (torch itself does not notice)."""
    start = data.find(torch.arange(1024, dtype=torch.float32).numpy().tobytes())
    assert start >= 0
    at = start + 2001
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1 :]


def _edit(path: Path) -> bytes:
    """Change one weight and save with torch.save, keeping the old fingerprint."""
    content = torch.load(path, weights_only=True)
    content["model"]["fc.bias"][0] = 1.0
    torch.save(content, path)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda path: path.read_bytes()[: path.stat().st_size // 2], "damaged"),
        (lambda path: b"", "damaged"),
        (lambda path: bytes(4096), "damaged"),
        (lambda path: _garble(path.read_bytes()), "does not match its fingerprint"),
        (_edit, "does not match its fingerprint"),
    ],
    ids=["truncated", "empty", "zeroed-4KB", "garbled", "edited"],
)
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_what_to_do(tmp_path: Path, damage, said: str) -> None:
    path = small_checkpoint(tmp_path / "run" / "best.pt")
    assert torch.equal(load_checkpoint(path)["model"]["fc.weight"].ravel(), torch.arange(1024, dtype=torch.float32))
    path.write_bytes(damage(path))
    with pytest.raises(CheckpointError, match=said) as refused:
        load_checkpoint(path)
    assert str(path) in str(refused.value) and f"Delete the run folder {path.parent}" in str(refused.value)


def test_a_checkpoint_of_another_setup_names_what_differs(tmp_path: Path) -> None:
    path = small_checkpoint(tmp_path / "best.pt", {**IDENTITY, "text_dim": 768})
    with pytest.raises(CheckpointError, match=r"another setup.*\n  text_dim: checkpoint 768, now 16") as refused:
        load_checkpoint(path, IDENTITY)
    assert str(path) in str(refused.value)


def test_a_checkpoint_without_fingerprint_is_refused(tmp_path: Path) -> None:
    """What an earlier course version wrote (or any other program): no fingerprint to check, so not used. A file that is
    not a run's best.pt or last.pt is not answered with advice to delete its folder."""
    torch.save({"model": {"w": torch.ones(2)}, "identity": IDENTITY}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="no fingerprint") as refused:
        load_checkpoint(tmp_path / "model.pt")
    assert f"Use another checkpoint than {tmp_path / 'model.pt'}" in str(refused.value) and "Delete" not in str(refused.value)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full, a device that is always full")
def test_a_full_disk_while_writing_a_checkpoint_names_the_folder_and_the_space(tmp_path: Path) -> None:
    """last.pt's temporary file leads to /dev/full: every write to it fails with 'no space left on device'."""
    model, train_split, val_split, recipe, identity = tiny_run(tmp_path / "data", {**TINY_RECIPE, "max_epochs": 1})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    temporary_path(run_dir / "last.pt").symlink_to("/dev/full")
    with pytest.raises(DiskFullError) as full:
        fit(model, train_split, val_split, recipe, run_dir, identity, device="cpu", verbose=False)
    message = str(full.value)
    assert f"while writing last.pt in {run_dir}" in message and "are free there" in message and "needs about" in message
    assert not (run_dir / "last.pt").exists() and not temporary_path(run_dir / "last.pt").is_symlink()


# --- one training per run folder: two real processes -------------------------------------------------------------

RUNNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from course_lib import train
    from course_lib.config import load_config
    yaml_path, data_root, gate = sys.argv[1], sys.argv[2], sys.argv[3]
    if gate != "-":  # hold the first epoch until the test says go (the second run has started waiting by then)
        original = train.train_one_epoch
        def gated(*args, **kwargs):
            while not Path(gate).exists():
                time.sleep(0.05)
            return original(*args, **kwargs)
        train.train_one_epoch = gated
    cfg = load_config("synthetic", data_root=data_root, yaml_path=yaml_path)
    print("RESULT", train.ensure_trained(cfg), flush=True)
    """
)


def _start(tmp_path: Path, yaml_path: Path, data_root: Path, name: str, gate: Path | None = None) -> subprocess.Popen:
    script = tmp_path / "runner.py"
    script.write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("COURSE_QUICK", None)
    out = open(tmp_path / f"{name}.out", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen([sys.executable, str(script), str(yaml_path), str(data_root), str(gate or "-")], env=env,
                            stdout=out, stderr=subprocess.STDOUT, text=True)


def _wait_for(condition, what: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("other_settings", [False, True], ids=["same-settings", "other-settings"])
def test_a_second_run_on_a_run_folder_waits_naming_the_holder(tmp_path: Path, other_settings: bool) -> None:
    """Same settings: the second run waits, then reuses the first's model (one training). Other settings: it waits,
    then stops, naming what differs; the first run's files are left as they were."""
    cfg = write_tiny_profile(tmp_path)
    first_yaml = tmp_path / "course.yaml"
    second_yaml = write_course_yaml(tmp_path / "other.yaml", {"tiny": {**TINY_RECIPE, "max_epochs": 1, "lr": 0.002}}, "tiny") \
        if other_settings else first_yaml
    run_dir, gate = run_dir_for(cfg), tmp_path / "go"
    first = _start(tmp_path, first_yaml, cfg.data_root, "first", gate)
    _wait_for(lambda: (run_dir / HOLDER_NOTE).is_file() or first.poll() is not None, "the first run to take the folder")
    second = _start(tmp_path, second_yaml, cfg.data_root, "second")
    _wait_for(lambda: "is in use" in (tmp_path / "second.out").read_text() or second.poll() is not None,
              "the second run to wait")
    gate.touch()
    assert first.wait(timeout=300) == 0, (tmp_path / "first.out").read_text()
    returncode, said = second.wait(timeout=300), (tmp_path / "second.out").read_text()
    assert f"process {first.pid} on" in said and "is training there" in said
    assert list(read_history(run_dir)["epoch"]) == [0, 1]  # trained once, by the first run
    if other_settings:
        assert returncode != 0 and "CheckpointError" in said and "settings.lr: checkpoint 0.001, now 0.002" in said
    else:
        assert returncode == 0 and "Reusing the trained model" in said and "epoch   1" not in said, said
    assert load_checkpoint(run_dir / "last.pt")["identity"]["settings"]["lr"] == 0.001
    assert not (run_dir / HOLDER_NOTE).exists()
