"""Show the library code a notebook teaches, highlighted, right where the lesson uses it.

Taught in notebook 00, section 3. ``show_source(cnn14.CNN14Encoder.forward)`` displays the function's
code with its file and line numbers, so a learner reads what a call does without leaving the notebook.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import PythonLexer

__all__ = ["Source", "show_source"]


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


def show_source(obj: Any) -> Source:
    """The source of a function, method, class or module from course_lib (or anywhere), with file and lines.

    Taught in notebook 00, section 3. Put it last in a cell (or wrap it in ``display``) to see it.
    """
    target = inspect.unwrap(obj.fget if isinstance(obj, property) else obj)
    try:
        lines, first = inspect.getsourcelines(target)
        path = Path(inspect.getsourcefile(target) or "?")
    except (OSError, TypeError) as exc:
        raise TypeError(f"No source to show for {obj!r}: pass a function, method, class or module written in Python.") from exc
    first = max(first, 1)  # a module starts at line 0 for inspect
    where = f"{_short(path)}, lines {first}-{first + len(lines) - 1}"
    return Source(code=_dedent(lines), where=where)


def _dedent(lines: list[str]) -> str:
    """The lines without the indentation of the first one (a method's class indentation), joined."""
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "".join("\n" if not line.strip() else line[indent:] if line[:indent].isspace() else line for line in lines).rstrip()


def _short(path: Path) -> str:
    """course_lib/x.py rather than the full path on this machine."""
    parts = path.resolve().parts
    return "/".join(parts[parts.index("course_lib"):]) if "course_lib" in parts else path.name
