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

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("synthetic", "clotho")
DEFAULT_PROFILE = "synthetic"
SPLITS = ("development", "validation", "evaluation")
BASELINE_YAML = Path(__file__).with_name("baseline.yaml")
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

    @property
    def profile_dir(self) -> Path:
        return self.data_root / self.profile

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
    if os.environ.get("COURSE_DATA_DIR"):
        return Path(os.environ["COURSE_DATA_DIR"]).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "data"
    return Path.cwd() / "data"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with an error that names the file when it cannot be used."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"Config file {path} does not exist. Pass an existing YAML file.") from exc
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {path} is not readable YAML ({exc}). Fix or remove it.") from exc
    if not isinstance(loaded, dict) or "baseline" not in loaded or "profiles" not in loaded:
        raise ConfigError(
            f"Config file {path} must be a mapping with 'baseline' and 'profiles' sections, "
            f"like {BASELINE_YAML}."
        )
    return loaded


def load_config(
    profile: str | None = None,
    data_root: str | Path | None = None,
    yaml_path: str | Path | None = None,
) -> Config:
    """Build the Config for a profile (default: ``COURSE_PROFILE`` or 'synthetic')."""
    profile = profile or os.environ.get("COURSE_PROFILE") or DEFAULT_PROFILE
    loaded = read_yaml(Path(yaml_path or os.environ.get("COURSE_CONFIG") or BASELINE_YAML))
    known = tuple(loaded["profiles"])
    if profile not in known:
        raise ConfigError(f"Unknown profile {profile!r}. Choose one of: {', '.join(known)}.")
    root = Path(data_root).expanduser().resolve() if data_root else default_data_root()
    check_writable(root)
    return Config(profile, root, loaded["baseline"], loaded["profiles"][profile])


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
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def resolve_device(preference: str = "auto") -> str:
    """'cuda' when asked for or available under 'auto', else 'cpu'."""
    import torch

    if preference not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"Unknown device {preference!r}. Choose one of: auto, cpu, cuda.")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("Device 'cuda' was asked for but no GPU is visible. Use 'auto' or 'cpu'.")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference
