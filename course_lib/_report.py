"""Status lines that a stage prints when called directly, and keeps quiet inside the pipeline."""

from __future__ import annotations


def say(verbose: bool, message: str) -> None:
    """Print ``message`` when ``verbose``."""
    if verbose:
        print(message)
