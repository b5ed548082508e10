"""course_lib.search: the engine. Top k and ranks by metrics' one rule, the stand-out rule, the cached index,
text and sound queries, and the checks on what a caller passes.

Runs on the tiny set-up of tests/search_setup.py (an untrained model on a tiny synthetic profile) and on
engines built from ready-made indexes, where the scores are known. The widget is tested in
tests/test_search_widget.py.
"""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from search_setup import query_engine, ready_engine, save_untrained_checkpoint, tiny_engine, tiny_search_profile, wav_bytes

from course_lib import metrics, search
from course_lib.features import SAMPLE_RATE, load_audio
from course_lib.metrics import top_k
from course_lib.model import load_trained_model
from course_lib.search import QueryError, SearchEngine


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    return tiny_search_profile(tmp_path_factory.mktemp("search"))


@pytest.fixture(scope="module")
def engine(cfg) -> SearchEngine:
    return tiny_engine(cfg)


# --- the lesson: top k over one matrix product, ranks by metrics' rule ---------------------------


def test_the_search_top_k_is_metrics_top_k_on_one_row() -> None:
    scores = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert top_k(scores, 10).tolist() == np.argsort(-scores)[:10].tolist()
    assert top_k(scores, 5000).tolist() == np.argsort(-scores).tolist()  # k beyond N: every row, sorted
    assert top_k(scores, 0).tolist() == []
    tied = np.round(scores, 1)
    assert top_k(tied, 50).tolist() == metrics.top_k(tied[None], 50)[0].tolist()
    assert not hasattr(search, "rank_of") and search.top_k is metrics.top_k  # one rule, one top_k


def test_a_tie_ranks_the_same_through_search_and_metrics() -> None:
    # Every clip scores exactly the same for any query (the same vector, one non-zero entry: exact products).
    captions = pd.DataFrame({"tid": ["t0", "t1"], "fid": ["c2", "c3"], "fname": ["c2.wav", "c3.wav"],
                             "raw_text": ["A hum.", "A buzz."], "text": ["a hum", "a buzz"]})
    engine = ready_engine(np.tile(np.eye(1, 300, 5), (5, 1)), captions)  # captions (e0, e1) all score 0 against it
    index = engine.index("evaluation")
    results = engine.search("a hum", "evaluation", k=5)
    scores = index.clip_vectors @ engine.embed_query("a hum")
    assert len(set(scores.tolist())) == 1
    in_metrics = metrics.text_to_audio(scores[None], ["c2"], list(index.fids)).ranks[0]
    assert results.marked_ranks == {"c2.wav": in_metrics} and in_metrics == 3  # two equal clips come before it
    assert [hit.fid for hit in results.clips] == [index.fids[j] for j in metrics.top_k(scores[None], 5)[0]]
    assert [hit.fid for hit in results.clips] == ["c0", "c1", "c2", "c3", "c4"]  # equal scores: index order
    # More like c3: both captions score 0; c3's own comes after c2's, as metrics ranks a tie.
    clip = engine.more_like_clip("c3", "evaluation", k=2)
    assert clip.marked_ranks == {"A buzz.": 2}


# --- how a score stands among the query's scores ---------------------------------------------------


def test_z_scores_are_standard_scores_over_the_finite_scores() -> None:
    assert search.z_scores(np.array([1.0, 2.0, 3.0])) == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)
    left_out = search.z_scores(np.array([1.0, -np.inf, 3.0]))
    assert left_out[0] == pytest.approx(-1.0) and left_out[1] == -np.inf and left_out[2] == pytest.approx(1.0)
    assert search.z_scores(np.full(4, 0.3)).tolist() == [0.0] * 4  # no spread: nothing stands out


def test_fit_percentile_is_the_share_of_best_scores_below_the_score() -> None:
    best_scores = np.array([0.1, 0.2, 0.3, 0.4])  # sorted, as ClipIndex.best_scores gives them
    assert [search.fit_percentile(s, best_scores) for s in (0.05, 0.2, 0.25, 0.9)] == [0.0, 25.0, 50.0, 100.0]
    assert np.isnan(search.fit_percentile(0.5, np.zeros(0)))


def test_best_scores_are_each_caption_s_best_clip_score(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    expected = [max(index.clip_vectors @ vector) for vector in index.caption_vectors]
    assert np.allclose(index.best_scores, np.sort(expected), atol=1e-6) and len(expected) == 5 * len(index.fids)
    assert len(search.ClipIndex("evaluation", index.fids, index.fnames, index.clip_vectors, index.captions,
                                np.zeros((0, 300), np.float32)).best_scores) == 0  # no caption vectors: nothing to compare


def test_nothing_stands_out_when_the_best_clip_scores_below_those_of_95_percent_of_the_captions() -> None:
    engine = query_engine("a hum", clips=300, seed=1, fitting=False)
    random_only = engine.search("a hum", "evaluation", k=5)
    assert random_only.clips[0].score < np.percentile(engine.index("evaluation").best_scores, 5)  # cosines near 0
    assert random_only.best_fit < 5 and random_only.nothing_stands_out
    found = query_engine("a hum", clips=300, seed=1, fitting=True).search("a hum", "evaluation", k=5)
    assert found.clips[0].fid == "c7" and found.best_fit == 100.0 and not found.nothing_stands_out
    assert found.clips[0].z > 10 > found.clips[1].z  # one clip far above the rest


def test_sound_queries_are_not_judged_against_caption_matches(engine: SearchEngine) -> None:
    results = engine.more_like_clip(str(engine.index("evaluation").fids[0]), "evaluation", k=3)
    assert np.isnan(results.best_fit) and not results.nothing_stands_out


# --- text queries ------------------------------------------------------------------------------


def test_text_search_gives_k_clips_in_score_order_with_their_captions(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    results = engine.search("a dog barks in the distance", "evaluation", k=4)
    assert [hit.rank for hit in results.clips] == [1, 2, 3, 4]
    scores = [hit.score for hit in results.clips]
    assert scores == sorted(scores, reverse=True)
    # The same as scoring every clip by hand: the projected query against each clip vector.
    expected = index.clip_vectors @ engine.embed_query("a dog barks in the distance")
    assert [hit.fid for hit in results.clips] == [index.fids[row] for row in np.argsort(-expected)[:4]]
    assert np.allclose(scores, np.sort(expected)[::-1][:4], atol=1e-6)
    assert [hit.z for hit in results.clips] == pytest.approx(np.sort(search.z_scores(expected))[::-1][:4])
    first = results.clips[0]
    assert first.captions == index.captions.loc[index.captions["fid"] == first.fid, "raw_text"].tolist()
    assert len(first.captions) == 5 and not results.message


def test_a_dataset_caption_marks_its_clip_with_its_rank_even_outside_the_top_k(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    for row in range(len(index.captions)):
        caption, fid, fname = index.captions.loc[row, ["raw_text", "fid", "fname"]]
        results = engine.search(caption, "evaluation", k=1)
        scores = index.clip_vectors @ engine.embed_query(caption)
        expected_rank = metrics.ranks_of(scores[None], [list(index.fids).index(fid)])[0]
        assert results.marked_ranks == {fname: expected_rank}
        assert results.clips[0].marked == (results.clips[0].fid == fid)
        if expected_rank > 1:
            break
    else:
        pytest.skip("the untrained model ranked every caption's clip first")
    assert not results.clips[0].marked


def test_query_matching_ignores_case_and_punctuation_like_the_caption_tables(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    caption, fname = index.captions.loc[0, ["raw_text", "fname"]]
    assert fname in engine.search(f"  {caption.upper()}!! ", "evaluation", k=2).marked_ranks
    assert engine.search("no caption says exactly this, surely", "evaluation").marked_ranks == {}


@pytest.mark.parametrize("query, words", [
    ("", "Type a few words"), ("   \n\t", "Type a few words"), ("x" * 301, "301 characters"), (None, "not NoneType"),
])
def test_bad_queries_get_a_friendly_message_not_an_error(engine: SearchEngine, query, words) -> None:
    results = engine.search(query, "evaluation", k=5)
    assert words in results.message and results.clips == []


def test_a_query_at_the_length_limit_is_searched(engine: SearchEngine) -> None:
    assert len(engine.search("rain " * 60, "evaluation", k=2).clips) == 2


@pytest.mark.parametrize("k", [0, -3, None, float("nan"), 2.5, "10", True])
def test_a_bad_k_is_refused_saying_what_k_is(engine: SearchEngine, k) -> None:
    fid = str(engine.index("evaluation").fids[0])
    for query in (lambda: engine.search("a dog barks", "evaluation", k),
                  lambda: engine.more_like_clip(fid, "evaluation", k),
                  lambda: engine.more_like_sound(b"not even read", "x.wav", "evaluation", k)):
        with pytest.raises(QueryError, match=rf"k is how many results to show, a whole number of at least 1 .*got {k!r}"):
            query()


def test_k_may_be_any_whole_number_type(engine: SearchEngine) -> None:
    assert len(engine.search("a dog barks", "evaluation", np.int64(2)).clips) == 2


@pytest.mark.parametrize("split", ["test", "Evaluation", None])
def test_an_unknown_split_is_refused_naming_the_splits(engine: SearchEngine, split) -> None:
    expected = f"No split {split!r} to search: this engine searches 'development', 'validation', 'evaluation'"
    with pytest.raises(QueryError, match=expected):
        engine.search("a dog barks", split)
    with pytest.raises(QueryError, match=expected):
        engine.more_like_sound(b"", "x.wav", split)
    with pytest.raises(QueryError, match="No split 'development' to search: this engine searches 'evaluation'"):
        ready_engine(np.eye(3, 300)).index("development")


# --- sounds: a clip of the split, or an uploaded file ------------------------------------------


def test_more_like_a_clip_leaves_it_out_and_ranks_its_own_captions(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    fid = str(index.fids[2])
    results = engine.more_like_clip(fid, "evaluation", k=10)
    assert fid not in [hit.fid for hit in results.clips] and len(results.clips) == len(index.fids) - 1
    scores = index.caption_vectors @ index.clip_vectors[2]
    assert [hit.text for hit in results.captions] == index.captions["raw_text"].to_numpy()[np.argsort(-scores)[:10]].tolist()
    assert [hit.marked for hit in results.captions] == [hit.fid == fid for hit in results.captions]
    own = np.flatnonzero(index.captions["fid"] == fid)
    assert sorted(results.marked_ranks.values()) == sorted(metrics.ranks_of(np.tile(scores, (len(own), 1)), own).tolist())
    with pytest.raises(QueryError, match="No clip 'nope' in the evaluation split"):
        engine.more_like_clip("nope", "evaluation")


def test_an_uploaded_clip_finds_itself_first_in_stereo(cfg, engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    samples = load_audio(cfg.dataset_dir / "evaluation" / index.fnames[3])
    stereo = np.stack([samples, samples], axis=1)  # two identical channels: the downmix is the clip itself
    results = engine.more_like_sound(wav_bytes(stereo, SAMPLE_RATE), "mine.wav", "evaluation", k=3)
    assert not results.message
    assert results.clips[0].fid == index.fids[3] and results.clips[0].score > 0.999
    assert len(results.captions) == 3 and results.sound is not None


def test_an_upload_at_another_rate_is_resampled_before_the_log_mel(cfg) -> None:
    seconds = 2.0
    tone = np.sin(2 * np.pi * 440 * np.arange(int(seconds * 16000)) / 16000).astype(np.float32)
    samples, log_mel = search.sound_to_log_mel(wav_bytes(tone, 16000), "tone.wav")
    assert len(samples) == int(seconds * SAMPLE_RATE) and len(log_mel) == 1 + len(samples) // 882
    assert np.argmax(log_mel.mean(axis=0)) == np.argmax(search.features.log_mel(tone, 16000).mean(axis=0))


def test_uploads_that_are_not_audio_or_too_short_get_a_clear_message(engine: SearchEngine) -> None:
    not_audio = engine.more_like_sound(b"hello, I am a text file", "notes.txt", "evaluation")
    assert "'notes.txt' is not a sound file" in not_audio.message and not_audio.clips == []
    short = engine.more_like_sound(wav_bytes(np.zeros(SAMPLE_RATE // 2, np.float32), SAMPLE_RATE), "blip.wav")
    assert "'blip.wav' lasts 0.50 s" in short.message and "at least 1.28 s (64 frames" in short.message
    empty = io.BytesIO()
    with wave.open(empty, "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(16000)
    assert "'empty.wav' is not a sound file" in engine.more_like_sound(empty.getvalue(), "empty.wav").message


@pytest.mark.parametrize("rate", [SAMPLE_RATE, 22_050])
def test_an_upload_with_non_finite_samples_is_refused(engine: SearchEngine, rate: int) -> None:
    samples = np.sin(np.arange(3 * rate) / 20).astype(np.float32)
    samples[[10, 500, 900]] = [np.nan, np.inf, -np.inf]
    results = engine.more_like_sound(wav_bytes(samples, rate, subtype="FLOAT"), "broken.wav", "evaluation")
    assert "'broken.wav' holds 3 samples that are NaN or infinite" in results.message and results.clips == []
    with pytest.raises(QueryError, match="holds 3 samples"):
        search.sound_to_log_mel(wav_bytes(samples, rate, subtype="FLOAT"), "broken.wav")


# --- the cached index --------------------------------------------------------------------------


def test_the_index_is_cached_and_rebuilt_when_the_checkpoint_changes(cfg, tmp_path: Path) -> None:
    first, second = save_untrained_checkpoint(tmp_path / "a.pt", 1), save_untrained_checkpoint(tmp_path / "b.pt", 2)
    path = search.index_path(cfg, "validation")
    built = search.load_index(cfg, "validation", load_trained_model(first), first)
    cached_at = path.stat().st_mtime_ns
    # A model that would give other vectors, but the same checkpoint file: the cache is read, not recomputed.
    reused = search.load_index(cfg, "validation", load_trained_model(second), first, verbose=False)
    assert path.stat().st_mtime_ns == cached_at and np.array_equal(reused.clip_vectors, built.clip_vectors)
    rebuilt = search.load_index(cfg, "validation", load_trained_model(second), second)
    assert path.stat().st_mtime_ns != cached_at and not np.allclose(rebuilt.clip_vectors, built.clip_vectors)
    assert np.allclose(np.linalg.norm(rebuilt.clip_vectors, axis=1), 1, atol=1e-5)
    path.write_bytes(b"damaged")  # an unreadable cache is rebuilt, not an error
    assert np.array_equal(search.load_index(cfg, "validation", load_trained_model(second), second).clip_vectors,
                          rebuilt.clip_vectors)


def test_a_missing_checkpoint_says_how_to_train(cfg, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ensure_trained"):
        search.index_stamp(tmp_path / "none.pt", tmp_path / "x.hdf5")


def test_an_engine_from_ready_indexes_needs_no_files() -> None:
    engine = ready_engine(np.eye(3, 300))
    results = engine.search("a hum", "evaluation", k=2)
    assert len(results.clips) == 2 and results.marked_ranks.keys() == {"c0.wav"}
