"""Caption-embedding throughput: captions per second for all-MiniLM-L6-v2 at batch sizes 32 and 128.

Usage: python benchmarks/bench_text.py [--quick] [--captions 2048] [--repeats 3]
Captions are the synthetic generator's Clotho-like sentences (8-20 words). One warm-up pass,
then several timed passes of ``encode_captions`` (normalised, float32) on CPU and,
when there is one, on CUDA. Also times reusing a cache of Clotho's size (29,645 captions) and
projects how long embedding all of Clotho takes. The table shows the median pass and the best one
(the machine's load average is saved too: other work on a shared CPU slows single passes down).
Saves benchmarks/results/text.json (text.quick.json with --quick).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_info, save_results

from course_lib import text, text_cache
from course_lib.synth_captions import describe_scene
from course_lib.synth_scenes import sample_scene

MODEL = "all-MiniLM-L6-v2"
CLOTHO_CAPTIONS = 29_645  # 19,195 development + 5,225 validation + 5,225 evaluation
BATCH_SIZES = (32, 128)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def clotho_like_captions(count: int) -> list[str]:
    """``count`` captions written by the synthetic generator for scenes of 15-30 s, like Clotho's (5 per scene)."""
    rng = np.random.default_rng(0)
    captions: list[str] = []
    while len(captions) < count:
        captions += describe_scene(sample_scene(rng, rng.uniform(15.0, 30.0)), rng)
    return captions[:count]


def time_encoding(model, captions: list[str], batch_size: int, repeats: int, device: str) -> list[float]:
    """Seconds to embed all captions: one warm-up pass, then ``repeats`` timed passes."""
    times = []
    for run in range(repeats + 1):
        sync(device)
        started = time.perf_counter()
        text.encode_captions(model, captions, batch_size=batch_size, progress=False)
        sync(device)
        if run:
            times.append(time.perf_counter() - started)
    return times


def time_cache_reuse(captions_count: int, dimension: int) -> dict[str, float]:
    """Seconds for ensure_embeddings to decide a Clotho-sized cache is valid and reuse it."""
    folder = text.resolve_text_model(MODEL)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((captions_count, dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tids = [f"tid{index:08d}" for index in range(captions_count)]
    texts = [f"caption number {index} of a clip" for index in range(captions_count)]
    identity = {"model": MODEL, "folder": folder, "dimension": dimension, "fingerprint": text_cache.model_fingerprint(folder)}
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / text_cache.cache_file_name(MODEL)
        text_cache.write_cache(path, text_cache.EmbeddingCache(np.asarray(tids), np.asarray(texts), vectors, identity))
        text_cache._file_sha256.cache_clear()  # time the fingerprint too, as a fresh process pays it
        started = time.perf_counter()
        text.ensure_embeddings(path, tids, texts, MODEL, progress=False)
        seconds = time.perf_counter() - started
        return {"captions": captions_count, "seconds": seconds, "file_megabytes": path.stat().st_size / 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 captions, 1 timed pass: well under a minute on 2 cores")
    parser.add_argument("--captions", type=int, default=None, help="captions per pass (default 2048, quick 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per setting (default 3, quick 1)")
    args = parser.parse_args()
    count = args.captions or (256 if args.quick else 2048)
    repeats = args.repeats or (1 if args.quick else 3)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    machine = {**machine_info(devices[-1]), "devices": devices}
    captions = clotho_like_captions(count)
    words = [len(caption.split()) for caption in captions]
    print(f"{len(captions)} captions, {min(words)}-{max(words)} words (mean {statistics.mean(words):.1f}); model {MODEL}")

    rows = []
    print(f"{'device':6} {'batch':>5} {'median s':>9} {'best s':>7} {'captions/s':>11} {'best/s':>7} {'Clotho (29,645)':>16}")
    for device in devices:
        started = time.perf_counter()
        model = text.load_text_model(MODEL, device)
        load_seconds = time.perf_counter() - started
        for batch_size in BATCH_SIZES:
            times = time_encoding(model, captions, batch_size, repeats, device)
            median, best = statistics.median(times), min(times)
            speed = len(captions) / median
            rows.append({
                "device": device, "model": MODEL, "dimension": text.embedding_dimension(model), "batch": batch_size,
                "captions": len(captions), "repeats": repeats, "load_seconds": load_seconds, "times": times,
                "median_seconds": median, "best_seconds": best, "captions_per_second": speed,
                "best_captions_per_second": len(captions) / best, "projected_clotho_seconds": CLOTHO_CAPTIONS / speed,
            })
            print(f"{device:6} {batch_size:5d} {median:9.3f} {best:7.3f} {speed:11.1f} {len(captions) / best:7.1f} "
                  f"{CLOTHO_CAPTIONS / speed:14.1f} s")
    reuse = time_cache_reuse(CLOTHO_CAPTIONS, rows[0]["dimension"])
    print(f"Reusing a cache of {reuse['captions']} captions ({reuse['file_megabytes']:.1f} MB): {reuse['seconds']:.2f} s")
    payload = {
        "benchmark": "text",
        "quick": args.quick,
        "clotho_captions": CLOTHO_CAPTIONS,
        "machine": machine,
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "results": rows,
        "cache_reuse": reuse,
    }
    save_results("text", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
