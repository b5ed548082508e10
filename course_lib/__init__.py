"""course_lib: the small library behind the language-based audio retrieval course.

One concept a module; each notebook imports what it teaches from here.
"""

__version__ = "0.1.0"
