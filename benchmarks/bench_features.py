"""How fast are log-mel features? librosa in one process vs all cores, and the torch twin (CPU, CUDA).

Usage: python benchmarks/bench_features.py [--quick]
Clips are Clotho-scale (15-30 s at 44.1 kHz) synthetic clips written by course_lib.synth into a
temporary folder. Prints a table and saves benchmarks/results/features.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import librosa
import numpy as np
import torch

from course_lib import features
from course_lib.features import SAMPLE_RATE, FeatureParams, TorchLogMel, extract_all, extract_clip, load_audio, log_mel
from course_lib.synth import generate_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "features.json"


REPEATS = 3  # the best of three runs: other programs on the machine only ever slow a run down


def timed(run) -> float:
    """The fastest of REPEATS runs, in seconds."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 clips instead of 48 (under a minute)")
    parser.add_argument("--clips", type=int, default=None, help="number of clips (default 48, or 8 with --quick)")
    args = parser.parse_args()
    n_clips = args.clips or (8 if args.quick else 48)
    cores = os.cpu_count() or 1
    params = FeatureParams()
    load_before = round(os.getloadavg()[0], 2)  # other programs running: this machine may be shared
    blas_threads = max(lib["num_threads"] for lib in features.BLAS.info() if lib["user_api"] == "blas")

    with tempfile.TemporaryDirectory() as tmp:
        dataset = generate_dataset(Path(tmp) / "Clotho", seed=1, clips={"development": n_clips}, min_seconds=15.0,
                                   max_seconds=30.0, splits=["development"], progress=False)
        paths = sorted((dataset / "development").glob("*.wav"))
        jobs = [(path.stem, str(path), params) for path in paths]
        waveforms = [load_audio(path) for path in paths]
        audio_seconds = sum(len(w) for w in waveforms) / SAMPLE_RATE
        extract_clip(jobs[0])  # warm-up outside the timed regions (lazy imports, numba)

        runs = {  # the first two are ensure_features' own path (workers=1 and workers=None)
            "librosa, 1 process, read + features": timed(lambda: list(extract_all(jobs, 1, "1 process"))),
            f"librosa, {cores} processes, read + features": timed(lambda: list(extract_all(jobs, cores, f"{cores} processes"))),
            "librosa, 1 process, features only": librosa_features(waveforms),
            f"librosa, 1 process, features only, {blas_threads} BLAS threads": librosa_features(waveforms, False),
            f"torch CPU ({torch.get_num_threads()} threads), features only": torch_seconds(waveforms, "cpu"),
        }
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        runs["torch CPU (1 thread), features only"] = torch_seconds(waveforms, "cpu")
        torch.set_num_threads(threads)
        if torch.cuda.is_available():
            runs[f"torch CUDA ({torch.cuda.get_device_name()}), features only"] = torch_seconds(waveforms, "cuda")

    rows = [{"method": name, "seconds": round(seconds, 3), "clips_per_second": round(n_clips / seconds, 2),
             "audio_seconds_per_second": round(audio_seconds / seconds, 1)} for name, seconds in runs.items()]
    print(f"\n{n_clips} clips, {audio_seconds / 60:.1f} min of audio at {SAMPLE_RATE} Hz, {cores} CPU cores, "
          f"load average {load_before} before the runs")
    print(f"(best of {REPEATS} runs; the process pool's start-up is inside its time)")
    print(f"{'method':<58} {'seconds':>8} {'clips/s':>9} {'audio s/s':>10}")
    for row in rows:
        speeds = f"{row['clips_per_second']:>9.1f} {row['audio_seconds_per_second']:>10.0f}"
        print(f"{row['method']:<58} {row['seconds']:>8.2f} {speeds}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "features", "quick": args.quick, "repeats": REPEATS,
        "clips": n_clips, "audio_seconds": round(audio_seconds, 1),
        "machine": {"cpu_count": cores, "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "librosa": librosa.__version__,
                    "numpy": np.__version__, "load_average_1min_before": load_before,
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"},
        "results": rows,
    }
    tmp_path = RESULTS.with_name(RESULTS.name + ".tmp")
    tmp_path.write_text(json.dumps(result, indent=2), encoding="utf-8")
    os.replace(tmp_path, RESULTS)
    print(f"Saved {RESULTS}")


if __name__ == "__main__":
    main()
