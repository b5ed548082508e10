"""course_lib.search: exact top-k, the cached index, text and sound queries, and the widget's callbacks.

Runs on a tiny synthetic Clotho-format set (3 splits of 4-6 clips of 2-3 s) built by the course's own
pipeline, with an untrained CNN14 of width 0.125 saved as a checkpoint. The widget tests click its
buttons and set its values directly, so they run the same under ipywidgets 7.7 (Colab) and 8.x:
scripts/test_widgets_77.sh runs this file in a second environment with ipywidgets 7.7.1.
"""

from __future__ import annotations

import datetime
import io
import wave
from pathlib import Path

import ipywidgets
import numpy as np
import pytest
import soundfile
import torch
import yaml

from course_lib import search
from course_lib.cnn14 import CNN14Encoder
from course_lib.config import BASELINE_YAML, load_config
from course_lib.features import SAMPLE_RATE, load_audio
from course_lib.model import DualEncoder, load_trained_model
from course_lib.pipeline import prepare
from course_lib.search import ClipIndex, QueryError, SearchEngine, SearchWidget, top_k, uploaded_files

IPYWIDGETS_MAJOR = int(ipywidgets.__version__.split(".")[0])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    """A tiny synthetic profile built by the pipeline, and an untrained model saved as its best checkpoint."""
    root = tmp_path_factory.mktemp("search")
    settings = yaml.safe_load(BASELINE_YAML.read_text())
    settings["profiles"]["synthetic"]["synth"] = {"seed": 3, "clips": {"development": 4, "validation": 4, "evaluation": 6},
                                                  "min_seconds": 2.0, "max_seconds": 3.0}
    (root / "tiny.yaml").write_text(yaml.safe_dump(settings))
    config = load_config("synthetic", data_root=root / "data", yaml_path=root / "tiny.yaml")
    prepare(config, until="embeddings", verbose=False)
    save_untrained_checkpoint(root / "model.pt", seed=0)
    return config


def save_untrained_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = DualEncoder(CNN14Encoder(300, 0.125), text_dim=384)
    identity = {"out_dim": 300, "width": 0.125, "text_dim": 384, "pad_value": 0.0}
    torch.save({"identity": identity, "model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def engine(cfg) -> SearchEngine:
    return SearchEngine.from_config(cfg, checkpoint=cfg.data_root.parent / "model.pt", device="cpu")


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV")
    return buffer.getvalue()


def upload_value(name: str, data: bytes):
    """A FileUpload value in the installed ipywidgets' own format."""
    if IPYWIDGETS_MAJOR >= 8:
        return ({"name": name, "type": "audio/wav", "size": len(data), "content": memoryview(data),
                 "last_modified": datetime.datetime.now(datetime.UTC)},)
    return {name: {"metadata": {"name": name, "type": "audio/wav", "size": len(data), "lastModified": 0}, "content": data}}


# --- the lesson: top-k over one matrix product ------------------------------------------------


def test_top_k_matches_a_full_sort_best_first() -> None:
    scores = np.random.default_rng(0).normal(size=1000).astype(np.float32)
    assert top_k(scores, 10).tolist() == np.argsort(-scores)[:10].tolist()
    assert top_k(scores, 5000).tolist() == np.argsort(-scores).tolist()  # k beyond N: every row, sorted
    assert top_k(scores, 0).tolist() == []


def test_rank_of_counts_the_scores_above() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.5])
    assert [search.rank_of(scores, row) for row in range(4)] == [4, 1, 2, 2]


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
    first = results.clips[0]
    assert first.captions == index.captions.loc[index.captions["fid"] == first.fid, "raw_text"].tolist()
    assert len(first.captions) == 5 and not results.message


def test_a_dataset_caption_marks_its_clip_with_its_rank_even_outside_the_top_k(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    for row in range(len(index.captions)):
        caption, fid, fname = index.captions.loc[row, ["raw_text", "fid", "fname"]]
        results = engine.search(caption, "evaluation", k=1)
        scores = index.clip_vectors @ engine.embed_query(caption)
        expected_rank = int(np.sum(scores > scores[list(index.fids).index(fid)])) + 1
        assert results.marked_ranks == {fname: expected_rank}
        assert results.clips[0].marked == (results.clips[0].fid == fid)
        if expected_rank > 1:
            break
    else:
        pytest.skip("the untrained model ranked every caption's clip first")
    assert not results.clips[0].marked
    assert f"{fname} (rank {expected_rank})" in "\n".join(search.describe(results))


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
    assert search.describe(results) == [results.message]


def test_a_query_at_the_length_limit_is_searched(engine: SearchEngine) -> None:
    assert len(engine.search("rain " * 60, "evaluation", k=2).clips) == 2


# --- sounds: a clip of the split, or an uploaded file ------------------------------------------


def test_more_like_a_clip_leaves_it_out_and_ranks_its_own_captions(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    fid = str(index.fids[2])
    results = engine.more_like_clip(fid, "evaluation", k=10)
    assert fid not in [hit.fid for hit in results.clips] and len(results.clips) == len(index.fids) - 1
    scores = index.caption_vectors @ index.clip_vectors[2]
    assert [hit.text for hit in results.captions] == index.captions["raw_text"].to_numpy()[np.argsort(-scores)[:10]].tolist()
    assert [hit.marked for hit in results.captions] == [hit.fid == fid for hit in results.captions]
    assert sorted(results.marked_ranks.values()) == sorted(
        int(np.sum(scores > scores[row])) + 1 for row in np.flatnonzero(index.captions["fid"] == fid))
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


def test_uploaded_files_reads_both_ipywidgets_formats() -> None:
    version_8 = ({"name": "a.wav", "type": "audio/wav", "size": 3, "content": memoryview(b"abc")},)
    version_7 = {"a.wav": {"metadata": {"name": "a.wav", "type": "audio/wav", "size": 3}, "content": b"abc"}}
    assert uploaded_files(version_8) == uploaded_files(version_7) == [("a.wav", b"abc")]
    assert uploaded_files(()) == uploaded_files({}) == []


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


# --- previews and the plain function -------------------------------------------------------------


def test_previews_are_short_low_rate_wavs(cfg, engine: SearchEngine) -> None:
    fname = engine.index("evaluation").fnames[0]
    preview = search.preview_of(engine, "evaluation", fname)
    samples, rate = soundfile.read(io.BytesIO(preview))
    assert rate == search.PREVIEW_RATE and len(samples) <= search.PREVIEW_SECONDS * rate
    assert len(preview) < 100_000 and np.abs(samples).max() > 0.5  # normalised, so quiet clips are heard
    assert search.preview_of(engine, "nowhere", fname) is None


def test_show_results_prints_rows_and_players(engine: SearchEngine, capsys, monkeypatch) -> None:
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objects, **kw: shown.extend(objects))
    results = search.search_and_show(engine, "wind through trees", "evaluation", k=3)
    printed = capsys.readouterr().out
    for hit in results.clips:
        assert f"{hit.rank:>3}. {hit.score:+.3f}  {hit.fname}" in printed and hit.captions[0] in printed
    assert len(shown) == 3 and all(type(player).__name__ == "Audio" for player in shown)
    search.search_and_show(engine, "   ", "evaluation")
    assert "Type a few words" in capsys.readouterr().out


# --- the widget: its callbacks, driven directly --------------------------------------------------


def test_search_button_and_enter_show_rows_with_players_and_pictures(engine: SearchEngine) -> None:
    widget = SearchWidget(engine, split="evaluation", k=5)
    widget.query.value = "footsteps on gravel"  # what pressing Enter sends (continuous_update=False)
    rows = widget.rows.children
    assert len(rows) == 5 and widget.results.query == "footsteps on gravel"
    for hit, row in zip(widget.results.clips, rows, strict=True):
        kinds = [type(part).__name__ for part in row.children]
        assert kinds == ["HTML", "Audio", "Image", "Button"]
        assert f"<b>{hit.rank}.</b>" in row.children[0].value and hit.fname in row.children[0].value
    widget.search_button.click()  # the button searches again (same rows)
    assert [row.children[0].value for row in widget.rows.children] == [row.children[0].value for row in rows]
    widget.k.value = 10  # changing k re-runs the query
    assert len(widget.rows.children) == min(10, len(engine.index("evaluation").fids))


def test_widget_marks_the_clip_of_a_dataset_caption(engine: SearchEngine) -> None:
    index = engine.index("evaluation")
    caption, fname = index.captions.loc[7, ["raw_text", "fname"]]
    widget = SearchWidget(engine, split="evaluation", k=20)
    widget.query.value = caption
    marked = [row for row in widget.rows.children if "the clip of this caption" in row.children[0].value]
    assert len(marked) == 1 and fname in marked[0].children[0].value
    assert f"{fname} (rank" in widget.message.value


@pytest.mark.parametrize("query", ["", "    ", "y" * 1000])
def test_widget_bad_queries_show_a_message_and_no_rows(engine: SearchEngine, query: str) -> None:
    widget = SearchWidget(engine, split="evaluation")
    widget.query.value = "birds"
    widget.query.value = query
    widget.search_button.click()
    assert widget.rows.children == () and widget.message.value and "Traceback" not in widget.message.value


def test_widget_split_selector_and_more_like_this(engine: SearchEngine) -> None:
    widget = SearchWidget(engine, split="evaluation")
    widget.more_button.click()
    assert "Pick a clip first" in widget.message.value and widget.rows.children == ()
    widget.split.value = "validation"
    fids = set(engine.index("validation").fids)
    assert {value for _, value in widget.clip.options if value} == fids
    widget.clip.value = sorted(fids)[0]
    widget.more_button.click()
    assert widget.results.query.startswith("clip ") and "nearest captions" in widget.rows.children[-6].value
    row_button = widget.rows.children[0].children[-1]
    row_button.click()  # "more like this" on a result row
    assert widget.results.query == f"clip {widget.results.query[5:]}" and widget.results.split == "validation"


def test_widget_upload_of_audio_and_of_a_bad_file(cfg, engine: SearchEngine) -> None:
    widget = SearchWidget(engine, split="evaluation", k=5)
    index = engine.index("evaluation")
    data = (cfg.dataset_dir / "evaluation" / index.fnames[1]).read_bytes()
    widget.upload.set_trait("value", upload_value("sound.wav", data))
    assert widget.results.clips[0].fid == index.fids[1]
    assert type(widget.rows.children[0].children[1]).__name__ == "Audio"  # the uploaded sound's own player first
    widget.upload.set_trait("value", upload_value("photo.png", b"\x89PNG not a sound"))
    assert "'photo.png' is not a sound file" in widget.message.value and widget.rows.children == ()


def test_widget_shows_errors_inside_callbacks_as_messages(engine: SearchEngine, monkeypatch) -> None:
    widget = SearchWidget(engine, split="evaluation")
    monkeypatch.setattr(engine, "search", lambda *args: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    widget.query.value = "anything"
    assert "Something went wrong: disk on fire" in widget.message.value


def test_an_engine_from_ready_indexes_needs_no_files() -> None:
    torch.manual_seed(0)
    model = DualEncoder(CNN14Encoder(300, 0.125), text_dim=8)

    class Words:  # a stand-in text model: a unit vector per text
        def encode(self, texts, **kwargs):
            return np.eye(8, dtype=np.float32)[[len(text) % 8 for text in texts]]

    import pandas as pd
    vectors = np.eye(3, 300, dtype=np.float32)
    captions = pd.DataFrame({"tid": ["t"], "fid": ["a"], "fname": ["a.wav"], "raw_text": ["A hum."], "text": ["a hum"]})
    index = ClipIndex("evaluation", np.array(["a", "b", "c"]), np.array(["a.wav", "b.wav", "c.wav"]), vectors, captions,
                      np.eye(1, 300, dtype=np.float32))
    engine = SearchEngine(model, Words(), {"evaluation": index})
    results = engine.search("a hum", "evaluation", k=2)
    assert len(results.clips) == 2 and results.marked_ranks.keys() == {"a.wav"}
    widget = SearchWidget(engine)
    widget.query.value = "a hum"
    assert [type(part).__name__ for part in widget.rows.children[0].children] == ["HTML", "HTML", "Button"]  # no audio, no h5
    with pytest.raises(QueryError, match="No index for split 'development'"):
        engine.index("development")
