"""The shared figures: axes in real units, show_clip's pieces, the pipeline drawn from the code, show_source."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from course_lib import cnn14, pipeline, plots  # noqa: E402
from course_lib.features import SAMPLE_RATE, log_mel  # noqa: E402
from course_lib.lesson import show_source  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tone(hz: float, seconds: float = 1.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE)).astype(np.float32)


def test_log_mel_axes_read_in_seconds_and_hz():
    ax = plots.plot_log_mel(log_mel(tone(1000, 2.0), SAMPLE_RATE))
    assert ax.get_xlim()[1] == pytest.approx(2.0, abs=0.05)  # 101 frames of 20 ms
    low, high = ax.get_ylim()  # specshow centres the 64 bands on the mel scale from 0 Hz to Nyquist
    assert abs(low) < 50 and high == pytest.approx(SAMPLE_RATE / 2, rel=0.04)
    assert "Hz" in ax.get_ylabel() and "(s)" in ax.get_xlabel()


def test_a_tone_shows_at_its_frequency_on_the_hz_axis():
    """The brightest row of the drawn image sits at the tone's frequency, within a mel band's width."""
    ax = plots.plot_log_mel(log_mel(tone(3000), SAMPLE_RATE))
    mesh = ax.collections[0]
    values = np.asarray(mesh.get_array()).reshape(64, -1)
    edges = mesh.get_coordinates()[:, 0, 1]  # the rows' lower edges in Hz, then the top one
    brightest = int(values.mean(axis=1).argmax())
    assert edges[brightest] <= 3000 <= edges[brightest + 1] * 1.05


def test_panns_front_end_axes_span_its_own_range():
    ax = plots.plot_log_mel(np.zeros((100, 64)), hop_seconds=0.01, sample_rate=32_000, fmin=50, fmax=14_000, label="dB")
    edges = ax.collections[0].get_coordinates()[:, 0, 1]
    assert 0 < edges[0] < 50 < edges[1] and edges[-2] < 14_000 < edges[-1] < 14_000 * 1.04
    assert ax.get_xlim()[1] == pytest.approx(1.0, abs=0.02)
    assert ax.figure.axes[-1].get_ylabel() == "dB"  # the colour bar names the unit


def test_plot_clip_shares_one_time_axis():
    fig = plots.plot_clip(tone(440, 1.5), SAMPLE_RATE, title="a tone")
    waveform, spectrogram = fig.axes[:2]
    assert waveform.get_xlim() == spectrogram.get_xlim()
    assert waveform.get_title() == "a tone"


def test_show_clip_prints_captions_and_shows_a_player(capsys, monkeypatch):
    shown = []
    monkeypatch.setattr(plots, "display", shown.append)
    monkeypatch.setattr(plt, "show", lambda: None)
    plots.show_clip(tone(440), SAMPLE_RATE, ["a high tone", "a beep"], title="clip", figure=False)
    assert capsys.readouterr().out.splitlines() == ["clip", "  1. a high tone", "  2. a beep"]
    assert len(shown) == 1 and type(shown[0]).__name__ == "Audio"
    assert not plt.get_fignums()  # figure=False: the player alone


def test_pipeline_picture_has_a_box_per_stage_in_order():
    ax = plots.plot_pipeline(pipeline.STAGES, after=("evaluation",))
    boxes = [text.get_text().split("\n")[0] for text in ax.texts if text.get_bbox_patch() is not None]
    assert boxes == [*pipeline.STAGES, "evaluation"]
    assert set(pipeline.STAGES) <= set(plots.STAGE_NOTES), "describe every stage of course_lib.pipeline in STAGE_NOTES"


def test_show_source_gives_the_code_with_its_file_and_lines():
    source = show_source(cnn14.CNN14Encoder.forward)
    assert source.code.startswith("def forward(self")  # the class's indentation removed
    assert source.where.startswith("course_lib/cnn14.py, lines ")
    first, last = map(int, source.where.split("lines ")[1].split("-"))
    assert last - first + 1 == len(source.code.splitlines())
    assert "<span" in source._repr_html_() and "def forward" in repr(source)


def test_show_source_refuses_what_has_no_python_source():
    with pytest.raises(TypeError, match="No source to show"):
        show_source(len)
