"""Caption augmentation: the dataset's captions unchanged, paraphrases that say the same, extra captions from a file,
and their vectors cached."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tiny import tiny_profile

from course_lib import caption_augment, synth, synth_captions, text
from course_lib.caption_augment import CaptionSourceError, extra_caption_vectors, extra_captions
from course_lib.clotho import load_caption_table
from course_lib.config import load_config
from course_lib.pipeline import prepare
from course_lib.synth_captions import Content, describe_scene, describe_scene_with_contents, paraphrase
from course_lib.synth_scenes import EVENT_TYPES, SEGMENTS, sample_scene

# The dataset's captions before paraphrases existed: computed with the code of commit 0ce8c19 (before _caption was
# split into content and wording) as
#   sha256(json.dumps([clip.captions for clip in synth.plan_split("development", 8, 0, 5.0, 8.0)]))
#   clips = synth.plan_split("development", 300, 0, 5.0, 8.0)
#   sha256(json.dumps([[clip.file_name, clip.captions, clip.metadata] for clip in clips]))
# The second also pins every random draw after the captions (file names, metadata).
CAPTIONS_8 = "d1277f551cff4719e3c37dd6e90a90f1d273d8ac9802edb02cbe855f34e82bbe"
CLIPS_300 = "50702570fd122a8083f2e429eadf6985d17cec7dbdf088d351bc934327e16e5f"


def sha256(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def test_the_datasets_captions_are_unchanged():
    assert sha256([clip.captions for clip in synth.plan_split("development", 8, 0, 5.0, 8.0)]) == CAPTIONS_8
    clips = synth.plan_split("development", 300, 0, 5.0, 8.0)
    assert sha256([[clip.file_name, clip.captions, clip.metadata] for clip in clips]) == CLIPS_300
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    scene = sample_scene(rng_a, 6.0)
    assert describe_scene(scene, rng_a) == [c for c, _ in describe_scene_with_contents(sample_scene(rng_b, 6.0), rng_b)]
    assert rng_a.random() == rng_b.random()  # the same draws, so the generator's next draws are the same


# --- an independent reading of what a caption says ---------------------------------------------


def _phrases() -> list[tuple[str, str, str]]:
    """(phrase, attribute, value) of every attribute phrase of the grammar, longest first."""
    tables = {"loudness": {v: a + b for v, (a, b) in synth_captions.LOUDNESS_WORDS.items()},
              "pitch": {v: a + b for v, (a, b) in synth_captions.PITCH_WORDS.items()},
              "rate": {v: synth_captions.RATE_WORDS.get(v, ()) + synth_captions.SIREN_RATE_WORDS.get(v, ())
                       for v in synth_captions.RATE_WORDS},
              "dynamics": synth_captions.DYNAMICS_WORDS,
              "position": {v: synth_captions.POSITION_AFTER[v] + synth_captions.POSITION_BEFORE[v]
                           for v in synth_captions.POSITION_AFTER}}
    rows = {(phrase, attribute, value)
            for attribute, table in tables.items() for value, words in table.items() for phrase in words}
    return sorted(rows, key=lambda row: -len(row[0]))


PHRASES = _phrases()
BACKGROUNDS = sorted({(phrase, value) for table in (synth_captions.BACKGROUND_BEFORE, synth_captions.BACKGROUND_AFTER)
                      for value, words in table.items() for phrase in words}, key=lambda row: -len(row[0]))


def _pattern(phrase: str) -> str:
    return rf"(?<![\w-]){re.escape(phrase)}(?![\w-])"


def read_caption(caption: str) -> tuple[tuple[str, str] | None, Counter, set[str]]:
    """(where and which background, Counter of (attribute, value) phrases, event types named), from the words alone."""
    words = caption.lower().rstrip(".")
    background = None
    for phrase, value in BACKGROUNDS:
        if words.startswith(phrase + ", "):
            background, words = ("before", value), words[len(phrase) + 2:]
            break
        if words.endswith(" " + phrase):
            background, words = ("after", value), words[: -len(phrase) - 1]
            break
    assert not any(re.search(_pattern(phrase), words) for phrase, _ in BACKGROUNDS), caption  # nowhere else
    said = Counter()
    for phrase, attribute, value in PHRASES:
        said[(attribute, value)] += len(re.findall(_pattern(phrase), words))
        words = re.sub(_pattern(phrase), " | ", words)
    named = {name for name, kind in EVENT_TYPES.items() if any(re.search(rf"\b{noun}\b", words) for _, noun in kind.subjects)}
    return background, +said, named


def what_content_says(scene, content: Content) -> tuple[tuple[str, str] | None, Counter, set[str]]:
    ordered = sorted(scene.events, key=lambda e: SEGMENTS[e.position][0])
    said = Counter((attribute, getattr(event, attribute)) for event, mention in zip(ordered, content.mentions, strict=True)
                   for attribute in mention)
    background = (content.background, scene.background) if content.background else None
    return background, said, {event.name for event in scene.events}


def test_a_paraphrase_keeps_the_events_and_attributes_of_its_caption():
    rng, wording = np.random.default_rng(21), np.random.default_rng(22)
    same_words = total = 0
    for _ in range(150):
        scene = sample_scene(rng, 6.0)
        described = describe_scene_with_contents(scene, rng)
        originals = {caption for caption, _ in described}
        for caption, content in described:
            said = what_content_says(scene, content)
            assert read_caption(caption) == said, (caption, content, scene)  # the content is what the caption says
            again = paraphrase(scene, content, wording, avoid=originals)
            assert read_caption(again) == said, (caption, again, content, scene)
            assert 8 <= len(again.split()) <= 20, again  # Clotho's lengths, like the captions
            same_words += again.rstrip(".").lower() in {c.rstrip(".").lower() for c in originals}
            total += 1
    assert same_words <= 0.01 * total, f"{same_words} of {total} paraphrases repeat a caption"


def test_a_content_the_scene_cannot_have_is_refused():
    scene = sample_scene(np.random.default_rng(3), 6.0)
    content = Content(tuple(frozenset({"loudness"}) for _ in scene.events), False, None)
    with pytest.raises(ValueError, match="events"):
        paraphrase(scene, dataclasses.replace(content, mentions=content.mentions + (frozenset(),)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="no such attribute"):
        paraphrase(scene, dataclasses.replace(content, mentions=(frozenset({"colour"}),) * len(scene.events)),
                   np.random.default_rng(0))


# --- extra captions of a profile's development clips -------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = tiny_profile(tmp_path_factory.mktemp("augment"), clips={"development": 4, "validation": 2, "evaluation": 2})
    prepare(cfg, until="captions", verbose=False)
    return cfg


def test_paraphrases_of_every_development_caption_new_and_reproducible(tiny):
    table = load_caption_table(tiny, "development")
    extra = extra_captions(tiny, "paraphrases", per_caption=2, seed=0)
    assert list(extra.columns) == ["fid", "caption"]
    assert extra.groupby("fid").size().to_dict() == {fid: 10 for fid in table["fid"].unique()}
    for fid, captions in extra.groupby("fid")["caption"]:
        own = set(table.loc[table["fid"] == fid, "raw_text"])
        assert not own & set(captions) and captions.nunique() == len(captions)
    assert extra.equals(extra_captions(tiny, "paraphrases", per_caption=2, seed=0))
    assert not extra.equals(extra_captions(tiny, "paraphrases", per_caption=2, seed=1))


def test_paraphrases_refuse_a_dataset_made_with_other_settings(tiny):
    other = dataclasses.replace(tiny, settings={**tiny.settings, "synth": {**tiny.settings["synth"], "seed": 7}})
    with pytest.raises(CaptionSourceError, match="other settings"):
        extra_captions(other, "paraphrases")


def test_a_source_that_is_no_file_says_what_to_pass(tiny, tmp_path):
    with pytest.raises(CaptionSourceError, match="Unknown caption source 'paraphrase'.*'paraphrases'.*file_name,caption"):
        extra_captions(tiny, "paraphrase")
    clotho = load_config("clotho", data_root=tmp_path)
    with pytest.raises(CaptionSourceError, match="real data.*file_name,caption"):
        extra_captions(clotho, "paraphrases")


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "file_name,caption") -> Path:
    pd.DataFrame(rows, columns=header.split(",")).to_csv(path, index=False, encoding="utf-8")
    return path


def test_a_caption_file_is_read_by_file_name(tiny, tmp_path):
    table = load_caption_table(tiny, "development").drop_duplicates("fid")
    (first, second), (fid_1, fid_2) = table["fname"].iloc[:2], table["fid"].iloc[:2]
    path = write_csv(tmp_path / "extra.csv", [(first.strip(), "A dog barks."), (second, "Rain falls."), (first, "Wind.")])
    extra = extra_captions(tiny, str(path))
    assert extra.values.tolist() == [[fid_1, "A dog barks."], [fid_2, "Rain falls."], [fid_1, "Wind."]]


@pytest.mark.parametrize(("content", "problem"), [
    (None, "does not exist"),
    ("file_name,text\nx.wav,A dog barks.\n", "lacks the column.*caption"),
    ("file_name,caption\n", "has no captions"),
    ("file_name,caption\nnot a clip.wav,A dog barks.\n", "not in the development split: 'not a clip.wav'"),
    ("file_name,caption\n{validation},A dog barks.\n", "not in the development split"),
    ("file_name,caption\n{development},A dog barks.\n{development},  ...\n", "no words on line\\(s\\) 3"),
    (b"file_name,caption\n{development},caf\xe9\n", "not a readable UTF-8 CSV"),
])
def test_a_bad_caption_file_is_refused_naming_it_and_the_problem(tiny, tmp_path, content, problem):
    path = tmp_path / "extra.csv"
    development = list(load_caption_table(tiny, "development")["fname"])
    validation = [name for name in load_caption_table(tiny, "validation")["fname"] if name not in development]
    names = {"development": development[-1], "validation": validation[0]}  # not Clotho's name found in both splits
    if isinstance(content, str):
        path.write_text(content.format(**names), encoding="utf-8")
    elif content is not None:
        path.write_bytes(content.replace(b"{development}", names["development"].encode()))
    with pytest.raises(CaptionSourceError, match=problem) as caught:
        extra_captions(tiny, str(path))
    assert str(path) in str(caught.value)


def test_extra_vectors_are_unit_rows_for_every_development_clip_and_cached(tiny, tmp_path, monkeypatch):
    fids = load_caption_table(tiny, "development")["fid"].unique()
    vectors = extra_caption_vectors(tiny, "paraphrases", per_caption=1, verbose=False)
    assert sorted(vectors) == sorted(fids)
    for rows in vectors.values():
        assert rows.shape == (5, 384) and rows.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-4)
    path = caption_augment.extra_vectors_path(tiny, "paraphrases", per_caption=1)
    assert path.is_file() and path.parent == tiny.prepared_dir

    def refuse(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(text, "load_text_model", refuse)
    monkeypatch.setattr(text, "encode_captions", refuse)
    again = extra_caption_vectors(tiny, "paraphrases", per_caption=1, verbose=False)
    assert all(np.array_equal(again[fid], vectors[fid]) for fid in fids)
    monkeypatch.undo()

    fname, fid = load_caption_table(tiny, "development")[["fname", "fid"]].iloc[0]
    from_file = extra_caption_vectors(tiny, str(write_csv(tmp_path / "x.csv", [(fname, "A dog barks.")])), verbose=False)
    assert from_file[fid].shape == (1, 384) and all(len(from_file[other]) == 0 for other in fids if other != fid)
    assert caption_augment.extra_vectors_path(tiny, str(tmp_path / "x.csv")) != path
