"""Write every notebook's "Open in Colab" badge and its first (set-up) code cell from pyproject.toml.

The course's address lives in one place, ``[tool.course] repository`` in pyproject.toml. While it is
empty, notebooks have no badge (a learner sees the title first); once set, each opens with its badge.
Run this after changing it (or after adding a notebook); tests/test_colab.py fails when a notebook drifts.
Usage: python scripts/write_colab_cells.py
"""

from __future__ import annotations

from pathlib import Path

import nbformat

from course_lib.colab import BADGE_MARKER, badge_markdown, repository_url, setup_cell

ROOT = Path(__file__).resolve().parents[1]


def write_cells(notebook_path: Path, repo_url: str) -> bool:
    """Put the badge cell first (none without an address) and the set-up cell as the first code cell; True when changed."""
    notebook = nbformat.read(notebook_path, as_version=4)
    before = nbformat.writes(notebook)
    badge = badge_markdown(repo_url, notebook_path.name)
    cells = notebook.cells
    has_badge = bool(cells) and cells[0].cell_type == "markdown" and cells[0].source.startswith(BADGE_MARKER)
    if badge and has_badge:
        cells[0].source = badge
    elif badge:
        cells.insert(0, nbformat.v4.new_markdown_cell(badge))
    elif has_badge:
        del cells[0]
    first_code = next((cell for cell in cells if cell.cell_type == "code"), None)
    if first_code is None:
        first_code = nbformat.v4.new_code_cell()
        cells.insert(1 if badge else 0, first_code)
    first_code.source = setup_cell(repo_url)
    if nbformat.writes(notebook) == before:
        return False
    nbformat.write(notebook, notebook_path)
    return True


def main() -> int:
    repo_url = repository_url(ROOT / "pyproject.toml")
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        changed = write_cells(path, repo_url)
        print(f"{path.name}: {'updated' if changed else 'up to date'}")
    print(f"Repository address: {repo_url or '(not set: no badges; set [tool.course] repository in pyproject.toml)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
