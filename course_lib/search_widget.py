"""The search UI over ``course_lib.search``: an ipywidgets widget, and the same rows printed without widgets.

Taught in notebook 07, sections 2 and 3. ``SearchWidget(engine)`` shows a query box (Enter or Search),
top k, split, a clip picker ("More like this") and an upload button for sounds; each result row has its
rank, its cosine score, its z-score over the whole index (``course_lib.search``), a short preview player,
a log-mel picture and the clip's captions. Above the rows, a line says how the best clip's score compares
with the best clips of the split's own captions; when nothing stands out it says so in amber and the rows are
greyed: a query that fits nothing does not look like one that fits. ``show_results`` prints the same rows
for front ends without widgets.

    SearchWidget(engine)                            # JupyterLab (ipywidgets 8), Colab (ipywidgets 7.7)
    search_and_show(engine, "rain on a tin roof")   # the same rows, printed, with IPython players

Below the lesson: previews kept small (a short excerpt at a low rate), log-mel pictures, and reading
uploads in both ipywidgets 7 and 8 formats.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from course_lib import features
from course_lib.search import Hit, Results, SearchEngine

__all__ = ["SearchWidget", "describe", "search_and_show", "show_results"]

PREVIEW_SECONDS = 4.0  # audio players play a short excerpt ...
PREVIEW_RATE = 11_025  # ... at a quarter of Clotho's rate, so a page of results stays small (88 kB a player)
TOP_K_CHOICES = (5, 10, 20, 50)
GREY = "color:#888"  # rows of a query where nothing stands out


# --- the lesson: what a result says, printed or drawn ------------------------------------------


def describe(results: Results) -> list[str]:
    """A header line, a line on whether any clip stands out, and a line on the marked clips (or captions) and their ranks.

    Taught in notebook 07, section 3.
    """
    if results.message and not results.clips:
        return [results.message]
    kind = "clips" if not results.captions else "clips and captions"
    lines = [f"{results.query!r} in {results.split}: the {len(results.clips)} nearest {kind}"]
    lines.append(standing_line(results))
    if results.marked_ranks and not results.captions:
        owners = ", ".join(f"{fname} (rank {rank})" for fname, rank in results.marked_ranks.items())
        lines.append(f"this is a caption of {owners}")
    elif results.marked_ranks:
        ranks = sorted(results.marked_ranks.values())
        lines.append(f"its own captions rank {', '.join(map(str, ranks))} among the {results.split} captions")
    return [line for line in lines if line]


def standing_line(results: Results) -> str:
    """How the best clip's score compares with the best clips of the split's captions ('' when not measured)."""
    if not results.clips or np.isnan(results.best_fit):
        return ""
    best, fit, split = results.clips[0], results.best_fit, results.split
    if results.nothing_stands_out:
        return (f"nothing stands out: the best clip scores {best.score:+.3f}, lower than the best clip of {100 - fit:.0f} % "
                f"of the {split} captions (each used as a query). The model finds no clip that fits this description "
                "the way clips fit the dataset's descriptions.")
    return (f"the best clip scores {best.score:+.3f}, higher than the best clip of {fit:.0f} % of the {split} captions "
            "(each used as a query)")


def show_results(engine: SearchEngine, results: Results, players: bool = True) -> None:
    """Print a query's results as rows (with IPython.display.Audio players): for front ends without widgets.

    Taught in notebook 07, sections 3 and 4.
    """
    from IPython.display import Audio, display

    for line in describe(results):
        print(line)
    if results.message and not results.clips:
        return
    for hit in results.clips:
        print(f"{hit.rank:>3}. {hit.score:+.3f}  z {hit.z:+.1f}  {hit.fname}"
              f"{'   <- the clip of this caption' if hit.marked else ''}")
        for caption in hit.captions:
            print(f"        · {caption}")
        audio = preview_of(engine, results.split, hit.fname) if players else None
        if audio is not None:
            display(Audio(data=audio, rate=PREVIEW_RATE))
    if results.captions:
        print("nearest captions:")
        for hit in results.captions:
            print(f"{hit.rank:>3}. {hit.score:+.3f}  z {hit.z:+.1f}  {hit.text}   "
                  f"({hit.fname}){'   <- its own' if hit.marked else ''}")


def search_and_show(engine: SearchEngine, query: str, split: str = "evaluation", k: int = 5, players: bool = True) -> Results:
    """Search and print the rows in one call (the plain-function twin of the widget). Taught in notebook 07, section 3."""
    results = engine.search(query, split, k)
    show_results(engine, results, players)
    return results


class SearchWidget:
    """The search UI: a query box (Enter or Search), top k, split; clip picker and upload for sounds.

    Taught in notebook 07, section 2. Works with ipywidgets 7.7 (Colab) and 8.x. Display it as the last
    expression of a cell, or with ``display(widget.ui)``. Every callback catches its own errors and
    shows them as a message: a widget callback's traceback would otherwise vanish.
    """

    def __init__(self, engine: SearchEngine, split: str = "evaluation", k: int = 5):
        import ipywidgets as w

        self.engine, self._w, self._last = engine, w, None
        splits = engine.splits or [split]
        self.query = w.Text(placeholder="describe a sound, e.g. 'rain falling on a metal roof'", continuous_update=False,
                            layout=w.Layout(width="420px"))
        self.search_button = w.Button(description="Search", button_style="primary", icon="search")
        self.k = w.Dropdown(options=list(TOP_K_CHOICES), value=k if k in TOP_K_CHOICES else TOP_K_CHOICES[0],
                            description="top k", layout=w.Layout(width="140px"))
        self.split = w.Dropdown(options=splits, value=split if split in splits else splits[0], description="split",
                                layout=w.Layout(width="220px"))
        self.clip = w.Dropdown(options=self._clip_options(), description="clip", layout=w.Layout(width="420px"))
        self.more_button = w.Button(description="More like this", icon="music")
        # Both versions write "description (files)" on a 148 px button: "Upload a sound (0)" was cut. Sized to its text.
        self.upload = w.FileUpload(accept="audio/*,.wav,.flac,.ogg,.mp3", multiple=False, description="Upload a sound",
                                   icon="upload", layout=w.Layout(width="auto", flex="0 0 auto"))
        self.message = w.HTML()
        self.rows = w.VBox()
        self.ui = w.VBox([w.HBox([self.query, self.search_button, self.k, self.split]),
                          w.HBox([self.clip, self.more_button, self.upload]), self.message, self.rows])
        self.results: Results | None = None
        # Enter (continuous_update=False sends the value on Enter) or the button; k and split re-run the last query.
        self.query.observe(lambda change: self.on_search(), names="value")
        self.search_button.on_click(lambda button: self.on_search(force=True))
        self.k.observe(lambda change: self._rerun(), names="value")
        self.split.observe(self._on_split, names="value")
        self.more_button.on_click(lambda button: self.on_more_like_clip())
        self.upload.observe(lambda change: self.on_upload(), names="value")

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.ui)

    # -- callbacks (the unit tests call these directly) --

    def on_search(self, force: bool = False) -> Results | None:
        """Search for the text in the box and show the rows (skipped when nothing changed, unless forced)."""
        return self._run(("text", self.query.value, self.split.value, self.k.value), force,
                         lambda: self.engine.search(self.query.value, self.split.value, self.k.value))

    def on_more_like_clip(self, fid: str | None = None) -> Results | None:
        """The nearest clips and captions of the picked clip (or ``fid``)."""
        fid = fid or self.clip.value
        if not fid:
            return self._show(Results("", self.split.value, message="Pick a clip first."))
        return self._run(("clip", fid, self.split.value, self.k.value), True,
                         lambda: self.engine.more_like_clip(fid, self.split.value, self.k.value))

    def on_upload(self) -> Results | None:
        """The nearest clips and captions of the uploaded sound; a message when it is not usable audio."""
        files = uploaded_files(self.upload.value)
        if not files:
            return None
        name, data = files[-1]
        return self._run(("upload", name, len(data), self.split.value, self.k.value), True,
                         lambda: self.engine.more_like_sound(data, name, self.split.value, self.k.value))

    # -- drawing --

    def _run(self, key: tuple, force: bool, query: Callable[[], Results]) -> Results | None:
        if key == self._last and not force:
            return self.results
        self._last = key
        try:
            results = query()
        except Exception as exc:  # shown, never a traceback that vanishes in a callback
            results = Results(str(key[1]), self.split.value, message=f"Something went wrong: {exc}")
        return self._show(results)

    def _rerun(self) -> None:
        last, self._last = self._last, None
        if last is not None and last[0] == "text":
            self.on_search()
        elif last is not None and last[0] == "clip":
            self.on_more_like_clip(last[1])
        elif last is not None:
            self.on_upload()

    def _on_split(self, change: Any) -> None:
        self.clip.options = self._clip_options()
        self.clip.value = ""
        self._rerun()

    def _clip_options(self) -> list[tuple[str, str]]:
        try:
            index = self.engine.index(self.split.value)
        except Exception:  # an index that cannot be built shows its error on the first search instead
            index = None
        if index is None:
            return [("(pick a clip)", "")]
        return [("(pick a clip)", "")] + sorted(zip(index.fnames.tolist(), index.fids.tolist(), strict=True))

    def _show(self, results: Results) -> Results:
        w = self._w
        self.results = results
        if results.message and not results.clips:
            self.message.value = f"<span style='color:#a33'>{_html(results.message)}</span>"
        else:  # the header, then the standing line (amber when nothing stands out), then the marked ranks
            standing = standing_line(results) if results.nothing_stands_out else None
            self.message.value = "<br>".join(f"<span style='color:#a60'>{_html(line)}</span>" if line == standing
                                             else _html(line) for line in describe(results))
        rows = []
        if results.sound is not None:
            rows.append(w.HBox([w.HTML("<b>your sound</b>", layout=w.Layout(width="120px")),
                                self._player(preview_wav(*results.sound))]))
        rows += [self._clip_row(results, hit) for hit in results.clips]
        if results.captions:
            rows.append(w.HTML("<b>nearest captions</b> (audio-to-text)"))
            rows += [w.HTML(_caption_line(hit)) for hit in results.captions]
        self.rows.children = rows
        return results

    def _clip_row(self, results: Results, hit: Hit) -> Any:
        w = self._w
        index = self.engine.index(results.split)
        mark = " <b style='color:#1a7f37'>&larr; the clip of this caption</b>" if hit.marked else ""
        captions = "".join(f"<li>{_html(caption)}</li>" for caption in hit.captions)
        grey = GREY if results.nothing_stands_out else ""
        text = w.HTML(f"<div style='{grey}'><b>{hit.rank}.</b> <code>{hit.score:+.3f}</code> {_z_badge(hit)} "
                      f"{_html(hit.fname)}{mark}"
                      f"<ul style='margin:2px 0 0 0;font-size:90%;line-height:1.3'>{captions}</ul></div>",
                      layout=w.Layout(width="520px"))
        parts = [text]
        audio = preview_of(self.engine, results.split, hit.fname)
        parts.append(self._player(audio) if audio is not None else w.HTML("<i>no audio file</i>"))
        if index.h5_path is not None:
            parts.append(w.Image(value=log_mel_png(str(index.h5_path), hit.fid), format="png",
                                 layout=w.Layout(width="160px", height="48px")))
        more = w.Button(description="more like this", layout=w.Layout(width="120px"))
        more.on_click(lambda button, fid=hit.fid: self.on_more_like_clip(fid))
        parts.append(more)
        return w.HBox(parts, layout=w.Layout(border="1px solid #9dc1ff" if hit.marked else "", align_items="center"))

    def _player(self, wav: bytes) -> Any:
        w = self._w
        return w.Audio(value=wav, format="wav", autoplay=False, loop=False, layout=w.Layout(width="260px"))


def _z_badge(hit: Hit) -> str:
    """The z-score as a small label, explained when the pointer rests on it."""
    return f"<small title=\"standard deviations above this query's mean score over the whole index\">z {hit.z:+.1f}</small>"


def _caption_line(hit: Hit) -> str:
    mark = " <b style='color:#1a7f37'>&larr; its own caption</b>" if hit.marked else ""
    return (f"<b>{hit.rank}.</b> <code>{hit.score:+.3f}</code> {_z_badge(hit)} {_html(hit.text)} "
            f"<small>({_html(hit.fname)})</small>{mark}")


def _html(text: str) -> str:
    import html

    return html.escape(str(text), quote=False)


# --- small previews: a short, low-rate excerpt and a small log-mel picture ---------------------


def preview_wav(samples: np.ndarray, sample_rate: int, seconds: float = PREVIEW_SECONDS, rate: int = PREVIEW_RATE) -> bytes:
    """A short 16-bit WAV excerpt at a low rate (88 kB for 4 s at 11 kHz instead of 1.4 MB for 15 s at 44.1 kHz)."""
    import soundfile

    excerpt = features.resample(np.asarray(samples[: int(seconds * sample_rate)], dtype=np.float32), sample_rate, rate)
    peak = float(np.max(np.abs(excerpt))) if len(excerpt) else 0.0
    buffer = io.BytesIO()
    soundfile.write(buffer, excerpt / peak * 0.9 if peak > 0 else excerpt, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


@lru_cache(maxsize=256)
def clip_preview(path: str, seconds: float = PREVIEW_SECONDS, rate: int = PREVIEW_RATE) -> bytes | None:
    """The preview of a wav file on disk (None when the file is not there, e.g. features copied without audio)."""
    import soundfile

    try:
        info = soundfile.info(path)
        samples, file_rate = soundfile.read(path, frames=int(seconds * info.samplerate), dtype="float32", always_2d=True)
    except (OSError, RuntimeError):
        return None
    return preview_wav(features.to_mono(samples.T), file_rate, seconds, rate)


@lru_cache(maxsize=256)
def log_mel_png(h5_path: str, fid: str) -> bytes:
    """A small picture of a clip's log-mel (time across, low frequencies at the bottom) as PNG bytes."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    plt.imsave(buffer, features.load_log_mel(h5_path, fid).T[::-1], cmap="magma", format="png")
    return buffer.getvalue()


def preview_of(engine: SearchEngine, split: str, fname: str) -> bytes | None:
    """The preview of a split's clip, from the split's audio folder (None without one)."""
    folder = engine.audio_dirs.get(split)
    return clip_preview(str(folder / fname)) if folder is not None else None


# --- uploads: ipywidgets 7 gives a dict by file name, 8 a tuple of dicts ------------------------


def uploaded_files(value: Any) -> list[tuple[str, bytes]]:
    """[(file name, bytes)] from a FileUpload value, in ipywidgets 8's format (a tuple of dicts with name and
    content) or 7's ({name: {"metadata": {...}, "content": bytes}})."""
    if isinstance(value, dict):  # ipywidgets 7
        return [(str(name), bytes(item["content"])) for name, item in value.items()]
    return [(str(item["name"]), bytes(item["content"])) for item in value or ()]
