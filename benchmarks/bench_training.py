"""Training throughput of the baseline recipe (whole clips, and 250-frame crops for comparison): samples/s,
audio-seconds/s, peak memory; Clotho epoch and run estimates.

Usage: python benchmarks/bench_training.py [--quick] [--steps 3] [--device auto]
One training step = forward of both branches, InfoNCE, backward, Adam update. Shapes: the synthetic
profile's (CNN14 width 0.125, 5-8 s clips, MiniLM 384-d) and Clotho's (full width, 15-30 s clips,
mpnet 768-d), batch 32. The baseline recipe pads whole clips to the longest of the batch; the crop rows
take random 250-frame windows instead (a variation measured, not a recipe of the course). On a GPU also
bf16/fp16 autocast, channels_last and torch.compile, and the fraction of the GPU's peak FLOP rate (FLOPs
counted by torch.utils.flop_counter); on a CPU those rows say they were skipped. Saves
benchmarks/results/training.json (.quick.json with --quick).

Estimates: one Clotho epoch = 600 training steps (19,195 captions, batch 32) plus a validation pass
(5,225 captions with whole clips, forward only, counted as a third of a training step's work each);
a run = the clotho profile's epoch budget (baseline.yaml), and all of the recipe's max_epochs (80). The T4
figure is scaled from the FLOPs counted per step, at an assumed 30% of the T4's 65 TFLOP/s fp16 tensor peak.
"""

from __future__ import annotations

import argparse
import resource
import time
from contextlib import nullcontext

import numpy as np
import torch
from _common import machine_info, save_results
from torch.utils.flop_counter import FlopCounterMode

from course_lib.cnn14 import SILENCE_LOG_MEL, CNN14Encoder
from course_lib.config import load_config, resolve_device
from course_lib.data import PAD_VALUES, Collate
from course_lib.loss import infonce_loss
from course_lib.model import DualEncoder
from course_lib.train import autocast_dtype, epoch_budget, recipe_settings

HOP_S = 0.02
SHAPES = {
    "synthetic": {"width": 0.125, "seconds": (5.0, 8.0), "text_dim": 384},
    "clotho": {"width": 1.0, "seconds": (15.0, 30.0), "text_dim": 768},
}
CLOTHO_STEPS_PER_EPOCH, CLOTHO_VAL_CAPTIONS = 600, 5225
PEAK_TFLOPS = {"T4": {"fp16": 65.0, "fp32": 8.1}, "A100": {"bf16": 312.0, "fp32": 19.5}, "L4": {"bf16": 121.0, "fp32": 30.3},
               "H100": {"bf16": 989.0, "fp32": 67.0}, "H200": {"bf16": 989.0, "fp32": 67.0}}
T4_EFFICIENCY = 0.30
VARIATIONS = {"baseline": {}, "baseline, 250-frame crops": {"crop_frames": 250, "pad_value": "silence"}}


def make_batch(shape: dict, recipe: dict, batch: int, rng: np.random.Generator):
    """A batch as the recipe's collation builds it, from random clips of the profile's lengths; and its audio seconds."""
    lengths = rng.integers(int(shape["seconds"][0] / HOP_S), int(shape["seconds"][1] / HOP_S) + 1, size=batch)
    items = [(torch.randn(int(n), 64) - 10, torch.randn(shape["text_dim"]), i) for i, n in enumerate(lengths)]
    audio, text, ids = Collate(recipe["crop_frames"], PAD_VALUES[recipe["pad_value"]])(items)
    seconds = float(np.minimum(lengths, recipe["crop_frames"] or 10**9).sum() * HOP_S)
    return audio, text, ids, seconds


def train_step(model, optimizer, audio, text, ids, autocast) -> None:
    with autocast:
        audio_emb, text_emb = model(audio, text)
    loss = infonce_loss(audio_emb, text_emb, ids)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(shape_name: str, recipe_name: str, variant: str, device: torch.device, steps: int, batch: int) -> dict:
    """Median step time of one (shape, recipe variation, variant); variant: fp32, autocast, channels_last, compile."""
    shape, recipe = SHAPES[shape_name], {**recipe_settings(load_config(), "baseline")[1], **VARIATIONS[recipe_name]}
    torch.manual_seed(0)
    model = DualEncoder(CNN14Encoder(300, shape["width"]), shape["text_dim"]).to(device).train()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if variant == "compile" else model
    dtype = autocast_dtype(device) if variant in ("autocast", "compile") else None
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    batches = [make_batch(shape, recipe, batch, rng) for _ in range(steps + 1)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for audio, text, ids, _ in batches:  # the first step warms up (and compiles)
        audio, text, ids = audio.to(device), text.to(device), ids.to(device)
        _sync(device)
        start = time.perf_counter()
        train_step(step_model, optimizer, audio, text, ids, autocast)
        _sync(device)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times[1:]))
    audio_s = float(np.mean([b[3] for b in batches]))
    with FlopCounterMode(display=False) as counter:  # the FLOPs of one step (forward + backward) at the first batch's shape
        audio, text, ids, _ = batches[0]
        train_step(model, optimizer, audio.to(device), text.to(device), ids.to(device), nullcontext())
    flops = counter.get_total_flops()
    row = {"shape": shape_name, "recipe": recipe_name, "variant": variant, "dtype": str(dtype or "fp32"), "batch": batch,
           "frames": int(batches[0][0].shape[1]), "step_s": round(step_s, 4), "samples_per_s": round(batch / step_s, 2),
           "audio_seconds_per_s": round(audio_s / step_s, 1), "tflop_per_step": round(flops / 1e12, 4),
           "achieved_tflops": round(flops / step_s / 1e12, 3), "peak_memory_mb": _peak_mb(device)}
    row["peak_fraction"] = _peak_fraction(row, device)
    return row | estimates(row, recipe)


def estimates(row: dict, recipe: dict) -> dict:
    """Clotho epoch and full-run seconds at the measured rate (Clotho shapes only), and scaled to a T4."""
    if row["shape"] != "clotho":
        return {}
    # Validation runs whole clips forward only: a third of a step's work, times (whole clip / crop) when training crops.
    longer = 1.0 if recipe["crop_frames"] is None else np.mean(SHAPES["clotho"]["seconds"]) / (recipe["crop_frames"] * HOP_S)
    epoch_steps = CLOTHO_STEPS_PER_EPOCH + CLOTHO_VAL_CAPTIONS / row["batch"] / 3 * longer
    epoch_s = epoch_steps * row["step_s"]
    t4_epoch_s = epoch_steps * row["tflop_per_step"] * 1e12 / (PEAK_TFLOPS["T4"]["fp16"] * T4_EFFICIENCY * 1e12)
    budget = epoch_budget(load_config("clotho"), recipe)
    return {"epoch_s": round(epoch_s, 1), "budget_epochs": budget, "run_h": round(epoch_s * budget / 3600, 2),
            "full_run_h": round(epoch_s * recipe["max_epochs"] / 3600, 2), "t4_epoch_s_estimate": round(t4_epoch_s, 1),
            "t4_run_h_estimate": round(t4_epoch_s * budget / 3600, 2),
            "t4_full_run_h_estimate": round(t4_epoch_s * recipe["max_epochs"] / 3600, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 timed step, synthetic shapes and one Clotho row")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = torch.device(resolve_device(args.device))
    steps = 1 if args.quick else args.steps
    variants = ["fp32", "autocast", "channels_last", "compile"] if device.type == "cuda" else ["fp32"]
    skipped = [] if device.type == "cuda" else ["autocast, channels_last, torch.compile and peak-FLOP fraction: skipped (no GPU)"]
    rows = []
    for shape in SHAPES:
        for recipe in VARIATIONS:
            for variant in variants:
                if shape == "clotho" and device.type == "cpu" and args.quick and recipe != "baseline":
                    continue
                cpu_steps = min(steps, 2) if shape == "clotho" and device.type == "cpu" else steps  # full width is slow on a CPU
                try:
                    row = measure(shape, recipe, variant, device, cpu_steps, 32)
                except Exception as exc:  # a variant a machine cannot run (an old GPU and torch.compile): say so, go on
                    row = {"shape": shape, "recipe": recipe, "variant": variant, "error": f"{type(exc).__name__}: {exc}"}
                rows.append(row)
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    for line in skipped:
        print(line)
    save_results("training", {"quick": args.quick, "machine": machine_info(device.type), "rows": rows, "skipped": skipped,
                              "t4_scaling": f"FLOPs per step / ({T4_EFFICIENCY:.0%} of the T4's 65 TFLOP/s fp16 peak)",
                              "silence_log_mel": SILENCE_LOG_MEL})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # the process's peak RSS (Linux: KiB)


def _peak_fraction(row: dict, device: torch.device) -> float | str:
    if device.type != "cuda":
        return "skipped (no GPU)"
    name = torch.cuda.get_device_name(0)
    peaks = next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)
    if peaks is None:
        return f"unknown peak for {name}"
    peak = peaks.get("fp32") if row["dtype"] == "fp32" else peaks.get("bf16", peaks.get("fp16"))
    return round(row["achieved_tflops"] / peak, 3)


if __name__ == "__main__":
    main()
