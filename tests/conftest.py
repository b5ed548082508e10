"""Fixtures shared by the test modules: a tiny synthetic profile trained once for the whole run, and the Tune tests' profile.

Training is the slowest thing the course does, so the tests that need a *trained* model (the learning
proof and the behavioural tests in test_learning.py, and any other test that only reads a trained
model) share one. It is built once per test run, even when pytest-xdist runs tests in several worker
processes: the first worker builds it under a file lock in the run's shared temporary folder, the
others wait and then reuse it (the pipeline and the trainer reuse finished work). Read it; never change it.
Its data (``learning_data``) has a lock of its own, so that a test that trains its own run on the same
clips (test_learning_finetuned.py) waits only for the data, not for the shared training.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock
from tiny import tiny_profile

from course_lib.config import BASELINE_YAML, Config, read_yaml
from course_lib.pipeline import prepare

# The learning profile: enough 2-3 s clips and epochs for the model to learn, a minute or two on 2 cores.
LEARNING_CLIPS = {"development": 48, "validation": 16, "evaluation": 24}
LEARNING_RECIPE = {"batch_size": 16, "max_epochs": 6}


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test run's temporary folder, the same for every xdist worker."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def learning_profile(root: Path) -> Config:
    """The learning profile under root (its data not built yet)."""
    return tiny_profile(root, clips=LEARNING_CLIPS, seconds=(2.0, 3.0), seed=0,
                        recipes={"learning": {**_baseline_recipe(), **LEARNING_RECIPE}}, default="learning")


@pytest.fixture(scope="session")
def learning_data(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The learning profile (48/16/24 clips of 2-3 s) prepared up to its caption embeddings, shared by the run."""
    root = shared_folder(tmp_path_factory) / "trained-tiny"
    root.mkdir(exist_ok=True)
    with FileLock(str(root / ".data.lock")):
        cfg = learning_profile(root)
        prepare(cfg, until="embeddings", verbose=False)
    return cfg


@pytest.fixture(scope="session")
def trained_tiny(learning_data: Config) -> Config:
    """The learning profile with its model trained (6 epochs of the baseline recipe at batch 16), shared by the run."""
    with FileLock(str(learning_data.data_root / ".model.lock")):
        prepare(learning_data, until="model", verbose=False)
    return learning_data


def _baseline_recipe() -> dict:
    return dict(read_yaml(BASELINE_YAML)["training"]["baseline"])


@pytest.fixture(scope="module")
def tune_profile(tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The Tune tests' profile: 4/3/2 clips of 1.5-2 s, built up to the caption embeddings (tiny.yaml beside the
    data root, for the cluster test's client), one per test module."""
    cfg = tiny_profile(tmp_path_factory.mktemp("tune"), clips={"development": 4, "validation": 3, "evaluation": 2})
    prepare(cfg, until="embeddings", verbose=False)
    return cfg
