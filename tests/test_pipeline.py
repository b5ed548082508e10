"""The pipeline chains the stages in order, reuses what is valid and says so in one line a stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from course_lib import pipeline
from course_lib.config import BASELINE_YAML, ConfigError, load_config

STAGE_MODULES = ["synth", "clotho", "features", "text", "text_cache", "cnn14", "panns", "data", "model", "loss", "train"]
COURSE_LIB = Path(pipeline.__file__).parent


@pytest.fixture
def tiny_cfg(tmp_path):
    settings = yaml.safe_load(BASELINE_YAML.read_text())
    clips = {"development": 3, "validation": 2, "evaluation": 2}
    settings["profiles"]["synthetic"]["synth"] = {"seed": 0, "clips": clips, "min_seconds": 1.5, "max_seconds": 2.0}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    return load_config("synthetic", data_root=tmp_path / "root", yaml_path=tmp_path / "tiny.yaml")


def test_prepare_builds_in_order_then_reuses_everything(tiny_cfg, capsys):
    done = pipeline.prepare(tiny_cfg, until="embeddings")
    out = capsys.readouterr().out
    assert "Generating" not in out and "Wrote" not in out, "one status line a stage, besides progress bars"
    lines = [line for line in out.splitlines() if line.split(" ")[0] in pipeline.STAGES]
    assert [line.split()[0] for line in lines] == ["dataset", "captions", "features", "embeddings"]
    assert all("built in" in line for line in lines)
    assert set(done.features) == set(tiny_cfg.splits) and all(path.is_file() for path in done.features.values())
    assert done.embeddings.is_file() and len(done.tables["development"]) == 15

    pipeline.prepare(tiny_cfg, until="embeddings")
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.split(" ")[0] in pipeline.STAGES]
    assert len(lines) == 4 and all(line.split()[1] == "reused" for line in lines), out
    assert "Reusing" not in out and "Reused" not in out, "inside the pipeline, stages keep their own lines to themselves"


def test_prepare_stops_at_the_stage_asked_for(tiny_cfg):
    done = pipeline.prepare(tiny_cfg, until="captions", verbose=False)
    assert done.tables and not done.features and done.embeddings is None
    assert not list(tiny_cfg.prepared_dir.glob("*.hdf5"))


def test_a_rebuilt_stage_says_built(tiny_cfg, capsys):
    done = pipeline.prepare(tiny_cfg, until="features", verbose=False)
    done.features["evaluation"].unlink()
    pipeline.prepare(tiny_cfg, until="features")
    out = capsys.readouterr().out
    assert [line.split()[1] for line in out.splitlines() if line.split(" ")[0] in pipeline.STAGES] == [
        "reused", "reused", "built"
    ]


def test_an_unknown_stage_names_the_choices(tiny_cfg):
    with pytest.raises(ConfigError, match="Unknown stage 'logmels'.*dataset, captions, features"):
        pipeline.prepare(tiny_cfg, until="logmels")


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_stage_module_imports_another_stage_lazily(module):
    """Imports inside functions would let a stage quietly run the stage before it; only pipeline chains stages."""
    tree = ast.parse((COURSE_LIB / f"{module}.py").read_text(encoding="utf-8"))
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("course_lib"):
                pytest.fail(f"{module}.{function.name} imports {node.module} inside a function")


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_no_stage_module_calls_the_pipeline(module):
    source = (COURSE_LIB / f"{module}.py").read_text(encoding="utf-8")
    assert "import pipeline" not in source and "from course_lib.pipeline" not in source


def test_a_profile_narrowed_to_one_split_builds_only_that_split(tmp_path):
    """The evaluation-only path (released weights on Clotho): nothing of the training splits is built."""
    settings = yaml.safe_load(BASELINE_YAML.read_text())
    settings["profiles"]["synthetic"]["synth"] = {"seed": 0, "clips": 2, "min_seconds": 1.5, "max_seconds": 2.0}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    cfg = load_config("synthetic", data_root=tmp_path / "root", yaml_path=tmp_path / "tiny.yaml", splits=["evaluation"])
    done = pipeline.prepare(cfg, until="embeddings", verbose=False)
    assert list(done.features) == ["evaluation"] and list(done.tables) == ["evaluation"]
    assert sorted(path.name for path in cfg.prepared_dir.glob("*.hdf5")) == ["evaluation_audio_logmels.hdf5"]
    assert not (cfg.dataset_dir / "development").exists()
    with pytest.raises(ConfigError, match=r"splits=\['evaluation', 'test'\]"):
        load_config("synthetic", data_root=tmp_path / "root", splits=["evaluation", "test"])
