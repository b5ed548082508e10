"""Run every course notebook in order, headless, and print a short summary (used by `make course`).

Executed copies go to build/course/ (git-ignored); the notebooks in notebooks/ stay clean. The course runs
with its full settings: COURSE_QUICK (the tests' shortened training) is removed from the notebooks'
environment. The summary ends with the trained model's text-to-audio scores on the evaluation split.
Usage: python scripts/run_course.py [--profile synthetic] [--only 00 02] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from course_lib.config import QUICK_ENV, load_config
from course_lib.model import best_checkpoint_path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUTPUT = ROOT / "build" / "course"


def run_notebook(path: Path, timeout: int) -> float:
    """Execute one notebook with its folder as working directory; save the executed copy."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
        extra_arguments=["--log-level=ERROR"],  # keeps the kernel's start-up chatter out of the summary
    )
    started = time.perf_counter()
    try:
        client.execute()
    finally:
        OUTPUT.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, OUTPUT / path.name)
    return time.perf_counter() - started


def full_course_environment(environ: dict[str, str]) -> dict[str, str]:
    """The environment the notebooks run in: the caller's, without the quick setting."""
    return {name: value for name, value in environ.items() if name != QUICK_ENV}


def trained_model_scores(cfg) -> str:
    """The profile's trained model on the evaluation split: mAP@10 and R@1/5/10 with 95 % jackknife intervals."""
    from course_lib.data import load_split
    from course_lib.model import evaluate_text_to_audio, load_trained_model

    return str(evaluate_text_to_audio(load_trained_model(cfg), load_split(cfg, "evaluation")))


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("COURSE_PROFILE", "synthetic"))
    parser.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 00 02")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    args = parser.parse_args()
    if os.environ.get(QUICK_ENV, "") not in ("", "0"):
        print(f"{QUICK_ENV} is set; `make course` runs the full course, so it is ignored here.")
    environ = full_course_environment(dict(os.environ))
    os.environ.clear()
    os.environ.update(environ)  # the kernels inherit this process's environment
    os.environ["COURSE_PROFILE"] = args.profile

    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if nb.name[:2] in args.only]
    if not notebooks:
        print(f"No notebooks to run in {NOTEBOOKS} (filter: {args.only}).", file=sys.stderr)
        return 1

    print(f"Running {len(notebooks)} notebooks on the '{args.profile}' profile; executed copies go to {OUTPUT}")
    timings: list[tuple[str, float]] = []
    for path in notebooks:
        print(f"  {path.name} ...", end=" ", flush=True)
        try:
            seconds = run_notebook(path, args.timeout)
        except CellExecutionError as exc:
            print("FAILED")
            print(f"\n{path.name} stopped with an error; the executed copy is {OUTPUT / path.name}.\n{exc}", file=sys.stderr)
            return 1
        timings.append((path.name, seconds))
        print(f"done in {seconds:.0f} s")

    cfg = load_config(args.profile)
    print("\nSummary")
    print(f"  {'notebook':<32} {'seconds':>8}")
    for name, seconds in timings:
        print(f"  {name:<32} {seconds:>8.1f}")
    print(f"  {'total':<32} {sum(s for _, s in timings):>8.1f}")
    print(f"\nArtifacts under {cfg.profile_dir}:")
    for folder in (cfg.dataset_dir, cfg.prepared_dir, cfg.models_dir):
        if folder.exists():
            files = [f for f in folder.rglob("*") if f.is_file()]
            print(f"  {folder.relative_to(cfg.data_root)}/: {len(files)} files, {folder_size(folder) / 1e6:.1f} MB")
    if best_checkpoint_path(cfg).is_file():
        print(f"\nThe trained model ({best_checkpoint_path(cfg).relative_to(cfg.data_root)}) on the evaluation split, "
              f"text to audio:\n  {trained_model_scores(cfg)}")
    print(f"\nOpen the executed notebooks in {OUTPUT.relative_to(ROOT)}/ or run `make lab` to work through them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
