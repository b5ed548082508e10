"""course_lib.search_widget: the widget's callbacks, its rows and messages, the printed rows, previews, uploads.

Runs on the tiny set-up of tests/search_setup.py. The tests click the widget's buttons and set its values
directly, so they run the same under ipywidgets 7.7 (Colab) and 8.x: scripts/test_widgets_77.sh runs this
file in a second environment with ipywidgets 7.7.1. What a browser draws is tested in
tests/test_search_browser.py.
"""

from __future__ import annotations

import datetime
import io

import ipywidgets
import numpy as np
import pytest
import soundfile
from search_setup import query_engine, tiny_engine, tiny_search_profile

from course_lib import search_widget
from course_lib.search import SearchEngine
from course_lib.search_widget import SearchWidget, describe, uploaded_files

IPYWIDGETS_MAJOR = int(ipywidgets.__version__.split(".")[0])


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    return tiny_search_profile(tmp_path_factory.mktemp("search_widget"))


@pytest.fixture(scope="module")
def engine(cfg) -> SearchEngine:
    return tiny_engine(cfg)


def upload_value(name: str, data: bytes):
    """A FileUpload value in the installed ipywidgets' own format."""
    if IPYWIDGETS_MAJOR >= 8:
        return ({"name": name, "type": "audio/wav", "size": len(data), "content": memoryview(data),
                 "last_modified": datetime.datetime.now(datetime.UTC)},)
    return {name: {"metadata": {"name": name, "type": "audio/wav", "size": len(data), "lastModified": 0}, "content": data}}


def files_free_engine(fitting: bool) -> SearchEngine:
    """200 random clips and no files; with ``fitting``, clip c7 points where the query 'a hum' points."""
    return query_engine("a hum", clips=200, seed=2, fitting=fitting)


# --- what a result says ----------------------------------------------------------------------------


def test_describe_says_whether_anything_stands_out() -> None:
    nothing = files_free_engine(fitting=False).search("a hum", "evaluation", k=5)
    lines = describe(nothing)
    assert lines[0] == "'a hum' in evaluation: the 5 nearest clips"
    assert lines[1] == (f"nothing stands out: the best clip scores {nothing.clips[0].score:+.3f}, lower than the best clip "
                        "of 100 % of the evaluation captions (each used as a query). The model finds no clip that fits "
                        "this description the way clips fit the dataset's descriptions.")
    found = files_free_engine(fitting=True).search("a hum", "evaluation", k=5)
    assert describe(found)[1] == (f"the best clip scores {found.clips[0].score:+.3f}, higher than the best clip of 100 % "
                                  "of the evaluation captions (each used as a query)")
    clip = files_free_engine(fitting=True).more_like_clip("c3", "evaluation", k=5)
    assert not any("best clip" in line for line in describe(clip))  # sound queries: no such line


def test_a_bad_query_is_described_by_its_message_alone(engine: SearchEngine) -> None:
    results = engine.search("   ", "evaluation")
    assert describe(results) == [results.message]


def test_show_results_prints_rows_and_players(engine: SearchEngine, capsys, monkeypatch) -> None:
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objects, **kw: shown.extend(objects))
    results = search_widget.search_and_show(engine, "wind through trees", "evaluation", k=3)
    printed = capsys.readouterr().out
    assert describe(results)[1] in printed
    for hit in results.clips:
        assert f"{hit.rank:>3}. {hit.score:+.3f}  z {hit.z:+.1f}" in printed and hit.captions[0] in printed
    assert len(shown) == 3 and all(type(player).__name__ == "Audio" for player in shown)
    search_widget.search_and_show(engine, "   ", "evaluation")
    assert "Type a few words" in capsys.readouterr().out


def test_previews_are_short_low_rate_wavs(engine: SearchEngine) -> None:
    fname = engine.index("evaluation").fnames[0]
    preview = search_widget.preview_of(engine, "evaluation", fname)
    samples, rate = soundfile.read(io.BytesIO(preview))
    assert rate == search_widget.PREVIEW_RATE and len(samples) <= search_widget.PREVIEW_SECONDS * rate
    assert len(preview) < 100_000 and np.abs(samples).max() > 0.5  # normalised, so quiet clips are heard
    assert search_widget.preview_of(engine, "nowhere", fname) is None


def test_uploaded_files_reads_both_ipywidgets_formats() -> None:
    version_8 = ({"name": "a.wav", "type": "audio/wav", "size": 3, "content": memoryview(b"abc")},)
    version_7 = {"a.wav": {"metadata": {"name": "a.wav", "type": "audio/wav", "size": 3}, "content": b"abc"}}
    assert uploaded_files(version_8) == uploaded_files(version_7) == [("a.wav", b"abc")]
    assert uploaded_files(()) == uploaded_files({}) == []


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
        assert f"z {hit.z:+.1f}" in row.children[0].value
    widget.search_button.click()  # the button searches again (same rows)
    assert [row.children[0].value for row in widget.rows.children] == [row.children[0].value for row in rows]
    widget.k.value = 10  # changing k re-runs the query
    assert len(widget.rows.children) == min(10, len(engine.index("evaluation").fids))


def test_the_widget_greys_a_query_that_fits_nothing_and_not_one_that_fits() -> None:
    nothing = SearchWidget(files_free_engine(fitting=False), k=5)
    nothing.query.value = "a hum"
    assert nothing.results.nothing_stands_out
    assert "<span style='color:#a60'>nothing stands out" in nothing.message.value
    assert all(search_widget.GREY in row.children[0].value for row in nothing.rows.children)
    found = SearchWidget(files_free_engine(fitting=True), k=5)
    found.query.value = "a hum"
    assert "nothing stands out" not in found.message.value and "best clip of 100 %" in found.message.value
    assert not any(search_widget.GREY in row.children[0].value for row in found.rows.children)


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
    assert widget.rows.children == () and "color:#a33" in widget.message.value
    assert "Traceback" not in widget.message.value


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


def test_the_upload_button_is_sized_to_its_label(engine: SearchEngine) -> None:
    # Both ipywidgets versions draw "Upload a sound (0)" on a button 148 px wide by default, which cut it;
    # the browser test checks the drawn label in ipywidgets 8.
    widget = SearchWidget(engine)
    assert widget.upload.description == "Upload a sound" and widget.upload.layout.width == "auto"


def test_widget_shows_errors_inside_callbacks_as_messages(engine: SearchEngine, monkeypatch) -> None:
    widget = SearchWidget(engine, split="evaluation")
    monkeypatch.setattr(engine, "search", lambda *args: (_ for _ in ()).throw(RuntimeError("disk on fire")))
    widget.query.value = "anything"
    assert "Something went wrong: disk on fire" in widget.message.value


def test_a_widget_over_an_engine_without_files_shows_no_players_or_pictures() -> None:
    widget = SearchWidget(files_free_engine(fitting=False))
    widget.query.value = "a hum"
    assert [type(part).__name__ for part in widget.rows.children[0].children] == ["HTML", "HTML", "Button"]
