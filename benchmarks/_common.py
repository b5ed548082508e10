"""What every benchmark shares: a description of the machine and an atomic JSON writer."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.files import write_json_atomically  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info(device: str = "cpu") -> dict[str, object]:
    """CPU count, load, library versions and the GPU's name when one is used."""
    info: dict[str, object] = {
        "cpu_count": os.cpu_count(),
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def save_results(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json (or <name>.quick.json for --quick runs) and say where."""
    suffix = ".quick" if payload.get("quick") else ""
    path = write_json_atomically(RESULTS / f"{name}{suffix}.json", payload)
    print(f"Saved {path}")
    return path
