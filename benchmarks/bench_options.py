"""What each of notebook 09's options costs a training epoch, through the course's own trainer.

Usage: python benchmarks/bench_options.py [--quick] [--epochs 2] [--data-root DIR]
Trains the baseline recipe and each idea of course_lib.beyond.IDEAS (one option on) for a few epochs on the
synthetic profile (--quick: the quick setting's 32/16/48 clips) in a temporary data root, or in --data-root
(runs there are reused), with seed 0. Prints and saves, per idea: the mean seconds of a training epoch
(epochs 1..N, validation included, as history.csv records them) and its ratio to the baseline's, and the
run's wall time, which also holds the set-up an option needs once (loading the text model, the teacher's clip
embeddings, the paraphrases' vectors). Saves benchmarks/results/options.json (.quick.json with --quick).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import machine_info, save_results

from course_lib import beyond, train
from course_lib.config import load_config
from course_lib.pipeline import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick setting's smaller synthetic set")
    parser.add_argument("--epochs", type=int, default=2, help="epochs a run (default 2)")
    parser.add_argument("--data-root", type=Path, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-options-") as temporary:
        cfg = load_config("synthetic", data_root=args.data_root or temporary, quick=args.quick)
        prepare(cfg, until="embeddings", verbose=False)
        info = machine_info("cpu")
        rows = []
        for idea, changes in beyond.IDEAS.items():
            started = time.perf_counter()
            best = beyond.run_idea(cfg, idea, changes, seed=0, epochs=args.epochs)
            wall = time.perf_counter() - started
            history = train.read_history(best.parent)
            rows.append({"idea": idea, "epoch_s": float(history["epoch_s"].iloc[1:].mean()),
                         "first_epoch_s": float(history["epoch_s"].iloc[1]), "run_wall_s": wall})
    reference = rows[0]["epoch_s"]
    print(f"{'idea':<26} {'epoch (s)':>10} {'x baseline':>11} {'run wall (s)':>13}")
    for row in rows:
        row["ratio"] = row["epoch_s"] / reference
        print(f"{row['idea']:<26} {row['epoch_s']:>10.2f} {row['ratio']:>11.2f} {row['run_wall_s']:>13.1f}")
    save_results("options", {"quick": args.quick, "epochs": args.epochs, "machine": info, "rows": rows})


if __name__ == "__main__":
    main()
