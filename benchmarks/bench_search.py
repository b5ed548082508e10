"""Search latency: a text query end to end, and the exact search alone, at 1045 and 100,000 clips.

Usage: python benchmarks/bench_search.py [--quick] [--queries 200] [--threads N]
End to end is ``SearchEngine.search``: Sentence-BERT (all-MiniLM-L6-v2, offline) embeds the query,
the dual encoder's text projection maps it to 300-d, one matrix product scores every clip,
``metrics.top_k`` (np.partition) picks the top 10, and the result rows (file names, captions, z-scores,
the check for a dataset caption) are built. "Search alone" is the matrix product and top-k on an
already embedded query. The indexes are random unit vectors: the cost does not depend on what they
hold. 1045 is the size of Clotho's evaluation split (5 captions a clip). Goal: median under 20 ms end
to end at 1045 clips on 2 cores.
The table shows the median and 95th percentile over the queries (each query once, after a warm-up);
the machine's load average is saved too: other work on a shared CPU slows single queries down.
Saves benchmarks/results/search.json (search.quick.json with --quick).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import pandas as pd
import torch
from _common import machine_info, save_results

from course_lib import text
from course_lib.cnn14 import CNN14Encoder
from course_lib.metrics import top_k
from course_lib.model import DualEncoder
from course_lib.search import ClipIndex, SearchEngine
from course_lib.synth_captions import describe_scene
from course_lib.synth_scenes import sample_scene

MODEL = "all-MiniLM-L6-v2"
SIZES = (1045, 100_000)
GOAL_MS = 20.0


def random_index(clips: int, rng: np.random.Generator, captions: list[str]) -> ClipIndex:
    """An index of ``clips`` random unit vectors, 5 captions a clip (the synthetic generator's sentences)."""
    vectors = rng.standard_normal((clips, 300), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fids = np.array([f"clip{k:06d}" for k in range(clips)])
    texts = [captions[k % len(captions)] for k in range(5 * clips)]
    table = pd.DataFrame({"tid": [f"t{k}" for k in range(5 * clips)], "fid": np.repeat(fids, 5),
                          "fname": np.repeat([f"{fid}.wav" for fid in fids], 5), "raw_text": texts,
                          "text": [t.lower() for t in texts]})
    return ClipIndex("evaluation", fids, np.char.add(fids, ".wav"), vectors, table, np.zeros((0, 300), np.float32))


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1e3
    return {"median_ms": round(float(np.median(ms)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 queries instead of 200")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    count = args.queries or (30 if args.quick else 200)
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    captions: list[str] = []
    while len(captions) < count + 500:
        captions += describe_scene(sample_scene(rng, rng.uniform(15.0, 30.0)), rng)
    queries, index_captions = captions[:count], captions[count:]
    text_model = text.load_text_model(MODEL, device="cpu")
    torch.manual_seed(0)
    model = DualEncoder(CNN14Encoder(300, 0.125), text_dim=text.embedding_dimension(text_model)).eval()

    rows = []
    for clips in SIZES:
        index = random_index(clips, rng, index_captions)
        engine = SearchEngine(model, text_model, {"evaluation": index})
        for query in queries[:5]:  # warm-up: first calls load kernels and caches
            engine.search(query, "evaluation", k=10)
        end_to_end, embed_only, search_only = [], [], []
        for query in queries:
            started = time.perf_counter()
            engine.search(query, "evaluation", k=10)
            end_to_end.append(time.perf_counter() - started)
            started = time.perf_counter()
            vector = engine.embed_query(query)
            embed_only.append(time.perf_counter() - started)
            started = time.perf_counter()
            top_k(index.clip_vectors @ vector, 10)
            search_only.append(time.perf_counter() - started)
        rows.append({"clips": clips, "index_mb": round(index.clip_vectors.nbytes / 1e6, 1),
                     "end_to_end": percentiles(end_to_end), "query_embedding": percentiles(embed_only),
                     "search_only": percentiles(search_only)})

    print(f"{'clips':>8} {'index':>8} | {'end to end median / p95':>24} | {'query embedding':>16} | {'search alone':>20}")
    for row in rows:
        e2e, emb, only = row["end_to_end"], row["query_embedding"], row["search_only"]
        print(f"{row['clips']:>8,} {row['index_mb']:>6} MB | {e2e['median_ms']:>10.2f} / {e2e['p95_ms']:>7.2f} ms   | "
              f"{emb['median_ms']:>10.2f} ms   | {only['median_ms']:>8.3f} / {only['p95_ms']:.3f} ms")
    goal = rows[0]["end_to_end"]["median_ms"] < GOAL_MS
    print(f"Goal (median end to end under {GOAL_MS:.0f} ms at {SIZES[0]} clips): {'met' if goal else 'NOT met'}")
    save_results("search", {"quick": args.quick, "queries": count, "text_model": MODEL, "k": 10, "goal_ms": GOAL_MS,
                            "goal_met": goal, "machine": machine_info(), "results": rows,
                            "note": "medians over single queries; other programs on the machine add noise"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
