"""How long the synthetic dataset takes to generate, and how much disk it needs.

Usage: python benchmarks/bench_synth.py [--quick] [--workers N]
  default : the synthetic profile's dataset (course_lib/baseline.yaml), then a reuse check
  --quick : plus 100 Clotho-shaped clips (15-30 s), extrapolated to Clotho's 5929 clips
  full    : plus the real Clotho-scale run (3839/1045/1045 clips of 15-30 s, about 12 GB) in a
            temporary folder that is deleted afterwards
Results: benchmarks/results/synth.json (synth.quick.json with --quick)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf
from _common import machine_info, save_results

from course_lib.synth import CLOTHO_SCALE, default_settings, ensure_generated, generate_dataset


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(name: str, clips: dict[str, int], min_seconds: float, max_seconds: float, workers: int | None) -> dict:
    """Generate one dataset in a temporary folder; return its timing and size, then delete it."""
    parameters = {"seed": 0, "clips": clips, "min_seconds": min_seconds, "max_seconds": max_seconds, "splits": list(clips)}
    with tempfile.TemporaryDirectory(prefix="bench_synth_") as tmp:
        out = Path(tmp) / "Clotho"
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            generate_dataset(out, workers=workers, progress=False, **parameters)
        seconds = time.perf_counter() - started
        audio_seconds = sum(sf.info(wav).duration for wav in out.rglob("*.wav"))
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ensure_generated(out, **parameters)  # what a notebook pays when the dataset is already there
        reuse_seconds = time.perf_counter() - started
        size = folder_size(out)
    n_clips = sum(clips.values())
    return {"name": name, "clips": n_clips, "min_seconds": min_seconds, "max_seconds": max_seconds,
            "generate_seconds": round(seconds, 2), "reuse_check_seconds": round(reuse_seconds, 3),
            "bytes_on_disk": size, "audio_hours": round(audio_seconds / 3600, 3),
            "times_faster_than_real_time": round(audio_seconds / seconds, 1)}


def extrapolate(measured: dict, clips: int) -> dict:
    """Scale a reduced run linearly to ``clips`` clips."""
    factor = clips / measured["clips"]
    return {**measured, "name": measured["name"] + " -> extrapolated", "clips": clips, "extrapolated_from": measured["clips"],
            "generate_seconds": round(measured["generate_seconds"] * factor, 1), "reuse_check_seconds": None,
            "bytes_on_disk": int(measured["bytes_on_disk"] * factor), "audio_hours": round(measured["audio_hours"] * factor, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="extrapolate Clotho scale from 100 clips (under a minute)")
    parser.add_argument("--workers", type=int, help="processes (default: every CPU core, at most 8)")
    args = parser.parse_args()
    machine = machine_info("cpu")  # generation uses numpy and scipy only
    machine["workers"] = args.workers or min(os.cpu_count() or 1, 8)  # generate_dataset's default from 32 clips on

    synth = default_settings()
    rows = [run("default (synthetic profile)", synth["clips"], synth["min_seconds"], synth["max_seconds"], args.workers)]
    clotho_clips = sum(CLOTHO_SCALE["clips"].values())
    if args.quick:
        reduced = run("Clotho-shaped, 100 clips", {"development": 100}, CLOTHO_SCALE["min_seconds"], CLOTHO_SCALE["max_seconds"],
                      args.workers)
        rows += [reduced, extrapolate(reduced, clotho_clips)]
    else:
        rows.append(run("Clotho scale (3839/1045/1045)", CLOTHO_SCALE["clips"], CLOTHO_SCALE["min_seconds"],
                        CLOTHO_SCALE["max_seconds"], args.workers))

    print(f"\n{'run':<40} {'clips':>6} {'audio h':>8} {'seconds':>9} {'x real time':>12} {'MB on disk':>11} {'reuse s':>8}")
    for row in rows:
        reuse = "" if row["reuse_check_seconds"] is None else f"{row['reuse_check_seconds']:.3f}"
        print(f"{row['name']:<40} {row['clips']:>6} {row['audio_hours']:>8.2f} {row['generate_seconds']:>9.1f} "
              f"{row['times_faster_than_real_time']:>12.0f} {row['bytes_on_disk'] / 1e6:>11.1f} {reuse:>8}")
    print()
    save_results("synth", {"benchmark": "synth", "quick": args.quick, "machine": machine, "runs": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
