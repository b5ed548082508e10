"""Every course_lib function or class a notebook uses says where it is taught ("Taught in notebook 02, section 3").

The names come from the notebooks' code cells, read with ``ast``: ``from course_lib.x import y``, then ``y``;
``from course_lib import x`` or ``import course_lib.x as z``, then ``x.y`` / ``z.y``. Constants and other
non-callables are skipped. A pointer must name a notebook that exists and uses the name, and a section that
notebook has.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PACKAGE = ROOT / "course_lib"
POINTER = re.compile(r"Taught in notebook (\d\d)(?:, sections? (\d+)((?: and \d+)*))?")
SECTION = re.compile(r"^##\s+(\d+)\.\s", re.MULTILINE)
HEADING = re.compile(r"^##\s+(.+)$", re.MULTILINE)

def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` -> ["a", "b", "c"]; None for anything that is not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _module_level_name(dotted: list[str]) -> str | None:
    """``course_lib.x.y.z`` -> "course_lib.x.y" when course_lib/x.py exists (y: what x defines); else None."""
    if len(dotted) < 3 or dotted[0] != "course_lib" or not (PACKAGE / f"{dotted[1]}.py").is_file():
        return None
    return ".".join(dotted[:3])


def uses_in_source(source: str, aliases: dict[str, str]) -> list[str]:
    """course_lib module-level names a piece of code uses, in order; ``aliases`` (local name -> dotted) grows."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "course_lib":
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "course_lib":
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "course_lib"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute | ast.Name) and (chain := _chain(node)) and chain[0] in aliases:
            name = _module_level_name(aliases[chain[0]].split(".") + chain[1:])
            if name and name not in found:
                found.append(name)
    return found


def notebook_uses(path: Path) -> dict[str, str]:
    """{dotted name: the heading of the section where the notebook first uses it} for one notebook."""
    aliases: dict[str, str] = {}
    section, first = "(the opening, before section 1)", {}
    for cell in cells(path):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            section = ([*HEADING.findall(source)] or [section])[-1]
        elif cell["cell_type"] == "code":
            lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
            for name in uses_in_source("\n".join(lines), aliases):
                first.setdefault(name, section)
    return first


USES = {path.name[:2]: notebook_uses(path) for path in NOTEBOOKS}
FIRST_USE: dict[str, tuple[str, str]] = {}
for _number, _names in USES.items():
    for _name, _section in _names.items():
        FIRST_USE.setdefault(_name, (_number, _section))


def sections_of(number: str) -> set[str]:
    path = next(path for path in NOTEBOOKS if path.name.startswith(number))
    markdown = ["".join(cell["source"]) for cell in cells(path) if cell["cell_type"] == "markdown"]
    return {number for source in markdown for number in SECTION.findall(source)}


def test_the_collector_reads_every_import_form():
    aliases: dict[str, str] = {}
    source = (
        "from course_lib import plots\nfrom course_lib.features import log_mel, SAMPLE_RATE\n"
        "import course_lib.cnn14 as c\nimport course_lib.metrics\n"
        "plots.show_clip(log_mel(x, SAMPLE_RATE))\nc.CNN14Encoder.forward\ncourse_lib.metrics.top_k(s, 3)\n"
    )
    assert set(uses_in_source(source, aliases)) == {
        "course_lib.plots.show_clip", "course_lib.features.log_mel", "course_lib.features.SAMPLE_RATE",
        "course_lib.cnn14.CNN14Encoder", "course_lib.metrics.top_k",
    }


def test_the_notebooks_use_course_lib_as_expected():
    """The collector finds names through each import form the notebooks use (guards against finding nothing)."""
    assert "course_lib.features.log_mel" in USES["02"]  # from course_lib.features import (...)
    assert "course_lib.plots.show_clip" in USES["00"]  # from course_lib import plots; plots.show_clip(...)
    assert "course_lib.cnn14.CNN14Encoder" in USES["03"]  # cnn14.CNN14Encoder.forward, shown with show_source
    assert USES["03"]["course_lib.cnn14.conv_block"] == "2. The architecture, block by block"


@pytest.mark.parametrize("dotted", sorted(FIRST_USE))
def test_every_used_function_says_where_it_is_taught(dotted):
    module_name, name = dotted.rsplit(".", 1)
    obj = getattr(importlib.import_module(module_name), name)
    if inspect.ismodule(obj) or not callable(obj):
        pytest.skip(f"{dotted} is a constant, not a function or class")
    number, section = FIRST_USE[dotted]
    doc = obj.__doc__ or ""
    pointer = POINTER.search(doc)
    if pointer is None:
        pytest.fail(f"{dotted} (first used in notebook {number}, section {section!r}) has no 'Taught in notebook NN, "
                    f"section S.' pointer in its docstring: add one where it is taught")
    taught_in, first_section, more = pointer.groups()
    assert taught_in in USES, f"{dotted}: its docstring points to notebook {taught_in}, which does not exist"
    assert dotted in USES[taught_in], (
        f"{dotted}: its docstring says notebook {taught_in}, whose code never uses it (first used in notebook {number})")
    for wanted in [first_section, *re.findall(r"\d+", more or "")]:
        if wanted:
            assert wanted in sections_of(taught_in), f"{dotted}: notebook {taught_in} has no section '## {wanted}.'"
