"""course_lib.metrics: known answers on hand-built matrices, a per-query reference on random ones, submissions."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from course_lib import metrics
from course_lib.metrics import (
    audio_to_text,
    jackknife_interval,
    ranks_of,
    score_submission,
    text_to_audio,
    top_k,
    write_submission,
)

# --- a direct, per-query implementation, written independently of the module (sorts each query) -------------------


def reference_ranking(row: np.ndarray) -> list[int]:
    """Items of one query, best first: higher score first, equal scores in column order."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def reference_t2a(scores, caption_fids, clip_fids) -> dict[str, float]:
    values = {name: [] for name in metrics.METRICS}
    for i, fid in enumerate(caption_fids):
        ranking = [clip_fids[j] for j in reference_ranking(scores[i])]
        hits = [name == fid for name in ranking]
        for k in (1, 5, 10):
            values[f"R@{k}"].append(float(any(hits[:k])))
        values["mAP@10"].append(sum(1 / (p + 1) for p, hit in enumerate(hits[:10]) if hit))
    return {name: float(np.mean(v)) for name, v in values.items()}


def reference_a2t(scores, caption_fids, clip_fids) -> dict[str, float]:
    values = {name: [] for name in metrics.METRICS}
    for j, fid in enumerate(clip_fids):
        relevant = [caption_fids[i] == fid for i in reference_ranking(scores[:, j])]
        total = sum(relevant)
        for k in (1, 5, 10):
            values[f"R@{k}"].append(sum(relevant[:k]) / total)
        positions = [p + 1 for p, hit in enumerate(relevant[:10]) if hit]
        values["mAP@10"].append(sum((m + 1) / p for m, p in enumerate(positions)) / total)
    return {name: float(np.mean(v)) for name, v in values.items()}


def random_split(n_clips: int, per_clip: int = 5, seed: int = 0, quantise: float | None = None):
    rng = np.random.default_rng(seed)
    clip_fids = [f"clip{j:03d}" for j in rng.permutation(n_clips)]
    caption_fids = [clip_fids[j] for j in rng.permutation(np.repeat(np.arange(n_clips), per_clip))]
    scores = rng.normal(size=(len(caption_fids), n_clips))
    if quantise:  # coarse values: many ties
        scores = np.round(scores / quantise) * quantise
    return scores, caption_fids, clip_fids


# --- hand-built matrices with known answers --------------------------------------------------------------------------


def test_score_matrix_is_every_dot_product():
    text, audio = np.array([[1.0, 0.0], [0.6, 0.8]]), np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6]])
    np.testing.assert_allclose(metrics.score_matrix(text, audio), [[0, 1, 0.8], [0.8, 0.6, 0.96]], atol=1e-6)
    with pytest.raises(ValueError, match="dimensions"):
        metrics.score_matrix(text, np.ones((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.score_matrix(np.full((1, 2), np.nan), audio)


def test_perfect_ranking_scores_one():
    clip_fids = ["a", "b", "c"]
    caption_fids = ["a", "a", "b", "c"]
    scores = np.array([[0.9, 0.1, 0.0], [0.5, 0.4, 0.3], [0.1, 0.8, 0.2], [0.0, 0.1, 0.7]])
    result = text_to_audio(scores, caption_fids, clip_fids)
    assert result.means == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "mAP@10": 1.0}
    assert result.ranks.tolist() == [1, 1, 1, 1]


def test_reversed_ranking_with_twelve_clips():
    # the right clip always last of 12: rank 12, beyond every cutoff
    clip_fids = [f"c{j}" for j in range(12)]
    scores = np.tile(np.arange(12, 0, -1, dtype=float), (12, 1))  # column 0 best ... column 11 worst, for every caption
    caption_fids = ["c11"] * 12
    result = text_to_audio(scores, caption_fids, clip_fids)
    assert result.ranks.tolist() == [12] * 12
    assert result.means == {"R@1": 0.0, "R@5": 0.0, "R@10": 0.0, "mAP@10": 0.0}


def test_known_ranks_give_known_metrics():
    # ranks 1, 2, 5, 7, 11 of the right clip among 12 clips
    n = 12
    clip_fids = [f"c{j}" for j in range(n)]
    order = np.arange(n, 0, -1, dtype=float)  # column j has the (j+1)-th highest score
    scores = np.tile(order, (5, 1))
    caption_fids = [clip_fids[r - 1] for r in (1, 2, 5, 7, 11)]
    result = text_to_audio(scores, caption_fids, clip_fids)
    assert result.ranks.tolist() == [1, 2, 5, 7, 11]
    assert result.means["R@1"] == pytest.approx(1 / 5)
    assert result.means["R@5"] == pytest.approx(3 / 5)
    assert result.means["R@10"] == pytest.approx(4 / 5)
    assert result.means["mAP@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 7 + 0) / 5)  # MRR truncated at 10


def test_ties_go_to_the_earlier_column():
    clip_fids = ["a", "b", "c", "d"]
    scores = np.array([[0.5, 0.5, 0.5, 0.1]] * 3 + [[0.2, 0.9, 0.9, 0.9]])
    caption_fids = ["a", "b", "c", "c"]
    result = text_to_audio(scores, caption_fids, clip_fids)
    # a ties with b, c and comes first; b after a; c after a, b; last row: c after b, before d
    assert result.ranks.tolist() == [1, 2, 3, 2]
    assert top_k(scores, 3).tolist() == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 2, 3]]


def test_constant_scores_are_not_rewarded_for_every_caption():
    # an "optimistic" tie rule would give R@1 = 1 to a model that scores everything equally
    clip_fids = [f"c{j}" for j in range(4)]
    caption_fids = [fid for fid in clip_fids for _ in range(5)]
    result = text_to_audio(np.zeros((20, 4)), caption_fids, clip_fids)
    assert result.means["R@1"] == pytest.approx(0.25)
    assert sorted(set(result.ranks.tolist())) == [1, 2, 3, 4]


def test_fewer_than_ten_clips():
    clip_fids = ["x", "y", "z"]
    scores = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    result = text_to_audio(scores, ["x", "x"], clip_fids)
    assert result.ranks.tolist() == [3, 1]
    assert result.means["R@5"] == 1.0 and result.means["mAP@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert top_k(scores, 10).shape == (2, 3)


def test_audio_to_text_r1_is_at_most_a_fifth():
    clip_fids = ["a", "b"]
    caption_fids = ["a"] * 5 + ["b"] * 5
    scores = np.zeros((10, 2))
    scores[:5, 0], scores[5:, 1] = 1.0, 1.0  # perfect in both directions
    a2t = audio_to_text(scores, caption_fids, clip_fids)
    assert a2t.means["R@1"] == pytest.approx(0.2) and a2t.means["R@5"] == 1.0 and a2t.means["mAP@10"] == 1.0
    assert a2t.ranks.tolist() == [1, 1]


def test_audio_to_text_known_average_precision():
    # clip a's captions at ranks 1, 3, 4, 8, 12 among 12 captions: AP@10 = (1/1 + 2/3 + 3/4 + 4/8) / 5
    n = 12
    caption_fids = ["b"] * n
    for rank in (1, 3, 4, 8, 12):
        caption_fids[rank - 1] = "a"
    scores = np.stack([np.arange(n, 0, -1, dtype=float), np.zeros(n)], axis=1)  # column a: row 0 best
    a2t = audio_to_text(scores, caption_fids, ["a", "b"])
    assert a2t.per_query["mAP@10"][0] == pytest.approx((1 + 2 / 3 + 3 / 4 + 4 / 8) / 5)
    assert a2t.per_query["R@1"][0] == pytest.approx(1 / 5) and a2t.per_query["R@5"][0] == pytest.approx(3 / 5)
    assert a2t.per_query["R@10"][0] == pytest.approx(4 / 5)


@pytest.mark.parametrize("quantise", [None, 0.5])
@pytest.mark.parametrize("n_clips", [3, 9, 40])
def test_matches_a_per_query_implementation(n_clips, quantise):
    scores, caption_fids, clip_fids = random_split(n_clips, seed=n_clips, quantise=quantise)
    t2a = text_to_audio(scores, caption_fids, clip_fids)
    a2t = audio_to_text(scores, caption_fids, clip_fids)
    for name, value in reference_t2a(scores, caption_fids, clip_fids).items():
        assert t2a.means[name] == pytest.approx(value), name
    for name, value in reference_a2t(scores, caption_fids, clip_fids).items():
        assert a2t.means[name] == pytest.approx(value), name
    t2a_ranks = [[clip_fids[j] for j in reference_ranking(scores[i])].index(fid) + 1 for i, fid in enumerate(caption_fids)]
    a2t_best = [[caption_fids[i] for i in reference_ranking(scores[:, j])].index(fid) + 1 for j, fid in enumerate(clip_fids)]
    assert t2a.ranks.tolist() == t2a_ranks and a2t.ranks.tolist() == a2t_best


def test_tiny_split_and_uneven_caption_counts():
    rng = np.random.default_rng(11)
    clip_fids = ["p", "q", "r"]
    caption_fids = ["p", "q", "q", "r", "r", "r", "p"]  # 2, 2 and 3 captions: fewer than 10 candidates both ways
    for scores in (rng.normal(size=(7, 3)), np.round(rng.normal(size=(7, 3)))):
        t2a, a2t = text_to_audio(scores, caption_fids, clip_fids), audio_to_text(scores, caption_fids, clip_fids)
        assert t2a.means == pytest.approx(reference_t2a(scores, caption_fids, clip_fids))
        assert a2t.means == pytest.approx(reference_a2t(scores, caption_fids, clip_fids))


def test_ranks_in_small_blocks_equal_one_block():
    scores, caption_fids, clip_fids = random_split(30, seed=3, quantise=0.5)
    targets = np.array([clip_fids.index(f) for f in caption_fids])
    np.testing.assert_array_equal(ranks_of(scores, targets, block_elements=7), ranks_of(scores, targets))


def test_top_k_is_a_stable_sort():
    scores, _, _ = random_split(25, seed=4, quantise=0.7)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(top_k(scores, 10), expected)


def test_jackknife_matches_the_closed_form():
    values = np.random.default_rng(1).random(57)
    estimate, low, high = jackknife_interval(values)
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert estimate == pytest.approx(values.mean())
    assert (low, high) == pytest.approx((values.mean() - 1.96 * se, values.mean() + 1.96 * se))
    one = jackknife_interval([0.5])
    assert one[0] == 0.5 and np.isnan(one[1]) and np.isnan(one[2])


def test_intervals_table_and_summary():
    scores, caption_fids, clip_fids = random_split(20, seed=5)
    result = text_to_audio(scores, caption_fids, clip_fids)
    table = result.intervals()
    assert list(table.index) == list(metrics.METRICS)
    assert (table["low"] <= table["estimate"]).all() and (table["estimate"] <= table["high"]).all()
    assert "R@10" in str(result)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        text_to_audio(np.zeros((2, 3)), ["a", "b", "c"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="'q'"):
        text_to_audio(np.zeros((1, 2)), ["q"], ["a", "b"])
    with pytest.raises(ValueError, match="more than once"):
        text_to_audio(np.zeros((1, 2)), ["a"], ["a", "a"])
    with pytest.raises(ValueError, match="no caption"):
        audio_to_text(np.zeros((1, 2)), ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="NaN"):
        text_to_audio(np.array([[np.nan, 0.0]]), ["a"], ["a", "b"])


# --- submission files ------------------------------------------------------------------------------------------------


def write_ground_truth(path, captions_by_file: dict[str, list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{i}" for i in range(1, 6)])
        for name, captions in captions_by_file.items():
            writer.writerow([name, *captions])


@pytest.fixture
def split(tmp_path):
    rng = np.random.default_rng(7)
    files = [f"clip {j}, take {j % 3}.wav" for j in range(14)]  # commas and spaces: quoting must round-trip
    captions = {name: [f'A "sound" number {j}-{i}, with commas' for i in range(5)] for j, name in enumerate(files)}
    truth = tmp_path / "clotho_captions_evaluation.csv"
    write_ground_truth(truth, captions)
    caption_texts = [c for name in files for c in captions[name]]
    caption_files = [name for name in files for _ in range(5)]
    scores = rng.normal(size=(len(caption_texts), len(files)))
    scores[np.arange(0, 70, 2), [files.index(f) for f in caption_files[::2]]] += 1.5  # better than chance
    return truth, caption_texts, caption_files, files, scores


def test_scoring_our_submission_gives_the_in_memory_numbers(split, tmp_path):
    truth, caption_texts, caption_files, files, scores = split
    path = write_submission(tmp_path / "submission.csv", caption_texts, scores, files)
    header = pd.read_csv(path).columns.tolist()
    assert header == ["caption"] + [f"file_name_{i}" for i in range(1, 11)]
    from_file = score_submission(path, truth)
    in_memory = text_to_audio(scores, caption_files, files)
    assert from_file.means == pytest.approx(in_memory.means)
    assert 0 < in_memory.means["mAP@10"] < 1
    pd.testing.assert_frame_equal(from_file.intervals(), in_memory.intervals())


def submission_rows(path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.reader(handle))


def rewrite(path, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(rows)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda rows: [[c for j, c in enumerate(r) if j != 3] for r in rows], r"lacks the columns \['file_name_3'\]"),
        (lambda rows: [r if i != 4 else [r[0], "nowhere.wav", *r[2:]] for i, r in enumerate(rows)],
         "line 5: file name 'nowhere.wav'"),
        (lambda rows: [r if i != 2 else [r[0], r[1], r[1], *r[3:]] for i, r in enumerate(rows)],
         "line 3: file .* more than once"),
        (lambda rows: [r if i != 6 else [r[0].lower() + " cleaned", *r[1:]] for i, r in enumerate(rows)], "line 7: caption"),
        (lambda rows: rows[:-1], "no row for 1 ground-truth captions"),
    ],
    ids=["missing column", "unknown file", "repeated file", "unknown caption", "missing caption"],
)
def test_malformed_submissions_name_the_row(split, tmp_path, damage, message):
    truth, caption_texts, _, files, scores = split
    path = write_submission(tmp_path / "submission.csv", caption_texts, scores, files)
    rewrite(path, damage(submission_rows(path)))
    with pytest.raises(ValueError, match=message):
        score_submission(path, truth)


def test_a_submission_for_fewer_than_ten_clips(tmp_path):
    truth = tmp_path / "gt.csv"
    write_ground_truth(truth, {"a.wav": [f"a{i}" for i in range(5)], "b.wav": [f"b{i}" for i in range(5)]})
    texts, owners = [f"{f}{i}" for f in "ab" for i in range(5)], ["a.wav"] * 5 + ["b.wav"] * 5
    scores = np.random.default_rng(0).normal(size=(10, 2))
    path = write_submission(tmp_path / "s.csv", texts, scores, ["a.wav", "b.wav"])
    assert score_submission(path, truth).means == pytest.approx(text_to_audio(scores, owners, ["a.wav", "b.wav"]).means)


@pytest.mark.parametrize("columns", [1, 5])
def test_a_short_row_earns_nothing_beyond_its_list(split, tmp_path, columns):
    # random scores: a file not among a row's names is a miss at every cutoff, never "just past the list"
    truth, caption_texts, caption_files, files, _ = split
    scores = np.random.default_rng(3).normal(size=(len(caption_texts), len(files)))
    path = write_submission(tmp_path / "short.csv", caption_texts, scores, files, k=columns)
    assert len(pd.read_csv(path).columns) == 1 + columns
    from_file = score_submission(path, truth).means
    in_memory = text_to_audio(scores, caption_files, files)
    listed = in_memory.ranks <= columns  # the captions whose file the row names
    for k in (1, 5, 10):
        assert from_file[f"R@{k}"] == pytest.approx(np.mean(listed & (in_memory.ranks <= k)))
    assert from_file["R@10"] == pytest.approx(from_file[f"R@{columns}"]) and from_file["R@10"] < 0.6
    assert from_file["mAP@10"] == pytest.approx(np.mean(np.where(listed, 1 / in_memory.ranks, 0)))


def test_a_row_with_empty_cells_counts_the_unnamed_file_as_a_miss(tmp_path):
    truth = tmp_path / "gt.csv"
    write_ground_truth(truth, {f"{c}.wav": [f"{c}{i}" for i in range(5)] for c in "abc"})
    rows = [["caption"] + [f"file_name_{i}" for i in range(1, 4)]]
    rows += [[f"{c}{i}", "a.wav", "", ""] for c in "abc" for i in range(5)]  # only a.wav named, then blanks
    rewrite(tmp_path / "s.csv", rows)
    result = score_submission(tmp_path / "s.csv", truth)
    assert result.means["R@10"] == pytest.approx(1 / 3) and result.means["mAP@10"] == pytest.approx(1 / 3)
    assert (result.ranks[5:] > 10).all()


def test_a_caption_given_twice_names_both_lines(split, tmp_path):
    truth, caption_texts, _, files, scores = split
    path = write_submission(tmp_path / "submission.csv", caption_texts, scores, files)
    rows = submission_rows(path)
    rewrite(path, rows[:9] + [rows[3]] + rows[9:])  # the caption of line 4 again, as line 10
    with pytest.raises(ValueError, match=r"submission.csv, lines 4 and 10 both rank the caption"):
        score_submission(path, truth)


@pytest.mark.parametrize("which", ["submission", "ground truth"])
@pytest.mark.parametrize("content, message", [("", r"is empty \(0 bytes\)"), (None, "has a header line and no rows")])
def test_an_empty_or_header_only_file_is_named(split, tmp_path, which, content, message):
    truth, caption_texts, _, files, scores = split
    path = write_submission(tmp_path / "submission.csv", caption_texts, scores, files)
    damaged = path if which == "submission" else truth
    header = damaged.read_text(encoding="utf-8").splitlines()[0] + "\n"
    damaged.write_text(header if content is None else content, encoding="utf-8")
    with pytest.raises(ValueError, match=f"The {which} CSV {damaged} {message}"):
        score_submission(path, truth)


def test_ground_truth_needs_clotho_columns(tmp_path):
    bad = tmp_path / "gt.csv"
    bad.write_text("name,text\nx.wav,a dog\n", encoding="utf-8")
    with pytest.raises(ValueError, match="file_name, caption_1"):
        metrics.read_ground_truth(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_submission(tmp_path / "none.csv", tmp_path / "missing_gt.csv")


def test_round_trip_on_a_generated_dataset(tmp_path):
    """The course's own caption table and the generator's ground-truth CSV: file scores equal in-memory scores."""
    from course_lib.clotho import build_caption_table, read_captions
    from course_lib.synth import generate_dataset

    folder = generate_dataset(tmp_path / "Clotho", seed=2, clips={"development": 1, "validation": 1, "evaluation": 12},
                              min_seconds=1.0, max_seconds=1.2, workers=1, progress=False)
    table, _ = build_caption_table(folder, "evaluation", progress=False)
    clip_fids = list(pd.unique(table["fid"]))
    scores = np.random.default_rng(2).normal(size=(len(table), len(clip_fids)))
    names = read_captions(folder, "evaluation")["file_name"].tolist()
    path = write_submission(tmp_path / "submission.csv", list(table["raw_text"]), scores, names)
    from_file = score_submission(path, folder / "clotho_captions_evaluation.csv")
    assert from_file.means == pytest.approx(text_to_audio(scores, list(table["fid"]), clip_fids).means)
