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


# --- text (notebook 04) -------------------------------------------------------------------
