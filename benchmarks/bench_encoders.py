"""CNN14 encoder forward throughput: clips per second for 10 s and 30 s clips, full and synthetic width.

Usage: python benchmarks/bench_encoders.py [--quick] [--batch 32] [--repeats 5]
Eval mode under torch.inference_mode, one warm-up pass, the median of several timed passes.
On CUDA (when available) also with bf16 and fp16 autocast. Prints a table and saves
benchmarks/results/encoders.json (encoders.quick.json with --quick, which leaves the full results alone).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext

import torch
from _common import machine_info, save_results

from course_lib.cnn14 import CNN14Encoder, count_parameters

CLIPS = {"10 s": 501, "30 s": 1501}  # frames at the baseline's 20 ms hop
WIDTHS = {"full (1.0)": 1.0, "synthetic (0.125)": 0.125}


def precisions(device: str) -> dict[str, torch.dtype | None]:
    """fp32 everywhere; bf16 and fp16 autocast on CUDA only (CPU autocast is not what the course uses)."""
    return {"fp32": None, "bf16 autocast": torch.bfloat16, "fp16 autocast": torch.float16} if device == "cuda" else {"fp32": None}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_forward(encoder: CNN14Encoder, batch: torch.Tensor, dtype: torch.dtype | None, repeats: int) -> list[float]:
    """Seconds per forward pass: one warm-up, then ``repeats`` timed passes."""
    device = batch.device.type
    autocast = torch.autocast(device_type=device, dtype=dtype) if dtype else nullcontext()
    times = []
    with torch.inference_mode(), autocast:
        for run in range(repeats + 1):
            sync(device)
            started = time.perf_counter()
            encoder(batch)
            sync(device)
            if run:  # run 0 is the warm-up
                times.append(time.perf_counter() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="batch 4 and 2 repeats: well under a minute on 2 cores")
    parser.add_argument("--batch", type=int, default=None, help="clips per forward pass (default 32, quick 4)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes per setting (default 5, quick 2)")
    args = parser.parse_args()
    batch_size = args.batch or (4 if args.quick else 32)
    repeats = args.repeats or (2 if args.quick else 5)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    machine = machine_info(devices[-1])  # before the runs: it records the load average they start from
    torch.manual_seed(0)

    rows = []
    print(f"{'device':6} {'precision':14} {'width':18} {'clip':5} {'batch':>5} {'median s':>9} {'clips/s':>9}")
    for device in devices:
        for width_name, width in WIDTHS.items():
            encoder = CNN14Encoder(width=width).eval().to(device)
            for precision, dtype in precisions(device).items():
                for clip_name, frames in CLIPS.items():
                    batch = torch.randn(batch_size, frames, 64, device=device)
                    times = time_forward(encoder, batch, dtype, repeats)
                    median = statistics.median(times)
                    row = {
                        "device": device, "precision": precision, "width": width, "parameters": count_parameters(encoder),
                        "clip": clip_name, "frames": frames, "batch": batch_size, "repeats": repeats,
                        "median_seconds": median, "clips_per_second": batch_size / median, "times": times,
                    }
                    rows.append(row)
                    speed = batch_size / median
                    print(f"{device:6} {precision:14} {width_name:18} {clip_name:5} {batch_size:5d} {median:9.3f} {speed:9.1f}")
    save_results("encoders", {"benchmark": "encoders", "quick": args.quick, "machine": machine, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
