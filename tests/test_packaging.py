"""The set-up files agree with each other: pyproject.toml, environment.yml, constraints.txt."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _requirements(specs: list[str]) -> dict[str, str]:
    return {_name(spec): spec.replace(" ", "") for spec in specs}


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs += extra
    return _requirements(specs)


def environment_requirements() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict) and "pip" in item)
    return _requirements([spec for spec in pip_block if not spec.startswith("-e")])


def test_environment_yml_matches_pyproject():
    from_pyproject = pyproject_requirements()
    from_environment = environment_requirements()
    missing = sorted(set(from_pyproject) - set(from_environment))
    extra = sorted(set(from_environment) - set(from_pyproject))
    assert not missing, f"environment.yml lacks {missing}: add them to its pip list"
    assert not extra, f"environment.yml has {extra}, which pyproject.toml does not declare"
    differing = {name: (from_pyproject[name], from_environment[name])
                 for name in from_pyproject if from_pyproject[name] != from_environment[name]}
    assert not differing, f"version ranges differ (pyproject, environment.yml): {differing}"


def test_package_metadata_keeps_ranges_and_constraints_pin_torch():
    torch_spec = pyproject_requirements()["torch"]
    assert "==" not in torch_spec, "pyproject.toml must keep a range for torch so Colab keeps its own build"
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins.get("torch") == "2.13.0"


def test_every_dependency_is_pinned_in_constraints():
    pinned = {_name(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    unpinned = sorted(set(pyproject_requirements()) - pinned)
    assert not unpinned, f"constraints.txt does not pin {unpinned}"


def test_no_torchaudio_anywhere():
    assert "torchaudio" not in pyproject_requirements()
    assert "torchaudio" not in environment_requirements()
