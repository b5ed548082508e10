"""The notebooks are committed clean, share one Colab set-up cell, and reuse course_lib.

nbmake runs them (`make test`); these checks keep them in the shape a learner expects to open.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import course_lib

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


# --- every course_lib name a notebook mentions exists ---------------------------------------------------

COURSE_LIB_MODULES = {info.name for info in pkgutil.iter_modules(course_lib.__path__)}
DOTTED = re.compile(r"\bcourse_lib(?:\.[A-Za-z_]\w*)+")
IMPORT_FROM = re.compile(r"^\s*from\s+(course_lib(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.MULTILINE)
BACKTICKS = re.compile(r"`([^`\n]+)`")
FILE_PATH = re.compile(r"\bcourse_lib/(\w+)\.py\b")


def markdown_cells(path: Path) -> list[str]:
    notebook = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown"]


def module_aliases(path: Path) -> set[str]:
    """course_lib modules the notebook imports as plain names (``from course_lib import plots``), never rebound."""
    aliases = set()
    for source in code_cells(path):
        for module, names in IMPORT_FROM.findall(source):
            for name in re.split(r"[\s,()]+", names):
                if module == "course_lib" and name in COURSE_LIB_MODULES:
                    aliases.add(name)
    tree = ast.parse("\n".join(s for s in code_cells(path) if not s.lstrip().startswith(("%", "!"))))
    rebound = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    return aliases - rebound


def course_lib_references(path: Path) -> set[str]:
    """Every course_lib name the notebook mentions, as a dotted path: in code and markdown, imports,
    full paths (``course_lib.features.log_mel``) and short ones through an imported module (``features.log_mel``)."""
    code, markdown = "\n".join(code_cells(path)), "\n".join(markdown_cells(path))
    references = set(DOTTED.findall(code + "\n" + markdown))
    references |= {f"course_lib.{module}" for module in FILE_PATH.findall(code + "\n" + markdown)}
    for text in (code, markdown):
        for module, names in IMPORT_FROM.findall(text):
            for name in filter(None, re.split(r"[\s,()]+", names.split("#")[0])):
                references.add(f"{module}.{name.split(' as ')[0]}")
    aliases = module_aliases(path)
    if aliases:
        short = re.compile(rf"(?<![\w./])({'|'.join(sorted(aliases))})((?:\.[A-Za-z_]\w*)+)")
        in_markdown = " ".join(BACKTICKS.findall(markdown))
        references |= {f"course_lib.{alias}{rest}" for alias, rest in short.findall(code + "\n" + in_markdown)}
    return references


def resolves(reference: str) -> bool:
    """Import the longest module prefix of a dotted path, then look up the rest as attributes."""
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_course_lib_name_a_notebook_mentions_exists(path):
    references = course_lib_references(path)
    assert references, f"{path.name} mentions no course_lib name at all"
    missing = sorted(reference for reference in references if not resolves(reference))
    assert not missing, f"{path.name} mentions course_lib names that do not exist: {missing}"


def test_the_name_check_finds_every_form_and_catches_a_missing_name(tmp_path):
    notebook = {"cells": [
        {"cell_type": "code", "source": "from course_lib import plots\n"
                                        "from course_lib.clotho import (\n    clean_caption,\n    nope,\n)\n"
                                        "plots.show_clip\ncourse_lib.features.log_mel(x)"},
        {"cell_type": "markdown",
         "source": "Call `plots.no_such_plot` or `course_lib.text.missing_too` (in `course_lib/nowhere.py`). "
                   "Plain plots.words are prose."},
    ], "metadata": {}}
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(notebook), encoding="utf-8")
    references = course_lib_references(path)
    assert {"course_lib.plots.show_clip", "course_lib.clotho.clean_caption", "course_lib.features.log_mel"} <= references
    missing = {reference for reference in references if not resolves(reference)}
    assert missing == {"course_lib.clotho.nope", "course_lib.plots.no_such_plot", "course_lib.text.missing_too",
                       "course_lib.nowhere"}


# --- every notebook ends as a lesson: exercises, then a quiz with hidden answers ---------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_ends_with_try_it_exercises_and_a_quiz_with_hidden_answers(path):
    markdown = "\n".join(markdown_cells(path))
    assert "## Try it" in markdown, f"{path.name}: add a '## Try it' section of 3-5 exercises"
    exercises = markdown.split("## Try it", 1)[1].split("\n## ", 1)[0]
    count = len(re.findall(r"^\d+\. ", exercises, re.MULTILINE))
    assert 3 <= count <= 5, f"{path.name}: 'Try it' has {count} numbered exercises; write 3 to 5"
    quiz = markdown.split("## Quiz", 1)[-1] if "## Quiz" in markdown else ""
    assert "<details>" in quiz and "</details>" in quiz, f"{path.name}: add a '## Quiz' with answers in a <details> block"
    assert markdown.index("## Try it") < markdown.index("## Quiz")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_no_cell_waits_for_input(path):
    for source in code_cells(path):
        assert "input(" not in source, f"{path.name}: input() blocks nbmake; give the exercise a default value instead"


def test_the_readme_lists_every_notebook_in_its_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## The notebooks, in order", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\d\d_\w+)` \|", table, re.MULTILINE)
    assert listed == [path.stem for path in NOTEBOOKS], "README's table of notebooks: one row a notebook, in order"


def test_notebook_00_lists_the_notebooks_from_the_folder_not_by_hand():
    """Its list is course_lib.lesson.course_notebooks(), so a notebook added to the folder appears in it."""
    assert any(source.strip() == "course_notebooks()" for source in code_cells(NOTEBOOKS[0]))
    markdown = "\n".join(markdown_cells(NOTEBOOKS[0]))
    assert not re.search(r"^\| `\d\d_", markdown, re.MULTILINE), "no typed table of notebooks in notebook 00"
