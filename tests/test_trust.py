"""What the course trusts (issue 19): a crafted checkpoint never runs code, through every way in; a damaged or foreign
best.pt or last.pt is refused, naming the file, before anything uses it; every checkpoint is read in one place.

One real tiny synthetic profile (built by the pipeline) with one real training run, copied back before each test.
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest
import torch
from tiny import prepared_tiny_profile

from course_lib import pipeline, train, tune
from course_lib.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from course_lib.cnn14 import CNN14Encoder
from course_lib.model import DualEncoder, load_trained_model, run_dir_for
from course_lib.search import SearchEngine

COURSE_LIB = Path(train.__file__).parent


class Marker:
    """Unpickling this object creates a file: a stand-in for the code a crafted checkpoint could run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory):
    """(cfg, a copy of its trained run folder)."""
    root = tmp_path_factory.mktemp("trust")
    cfg = prepared_tiny_profile(root)
    train.ensure_trained(cfg, verbose=False)
    good = shutil.copytree(run_dir_for(cfg), root / "good-run")
    return cfg, good


@pytest.fixture()
def cfg(profile):
    """The profile, with its run folder as training left it."""
    cfg, good = profile
    shutil.rmtree(run_dir_for(cfg), ignore_errors=True)
    shutil.copytree(good, run_dir_for(cfg))
    return cfg


def tune_resume(cfg) -> Path:
    """What a Tune trial does when resumed, without Ray: the trial's recipe, its restored run folder, train.train."""
    name, trial_cfg = tune.trial_recipe(cfg, {"recipe": "tiny"})
    restored = shutil.copytree(run_dir_for(cfg), cfg.data_root.parent / "trial" / "run", dirs_exist_ok=True)
    return train.train(trial_cfg, name, seed=0, run_dir=restored, verbose=False)


ENTRY_POINTS = {
    "load_trained_model": lambda cfg: load_trained_model(cfg),
    "SearchEngine.from_config": lambda cfg: SearchEngine.from_config(cfg, device="cpu"),
    "ensure_trained": lambda cfg: train.ensure_trained(cfg, verbose=False),
    "train": lambda cfg: train.train(cfg, verbose=False),
    "prepare-until-model": lambda cfg: pipeline.prepare(cfg, until="model", verbose=False),
    "tune-resume": tune_resume,
}
READS_LAST = {"ensure_trained", "train", "prepare-until-model", "tune-resume"}  # the others load best.pt only


def test_the_marker_would_be_written_by_an_unsafe_load(tmp_path: Path) -> None:
    """The trap is real: torch.load(weights_only=False) of the crafted file runs its code."""
    torch.save({"model": Marker(tmp_path / "ran")}, tmp_path / "crafted.pt")
    torch.load(tmp_path / "crafted.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("crafted", ["best.pt", "last.pt"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_crafted_checkpoint_never_runs_its_code(cfg, tmp_path: Path, entry: str, crafted: str) -> None:
    marker = tmp_path / "ran"
    path = run_dir_for(cfg) / crafted
    good_identity = load_checkpoint(path)["identity"]
    torch.save({"model": Marker(marker), "identity": good_identity, "fingerprint": "0" * 64}, path)
    if crafted == "last.pt" and entry not in READS_LAST:
        ENTRY_POINTS[entry](cfg)  # loads the sound best.pt and never opens last.pt
    else:
        refused = f"/{crafted} was refused: it holds a Python object (io.open) besides tensors and plain values."
        with pytest.raises(CheckpointError, match=re.escape(refused) + ".*nothing in the file was run"):
            ENTRY_POINTS[entry](cfg)
    assert not marker.exists()


def _foreign(path: Path) -> bytes:
    """A sound checkpoint of another setup: the same run, but a 768-d text side (mpnet's) instead of MiniLM's 384."""
    checkpoint = load_checkpoint(path)
    torch.manual_seed(0)
    identity = {**checkpoint["identity"], "text_dim": 768}
    model = DualEncoder(CNN14Encoder(300, identity["width"]), 768).state_dict()
    save_checkpoint({**{k: v for k, v in checkpoint.items() if k not in ("format", "fingerprint")}, "model": model,
                     "identity": identity}, path)
    return path.read_bytes()


def _garble(path: Path) -> bytes:
    data = path.read_bytes()
    at = len(data) * 3 // 5
    return data[:at] + bytes(byte ^ 0xFF for byte in data[at : at + 8]) + data[at + 8 :]


DAMAGE = {
    "truncated": lambda path: path.read_bytes()[:-1000],
    "empty": lambda path: b"",
    "zeroed-4KB": lambda path: bytes(4096),
    "garbled": _garble,
    "foreign-768d": _foreign,
}


@pytest.mark.parametrize("file", ["best.pt", "last.pt"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_or_foreign_checkpoint_is_refused_before_anything_uses_it(cfg, capsys, damage: str, file: str) -> None:
    path = run_dir_for(cfg) / file
    path.write_bytes(DAMAGE[damage](path))
    capsys.readouterr()
    with pytest.raises(CheckpointError) as refused:
        train.ensure_trained(cfg)
    message = str(refused.value)
    assert str(path) in message and f"Delete the run folder {path.parent}" in message
    if damage == "foreign-768d":
        assert "text_dim: checkpoint 768, now 384" in message
    assert "Reusing" not in capsys.readouterr().out


def test_a_best_pt_with_another_text_side_is_refused_by_search_before_the_first_query(cfg) -> None:
    path = run_dir_for(cfg) / "best.pt"
    path.write_bytes(_foreign(path))
    for entry in ("load_trained_model", "SearchEngine.from_config"):
        with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*\n  text_dim: checkpoint 768, now 384"):
            ENTRY_POINTS[entry](cfg)


def test_every_course_checkpoint_is_read_by_one_function() -> None:
    """torch.load is called in checkpoints.load_checkpoint (weights_only=True) and in the md5-checked PANNs reader only."""
    calls: dict[str, list[ast.Call]] = {}
    for path in COURSE_LIB.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.setdefault(path.name, []).append(node)
    assert set(calls) == {"checkpoints.py", "_panns_weights.py"}
    [call] = calls["checkpoints.py"]
    assert any(keyword.arg == "weights_only" and ast.literal_eval(keyword.value) is True for keyword in call.keywords)
