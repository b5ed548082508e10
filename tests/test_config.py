"""course_lib.config: profiles, the data root, the baseline values and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from course_lib import config
from course_lib.config import ConfigError, load_config


def test_default_profile_is_synthetic_under_given_root(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    cfg = load_config(data_root=tmp_path)
    assert cfg.profile == "synthetic"
    assert cfg.dataset_dir == tmp_path / "synthetic" / "Clotho"
    assert cfg.prepared_dir == tmp_path / "synthetic" / "prepared"
    assert cfg.downloads_dir == tmp_path / "downloads"
    assert cfg.splits == ("development", "validation", "evaluation")


def test_environment_variables_choose_profile_and_root(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "clotho")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "elsewhere"))
    cfg = load_config()
    assert cfg.profile == "clotho"
    assert cfg.data_root == (tmp_path / "elsewhere").resolve()
    assert cfg.settings["audio_encoder"] == {"width": 1.0, "pretrained": True}
    assert "all-mpnet-base-v2" in cfg.settings["text_model"]


def test_baseline_values_mirror_conf_yaml(tmp_path):
    base = load_config(data_root=tmp_path).baseline
    assert base["param_conf"]["num_epoch"] == 80
    assert base["param_conf"]["batch_size"] == 32
    assert base["criteria"]["infonce_loss"]["args"] == {"temperature": 0.07, "dist": "dot_product"}
    assert base["AdamOptimizer"]["args"] == {"lr": 0.001, "weight_decay": 0.0}
    assert base["ReduceLROnPlateau"]["args"] == {
        "mode": "min", "factor": 0.1, "patience": 5, "threshold": 0.005, "threshold_mode": "abs", "min_lr": 1e-6,
    }
    assert base["DualEncoderModel"]["audio_enc"]["out_dim"] == 300
    assert base["DualEncoderModel"]["out_norm"] == "L2"
    assert base["trial_stopper"] == {"metric": "stop_metric", "std": 0.001, "num_results": 10, "grace_period": 60, "mode": "min"}
    assert base["data_conf"]["train_data"]["audio_data"] == "development_audio_logmels.hdf5"


def test_unknown_profile_names_the_value_and_the_choices(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config("clothoo", data_root=tmp_path)
    assert "'clothoo'" in str(err.value) and "synthetic" in str(err.value) and "clotho" in str(err.value)


def test_unreadable_yaml_names_the_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("baseline: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(data_root=tmp_path, yaml_path=broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(data_root=tmp_path, yaml_path=tmp_path / "missing.yaml")
    not_a_config = tmp_path / "list.yaml"
    not_a_config.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="'baseline' and 'profiles'"):
        load_config(data_root=tmp_path, yaml_path=not_a_config)


def test_a_learner_yaml_can_change_a_profile(tmp_path):
    loaded = yaml.safe_load(config.BASELINE_YAML.read_text())
    loaded["profiles"]["synthetic"]["synth"]["clips"]["development"] = 12
    custom = tmp_path / "mine.yaml"
    custom.write_text(yaml.safe_dump(loaded))
    cfg = load_config(data_root=tmp_path, yaml_path=custom)
    assert cfg.settings["synth"]["clips"]["development"] == 12


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere, so permissions cannot be tested")
def test_unwritable_data_root_is_reported(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="not writable"):
            load_config(data_root=locked / "data")
    finally:
        locked.chmod(0o700)


def test_data_root_that_is_a_file_is_reported(tmp_path):
    a_file = tmp_path / "data"
    a_file.write_text("not a folder")
    with pytest.raises(ConfigError) as err:
        load_config(data_root=a_file)
    assert str(a_file) in str(err.value) and "COURSE_DATA_DIR" in str(err.value)


def test_device_resolution(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.resolve_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="no GPU"):
        config.resolve_device("cuda")
    with pytest.raises(ConfigError, match="'tpu'"):
        config.resolve_device("tpu")


def test_default_root_is_beside_the_repository(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    assert config.default_data_root() == Path(config.__file__).resolve().parents[1] / "data"
