"""Scoring plus DCASE metrics: seconds for Clotho's evaluation split (1,045 clips x 5,225 captions) and 10x that.

Usage: python benchmarks/bench_metrics.py [--quick] [--repeats 3] [--scales 1 10]
Random unit embeddings (300-d, float32) stand in for a trained model's: the work does not depend
on the values. Times, per scale: ``score_matrix``, ``text_to_audio``, ``audio_to_text``, ``top_k``
(the submission's 10 best clips a caption) and the whole evaluation (score + t2a + a2t), the median
and best of several passes after one warm-up. The baseline's script needed one forward pass per
pair (5.5 million for the evaluation split). On CUDA (when there is one) it also times the score
matrix plus text-to-audio ranks with torch. The goal: under 1 s for the evaluation split on 2 cores.
Saves benchmarks/results/metrics.json (metrics.quick.json with --quick).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from _common import machine_info, save_results

from course_lib import metrics

CLIPS, CAPTIONS_PER_CLIP, DIM = 1045, 5, 300
GOAL_SECONDS = 1.0


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    values = rng.normal(size=(n, DIM)).astype(np.float32)
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def timed(function, repeats: int) -> tuple[list[float], object]:
    """Seconds of ``repeats`` passes after one warm-up pass, and the last result."""
    times, result = [], None
    for run in range(repeats + 1):
        started = time.perf_counter()
        result = function()
        if run:
            times.append(time.perf_counter() - started)
    return times, result


def summary(times: list[float]) -> dict[str, float]:
    return {"median_s": round(statistics.median(times), 4), "best_s": round(min(times), 4)}


def bench_scale(scale: int, repeats: int) -> dict[str, object]:
    rng = np.random.default_rng(scale)
    n_clips = CLIPS * scale
    clip_fids = [f"clip{j}" for j in range(n_clips)]
    caption_fids = np.repeat(clip_fids, CAPTIONS_PER_CLIP).tolist()
    text_emb, audio_emb = unit_rows(rng, len(caption_fids)), unit_rows(rng, n_clips)
    step_repeats = repeats if scale == 1 else 1
    results: dict[str, object] = {"clips": n_clips, "captions": len(caption_fids), "pairs": n_clips * len(caption_fids)}
    score_times, scores = timed(lambda: metrics.score_matrix(text_emb, audio_emb), step_repeats)
    results["score_matrix"] = summary(score_times)
    results |= bench_steps(scores, caption_fids, clip_fids, step_repeats)
    scores = None  # free the matrix (2.2 GB at scale 10) before timing the whole evaluation

    def whole() -> None:
        scores = metrics.score_matrix(text_emb, audio_emb)
        metrics.text_to_audio(scores, caption_fids, clip_fids)
        metrics.audio_to_text(scores, caption_fids, clip_fids)

    results["score_t2a_a2t"] = summary(timed(whole, step_repeats)[0])
    if torch.cuda.is_available():
        targets = np.repeat(np.arange(n_clips), CAPTIONS_PER_CLIP)
        results["cuda_score_t2a"] = summary(cuda_t2a(text_emb, audio_emb, targets, repeats))
    return results


def bench_steps(scores: np.ndarray, caption_fids: list[str], clip_fids: list[str], repeats: int) -> dict[str, object]:
    """Seconds of each metric step on a ready score matrix."""
    steps = {"text_to_audio": lambda: metrics.text_to_audio(scores, caption_fids, clip_fids),
             "audio_to_text": lambda: metrics.audio_to_text(scores, caption_fids, clip_fids),
             "top_k_10": lambda: metrics.top_k(scores, 10)}
    return {name: summary(timed(function, repeats)[0]) for name, function in steps.items()}


def cuda_t2a(text_emb: np.ndarray, audio_emb: np.ndarray, targets: np.ndarray, repeats: int) -> list[float]:
    """Score matrix and text-to-audio ranks (strictly-higher count) with torch on the GPU, copies included."""

    def run() -> None:
        text, audio = torch.from_numpy(text_emb).cuda(), torch.from_numpy(audio_emb).cuda()
        target = torch.from_numpy(targets).cuda()
        ranks = []
        for start in range(0, len(text), 8192):
            scores = text[start : start + 8192] @ audio.T
            own = scores.gather(1, target[start : start + 8192, None])
            ranks.append((scores > own).sum(1) + 1)
        torch.cat(ranks).cpu()
        torch.cuda.synchronize()

    return timed(run, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the evaluation split's size, one timed pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    args = parser.parse_args()
    scales, repeats = ([1], 1) if args.quick else (args.scales, args.repeats)
    payload: dict[str, object] = {"benchmark": "metrics", "quick": args.quick, "machine": machine_info(),
                                  "goal": f"score + text-to-audio + audio-to-text under {GOAL_SECONDS:g} s at scale 1 on 2 cores",
                                  "note": "shared 2-core machine: other work slows single passes; best_s is the least disturbed"}
    for scale in scales:
        result = bench_scale(scale, repeats)
        payload[f"scale_{scale}"] = result
        print(f"\n{result['clips']} clips x {result['captions']} captions ({result['pairs'] / 1e6:.1f} M pairs)")
        for step in ("score_matrix", "text_to_audio", "audio_to_text", "top_k_10", "score_t2a_a2t", "cuda_score_t2a"):
            if step in result:
                print(f"  {step:<15} median {result[step]['median_s']:.3f} s   best {result[step]['best_s']:.3f} s")
    save_results("metrics", payload)


if __name__ == "__main__":
    main()
