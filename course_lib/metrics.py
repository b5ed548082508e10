"""DCASE retrieval metrics from one score matrix: R@1, R@5, R@10 and mAP@10, both directions, with intervals.

Taught in notebook 06. The lesson, top to bottom:

1. ``score_matrix``: embed every caption once and every clip once; one matrix product then scores
   every (caption, clip) pair. The baseline's scoring script ran one forward pass per pair
   (5.5 million for Clotho's evaluation split); this takes well under a second.
2. ``ranks_of``: the rank (1 = best) of the right item in a query's ranking, found by *counting*
   the items that beat it instead of sorting every row.
3. ``text_to_audio``: the DCASE task. Each caption has exactly one relevant clip, so R@k is "was the
   clip in the top k" and mAP@10 is the reciprocal rank truncated at 10 (MRR@10).
4. ``audio_to_text``: the baseline also printed it. Each clip has five relevant captions and R@k
   divides the hits in the top k by five, so **R@1 is at most 0.2**; its "mAP@10" averages the
   precision at each relevant caption found in the top 10, over five. Not comparable to step 3.
5. ``jackknife_interval``: the 95 % interval the official DCASE script prints, over queries.

**Tie rule** (the baseline had none: its unstable, reversed argsort ordered equal scores
arbitrarily). Items are ranked by score, highest first; items with *equal* scores are ranked in
the order they are given (the clip that comes first in ``clip_fids``, the caption that comes first
in ``caption_fids``, ranks higher). It is the order of a stable sort on the negated scores, so the
ranks of one query are a permutation of 1..n, ``top_k`` lists the same order, and a submission file
scores exactly as the in-memory metrics. Training's validation mAP@10 (notebook 05) and the search of notebook 07
(``course_lib.search``) use these functions too, so a tie never counts in an item's favour anywhere in the course.

Splits with fewer than 10 clips work: a rank is then at most the number of clips (the baseline's
``measure()`` raised IndexError there).

After the lesson: submission files (``write_submission``, ``score_submission``) in the format the
official DCASE script reads, and input checks.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "Retrieval", "audio_to_text", "jackknife_interval", "ranks_of", "read_ground_truth", "score_matrix", "score_submission",
    "text_to_audio", "top_k", "write_submission",
]

CUTOFFS = (1, 5, 10)
METRICS = ("R@1", "R@5", "R@10", "mAP@10")
Z_95 = 1.96  # the normal quantile of a two-sided 95 % interval, as the official script uses


# --- the lesson: one matrix, ranks by counting, the metrics ----------------------------------------------------------


def score_matrix(text_emb: np.ndarray, audio_emb: np.ndarray) -> np.ndarray:
    """(M captions, N clips) dot products of unit embeddings: every pair scored at once. Taught in notebook 06, section 1."""
    text_emb, audio_emb = _embeddings(text_emb, "text_emb"), _embeddings(audio_emb, "audio_emb")
    if text_emb.shape[1] != audio_emb.shape[1]:
        raise ValueError(f"text_emb has {text_emb.shape[1]} dimensions and audio_emb {audio_emb.shape[1]}: "
                         "embed both with the same model.")
    return text_emb @ audio_emb.T


def ranks_of(scores: np.ndarray, targets: np.ndarray, block_elements: int = 1 << 22) -> np.ndarray:
    """1-based rank of item ``targets[q]`` in query q's ranking (row q of ``scores``), ties as the module says.

    Taught in notebook 06, section 2. No sorting: the rank is 1 + the number of items that beat the target, i.e.
    score strictly higher, or equal score and an earlier column. Rows go in blocks to bound memory.
    """
    scores, targets = np.asarray(scores), np.asarray(targets, dtype=np.int64)
    ranks = np.empty(len(targets), dtype=np.int64)
    step = max(1, block_elements // max(1, scores.shape[1]))
    for start in range(0, len(targets), step):
        block, target = scores[start : start + step], targets[start : start + step]
        own = block[np.arange(len(block)), target][:, None]
        higher = np.count_nonzero(block > own, axis=1)
        equal = np.count_nonzero(block == own, axis=1)  # counts the target itself
        ties = np.flatnonzero(equal > 1)  # rare with real-valued scores: only these rows look at column order
        if len(ties):
            columns = np.arange(block.shape[1])
            earlier = (block[ties] == own[ties]) & (columns[None, :] < target[ties, None])
            higher[ties] += earlier.sum(axis=1)
        ranks[start : start + step] = higher + 1
    return ranks


def text_to_audio(scores: np.ndarray, caption_fids: Sequence, clip_fids: Sequence) -> Retrieval:
    """DCASE text-to-audio retrieval: each caption (row) queries the clips (columns). Taught in notebook 06, section 3.

    One relevant clip a caption: R@k = 1 when it is in the top k, mAP@10 = 1/rank when rank <= 10, else 0.
    """
    scores = _scores(scores, caption_fids, clip_fids)
    column = _column_of(clip_fids)
    targets = np.array([_lookup(column, fid, "caption", i, "clip_fids") for i, fid in enumerate(caption_fids)], dtype=np.int64)
    ranks = ranks_of(scores, targets)
    per_query = {f"R@{k}": (ranks <= k).astype(float) for k in CUTOFFS}
    per_query["mAP@10"] = np.where(ranks <= 10, 1.0 / ranks, 0.0)
    return Retrieval("text-to-audio", per_query, ranks, n_items=scores.shape[1])


def audio_to_text(scores: np.ndarray, caption_fids: Sequence, clip_fids: Sequence) -> Retrieval:
    """Audio-to-text with the baseline's definitions: each clip (column) queries the captions (rows).

    Taught in notebook 06, section 3. A clip has n relevant captions (five in Clotho). R@k = (relevant captions
    in the top k) / n, so R@1 <= 1/n = 0.2; AP@10 = sum over relevant captions at ranks p_1 < p_2 < ...
    <= 10 of (m / p_m), divided by n. Only the top 10 matter, so each clip's 10 best captions are
    found (``top_k``) and checked. ``ranks`` holds the rank of each clip's best-ranked relevant caption.
    """
    scores = _scores(scores, caption_fids, clip_fids)
    column = _column_of(clip_fids)
    owner = np.array([_lookup(column, fid, "caption", i, "clip_fids") for i, fid in enumerate(caption_fids)], dtype=np.int64)
    counts = np.bincount(owner, minlength=len(clip_fids))
    if (counts == 0).any():
        missing = [str(clip_fids[j]) for j in np.flatnonzero(counts == 0)[:3]]
        raise ValueError(f"{int((counts == 0).sum())} clips have no caption (e.g. {missing}); audio-to-text needs every "
                         "clip's captions. Pass all captions of the split.")
    own_scores = scores[np.arange(len(owner)), owner]
    by_clip = np.lexsort((np.arange(len(owner)), -own_scores, owner))  # per clip: its best caption first (ties: earlier)
    best_caption = by_clip[np.concatenate([[0], np.cumsum(counts)[:-1]])]
    hits_at = np.zeros((len(clip_fids), min(10, len(owner))), dtype=bool)  # hits_at[j, p]: rank p+1 is j's caption
    best = np.empty(len(clip_fids), dtype=np.int64)
    step = max(1, (1 << 22) // len(owner))  # clips a block: bounds the memory of the transposed copy
    for start in range(0, len(clip_fids), step):
        queries = _transposed(scores[:, start : start + step])  # (clips, captions), one row a query
        clips = np.arange(start, start + len(queries))
        hits_at[clips] = owner[top_k(queries, 10)] == clips[:, None]
        best[clips] = ranks_of(queries, best_caption[clips])
    positions = np.arange(1, hits_at.shape[1] + 1)
    per_query = {f"R@{k}": hits_at[:, :k].sum(axis=1) / counts for k in CUTOFFS}
    found_so_far = np.cumsum(hits_at, axis=1)  # m at the m-th relevant caption found
    per_query["mAP@10"] = (hits_at * found_so_far / positions).sum(axis=1) / counts
    return Retrieval("audio-to-text", per_query, best, n_items=scores.shape[0])


def jackknife_interval(values: np.ndarray, z: float = Z_95) -> tuple[float, float, float]:
    """(estimate, low, high): the jackknife estimate of a mean and its 95 % interval. Taught in notebook 06, section 3.

    Leave each query out in turn, take the mean of the rest; the spread of those n means gives the
    standard error: se = sqrt((n-1)/n * sum((theta_i - mean(theta))^2)). For a mean this is exactly
    std(ddof=1) / sqrt(n), and the estimate is the plain mean. The interval is estimate +- z * se (it
    can leave [0, 1] on a few queries). Fewer than two values: no interval (NaN bounds).
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < 2:
        return (float(values.mean()) if n else float("nan")), float("nan"), float("nan")
    leave_one_out = (values.sum() - values) / (n - 1)
    estimate = n * values.mean() - (n - 1) * leave_one_out.mean()  # bias-corrected; equals the mean for a mean
    se = np.sqrt((n - 1) / n * ((leave_one_out - leave_one_out.mean()) ** 2).sum())
    return float(estimate), float(estimate - z * se), float(estimate + z * se)


@dataclass
class Retrieval:
    """Per-query metric values of one direction, the rank of the (first) right item per query, and summaries."""

    direction: str
    per_query: dict[str, np.ndarray]
    ranks: np.ndarray
    n_items: int
    means: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.means = {name: float(values.mean()) if len(values) else float("nan") for name, values in self.per_query.items()}

    def intervals(self, z: float = Z_95) -> pd.DataFrame:
        """One row a metric: estimate and the jackknife 95 % interval over queries."""
        rows = {name: jackknife_interval(values, z) for name, values in self.per_query.items()}
        return pd.DataFrame.from_dict(rows, orient="index", columns=["estimate", "low", "high"])

    def __str__(self) -> str:
        parts = [f"{name} {est:.3f} [{low:.3f}, {high:.3f}]" for name, (est, low, high) in self.intervals().iterrows()]
        return f"{self.direction} ({len(self.ranks)} queries, {self.n_items} candidates): " + ", ".join(parts)


def top_k(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """(M, min(k, N)) column indices of each row's k best items, best first, with the module's tie rule.

    Taught in notebook 06, section 4 (and notebook 07, section 1: the search's top k). One row of N scores,
    shape (N,), gives its (min(k, N),) best items. ``np.partition`` finds each row's k-th highest score in
    linear time; only the items at or above it are sorted.
    """
    scores = np.asarray(scores)
    if scores.ndim == 1:
        return top_k(scores[None], k)[0]
    k = min(k, scores.shape[1])
    if k == 0 or len(scores) == 0:
        return np.zeros((len(scores), k), dtype=np.int64)
    n = scores.shape[1]
    kth = np.partition(scores, n - k, axis=1)[:, n - k : n - k + 1]  # each row's k-th highest score (no full sort)
    above = scores >= kth  # k items a row, more only when others tie with the k-th
    exact = np.count_nonzero(above, axis=1) == k
    best = np.empty((len(scores), k), dtype=np.int64)
    if exact.all():  # the common case: no copy of the mask
        best[:] = np.nonzero(above)[1].reshape(-1, k)  # their columns, in column order
    else:
        best[exact] = np.nonzero(above[exact])[1].reshape(-1, k)
    crowded = np.flatnonzero(~exact)  # a tie at the k-th place: the stable sort decides who is in
    if len(crowded):
        best[crowded] = np.argsort(-scores[crowded], axis=1, kind="stable")[:, :k]
    order = np.lexsort((best, -np.take_along_axis(scores, best, axis=1)), axis=-1)
    return np.take_along_axis(best, order, axis=1)


# --- submission files: what a DCASE participant hands in, scored as the official script does ------------------------


def write_submission(path: str | Path, captions: Sequence[str], scores: np.ndarray, clip_fnames: Sequence[str],
                     k: int = 10) -> Path:
    """Write the DCASE submission CSV: ``caption, file_name_1..file_name_10``, one row a caption.

    Taught in notebook 06, section 5. ``captions`` must be the *original* caption text (the table's ``raw_text``):
    the ground truth is keyed by it, and the cleaned ``text`` the baseline wrote would not be found.
    ``clip_fnames`` must be the names the ground-truth CSV uses (``clotho.read_captions(...)["file_name"]``), which
    can differ from the names on disk. A caption that appears twice is written once (the official script keys rows
    by caption).
    """
    scores = _scores(scores, captions, clip_fnames, rows_name="captions", columns_name="clip_fnames")
    best = top_k(scores, k)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = np.asarray(clip_fnames, dtype=object)
    seen: set[str] = set()
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["caption"] + [f"file_name_{i}" for i in range(1, best.shape[1] + 1)])
        for caption, row in zip(captions, best, strict=True):
            if caption not in seen:
                seen.add(caption)
                writer.writerow([caption, *names[row]])
    return path


def read_ground_truth(path: str | Path) -> dict[str, str]:
    """caption -> file_name from a Clotho-format captions CSV (``file_name, caption_1..caption_5``)."""
    table = _read_csv(path, "ground truth")
    caption_columns = [c for c in table.columns if str(c).startswith("caption_")]
    if "file_name" not in table.columns or not caption_columns:
        raise ValueError(f"Ground truth {path} needs the columns file_name, caption_1..caption_5 (Clotho's captions CSV); "
                         f"it has {list(table.columns)}.")
    truth: dict[str, str] = {}
    for _, row in table.iterrows():
        for column in caption_columns:
            if isinstance(row[column], str):
                truth[row[column]] = row["file_name"]  # as the official script: a caption given twice keeps the last file
    return truth


def score_submission(submission_csv: str | Path, ground_truth_csv: str | Path) -> Retrieval:
    """Score a submission CSV against a Clotho-format ground truth, as the official DCASE script does.

    Taught in notebook 06, section 5. Each ground-truth caption is one query; its rank is the position of its
    file among the row's file names. A caption whose file the row does not list is a miss at every cutoff
    (R@k 0, AP 0): its true rank is unknown, only that it is beyond the list, so a row of 5 names cannot earn
    R@10. Its rank is recorded as max(10, files) + 1, beyond every cutoff. A malformed submission (empty, missing
    column, unknown or repeated file name, a caption not in the ground truth, given twice or missing) raises
    ValueError naming the file and line.
    """
    truth = read_ground_truth(ground_truth_csv)
    submission = _read_csv(submission_csv, "submission")
    name_columns = _submission_columns(submission, submission_csv)
    known_files = set(truth.values())
    listed: dict[str, list[str]] = {}
    line_of: dict[str, int] = {}
    for index, row in submission.iterrows():
        line = int(index) + 2  # the header is line 1
        caption = row["caption"]
        if caption not in truth:
            raise ValueError(f"{submission_csv}, line {line}: caption {caption!r} is not in the ground truth {ground_truth_csv}. "
                             "Write the original caption text (raw_text), not the cleaned text.")
        if caption in line_of:
            raise ValueError(f"{submission_csv}, lines {line_of[caption]} and {line} both rank the caption {caption!r}. "
                             "Keep one row a caption (write_submission writes each caption once).")
        line_of[caption] = line
        names = [name for name in row[name_columns] if isinstance(name, str)]
        unknown = [name for name in names if name not in known_files]
        if unknown:
            raise ValueError(f"{submission_csv}, line {line}: file name {unknown[0]!r} is not a file of the ground truth "
                             f"{ground_truth_csv}.")
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"{submission_csv}, line {line}: file {repeated[0]!r} is listed more than once in one row; "
                             "each row must name 10 different files.")
        listed[caption] = names
    missing = [caption for caption in truth if caption not in listed]
    if missing:
        raise ValueError(f"{submission_csv} has no row for {len(missing)} ground-truth captions (e.g. {missing[0]!r}).")
    unlisted = max(max(CUTOFFS), len(known_files)) + 1  # a miss: beyond every cutoff, whatever the row's length
    ranks = np.array([listed[c].index(f) + 1 if f in listed[c] else unlisted for c, f in truth.items()], dtype=np.int64)
    per_query = {f"R@{k}": (ranks <= k).astype(float) for k in CUTOFFS}
    per_query["mAP@10"] = np.where(ranks <= 10, 1.0 / ranks, 0.0)
    return Retrieval("text-to-audio (submission)", per_query, ranks, n_items=len(known_files))


# --- checks and small helpers ----------------------------------------------------------------------------------------


def _embeddings(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (items, dimensions), got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} holds NaN or infinite values: the model that embedded them diverged or the input was damaged.")
    return values.astype(np.float32, copy=False)


def _scores(scores: np.ndarray, rows: Sequence, columns: Sequence, rows_name: str = "caption_fids",
            columns_name: str = "clip_fids") -> np.ndarray:
    scores = np.asarray(scores)
    if scores.ndim != 2 or scores.shape != (len(rows), len(columns)):
        raise ValueError(f"scores has shape {scores.shape}; expected ({len(rows)}, {len(columns)}): one row per entry of "
                         f"{rows_name}, one column per entry of {columns_name}. Build it with score_matrix(text_emb, audio_emb).")
    if not np.isfinite(scores).all():
        raise ValueError("scores holds NaN or infinite values: rankings would be meaningless. Check the embeddings.")
    return scores


def _column_of(clip_fids: Sequence) -> dict:
    column = {fid: j for j, fid in enumerate(clip_fids)}
    if len(column) != len(clip_fids):
        repeated = pd.Series(list(clip_fids)).loc[lambda s: s.duplicated()].iloc[0]
        raise ValueError(f"clip_fids lists {repeated!r} more than once: each clip must be one column.")
    return column


def _lookup(column: dict, fid, what: str, index: int, where: str) -> int:
    try:
        return column[fid]
    except KeyError:
        raise ValueError(f"{what} {index} belongs to clip {fid!r}, which is not in {where}.") from None


def _transposed(block: np.ndarray, tile: int = 256) -> np.ndarray:
    """A contiguous copy of ``block.T``, copied tile by tile (several times faster than one strided copy)."""
    out = np.empty(block.shape[::-1], dtype=block.dtype)
    for i in range(0, block.shape[0], tile):
        for j in range(0, block.shape[1], tile):
            out[j : j + tile, i : i + tile] = block[i : i + tile, j : j + tile].T
    return out


def _read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The {what} CSV {path} does not exist.")
    if path.stat().st_size == 0:
        raise ValueError(f"The {what} CSV {path} is empty (0 bytes): it was not written, or not completely. Write it again.")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"The {what} CSV {path} cannot be read as UTF-8 CSV: {exc}") from exc
    if table.empty:
        raise ValueError(f"The {what} CSV {path} has a header line and no rows: it was not written completely. "
                         "Write it again.")
    return table


def _submission_columns(submission: pd.DataFrame, path: str | Path) -> list[str]:
    numbers = [int(c[len("file_name_"):]) for c in submission.columns if str(c).startswith("file_name_")
               and str(c)[len("file_name_"):].isdigit()]
    expected = [f"file_name_{i}" for i in range(1, max(numbers, default=1) + 1)]
    missing = [c for c in ["caption", *expected] if c not in submission.columns]
    if missing:
        raise ValueError(f"Submission {path} lacks the columns {missing}: it needs caption, file_name_1..file_name_10 "
                         f"(line 1, the header, has {list(submission.columns)}).")
    return expected
