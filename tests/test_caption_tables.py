"""course_lib.clotho caption tables: cleaning, reproducible ids, durations, statistics, reuse."""

from __future__ import annotations

import json
import os
import unicodedata

import pandas as pd
import pytest
import yaml
from clotho_fixtures import SHARED_NAME, TINY_CLIPS, captions_for, write_clotho_folder

from course_lib import clotho
from course_lib.clotho import ClothoError, clean_caption, ensure_caption_tables, load_caption_table, read_metadata
from course_lib.config import BASELINE_YAML, load_config
from course_lib.pipeline import prepare


@pytest.mark.parametrize(
    ("raw", "cleaned"),
    [
        ("A dog barks, loudly!", "a dog barks loudly"),
        ("I think a bird sings", "I think a bird sings"),
        ("Then i and I wait", "then i and I wait"),
        ("Is it a walkie-talkie?", "is it a walkie-talkie"),
        ("  Rain   falls \t on\nthe ROOF  ", "rain falls on the roof"),
        ("It's raining", "its raining"),
        ("A car.The engine;stops", "a car the engine stops"),
        ("Birds chirp (far away) near_the lake", "birds chirp far away near the lake"),
        ("IT IS LOUD", "it is loud"),
        ("A dog - barks", "a dog barks"),
        ("A dog -- barks -then stops-", "a dog barks then stops"),
        ("A well-known tick-tock, then a--b", "a well-known tick-tock then a b"),
        ("A 1-2 count and a walkie_-talkie", "a 1-2 count and a walkie talkie"),
    ],
)
def test_clean_caption(raw, cleaned):
    assert clean_caption(raw) == cleaned


@pytest.fixture
def cfg(tmp_path):
    """A synthetic-profile config whose dataset is the tiny fixture folder (no generator involved)."""
    cfg = load_config("synthetic", data_root=tmp_path)
    write_clotho_folder(cfg.dataset_dir)
    return cfg


def test_tables_have_one_row_per_caption_in_csv_order(cfg):
    tables = ensure_caption_tables(cfg, progress=False)
    assert set(tables) == set(cfg.splits)
    for split, clips in TINY_CLIPS.items():
        table = load_caption_table(cfg, split)
        assert list(table.columns) == ["tid", "fid", "fname", "raw_text", "text", "tokens"]
        assert len(table) == 5 * len(clips)
        expected_raw = [caption for fname, _ in clips for caption in captions_for(fname)]
        assert list(table["raw_text"]) == expected_raw  # trailing spaces kept, as in the official CSV
        assert list(table["text"]) == [clean_caption(raw) for raw in expected_raw]
        assert all(tokens == text.split() for tokens, text in zip(table["tokens"], table["text"], strict=True))
        assert list(table["fname"]) == [fname for fname, _ in clips for _ in range(5)]
        assert table["fid"].nunique() == len(clips) and table["tid"].nunique() == len(table)
        pd.testing.assert_frame_equal(table, tables[split])


def test_leading_space_kept_in_fname(cfg):
    development = ensure_caption_tables(cfg, progress=False)["development"]
    assert " Ambience Birds.wav" in set(development["fname"])
    validation = load_caption_table(cfg, "validation")  # read back from the CSV on disk
    assert " e ieio ieai.wav" in set(validation["fname"])
    fid = validation.loc[validation["fname"] == " e ieio ieai.wav", "fid"].iloc[0]
    assert fid == clotho.stable_id("validation", " e ieio ieai.wav")


def test_ids_are_reproducible_and_distinct_between_splits(cfg, tmp_path, monkeypatch):
    first = ensure_caption_tables(cfg, progress=False)
    other = load_config("synthetic", data_root=tmp_path / "other")
    write_clotho_folder(other.dataset_dir)
    second = ensure_caption_tables(other, progress=False)
    for split in cfg.splits:
        assert list(first[split]["fid"]) == list(second[split]["fid"])
        assert list(first[split]["tid"]) == list(second[split]["tid"])
        assert all(len(value) == 12 for value in first[split]["tid"])
    shared_dev = set(first["development"].loc[first["development"]["fname"] == SHARED_NAME, "fid"])
    shared_val = set(first["validation"].loc[first["validation"]["fname"] == SHARED_NAME, "fid"])
    assert len(shared_dev) == len(shared_val) == 1 and shared_dev != shared_val
    assert clotho.stable_id("development", SHARED_NAME) == shared_dev.pop()


def test_repeated_file_name_fails_loudly(tmp_path):
    table = pd.DataFrame({"tid": ["a", "a"], "fid": ["f", "f"], "fname": ["x.wav", "x.wav"]})
    with pytest.raises(ClothoError, match="tids are not unique"):
        clotho.check_unique_ids({"development": table})


def test_durations_and_vocabulary_statistics(cfg):
    tables = ensure_caption_tables(cfg, progress=False)
    audio_info = json.loads((cfg.prepared_dir / "audio_info.json").read_text())
    development = tables["development"]
    birds_fid = development.loc[development["fname"] == " Ambience Birds.wav", "fid"].iloc[0]
    assert audio_info["development"][birds_fid] == {"fname": " Ambience Birds.wav", "duration": pytest.approx(1.5)}
    assert len(audio_info["validation"]) == 2
    vocab = json.loads((cfg.prepared_dir / "vocab_info.json").read_text())
    words = {split: [w for tokens in table["tokens"] for w in tokens] for split, table in tables.items()}
    for split, clips in TINY_CLIPS.items():
        assert vocab["splits"][split] == {
            "num_clips": len(clips),
            "num_captions": 5 * len(clips),
            "num_words": len(words[split]),
            "vocabulary_size": len(set(words[split])),
        }
    assert vocab["vocabulary_size"] == len(set().union(*map(set, words.values()))) == len(vocab["vocabulary"])


def test_missing_wavs_are_all_listed(cfg):
    (cfg.dataset_dir / "development" / "dog barking.wav").unlink()
    (cfg.dataset_dir / "development" / " Ambience Birds.wav").unlink()
    with pytest.raises(ClothoError) as err:
        ensure_caption_tables(cfg, progress=False)
    message = str(err.value)
    assert "2 of 3" in message and "'dog barking.wav'" in message and "' Ambience Birds.wav'" in message
    assert not (cfg.prepared_dir / "development_text.csv").exists()


def test_metadata_is_decoded_from_iso_8859_1(cfg):
    metadata = read_metadata(cfg.dataset_dir, "development")
    assert metadata.loc[0, "keywords"] == "café;pluie;élan" and metadata.loc[0, "manufacturer"] == "Jürgen"
    assert metadata.loc[0, "file_name"] == " Ambience Birds.wav"


def test_captions_are_decoded_from_utf_8(cfg):
    captions_csv = cfg.dataset_dir / "clotho_captions_validation.csv"
    captions_csv.write_text(captions_csv.read_text(encoding="utf-8").replace("I think", "Zoë thinks"), encoding="utf-8")
    captions = clotho.read_captions(cfg.dataset_dir, "validation")
    assert captions.loc[0, "caption_2"].startswith("Zoë thinks")
    assert ensure_caption_tables(cfg, progress=False)["validation"].loc[1, "text"].startswith("zoë thinks")


def test_reuse_then_rebuild_when_captions_change_or_table_is_damaged(cfg, capsys):
    ensure_caption_tables(cfg, progress=False)
    table_csv = cfg.prepared_dir / "development_text.csv"
    built_at = table_csv.stat().st_mtime_ns
    capsys.readouterr()
    ensure_caption_tables(cfg, progress=False)
    assert "built none" in capsys.readouterr().out and table_csv.stat().st_mtime_ns == built_at

    captions_csv = cfg.dataset_dir / "clotho_captions_development.csv"
    newer = table_csv.stat().st_mtime + 10
    os.utime(captions_csv, (newer, newer))
    ensure_caption_tables(cfg, progress=False)
    assert "built ['development']" in capsys.readouterr().out

    cleaned_by_older_rules = pd.read_csv(table_csv, dtype=str, keep_default_na=False)
    cleaned_by_older_rules.loc[0, "text"] += " -"
    cleaned_by_older_rules.to_csv(table_csv, index=False)
    ensure_caption_tables(cfg, progress=False)
    assert "built ['development']" in capsys.readouterr().out

    table_csv.write_text(table_csv.read_text().splitlines()[0] + "\n")  # header only: wrong row count
    tables = ensure_caption_tables(cfg, progress=False)
    assert "built ['development']" in capsys.readouterr().out and len(tables["development"]) == 15
    assert not list(cfg.prepared_dir.glob(".*.partial"))


@pytest.mark.parametrize("name", ["audio_info.json", "vocab_info.json"])
@pytest.mark.parametrize("damage", [b'{"development": {', b"\xff\xfe\x00garbage", b"[1, 2]"])
def test_damaged_json_is_rebuilt_and_named(cfg, capsys, name, damage):
    ensure_caption_tables(cfg, progress=False)
    path = cfg.prepared_dir / name
    good = json.loads(path.read_text(encoding="utf-8"))
    path.write_bytes(damage)
    capsys.readouterr()
    ensure_caption_tables(cfg, progress=False)
    out = capsys.readouterr().out
    assert f"{path} is unreadable" in out and "rebuilding it" in out
    assert json.loads(path.read_text(encoding="utf-8")) == good
    rebuilt_tables = name == "audio_info.json"  # the durations live there: every table is rebuilt with them
    assert ("built none" in out) != rebuilt_tables


def test_a_missing_dataset_is_not_built_here_but_named_with_what_to_run(tmp_path):
    cfg = load_config("synthetic", data_root=tmp_path)
    with pytest.raises(ClothoError, match=r"No Clotho-format dataset in .*prepare\(cfg, until='dataset'\)"):
        ensure_caption_tables(cfg, progress=False)
    assert not cfg.dataset_dir.exists(), "the caption stage must not generate the dataset itself"


def test_load_caption_table_names_the_missing_file(tmp_path):
    cfg = load_config("synthetic", data_root=tmp_path)
    with pytest.raises(ClothoError, match="validation_text.csv"):
        load_caption_table(cfg, "validation")


def test_end_to_end_on_a_tiny_generated_dataset(tmp_path):
    """The pipeline generates the dataset (course_lib.synth), then the caption tables read it."""
    settings = yaml.safe_load(BASELINE_YAML.read_text())
    clips = {"development": 4, "validation": 3, "evaluation": 3}
    settings["profiles"]["synthetic"]["synth"] = {"seed": 0, "clips": clips, "min_seconds": 1.0, "max_seconds": 1.5}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(settings))
    cfg = load_config("synthetic", data_root=tmp_path / "root", yaml_path=tmp_path / "tiny.yaml")
    tables = prepare(cfg, until="captions", verbose=False).tables
    audio_info = json.loads((cfg.prepared_dir / "audio_info.json").read_text())
    for split, count in clips.items():
        assert len(tables[split]) == 5 * count and tables[split]["fid"].nunique() == count
        durations = [clip["duration"] for clip in audio_info[split].values()]
        assert len(durations) == count and all(1.0 <= seconds <= 1.5 for seconds in durations)
    names = set(tables["development"]["fname"])
    assert any(name.startswith(" ") for name in names)  # the generator's leading-space quirk survives
    shared = names & set(tables["validation"]["fname"])
    assert len(shared) == 1
    fids = {split: set(tables[split].loc[tables[split]["fname"].isin(shared), "fid"]) for split in ("development", "validation")}
    assert fids["development"].isdisjoint(fids["validation"])


# --- user files that are not quite what Clotho ships ---------------------------------------------


def test_a_captions_csv_without_a_column_names_the_file_and_the_columns(cfg):
    path = cfg.dataset_dir / "clotho_captions_evaluation.csv"
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    table.drop(columns=["caption_3"]).to_csv(path, index=False)
    with pytest.raises(ClothoError, match=r"captions_evaluation.csv lacks the column\(s\) caption_3.*file_name, caption_1"):
        ensure_caption_tables(cfg, progress=False)


def test_a_captions_csv_that_is_not_utf8_names_the_byte_and_the_encoding(cfg):
    path = cfg.dataset_dir / "clotho_captions_validation.csv"
    path.write_bytes(path.read_bytes().replace(b"I think", "Zoë thinks".encode("latin-1")))
    with pytest.raises(ClothoError, match=r"clotho_captions_validation.csv is not valid utf-8 \(byte b'\\xeb'.*Save it as utf-8"):
        ensure_caption_tables(cfg, progress=False)


def test_nfd_and_upper_case_extension_names_are_matched_and_said(cfg, capsys):
    folder = cfg.dataset_dir / "evaluation"
    (folder / "rain on a roof.wav").rename(folder / "rain on a roof.WAV")
    composed = "café terrace.wav"
    csv_path = cfg.dataset_dir / "clotho_captions_evaluation.csv"
    csv_path.write_text(csv_path.read_text(encoding="utf-8").replace("walkie-talkie chatter.wav", composed), encoding="utf-8")
    decomposed = unicodedata.normalize("NFD", composed)
    (folder / "walkie-talkie chatter.wav").rename(folder / decomposed)
    table = ensure_caption_tables(cfg, progress=False)["evaluation"]
    assert set(table["fname"]) == {"rain on a roof.WAV", decomposed}
    out = capsys.readouterr().out
    assert "'rain on a roof.wav' is the file 'rain on a roof.WAV'" in out and f"is the file {decomposed!r}" in out
