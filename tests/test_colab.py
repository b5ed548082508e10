"""Colab set-up under a simulated Colab: the set-up cell, Google Drive, HDF5 locking, Colab's own packages."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from course_lib import colab
from course_lib.config import load_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# Colab's versions (its published package list, 2026-08): installing the course must keep them.
COLAB_PINS = {"torch": "2.11.0", "ipywidgets": "7.7.1"}


@pytest.fixture(scope="module")
def nbformat():
    """nbformat, imported only where notebooks are read or written (the import takes about 2 s, in every test worker)."""
    import nbformat

    return nbformat


@pytest.fixture
def fake_colab(tmp_path, monkeypatch):
    """A stand-in google.colab module whose drive.mount makes a /content/drive-like folder under tmp_path."""
    mounted = []

    def mount(path: str) -> None:
        mounted.append(path)
        (Path(path) / "MyDrive").mkdir(parents=True, exist_ok=True)

    google = types.ModuleType("google")
    google.colab = types.ModuleType("google.colab")
    google.colab.drive = types.SimpleNamespace(mount=mount)
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", google.colab)
    monkeypatch.setattr(colab, "DRIVE_MOUNT", tmp_path / "content" / "drive")
    for name in ("COURSE_DATA_DIR", "HDF5_USE_FILE_LOCKING", "COURSE_USE_DRIVE"):
        monkeypatch.setenv(name, "")  # recorded, so what setup_colab sets is undone after the test
        monkeypatch.delenv(name)
    return mounted


def test_drive_holds_the_data_root_and_hdf5_locking_is_off(fake_colab, tmp_path, capsys):
    assert colab.in_colab()
    report = colab.setup_colab(use_drive=True)
    drive_root = tmp_path / "content" / "drive"
    assert fake_colab == [str(drive_root)]
    assert os.environ["COURSE_DATA_DIR"] == str(drive_root / colab.DEFAULT_DRIVE_FOLDER / "data")
    assert os.environ["HDF5_USE_FILE_LOCKING"] == "FALSE"
    assert load_config().data_root == drive_root / colab.DEFAULT_DRIVE_FOLDER / "data"
    assert "Google Drive" in report["data root"] and "CPU only (Runtime > Change runtime type" in capsys.readouterr().out
    colab.setup_colab(use_drive=True)
    assert fake_colab == [str(drive_root)], "an already mounted Drive is not mounted again"


def test_without_drive_nothing_is_mounted_and_locking_is_untouched(fake_colab, monkeypatch):
    report = colab.setup_colab()
    assert fake_colab == [] and "HDF5_USE_FILE_LOCKING" not in os.environ and "COURSE_DATA_DIR" not in os.environ
    assert "COURSE_USE_DRIVE=1" in report["data root"]
    monkeypatch.setenv("COURSE_USE_DRIVE", "1")
    colab.setup_colab()
    assert len(fake_colab) == 1


def test_the_locking_setting_lets_a_second_process_open_a_file_being_written(tmp_path):
    """What HDF5_USE_FILE_LOCKING=FALSE changes: without POSIX locks (Drive), a reader no longer trips on the writer's lock."""
    path = tmp_path / "features.hdf5"
    holds_it_open = f"import h5py, time\nh5 = h5py.File({str(path)!r}, 'w')\nh5['x'] = [1]\nh5.flush()\nprint('open', flush=True)"
    writer = subprocess.Popen([sys.executable, "-c", holds_it_open + "\ntime.sleep(30)"], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
    try:
        assert writer.stdout.readline().strip() == "open"
        reader = f"import h5py\nh5py.File({str(path)!r}, 'r').close()"
        locked = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True,
                                env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
        assert locked.returncode != 0 and "lock" in locked.stderr.lower()
        unlocked = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True,
                                  env={**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE"})
        assert unlocked.returncode == 0, unlocked.stderr
    finally:
        writer.kill()
        writer.wait()


def run_setup_cell(source: str, monkeypatch, clone_exists: bool = False) -> list[list[str]]:
    """Execute the set-up cell with subprocess, chdir and isdir stubbed; returns the commands it ran."""
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: commands.append(command))
    monkeypatch.setattr(os, "chdir", lambda path: commands.append(["cd", path]))
    monkeypatch.setattr(os.path, "isdir", lambda path: clone_exists)
    monkeypatch.setattr(colab, "setup_colab", lambda: commands.append(["setup_colab"]))
    exec(compile(source, "setup-cell", "exec"), {})
    return commands


def test_the_setup_cell_clones_installs_and_sets_up_in_colab(fake_colab, monkeypatch):
    url = "https://github.com/someone/course.git"
    commands = run_setup_cell(colab.setup_cell(url), monkeypatch)
    assert commands[0] == ["git", "clone", "--depth", "1", url, colab.CLONE_DIR]
    assert commands[1] == [sys.executable, "-m", "pip", "install", "--quiet", "-e", colab.CLONE_DIR]
    assert commands[2:] == [["cd", f"{colab.CLONE_DIR}/notebooks"], ["setup_colab"]]
    again = run_setup_cell(colab.setup_cell(url), monkeypatch, clone_exists=True)
    assert again[0][-2:] == ["-e", colab.CLONE_DIR], "an existing clone is reused"


def test_the_setup_cell_without_an_address_says_how_to_set_it(fake_colab, monkeypatch):
    with pytest.raises(SystemExit, match="set it in pyproject.toml, then run scripts/write_colab_cells.py"):
        run_setup_cell(colab.setup_cell(""), monkeypatch)


def test_the_setup_cell_does_nothing_outside_colab(monkeypatch):
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert run_setup_cell(colab.setup_cell("https://github.com/someone/course.git"), monkeypatch) == []


def test_badges_link_each_notebook_and_none_is_shown_without_an_address():
    assert colab.badge_markdown("https://github.com/someone/course.git", "05_x.ipynb").endswith(
        "(https://colab.research.google.com/github/someone/course/blob/main/notebooks/05_x.ipynb)"
    )
    assert colab.badge_markdown("", "05_x.ipynb") == ""


def load_script():
    spec = importlib.util.spec_from_file_location("write_colab_cells", ROOT / "scripts" / "write_colab_cells.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_adds_the_badge_once_an_address_is_set_and_removes_it_without(tmp_path, nbformat):
    write_cells = load_script().write_cells
    path = tmp_path / "05_x.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# 05 · A title"),
                                               nbformat.v4.new_code_cell("print('old set-up')"),
                                               nbformat.v4.new_code_cell("print('lesson')")])
    nbformat.write(notebook, path)
    url = "https://github.com/someone/course.git"
    assert write_cells(path, url) and not write_cells(path, url), "a second run changes nothing"
    cells = nbformat.read(path, as_version=4).cells
    assert [cell.source for cell in cells] == [colab.badge_markdown(url, path.name), "# 05 · A title",
                                               colab.setup_cell(url), "print('lesson')"]
    assert write_cells(path, "") and not write_cells(path, "")
    cells = nbformat.read(path, as_version=4).cells
    assert [cell.source for cell in cells] == ["# 05 · A title", colab.setup_cell(""), "print('lesson')"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_notebook_has_the_badge_and_setup_cell_from_pyproject(path, nbformat):
    url = colab.repository_url(ROOT / "pyproject.toml")
    notebook = nbformat.read(path, as_version=4)
    if url:
        assert notebook.cells[0].source == colab.badge_markdown(url, path.name), "run scripts/write_colab_cells.py"
    else:
        assert not notebook.cells[0].source.startswith(colab.BADGE_MARKER), "no address: no badge; run the script"
        assert notebook.cells[0].source.lstrip().startswith(f"# {path.name[:2]} · "), "the notebook opens with its title"
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert first_code.source == colab.setup_cell(url), "run scripts/write_colab_cells.py"


def test_installing_the_course_keeps_colabs_torch_and_ipywidgets(tmp_path):
    """pip, in an environment that already holds Colab's torch and ipywidgets, must change neither (needs PyPI).

    The stand-in environment has the two as installed distributions (metadata only): that is what pip sees in
    Colab, and it spares the test torch's CUDA wheels. Python is this machine's; Colab's is 3.13.
    """
    colab_env = tmp_path / "colab-env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(colab_env)], check=True)
    python = colab_env / "bin" / "python"
    site = Path(subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    for name, version in COLAB_PINS.items():
        info = site / f"{name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        (info / "INSTALLER").write_text("pip\n")
        (info / "RECORD").write_text("")
    report = tmp_path / "report.json"
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--dry-run", "--quiet",
               "--report", str(report), str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"pip could not install the course beside Colab's packages:\n{result.stderr[-2000:]}"
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.read_text())["install"]}
    assert "course-lib" in chosen
    assert {name: chosen[name] for name in COLAB_PINS if name in chosen} == {}, "pip would replace Colab's own versions"
    assert "torchaudio" not in chosen
