"""The notebooks are committed clean, share one Colab set-up cell, and reuse course_lib.

nbmake runs them (`make test`); these checks keep them in the shape a learner expects to open.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def code_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]


def test_the_course_has_its_first_five_notebooks():
    assert [path.name[:2] for path in NOTEBOOKS][:5] == ["00", "01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_committed_clean_with_a_kernelspec(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["metadata"].get("kernelspec", {}).get("name") == "python3"
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{path.name} has outputs: clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_first_code_cell_is_the_shared_colab_setup(path):
    reference = code_cells(NOTEBOOKS[0])[0]
    assert "google.colab" in reference
    assert code_cells(path)[0] == reference, f"{path.name}: its Colab cell differs from notebook 00's; keep them identical"


def defined_and_imported(path: Path) -> tuple[set[str], set[str]]:
    sources = [source for source in code_cells(path) if not source.lstrip().startswith(("%", "!"))]
    tree = ast.parse("\n".join(sources))
    defined = {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    imported = {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return defined, imported


def test_no_function_is_defined_in_two_notebooks():
    seen: dict[str, str] = {}
    for path in NOTEBOOKS:
        for name in defined_and_imported(path)[0]:
            assert name not in seen, f"{name} is defined in {seen.get(name)} and {path.name}: move it into course_lib"
            seen[name] = path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_notebook_imports_course_lib(path):
    assert "course_lib" in defined_and_imported(path)[1]
