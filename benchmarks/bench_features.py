"""How fast are log-mel features? librosa in one process vs all cores, the pool's start-up, and the torch twin.

Usage: python benchmarks/bench_features.py [--quick] [--clips N]
Clips are Clotho-scale (15-30 s at 44.1 kHz) synthetic clips written by course_lib.synth into a
temporary folder: 400 by default (a few minutes on 2 cores), 16 with --quick (under a minute).
The start-up of the worker processes is timed on its own, so the clip count from which
ensure_features uses every core (features.PARALLEL_FROM_CLIPS) can be checked against it.
Prints a table and saves benchmarks/results/features.json (features.quick.json with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import librosa
import numpy as np
import torch
from _common import machine_info, save_results

from course_lib import features
from course_lib.features import SAMPLE_RATE, FeatureParams, TorchLogMel, extract_all, extract_clip, load_audio, log_mel
from course_lib.synth import generate_dataset

REPEATS = 3  # the best of three runs: other programs on the machine only ever slow a run down
IN_MEMORY_CLIPS = 100  # the features-only rows use at most this many clips (some methods are slow)


def timed(run, repeats: int = REPEATS) -> float:
    """The fastest of `repeats` runs, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def timed_in_turns(runs: dict[str, object]) -> dict[str, float]:
    """The fastest of REPEATS runs of each, taking turns, so a busy moment on the machine hits them alike."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(REPEATS):
        for name, run in runs.items():
            best[name] = min(best[name], timed(run, repeats=1))
    return best


def pool_start_up(jobs: list, workers: int) -> float:
    """Seconds for a pool of `workers` processes to start and return one clip each."""
    return timed(lambda: list(extract_all(jobs[:workers], workers, "start-up")), repeats=1)


def librosa_features(waveforms: list[np.ndarray], one_blas_thread: bool = True) -> float:
    """Time log_mel on in-memory clips; one_blas_thread=False lifts log_mel's one-BLAS-thread limit."""
    controller = features.BLAS

    def run() -> None:
        for waveform in waveforms:
            log_mel(waveform, SAMPLE_RATE)

    if one_blas_thread:
        return timed(run)
    features.BLAS = SimpleNamespace(limit=lambda **_: contextlib.nullcontext())
    try:
        return timed(run)
    finally:
        features.BLAS = controller


def torch_seconds(waveforms: list[np.ndarray], device: str) -> float:
    """Time the torch log-mel clip by clip (host-to-device copy and result back included)."""
    module = TorchLogMel().to(device)
    module(torch.from_numpy(waveforms[0]).to(device)).cpu()  # warm-up: kernels, FFT plans

    def run() -> None:
        for waveform in waveforms:
            module(torch.from_numpy(waveform).to(device)).cpu()
        if device == "cuda":
            torch.cuda.synchronize()

    return timed(run)


def row(method: str, seconds: float, clips: int, audio_seconds: float) -> dict:
    return {"method": method, "clips": clips, "seconds": round(seconds, 3), "clips_per_second": round(clips / seconds, 2),
            "audio_seconds_per_second": round(audio_seconds / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 clips instead of 400 (under a minute)")
    parser.add_argument("--clips", type=int, default=None, help="number of clips (default 400, or 16 with --quick)")
    args = parser.parse_args()
    n_clips = args.clips or (16 if args.quick else 400)
    cores = os.cpu_count() or 1
    machine = machine_info("cuda" if torch.cuda.is_available() else "cpu")
    machine.update(librosa=librosa.__version__, numpy=np.__version__)
    blas_threads = max(lib["num_threads"] for lib in features.BLAS.info() if lib["user_api"] == "blas")

    with tempfile.TemporaryDirectory() as tmp:
        print(f"Generating {n_clips} Clotho-scale clips ...")
        with contextlib.redirect_stdout(io.StringIO()):
            dataset = generate_dataset(Path(tmp) / "Clotho", seed=1, clips={"development": n_clips}, min_seconds=15.0,
                                       max_seconds=30.0, splits=["development"], progress=False)
        paths = sorted((dataset / "development").glob("*.wav"))
        jobs = [(path.stem, str(path), FeatureParams()) for path in paths]
        durations = [librosa.get_duration(path=path) for path in paths]
        audio_seconds = sum(durations)
        extract_clip(jobs[0])  # warm-up outside the timed regions (lazy imports, numba)

        # Start-up first: the first pool of a Python session also starts the fork server (see features.process_pool).
        start_up = {"cold": pool_start_up(jobs, cores), "warm": min(pool_start_up(jobs, cores) for _ in range(REPEATS))}
        one_clip_each = timed(lambda: [extract_clip(job) for job in jobs[:cores]]) / cores
        print(f"Timing {n_clips} clips, {audio_seconds / 60:.1f} min of audio ...")
        pipeline = timed_in_turns({  # ensure_features' own path: workers=1, and every core
            "librosa, 1 process, read + features": lambda: list(extract_all(jobs, 1, "1 process")),
            f"librosa, {cores} processes, read + features (warm start-up included)":
                lambda: list(extract_all(jobs, cores, f"{cores} processes")),
        })
        rows = [row(name, seconds, n_clips, audio_seconds) for name, seconds in pipeline.items()]
        subset = paths[:IN_MEMORY_CLIPS]
        waveforms = [load_audio(path) for path in subset]
        subset_seconds = sum(durations[: len(subset)])
        rows.append(row("librosa, 1 process, features only", librosa_features(waveforms), len(subset), subset_seconds))
        rows.append(row(f"librosa, 1 process, features only, {blas_threads} BLAS threads",
                        librosa_features(waveforms, False), len(subset), subset_seconds))
        rows.append(row(f"torch CPU ({torch.get_num_threads()} threads), features only", torch_seconds(waveforms, "cpu"),
                        len(subset), subset_seconds))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        rows.append(row("torch CPU (1 thread), features only", torch_seconds(waveforms, "cpu"), len(subset), subset_seconds))
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            rows.append(row(f"torch CUDA ({torch.cuda.get_device_name()}), features only", torch_seconds(waveforms, "cuda"),
                            len(subset), subset_seconds))

    # The pool pays off once the time it saves per clip has paid for its start-up.
    one, parallel = rows[0]["seconds"] / n_clips, (rows[1]["seconds"] - start_up["warm"]) / n_clips
    break_even = round(start_up["cold"] / (one - parallel)) if 0 < parallel < one else None

    print(f"\n{n_clips} clips, {audio_seconds / 60:.1f} min of audio at {SAMPLE_RATE} Hz, {cores} CPU cores, "
          f"load average {machine['load_average_1min_before']} before the runs (best of {REPEATS} runs)")
    print(f"{'method':<66} {'clips':>5} {'seconds':>8} {'clips/s':>8} {'audio s/s':>10}")
    for r in rows:
        print(f"{r['method']:<66} {r['clips']:>5} {r['seconds']:>8.2f} {r['clips_per_second']:>8.1f} "
              f"{r['audio_seconds_per_second']:>10.0f}")
    print(f"\nstart-up of {cores} worker processes, each returning one clip (one clip alone: {one_clip_each:.3f} s):")
    print(f"  cold (first pool of a session, starts the fork server): {start_up['cold']:.2f} s;"
          f" warm (later pools): {start_up['warm']:.2f} s")
    if break_even is None:
        print(f"{cores} processes were not faster per clip than 1 here (too few clips, or a busy machine)")
    else:
        print(f"{cores} processes beat 1 from about {break_even} clips of this length (cold start-up; "
              f"ensure_features uses every core from {features.PARALLEL_FROM_CLIPS} clips a split)")

    save_results("features", {
        "benchmark": "features", "quick": args.quick, "repeats": REPEATS, "clips": n_clips,
        "audio_seconds": round(audio_seconds, 1), "machine": machine, "results": rows,
        "pool_start_up_seconds": {key: round(value, 3) for key, value in start_up.items()},
        "one_clip_seconds": round(one_clip_each, 4), "break_even_clips": break_even,
        "parallel_from_clips": features.PARALLEL_FROM_CLIPS,
    })


if __name__ == "__main__":
    main()
