"""Profiles, paths under one data root, and the baseline's hyperparameters.

Taught in notebook 00. Everything the course writes lives under one data root
(``COURSE_DATA_DIR``, default ``<repo>/data``), one folder per profile:

    <data root>/
        downloads/                 archives and pretrained checkpoints (shared by profiles)
        <profile>/Clotho/          a Clotho-format folder: wavs + official CSVs
        <profile>/prepared/        caption tables, log-mel HDF5 files, caption embeddings
        <profile>/models/          encoder weights and training checkpoints
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "PROFILES", "DEFAULT_PROFILE", "SPLITS", "SAMPLE_RATE", "HOP_SECONDS", "OUT_DIM", "BASELINE_YAML", "QUICK_ENV",
    "QUICK_EPOCHS", "QUICK_TRIALS", "QUICK_TRIAL_EPOCHS", "QUICK_CLIPS", "REPO_ROOT", "ConfigError", "Config",
    "default_data_root", "read_yaml", "load_config", "quick_from_environment", "quick_summary", "check_writable", "in_colab",
    "resolve_device", "BASELINE_SCHEMA", "RECIPE_SCHEMA", "PROFILE_SCHEMA", "SYNTH_SCHEMA", "config_problems", "recipe_problems",
]

PROFILES = ("synthetic", "clotho")
DEFAULT_PROFILE = "synthetic"
SPLITS = ("development", "validation", "evaluation")
# The baseline's fixed sizes, one constant each (course_lib/baseline.yaml holds the tunable settings).
SAMPLE_RATE = 44_100  # Clotho's rate: every clip is brought to it before its log-mel
HOP_SECONDS = 0.020  # one log-mel frame every 20 ms
OUT_DIM = 300  # the shared embedding size of clips and captions
BASELINE_YAML = Path(__file__).with_name("baseline.yaml")
# The quick setting (COURSE_QUICK=1): the same code path with smaller amounts, for tests and a first look.
# `make course` never sets it; every notebook's `prepare` line says when it is on.
QUICK_ENV = "COURSE_QUICK"
QUICK_EPOCHS = 2  # training stops after this many epochs (epoch 0 measures the untrained model)
QUICK_TRIALS = 2  # Ray Tune runs at most this many trials ...
QUICK_TRIAL_EPOCHS = 1  # ... of at most this many epochs each (and notebook 09's experiment runs too)
QUICK_CLIPS = {"development": 32, "validation": 16, "evaluation": 48}  # the synthetic set, in <profile>-quick/
REPO_ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """A setting the course cannot use; the message says which and what to do."""


@dataclass(frozen=True)
class Config:
    """One profile's settings and the folders its artifacts live in."""

    profile: str
    data_root: Path
    baseline: dict[str, Any]
    settings: dict[str, Any]
    training: dict[str, Any] = field(default_factory=dict)  # the YAML's training recipes, when it has them
    quick: bool = False  # COURSE_QUICK=1: recipes cut to QUICK_EPOCHS epochs, Tune to QUICK_TRIALS short trials

    @property
    def profile_dir(self) -> Path:
        """<data root>/<profile>; the quick setting's smaller synthetic set lives beside it, in <profile>-quick."""
        return self.data_root / (f"{self.profile}-quick" if self.quick and "synth" in self.settings else self.profile)

    @property
    def dataset_dir(self) -> Path:
        """The Clotho-format folder (wav folders and official CSVs)."""
        return self.profile_dir / "Clotho"

    @property
    def prepared_dir(self) -> Path:
        """Caption tables, log-mel HDF5 files and caption embeddings."""
        return self.profile_dir / "prepared"

    @property
    def models_dir(self) -> Path:
        return self.profile_dir / "models"

    @property
    def downloads_dir(self) -> Path:
        """Archives and pretrained checkpoints, shared by every profile."""
        return self.data_root / "downloads"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.settings.get("splits", SPLITS))


def default_data_root() -> Path:
    """``COURSE_DATA_DIR`` if set, else ``data/`` beside the repository (or the working folder)."""
    if os.environ.get("COURSE_DATA_DIR"):  # set and not empty ("" counts as unset, as in most tools)
        return _data_root_from_environment(os.environ["COURSE_DATA_DIR"])
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "data"
    return Path.cwd() / "data"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error that names the file when it cannot be used."""
    try:
        loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YamlLoader)
    except FileNotFoundError as exc:
        raise ConfigError(f"Config file {path} does not exist. Pass an existing YAML file.") from exc
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} is not readable YAML ({exc}). Fix or remove it.") from exc
    if not isinstance(loaded, dict) or "baseline" not in loaded or "profiles" not in loaded:
        raise ConfigError(
            f"Config file {path} must be a mapping with 'baseline' and 'profiles' sections, "
            f"like {BASELINE_YAML}."
        )
    if problems := config_problems(loaded):
        listed = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"Config file {path} has {len(problems)} setting(s) the course cannot use:\n{listed}\n"
                          f"Fix them (the course's own values are in {BASELINE_YAML}).")
    return loaded


def load_config(
    profile: str | None = None,
    data_root: str | Path | None = None,
    yaml_path: str | Path | None = None,
    splits: list[str] | tuple[str, ...] | None = None,
    quick: bool | None = None,
) -> Config:
    """Build the Config for a profile (default: ``COURSE_PROFILE`` or 'synthetic'). Taught in notebook 00, section 2.

    ``splits`` narrows the profile to some splits, e.g. ``["evaluation"]`` to evaluate released weights on
    Clotho without downloading the training data. ``quick`` (default: ``COURSE_QUICK=1``) keeps the code path
    and shrinks the amounts: training stops after QUICK_EPOCHS epochs, Ray Tune runs QUICK_TRIALS short trials, and
    a synthetic profile generates QUICK_CLIPS clips in a folder of its own (the full set is never replaced).
    """
    profile = profile or os.environ.get("COURSE_PROFILE") or DEFAULT_PROFILE
    loaded = read_yaml(Path(yaml_path or os.environ.get("COURSE_CONFIG") or BASELINE_YAML))
    known = tuple(loaded["profiles"])
    if profile not in known:
        raise ConfigError(f"Unknown profile {profile!r}. Choose one of: {', '.join(known)}.")
    if isinstance(data_root, str) and not data_root.strip():
        raise ConfigError(f"data_root {data_root!r} is blank. Pass a folder path, or None for the default data root.")
    root = Path(data_root).expanduser().resolve() if data_root else default_data_root()
    check_writable(root)
    settings = loaded["profiles"][profile]
    if splits is not None:
        if _splits(list(splits)) is not None:
            raise ConfigError(f"splits={splits!r}: pass {_splits(list(splits))}.")
        settings = {**settings, "splits": list(splits)}
    quick = quick_from_environment() if quick is None else bool(quick)
    training = loaded.get("training") or {}
    if quick:
        training = {name: {**recipe, "max_epochs": min(recipe["max_epochs"], QUICK_EPOCHS)} for name, recipe in training.items()}
        if "synth" in settings:  # at most QUICK_CLIPS a split: a smaller custom set stays as it is
            settings = {**settings, "synth": {**settings["synth"], "clips": _quick_clips(settings["synth"].get("clips"))}}
    return Config(profile, root, loaded["baseline"], settings, training, quick)


def _quick_clips(clips: int | dict[str, int] | None) -> dict[str, int]:
    """Each split's clip count in the quick setting: the profile's, at most QUICK_CLIPS'."""
    if clips is None:
        return dict(QUICK_CLIPS)
    return {split: min(QUICK_CLIPS[split], clips if isinstance(clips, int) else clips.get(split, 0))
            for split in QUICK_CLIPS}


def quick_from_environment() -> bool:
    """True when ``COURSE_QUICK`` is 1, False when unset, empty or 0; anything else is refused."""
    value = os.environ.get(QUICK_ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ConfigError(f"{QUICK_ENV} is set to {value!r}. Set it to 1 for the quick setting (a couple of epochs, "
                          "small Tune searches), or unset it (or 0) for the full course.")
    return value == "1"


def quick_summary(cfg: Config) -> str:
    """One line saying what the quick setting shortens, or '' when it is off."""
    if not cfg.quick:
        return ""
    clips = cfg.settings.get("synth", {}).get("clips")
    data = f"{'/'.join(map(str, clips.values()))} synthetic clips in {cfg.profile_dir.name}/, " if isinstance(clips, dict) else ""
    return (f"{QUICK_ENV}=1: {data}training stops after {QUICK_EPOCHS} epochs, Ray Tune runs at most {QUICK_TRIALS} trials "
            f"of {QUICK_TRIAL_EPOCHS} epoch; unset it for the full course")


def check_writable(root: Path) -> None:
    """Fail early, naming the folder, when the data root cannot be written."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(
            f"Data root {root} is not writable ({exc.strerror or exc}). "
            "Set COURSE_DATA_DIR to a folder you can write to."
        ) from exc


def in_colab() -> bool:
    """True when running inside Google Colab. Taught in notebook 00, section 1."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def resolve_device(preference: Any = "auto") -> str:
    """'auto': 'cuda', else Apple's 'mps', else 'cpu'; or the device asked for, when it is there.

    Taught in notebook 00, section 1. The one device rule: training, embeddings and search all use it.
    """
    import torch

    wanted = str(preference)
    kind = wanted.split(":")[0]
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if kind not in ("auto", "cpu", "cuda", "mps") or (kind == "auto" and wanted != "auto"):
        raise ConfigError(f"Unknown device {preference!r}. Choose one of: auto, cpu, cuda, mps.")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"Device {wanted!r} was asked for but no GPU is visible. Use 'auto' or 'cpu'.")
    if kind == "mps" and not mps:
        raise ConfigError(f"Device {wanted!r} (Apple's GPU) was asked for but is not available here. Use 'auto' or 'cpu'.")
    return wanted


# --- after the lesson: checks that name the setting, its value and what is allowed -----------------------


def _data_root_from_environment(value: str) -> Path:
    """COURSE_DATA_DIR as a folder: blank is refused, a relative path is taken from the repository (not the working folder)."""
    if not value.strip():
        raise ConfigError(f"COURSE_DATA_DIR is set to {value!r}, a blank name. Unset it to use {REPO_ROOT / 'data'}, "
                          "or set it to the folder the course should write its data to.")
    if value != value.strip():
        raise ConfigError(f"COURSE_DATA_DIR is set to {value!r}, with spaces at its start or end. Set it to the folder "
                          "path without them.")
    path = Path(value).expanduser()
    if path.is_absolute():
        return path.resolve()
    if (REPO_ROOT / "pyproject.toml").is_file():  # notebooks run from notebooks/, scripts from anywhere: one meaning
        return (REPO_ROOT / path).resolve()
    raise ConfigError(f"COURSE_DATA_DIR is set to the relative path {value!r}, which would mean another folder from "
                      "every working folder. Set it to an absolute path, such as /home/you/course-data.")


class _YamlLoader(yaml.SafeLoader):
    """safe_load, but numbers such as 1e6 or 1e-3 are numbers (YAML 1.1, which PyYAML follows, reads them as text)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

Check = Callable[[Any], str | None]  # a value -> None when allowed, else what is allowed


def _shown(value: Any) -> str:
    """A value as the YAML file spells it."""
    if value is None:
        return "null (empty)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list [" + ", ".join(_shown(item) for item in value[:4]) + (", ...]" if len(value) > 4 else "]")
    return repr(value)


def _number(above: float | None = None, at_least: float | None = None, below: float | None = None,
            whole: bool = False, at_most: float | None = None) -> Check:
    """A check for a number (a whole number when ``whole``) within bounds."""
    kind = "a whole number" if whole else "a number"
    bounds = [f"above {above:g}" if above is not None else "", f"at least {at_least:g}" if at_least is not None else "",
              f"below {below:g}" if below is not None else "", f"at most {at_most:g}" if at_most is not None else ""]
    wanted = " ".join([kind, " and ".join(bound for bound in bounds if bound)]).strip()

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
            return wanted
        if not math.isfinite(value) or (above is not None and value <= above) or (at_least is not None and value < at_least) \
                or (below is not None and value >= below) or (at_most is not None and value > at_most):
            return wanted
        return None

    return check


def _one_of(*choices: Any) -> Check:
    return lambda value: None if value in choices and not isinstance(value, bool | list | dict) else \
        "one of " + ", ".join(_shown(choice) for choice in choices)


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "a non-empty text"


def _flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _or_null(check: Check, what: str) -> Check:
    return lambda value: None if value is None or check(value) is None else f"null ({what}) or {check(value)}"


def _splits(value: Any) -> str | None:
    ok = isinstance(value, list) and value and all(isinstance(s, str) and s in SPLITS for s in value) \
        and len(set(value)) == len(value)
    return None if ok else f"a list of distinct splits, such as [{', '.join(SPLITS)}]"


def _clip_counts(value: Any) -> str | None:
    if _number(at_least=1, whole=True)(value) is None:
        return None
    if isinstance(value, dict) and value and all(k in SPLITS and _number(at_least=1, whole=True)(n) is None
                                                 for k, n in value.items()):
        return None
    return "a whole number of at least 1, or a mapping {split: whole number of at least 1}"


_POSITIVE, _NOT_NEGATIVE = _number(above=0), _number(at_least=0)
_COUNT, _COUNT_OR_ZERO = _number(at_least=1, whole=True), _number(at_least=0, whole=True)
_SHARE = _number(at_least=0, at_most=1)
_LR_PLATEAU = {"factor": _number(above=0, below=1), "patience": _COUNT_OR_ZERO, "threshold": _NOT_NEGATIVE,
               "min_lr": _NOT_NEGATIVE}
_PLATEAU_STOP = {"std": _NOT_NEGATIVE, "num_results": _COUNT, "grace_period": _COUNT_OR_ZERO}
# Every setting the course reads: {key: check, or a mapping of the keys below it}. "?key": may be left out.
BASELINE_SCHEMA: dict[str, Any] = {
    "trial_stopper": {"metric": _text, "mode": _one_of("min", "max"), **_PLATEAU_STOP},
    "?data_conf": {},
    "feature_conf": {"window_seconds": _POSITIVE, "hop_seconds": _POSITIVE, "n_mels": _COUNT,
                     "log_offset": lambda v: None if v == "machine_epsilon" or _POSITIVE(v) is None
                     else "machine_epsilon or a number above 0"},
    "param_conf": {"num_epoch": _COUNT, "batch_size": _COUNT},
    "DualEncoderModel": {"audio_enc": {"out_dim": _COUNT}, "text_enc": {"out_dim": _COUNT}},
    "criteria": {"infonce_loss": {"args": {"temperature": _POSITIVE}}},
    "AdamOptimizer": {"args": {"lr": _POSITIVE, "weight_decay": _NOT_NEGATIVE}},
    "ReduceLROnPlateau": {"args": _LR_PLATEAU},
}
RECIPE_SCHEMA: dict[str, Any] = {
    "sampling": _one_of("caption", "clip"), "?crop_frames": _or_null(_number(at_least=64, whole=True), "whole clips"),
    "pad_value": _one_of("zero", "silence"), "batch_size": _COUNT, "lr": _POSITIVE, "?weight_decay": _NOT_NEGATIVE,
    "max_epochs": _COUNT, "temperature": _POSITIVE, "?mixed_precision": _flag,
    "lr_plateau": _LR_PLATEAU, "plateau_stop": _PLATEAU_STOP, "?select_by": _one_of("val_loss", "val_t2a_map10"),
    # Beyond the baseline (notebook 09; course_lib.train.OPTIONS): each may be left out, which is off.
    "?learn_temperature": _flag,
    "?text_finetune": {"layers": _COUNT_OR_ZERO, "?lr": _POSITIVE},
    "?spec_augment": {"time_masks": _COUNT_OR_ZERO, "time_width": _COUNT, "freq_masks": _COUNT_OR_ZERO,
                      "freq_width": _COUNT},
    "?caption_augment": {"source": _or_null(_text, "off"), "?probability": _SHARE,
                         "?per_caption": _COUNT},
    "?distill": {"teacher": _or_null(_text, "off"), "?weight": _SHARE, "?temperature": _POSITIVE},
}
PROFILE_SCHEMA: dict[str, Any] = {
    "?description": _text, "dataset": _one_of("synthetic", "clotho"), "?splits": _splits,
    "audio_encoder": {"width": _POSITIVE, "pretrained": _flag}, "text_model": _text,
    "?device": _one_of("auto", "cpu", "cuda", "mps"), "?training_recipe": _text, "?epoch_budget": _COUNT,
}
SYNTH_SCHEMA: dict[str, Any] = {"?seed": _COUNT_OR_ZERO, "?clips": _clip_counts, "?min_seconds": _POSITIVE,
                                "?max_seconds": _POSITIVE}


def _check(node: Any, schema: Check | dict[str, Any], key: str, problems: list[str]) -> None:
    """Append to ``problems`` what in ``node`` (at dotted ``key``) breaks ``schema``."""
    if callable(schema):
        if (wanted := schema(node)) is not None:
            problems.append(f"{key} is {_shown(node)}; it must be {wanted}.")
        return
    if not isinstance(node, dict):
        problems.append(f"{key} is {_shown(node)}, where a mapping (indented 'name: value' lines) belongs.")
        return
    for name, below in schema.items():
        optional, name = name.startswith("?"), name.lstrip("?")
        if name not in node:
            if not optional:
                problems.append(f"{key}.{name} is missing; add it (see {BASELINE_YAML.name}).")
            continue
        _check(node[name], below, f"{key}.{name}", problems)


def recipe_problems(recipe: Any, key: str = "recipe") -> list[str]:
    """What in one training recipe the course cannot use, each naming the key, its value and what is allowed."""
    problems: list[str] = []
    _check(recipe, RECIPE_SCHEMA, key, problems)
    return problems


def config_problems(loaded: dict[str, Any]) -> list[str]:
    """Every setting of a loaded config the course cannot use, each naming the key, its value and what is allowed."""
    problems: list[str] = []
    _check(loaded.get("baseline"), BASELINE_SCHEMA, "baseline", problems)
    recipes = loaded.get("training")
    if recipes is not None:  # optional: recipes for course_lib.train
        if not isinstance(recipes, dict) or not recipes:
            problems.append(f"training is {_shown(recipes)}, where a mapping of recipes (name: settings) belongs.")
            recipes = None
        else:
            for name, recipe in recipes.items():
                _check(recipe, RECIPE_SCHEMA, f"training.{name}", problems)
    profiles = loaded.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        problems.append(f"profiles is {_shown(profiles)}, where a mapping of profiles (name: settings) belongs.")
        return problems
    for name, profile in profiles.items():
        _check(profile, PROFILE_SCHEMA, f"profiles.{name}", problems)
        if not isinstance(profile, dict):
            continue
        if profile.get("dataset") == "synthetic" or "synth" in profile:
            before = len(problems)
            _check(profile.get("synth"), SYNTH_SCHEMA, f"profiles.{name}.synth", problems)
            synth = profile.get("synth")
            if len(problems) == before and synth.get("min_seconds", 5.0) > synth.get("max_seconds", 8.0):
                problems.append(f"profiles.{name}.synth.min_seconds is {synth.get('min_seconds', 5.0)!r}, above max_seconds "
                                f"{synth.get('max_seconds', 8.0)!r}; it must be at most max_seconds.")
        recipe = profile.get("training_recipe")
        if recipes and isinstance(recipe, str) and recipe not in recipes:
            problems.append(f"profiles.{name}.training_recipe is {recipe!r}; it must be one of the training recipes: "
                            f"{', '.join(recipes)}.")
    return problems
