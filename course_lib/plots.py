"""The figures the notebooks share: a clip with its captions and player, waveforms, log-mels in Hz, histograms.

Taught along the way, from notebook 00 on. Each ``plot_*`` function draws on a matplotlib Axes (a new
one when none is given) and returns it, so notebooks can combine them into grids; ``show_clip`` shows a
clip the way a learner meets it (captions, an audio player, its waveform and log-mel), and
``plot_pipeline`` draws the course's stages (pass it ``course_lib.pipeline.STAGES``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import librosa.display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Audio, display

from course_lib.config import HOP_SECONDS, SAMPLE_RATE
from course_lib.features import log_mel

__all__ = [
    "STAGE_NOTES", "plot_bar", "plot_clip", "plot_filter_bank", "plot_histogram", "plot_log_mel", "plot_pipeline",
    "plot_similarity_heatmap", "plot_similarity_histograms", "plot_spectrogram", "plot_time_steps", "plot_training_curves",
    "plot_waveform", "show_clip",
]


def _axes(ax: plt.Axes | None, figsize: tuple[float, float] = (8, 2.5)) -> plt.Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# --- a clip as a learner meets it (notebooks 00-04) ----------------------------------------


def show_clip(
    samples: np.ndarray, sample_rate: int, captions: Iterable[str] = (), title: str = "", figure: bool = True
) -> None:
    """Print the title and captions, show an audio player, then the waveform above the log-mel (Hz axis).

    Taught in notebook 00, section 5; used again in notebooks 01, 02 and 04.
    """
    if title:
        print(title)
    for number, caption in enumerate(captions, start=1):
        print(f"  {number}. {caption}")
    display(Audio(samples, rate=sample_rate))
    if figure:  # figure=False: the player alone, for lists of clips
        plot_clip(samples, sample_rate, title=title)
        plt.show()


def plot_clip(samples: np.ndarray, sample_rate: int, title: str = "", features: np.ndarray | None = None) -> plt.Figure:
    """Waveform above the baseline's log-mel (computed unless ``features`` is given). Taught in notebook 00, section 5."""
    features = log_mel(samples, sample_rate) if features is None else features
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 4.6), sharex=True, layout="constrained")
    plot_waveform(samples, sample_rate, title=title, ax=top)
    top.set_xlabel("")
    plot_log_mel(features, title="log-mel spectrogram (64 mel bands)", ax=bottom)
    return fig


# --- audio (notebooks 00-02) -------------------------------------------------------------


def plot_waveform(samples: np.ndarray, sample_rate: int, title: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """Amplitude against time in seconds. Taught in notebook 00, section 4."""
    ax = _axes(ax)
    times = np.arange(len(samples)) / sample_rate
    ax.plot(times, samples, linewidth=0.5)
    ax.set(xlabel="time (s)", ylabel="amplitude", title=title, xlim=(0, times[-1] if len(times) else 1))
    return ax


def plot_log_mel(
    log_mel: np.ndarray, hop_seconds: float = HOP_SECONDS, title: str = "", ax: plt.Axes | None = None,
    sample_rate: int = SAMPLE_RATE, fmin: float = 0.0, fmax: float | None = None, label: str = "ln(energy)",
) -> plt.Axes:
    """A (T, n_mels) log-mel as an image: time in seconds across, mel bands up, labelled in Hz (librosa's specshow).

    Taught in notebook 00, section 4 (and notebook 02, section 2).
    ``sample_rate``, ``fmin`` and ``fmax`` say where the mel bands lie (the baseline's: 44.1 kHz, 0 Hz to
    Nyquist; PANNs': 32 kHz, 50 to 14,000 Hz); ``label`` names the colour scale's unit.
    """
    ax = _axes(ax, (8, 3))
    image = librosa.display.specshow(
        np.asarray(log_mel).T, sr=sample_rate, hop_length=round(hop_seconds * sample_rate), x_axis="s", y_axis="mel",
        fmin=fmin, fmax=sample_rate / 2 if fmax is None else fmax, cmap="magma", ax=ax,
    )
    ax.set(xlabel="time (s)", ylabel="frequency (Hz, mel scale)", title=title)
    plt.colorbar(image, ax=ax, label=label)
    return ax


def plot_spectrogram(
    values: np.ndarray, hop_seconds: float = HOP_SECONDS, max_hz: float | None = None, ylabel: str = "frequency (Hz)",
    label: str = "power", title: str = "", ax: plt.Axes | None = None,
) -> plt.Axes:
    """A (T, bins) spectrogram as an image: time across, bins up (0..max_hz when given). Taught in notebook 02, section 2."""
    ax = _axes(ax, (8, 3))
    top = max_hz if max_hz is not None else values.shape[1]
    image = ax.imshow(values.T, origin="lower", aspect="auto", cmap="magma", extent=(0, values.shape[0] * hop_seconds, 0, top))
    ax.set(xlabel="time (s)", ylabel=ylabel, title=title)
    plt.colorbar(image, ax=ax, label=label)
    return ax


def plot_filter_bank(filter_bank: np.ndarray, sample_rate: int, title: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """Each mel filter of an (n_mels, n_fft // 2 + 1) bank as a triangle over Hz. Taught in notebook 02, section 2."""
    ax = _axes(ax, (8, 3))
    frequencies = np.linspace(0, sample_rate / 2, filter_bank.shape[1])
    ax.plot(frequencies, filter_bank.T, linewidth=0.8)
    ax.set(xlabel="frequency (Hz)", ylabel="weight", title=title, xlim=(0, sample_rate / 2))
    return ax


def plot_histogram(
    values: np.ndarray, bins: int | np.ndarray = 30, xlabel: str = "", title: str = "", ax: plt.Axes | None = None
) -> plt.Axes:
    """A plain histogram with labelled axes. Taught in notebook 01, section 2."""
    ax = _axes(ax, (6, 3))
    ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    return ax


def plot_bar(labels: list[str], values: list[float], xlabel: str = "", title: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """Horizontal bars, largest on top (word counts, parameters per block, ...). Taught in notebook 01, section 5."""
    ax = _axes(ax, (6, max(2.5, 0.28 * len(labels))))
    positions = np.arange(len(labels))[::-1]
    ax.barh(positions, values, color="tab:blue")
    ax.set_yticks(positions, labels)
    ax.set(xlabel=xlabel, title=title)
    return ax


# --- encoders (notebook 03) --------------------------------------------------------------


def plot_time_steps(
    seconds: np.ndarray, steps: np.ndarray, min_seconds: float, title: str = "", ax: plt.Axes | None = None
) -> plt.Axes:
    """Time steps left after the encoder's poolings against clip length. Taught in notebook 03, section 3."""
    ax = _axes(ax, (7, 3))
    ax.step(seconds, steps, where="post", color="tab:blue")
    ax.axvline(min_seconds, color="tab:red", linestyle="--", label=f"minimum clip ({min_seconds:.2f} s)")
    ax.set(xlabel="clip length (s)", ylabel="time steps after block 6", title=title, xlim=(0, seconds[-1]))
    ax.legend(loc="upper left")
    return ax


# --- text (notebook 04) -------------------------------------------------------------------


def plot_similarity_histograms(
    groups: dict[str, np.ndarray], bins: int = 40, xlabel: str = "cosine similarity", title: str = "", ax: plt.Axes | None = None
) -> plt.Axes:
    """Overlaid density histograms on shared bins, one per named group. Taught in notebook 04, section 4."""
    ax = _axes(ax, (7, 3))
    values = np.concatenate([np.ravel(group) for group in groups.values()])
    edges = np.linspace(values.min(), values.max(), bins + 1)
    for name, group in groups.items():
        ax.hist(np.ravel(group), bins=edges, density=True, alpha=0.55, label=f"{name} (median {np.median(group):.2f})")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend()
    return ax


def plot_similarity_heatmap(
    similarity: np.ndarray, group_labels: list[str], group_size: int = 5, title: str = "", ax: plt.Axes | None = None
) -> plt.Axes:
    """A square similarity matrix whose rows come in groups (5 captions per clip), outlined. Taught in notebook 04, section 4."""
    ax = _axes(ax, (6, 5))
    image = ax.imshow(similarity, cmap="viridis", vmin=min(0.0, float(similarity.min())), vmax=1.0)
    for boundary in np.arange(group_size, len(similarity), group_size) - 0.5:
        ax.axhline(boundary, color="white", linewidth=1.5)
        ax.axvline(boundary, color="white", linewidth=1.5)
    centres = np.arange(len(group_labels)) * group_size + (group_size - 1) / 2
    ax.set_xticks(centres, group_labels, rotation=30, ha="right")
    ax.set_yticks(centres, group_labels)
    ax.set(title=title)
    plt.colorbar(image, ax=ax, label="cosine similarity")
    return ax


# --- training (notebook 05) -----------------------------------------------------------------


def plot_training_curves(history: pd.DataFrame | Sequence[dict], axes: Sequence[plt.Axes] | None = None) -> Sequence[plt.Axes]:
    """A run's losses and validation mAP@10 by epoch, from its history rows. Taught in notebook 05, section 6.

    ``history``: ``train.read_history(run_dir)``, or the rows a training callback has received so far.
    """
    rows = pd.DataFrame(list(history) if not isinstance(history, pd.DataFrame) else history)
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(10, 3), layout="constrained")[1]
    left, right = axes
    left.plot(rows["epoch"], rows["train_loss"], "o-", label="train (mean over the epoch)")
    left.plot(rows["epoch"], rows["val_loss"], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="InfoNCE loss", title="loss (epoch 0: the untrained model, no training yet)")
    left.legend()
    right.plot(rows["epoch"], rows["val_t2a_map10"], "o-", color="tab:green")
    right.set(xlabel="epoch", ylabel="validation t2a mAP@10", ylim=(0, 1), title="validation text-to-audio mAP@10")
    return axes


# --- the course (README, notebook 00) -------------------------------------------------------------

STAGE_NOTES = {  # what each stage of course_lib.pipeline writes, and the notebook that teaches it
    "dataset": ("Clotho folder", "wavs and\ncaptions CSVs", "00"),
    "captions": ("caption tables", "tid, fid, raw_text,\ntokens", "01"),
    "features": ("log-mels", "(T, 64) a clip,\nin HDF5", "02"),
    "embeddings": ("caption vectors", "Sentence-BERT,\nunit length", "04"),
    "model": ("dual encoder", "CNN14 + projection,\nInfoNCE", "03, 05"),
    "evaluation": ("metrics", "R@k, mAP@10", "06"),
    "search": ("search widget", "text -> clips", "07"),
}


def plot_pipeline(stages: Sequence[str], after: Sequence[str] = (), ax: plt.Axes | None = None) -> plt.Axes:
    """The course's stages as boxes joined by arrows, each with what it writes and the notebook teaching it.

    Taught in notebook 00, section 3. Pass ``course_lib.pipeline.STAGES`` as ``stages``, so the picture follows
    the code; ``after`` adds dashed boxes for steps that use the stages' output without being stages (evaluation, search).
    """
    names = list(stages) + list(after)
    ax = _axes(ax, (2.05 * len(names), 2.0))
    for x, name in enumerate(names):
        dashed = x >= len(stages)
        box = dict(boxstyle="round,pad=0.4", facecolor="white" if dashed else "#e8f0fb",
                   edgecolor="tab:gray" if dashed else "tab:blue", linestyle="--" if dashed else "-", linewidth=1.4)
        what, detail, notebook = STAGE_NOTES.get(name, (name, "", ""))
        ax.text(x, 0.3, f"{name}\n{what}" if what != name else name, ha="center", va="center", fontsize=9.5,
                fontweight="bold", bbox=box)
        below = detail + (f"\nnotebook {notebook}" if notebook else "")
        ax.text(x, -0.2, below, ha="center", va="top", fontsize=8, color="0.3")
        if x:
            ax.annotate("", xy=(x - 0.41, 0.3), xytext=(x - 0.59, 0.3), arrowprops=dict(arrowstyle="-|>", color="0.3"))
    ax.set(xlim=(-0.55, len(names) - 0.45), ylim=(-1.0, 0.75))
    ax.axis("off")
    return ax
