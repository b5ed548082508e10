"""Make the images the README shows, from the course's own code, into figures/.

Usage: python scripts/make_figures.py [name ...]   (`make figures` runs them all)

One function a figure, registered in FIGURES: to add one (training curves, the search widget),
write a function that returns a matplotlib Figure and add it there. Each PNG is written at a
modest resolution and checked to stay under MAX_BYTES, so the repository stays light.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from course_lib import pipeline, plots  # noqa: E402
from course_lib.synth_captions import describe_scene  # noqa: E402
from course_lib.synth_scenes import SAMPLE_RATE, Event, Scene, render_scene  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "figures"
MAX_BYTES = 200_000
DPI = 90


def course_pipeline() -> plt.Figure:
    """The course's stages, drawn from course_lib.pipeline.STAGES (so the picture follows the code)."""
    ax = plots.plot_pipeline(pipeline.STAGES, after=("evaluation", "search"))
    return ax.figure


def clip_waveform_log_mel() -> plt.Figure:
    """A synthetic clip made by the course's generator: its waveform above its baseline log-mel."""
    scene = Scene(seconds=6.0, background="outdoors", events=(
        Event("bell", position="start", loudness="loud", pitch="high", rate="slow"),
        Event("rain", position="end", loudness="quiet"),
    ))
    rng = np.random.default_rng(0)
    samples = render_scene(scene, rng)
    caption = describe_scene(scene, np.random.default_rng(1), n=1)[0]  # one of the true captions the generator writes
    return plots.plot_clip(samples, SAMPLE_RATE, title=f'"{caption}"')


FIGURES: dict[str, Callable[[], plt.Figure]] = {
    "pipeline": course_pipeline,
    "clip_waveform_log_mel": clip_waveform_log_mel,
}


def save(name: str, fig: plt.Figure) -> Path:
    """Write figures/<name>.png and refuse one over MAX_BYTES (lower DPI or simplify the figure)."""
    path = OUT / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size:,} bytes, over {MAX_BYTES:,}: lower its DPI or simplify it.")
    return path


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        print(f"Unknown figure(s) {', '.join(unknown)}; choose from: {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for name in names or FIGURES:
        path = save(name, FIGURES[name]())
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size / 1000:.0f} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
