"""course_lib.config: profiles, the data root, the baseline values and clear errors."""

from __future__ import annotations

import os
import re
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


# --- the whole config is validated on load --------------------------------------------------------------


def course_yaml() -> dict:
    return yaml.safe_load(config.BASELINE_YAML.read_text())


def load_changed(tmp_path, change) -> ConfigError:
    """Load the course's YAML after ``change(loaded)``; return the error it must raise."""
    loaded = course_yaml()
    change(loaded)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(loaded))
    with pytest.raises(ConfigError) as err:
        load_config(data_root=tmp_path / "data", yaml_path=path)
    assert str(path) in str(err.value)
    return err.value


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["baseline"]["feature_conf"].update(n_mels="64x"),
     "baseline.feature_conf.n_mels is '64x'; it must be a whole number at least 1."),
    (lambda c: c["baseline"]["feature_conf"].update(hop_seconds=0),
     "baseline.feature_conf.hop_seconds is 0; it must be a number above 0."),
    (lambda c: c["baseline"].update(feature_conf=[0.04, 0.02, 64]),
     "baseline.feature_conf is a list [0.04, 0.02, 64], where a mapping (indented 'name: value' lines) belongs."),
    (lambda c: c["profiles"]["synthetic"].update(audio_encoder=None),
     "profiles.synthetic.audio_encoder is null (empty), where a mapping"),
    (lambda c: c["profiles"]["clotho"].pop("text_model"), "profiles.clotho.text_model is missing; add it"),
    (lambda c: c["profiles"]["clotho"].update(splits="development"),
     "profiles.clotho.splits is 'development'; it must be a list of distinct splits, such as [development, validation, "
     "evaluation]."),
    (lambda c: c["profiles"]["clotho"].update(device="gpu"),
     "profiles.clotho.device is 'gpu'; it must be one of 'auto', 'cpu', 'cuda', 'mps'."),
    (lambda c: c["profiles"]["synthetic"]["audio_encoder"].update(pretrained="no"),
     "profiles.synthetic.audio_encoder.pretrained is 'no'; it must be true or false."),
    (lambda c: c["profiles"]["synthetic"]["synth"].update(min_seconds=9.0),
     "profiles.synthetic.synth.min_seconds is 9.0, above max_seconds 8.0"),
    (lambda c: c["profiles"]["synthetic"]["synth"].update(clips={"development": 0}),
     "profiles.synthetic.synth.clips is a mapping; it must be a whole number of at least 1, or a mapping"),
    (lambda c: c["baseline"]["ReduceLROnPlateau"]["args"].update(factor=1.5),
     "baseline.ReduceLROnPlateau.args.factor is 1.5; it must be a number above 0 and below 1."),
    (lambda c: c["training"]["baseline"].update(crop_frames=10),
     "training.baseline.crop_frames is 10; it must be null (whole clips) or a whole number at least 64."),
    (lambda c: c["training"]["baseline"].update(pad_value=0.0),
     "training.baseline.pad_value is 0.0; it must be one of 'zero', 'silence'."),
    (lambda c: c["training"]["baseline"].update(select_by="map"),
     "training.baseline.select_by is 'map'; it must be one of 'val_loss', 'val_t2a_map10'."),
    (lambda c: c["profiles"]["synthetic"].update(training_recipe="fastest"),
     "profiles.synthetic.training_recipe is 'fastest'; it must be one of the training recipes: baseline."),
    (lambda c: c.update(profiles=None), "profiles is null (empty), where a mapping of profiles"),
    (lambda c: c.update(training=["baseline"]), "training is a list ['baseline'], where a mapping of recipes"),
])
def test_a_wrong_setting_names_the_key_the_value_and_what_is_allowed(tmp_path, change, message):
    assert message in str(load_changed(tmp_path, change))


def test_every_problem_is_listed_at_once(tmp_path):
    def two_mistakes(loaded):
        loaded["baseline"]["feature_conf"]["hop_seconds"] = 0
        loaded["baseline"]["param_conf"]["batch_size"] = True

    error = str(load_changed(tmp_path, two_mistakes))
    assert "has 2 setting(s) the course cannot use" in error and "hop_seconds is 0" in error
    assert "batch_size is true; it must be a whole number at least 1" in error


def test_the_training_section_is_optional_and_reaches_the_config(tmp_path):
    assert set(load_config(data_root=tmp_path).training) == {"baseline"}
    loaded = course_yaml()
    del loaded["training"]
    path = tmp_path / "no_training.yaml"
    path.write_text(yaml.safe_dump(loaded))
    assert load_config(data_root=tmp_path, yaml_path=path).training == {}


@pytest.mark.parametrize("blank", [" ", "\t", "  "])
def test_a_blank_data_dir_is_refused_and_creates_nothing(tmp_path, monkeypatch, blank):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_DATA_DIR", blank)
    with pytest.raises(ConfigError, match=re.escape(f"COURSE_DATA_DIR is set to {blank!r}, a blank name. Unset it")):
        load_config()
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("COURSE_DATA_DIR", "")  # empty counts as unset
    assert config.default_data_root() == config.REPO_ROOT / "data"


def test_a_relative_data_dir_is_taken_from_the_repository_not_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COURSE_DATA_DIR", "data")
    assert config.default_data_root() == config.REPO_ROOT / "data"
    monkeypatch.setenv("COURSE_DATA_DIR", " /tmp/x")
    with pytest.raises(ConfigError, match="spaces at its start or end"):
        config.default_data_root()
    assert list(tmp_path.iterdir()) == []
