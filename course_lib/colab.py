"""Google Colab: install the course from its repository, keep the work on Google Drive, report the device.

Taught in notebook 00. Every notebook's first code cell is the same short set-up cell (written by
``scripts/write_colab_cells.py`` from ``[tool.course] repository`` in pyproject.toml). In Colab it
clones the course, installs it with ``pip install -e`` (keeping Colab's own torch and ipywidgets,
since the package metadata holds ranges) and calls :func:`setup_colab`; anywhere else it does nothing.

With Drive (``COURSE_USE_DRIVE=1``, or ``setup_colab(use_drive=True)``), the data root, features,
embeddings and checkpoints live in a Drive folder: a disconnect loses no work, and training resumes
from its last checkpoint. HDF5 files on Drive's filesystem cannot take HDF5's file locks, so file
locking is switched off (``HDF5_USE_FILE_LOCKING=FALSE``) before h5py opens any file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from course_lib.config import in_colab

__all__ = [
    "DRIVE_MOUNT", "DEFAULT_DRIVE_FOLDER", "CLONE_DIR", "BADGE", "BADGE_MARKER", "SETUP_MARKER", "setup_colab",
    "mount_drive", "on_drive", "describe_device", "repository_url", "setup_cell", "badge_markdown",
]

DRIVE_MOUNT = Path("/content/drive")
DEFAULT_DRIVE_FOLDER = "MyDrive/dcase2023-audio-retrieval-course"
CLONE_DIR = "/content/course"
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_MARKER = "<!-- open-in-colab -->"
SETUP_MARKER = "# Colab set-up"


def setup_colab(use_drive: bool | None = None, drive_folder: str = DEFAULT_DRIVE_FOLDER) -> dict[str, str]:
    """In Colab: put the data root on Drive when asked, make HDF5 work there, and report the device.

    Taught in notebook 00 ("Running in Google Colab", before section 1).
    """
    if use_drive is None:
        use_drive = os.environ.get("COURSE_USE_DRIVE", "").strip().lower() in ("1", "true", "yes")
    report = {"device": describe_device()}
    if use_drive:
        data_root = mount_drive(drive_folder)
        os.environ["COURSE_DATA_DIR"] = str(data_root)
        report["data root"] = f"{data_root} (on Google Drive: kept across disconnects)"
    else:
        report["data root"] = "the course folder's data/ (lost when the runtime is recycled; COURSE_USE_DRIVE=1 keeps it)"
    if on_drive(Path(os.environ.get("COURSE_DATA_DIR", "."))):
        os.environ["HDF5_USE_FILE_LOCKING"] = "FALSE"  # Drive's filesystem has no POSIX locks
        report["HDF5 file locking"] = "off (needed on Drive)"
    print("\n".join(f"{key}: {value}" for key, value in report.items()))
    return report


def mount_drive(drive_folder: str = DEFAULT_DRIVE_FOLDER) -> Path:
    """Mount Google Drive (Colab asks for permission once) and return the course's data folder on it."""
    from google.colab import drive  # only exists in Colab

    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        drive.mount(str(DRIVE_MOUNT))
    folder = DRIVE_MOUNT / drive_folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def on_drive(path: Path) -> bool:
    """True for a path inside the mounted Google Drive."""
    return Path(path).resolve().is_relative_to(DRIVE_MOUNT.resolve())


def describe_device() -> str:
    """The GPU's name and memory, or a hint to switch the runtime to a GPU."""
    import torch

    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        return f"GPU {properties.name} ({properties.total_memory / 2**30:.0f} GiB)"
    hint = " (Runtime > Change runtime type > GPU for the clotho profile)" if in_colab() else ""
    return f"CPU only{hint}"


# --- the set-up cell and the badge, written into every notebook -------------------------------


def repository_url(pyproject: Path) -> str:
    """The course repository's address from ``[tool.course] repository`` ('' while none is set)."""
    settings = tomllib.loads(Path(pyproject).read_text(encoding="utf-8"))
    return str(settings.get("tool", {}).get("course", {}).get("repository", "")).strip()


def setup_cell(repo_url: str) -> str:
    """The first code cell of every notebook: installs the course in Colab, does nothing elsewhere."""
    return f'''{SETUP_MARKER}: installs the course in Google Colab; elsewhere this cell does nothing.
import sys

if "google.colab" in sys.modules:
    import os
    import subprocess

    REPO_URL = "{repo_url}"  # written from pyproject.toml by scripts/write_colab_cells.py
    if not REPO_URL:
        raise SystemExit("No course address yet: set it in pyproject.toml, then run scripts/write_colab_cells.py.")
    if not os.path.isdir("{CLONE_DIR}"):
        subprocess.run(["git", "clone", "--depth", "1", REPO_URL, "{CLONE_DIR}"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", "{CLONE_DIR}"], check=True)
    sys.path.insert(0, "{CLONE_DIR}")  # the running kernel sees the package without a restart
    os.chdir("{CLONE_DIR}/notebooks")
    from course_lib.colab import setup_colab

    setup_colab()  # COURSE_USE_DRIVE=1 first keeps data and checkpoints on Google Drive'''


def badge_markdown(repo_url: str, notebook_name: str) -> str:
    """The 'Open in Colab' badge for a notebook; '' (no badge) while no address is set."""
    if not repo_url:
        return ""
    path = repo_url.removesuffix(".git").split("github.com/", 1)[-1]
    link = f"https://colab.research.google.com/github/{path}/blob/main/notebooks/{notebook_name}"
    return f"{BADGE_MARKER}[![Open In Colab]({BADGE})]({link})"
