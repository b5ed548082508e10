"""The figures the notebooks share: waveforms, log-mels, histograms, similarity matrices.

Each function draws on a matplotlib Axes (a new one when none is given) and returns it,
so notebooks can combine them into grids.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np


def _axes(ax: plt.Axes | None, figsize: tuple[float, float] = (8, 2.5)) -> plt.Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


# --- audio (notebooks 00-02) -------------------------------------------------------------


def plot_waveform(samples: np.ndarray, sample_rate: int, title: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """Amplitude against time in seconds."""
    ax = _axes(ax)
    times = np.arange(len(samples)) / sample_rate
    ax.plot(times, samples, linewidth=0.5)
    ax.set(xlabel="time (s)", ylabel="amplitude", title=title, xlim=(0, times[-1] if len(times) else 1))
    return ax


def plot_log_mel(
    log_mel: np.ndarray, hop_seconds: float = 0.020, title: str = "", ax: plt.Axes | None = None
) -> plt.Axes:
    """A (T, n_mels) log-mel as an image: time across, mel bands up."""
    ax = _axes(ax, (8, 3))
    duration = log_mel.shape[0] * hop_seconds
    image = ax.imshow(
        log_mel.T, origin="lower", aspect="auto", cmap="magma", extent=(0, duration, 0, log_mel.shape[1])
    )
    ax.set(xlabel="time (s)", ylabel="mel band", title=title)
    plt.colorbar(image, ax=ax, label="log energy")
    return ax


def plot_spectrogram(
    values: np.ndarray, hop_seconds: float = 0.020, max_hz: float | None = None, ylabel: str = "frequency (Hz)",
    label: str = "power", title: str = "", ax: plt.Axes | None = None,
) -> plt.Axes:
    """A (T, bins) spectrogram as an image: time across, bins up (spanning 0..max_hz when given)."""
    ax = _axes(ax, (8, 3))
    top = max_hz if max_hz is not None else values.shape[1]
    image = ax.imshow(values.T, origin="lower", aspect="auto", cmap="magma", extent=(0, values.shape[0] * hop_seconds, 0, top))
    ax.set(xlabel="time (s)", ylabel=ylabel, title=title)
    plt.colorbar(image, ax=ax, label=label)
    return ax


def plot_filter_bank(filter_bank: np.ndarray, sample_rate: int, title: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """Each mel filter of an (n_mels, n_fft // 2 + 1) bank as a triangle over frequency in Hz."""
    ax = _axes(ax, (8, 3))
    frequencies = np.linspace(0, sample_rate / 2, filter_bank.shape[1])
    ax.plot(frequencies, filter_bank.T, linewidth=0.8)
    ax.set(xlabel="frequency (Hz)", ylabel="weight", title=title, xlim=(0, sample_rate / 2))
    return ax


def plot_histogram(
    values: np.ndarray, bins: int | np.ndarray = 30, xlabel: str = "", title: str = "", ax: plt.Axes | None = None
) -> plt.Axes:
    """A plain histogram with labelled axes."""
    ax = _axes(ax, (6, 3))
    ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    return ax


def plot_bar(labels: list[str], values: list[float], xlabel: str = "", title: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """Horizontal bars, largest on top (word counts, parameters per block, ...)."""
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
    """Time steps left after the encoder's poolings against clip length, with the shortest usable clip marked."""
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
    """Overlaid density histograms on shared bins, one per named group (e.g. same clip vs other clips)."""
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
    """A square similarity matrix whose rows come in groups (e.g. 5 captions per clip), groups outlined."""
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
