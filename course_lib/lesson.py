"""Show the library code a notebook teaches, highlighted, right where the lesson uses it; list the course's notebooks.

Taught in notebook 00, section 3. ``show_source(cnn14.CNN14Encoder.forward)`` displays the function's
code with its file and line numbers, so a learner reads what a call does without leaving the notebook.
``course_notebooks()`` lists the notebooks in the course's folder, each with its title.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

from course_lib.config import REPO_ROOT

__all__ = ["Source", "show_source", "course_notebooks"]


@dataclass(frozen=True)
class Source:
    """Source code with where it comes from; Jupyter shows it highlighted, a terminal as plain text."""

    code: str
    where: str

    def _repr_html_(self) -> str:
        formatter = HtmlFormatter(noclasses=True, style="friendly", nobackground=False)
        return f"<p><code>{self.where}</code></p>{highlight(self.code, PythonLexer(), formatter)}"

    def __repr__(self) -> str:
        return f"# {self.where}\n{self.code}"


def show_source(obj: Any, start: str | None = None) -> Source:
    """The source of a function, method, class or module from course_lib (or anywhere), with file and lines.

    Taught in notebook 00, section 3. Put it last in a cell (or wrap it in ``display``) to see it. ``start``: show
    from the first line that holds this text to the end (``show_source(train.fit, start="for epoch in")``: the loop).
    """
    target = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
    try:
        lines, first = inspect.getsourcelines(target)
        path = Path(inspect.getsourcefile(target) or "?")
    except (OSError, TypeError) as exc:
        raise TypeError(f"No source to show for {obj!r}: pass a function, method, class or module written in Python.") from exc
    first = max(first, 1)  # a module starts at line 0 for inspect
    if start is not None:
        found = next((number for number, line in enumerate(lines) if start in line), None)
        if found is None:
            name = getattr(target, "__qualname__", obj)
            raise ValueError(f"No line of {name!r} holds {start!r}; pass text from one of its lines.")
        lines, first = lines[found:], first + found
    where = f"{_short(path)}, lines {first}-{first + len(lines) - 1}"
    return Source(code=_dedent(lines), where=where)


def course_notebooks(folder: str | Path | None = None) -> pd.DataFrame:
    """Every notebook of the course, in order, with its title (its first heading). Taught in notebook 00, section 3.

    ``folder``: where the notebooks are (default: the course's ``notebooks/``). A notebook added there is listed too.
    """
    folder = Path(folder) if folder is not None else REPO_ROOT / "notebooks"
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"No course notebooks (NN_name.ipynb) in {folder}. Pass the folder that holds them.")
    return pd.DataFrame([{"notebook": path.stem, "title": _title(path)} for path in paths]).set_index("notebook")


def _dedent(lines: list[str]) -> str:
    """The lines without the indentation of the first one (a method's class indentation), joined."""
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "".join("\n" if not line.strip() else line[indent:] if line[:indent].isspace() else line for line in lines).rstrip()


def _short(path: Path) -> str:
    """course_lib/x.py rather than the full path on this machine."""
    parts = path.resolve().parts
    return "/".join(parts[parts.index("course_lib"):]) if "course_lib" in parts else path.name


def _title(path: Path) -> str:
    """A notebook's first markdown heading, without its number ("05 · Training ..." -> "Training ...")."""
    for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
        heading = re.search(r"^#\s+(.+)$", "".join(cell["source"]), re.MULTILINE) if cell["cell_type"] == "markdown" else None
        if heading:
            return re.sub(r"^\d\d\s*·\s*", "", heading.group(1)).strip()
    return "(no title)"
