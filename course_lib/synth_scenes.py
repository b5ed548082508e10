"""The sounds of the synthetic dataset: an event catalogue, scenes of 1-3 events, and their audio.

Taught in notebook 00, section 4. Every event type is synthesised with numpy/scipy and has attributes the
captions mention (high or low pitch, loud or quiet, once or fast or slow repetitions, getting
louder or fading, at the start, in the middle, at the end or throughout). The attributes really
change the audio, so a caption is a true description of its clip. ``course_lib.synth_captions``
writes the captions and ``course_lib.synth`` turns scenes into a Clotho-format folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import signal

from course_lib.config import SAMPLE_RATE

__all__ = [
    "LOUDNESS_GAIN", "SEGMENTS", "HIT_INTERVAL_SECONDS", "SIREN_CYCLES_PER_SECOND", "BACKGROUND_RMS", "EventType",
    "Event", "Scene", "EVENT_TYPES", "event_catalogue", "sample_scene", "render_event", "render_background",
    "render_scene",
]

LOUDNESS_GAIN = {"loud": 0.6, "quiet": 0.15}  # peak amplitude of an event: quiet is 12 dB below loud
SEGMENTS = {"start": (0.03, 0.32), "middle": (0.36, 0.64), "end": (0.68, 0.97), "throughout": (0.0, 1.0)}
HIT_INTERVAL_SECONDS = {"fast": (0.12, 0.2), "slow": (0.45, 0.65)}
SIREN_CYCLES_PER_SECOND = {"fast": 3.0, "slow": 0.3}
BACKGROUND_RMS = {"room": 0.003, "street": 0.02, "outdoors": 0.008}


@dataclass(frozen=True)
class EventType:
    """One kind of sound: how it is made (hits or continuous) and the words that name it."""

    name: str
    kind: str  # "hits" (repeated short sounds) or "continuous"
    pitches_hz: dict[str, float] | None  # {"high": ..., "low": ...}, None when pitch is not an attribute
    subjects: tuple[tuple[str, str], ...]  # (article, noun); article "" for uncountable nouns
    verbs: tuple[str, ...]
    gerunds: tuple[str, ...]
    keywords: tuple[str, ...]
    titles: tuple[str, ...]  # Freesound-like title words for file names


@dataclass(frozen=True)
class Event:
    """One occurrence of an event type in a scene, with the attributes its captions may mention.

    Taught in notebook 00, section 4.
    """

    name: str
    position: str  # start, middle, end or throughout
    loudness: str  # loud or quiet
    pitch: str | None = None  # high or low
    rate: str | None = None  # hits: once, fast or slow; siren: fast or slow cycles
    dynamics: str = "steady"  # steady, louder or fading


@dataclass(frozen=True)
class Scene:
    """What one clip holds: a background and 1-3 events."""

    seconds: float
    background: str
    events: tuple[Event, ...]


def _subject(text: str) -> tuple[str, str]:
    article, _, noun = text.partition(" ")
    return ("a", noun) if article in ("a", "an") else ("", text)


def _ev(name, kind, pitches, subjects, verbs, gerunds, keywords, titles) -> EventType:
    """Build an EventType from compact strings (comma-separated words, ';'-separated keywords)."""
    return EventType(name, kind, pitches, tuple(_subject(s) for s in subjects), tuple(verbs.split(",")),
                     tuple(gerunds.split(",")), tuple(keywords.split(";")), tuple(titles.split(",")))


EVENT_TYPES = {e.name: e for e in [
    _ev("bell", "hits", {"high": 1100, "low": 330}, ["a bell", "a church bell", "a metal bell"], "rings,chimes,dings",
        "ringing,chiming", "bell;ring;metal;chime", "Bell,bell_ring,Church bell,bells"),
    _ev("beep", "hits", {"high": 1800, "low": 600}, ["a machine", "a timer", "an alarm clock", "an electronic device"],
        "beeps,bleeps", "beeping,bleeping", "beep;electronic;alarm;signal", "beep,Beeping,alarm_beep,Timer beeps"),
    _ev("siren", "continuous", {"high": 1000, "low": 450}, ["a siren", "a police siren", "an ambulance siren"],
        "wails,blares,sounds", "wailing,blaring,sounding", "siren;emergency;alarm;police", "Siren,siren_pass,Police siren"),
    _ev("bird", "hits", {"high": 3500, "low": 1600}, ["a bird", "a songbird", "a little bird"], "chirps,tweets,sings",
        "chirping,tweeting,singing", "bird;chirp;nature;birdsong", "Birds,bird_chirp,Birdsong,chirping"),
    _ev("rain", "continuous", None, ["rain", "a rain shower"], "falls,patters,pours down", "falling,pattering,pouring down",
        "rain;water;weather;hiss", "Rain,rain_loop,Rainfall,rain on roof"),
    _ev("wind", "continuous", None, ["wind", "a gust of wind"], "blows,howls,whooshes", "blowing,howling,whooshing",
        "wind;air;weather;gust", "Wind,wind_gusts,Windy,wind howl"),
    _ev("engine", "continuous", {"high": 110, "low": 45}, ["an engine", "a car engine", "a motor", "a generator"],
        "hums,idles,drones,runs", "humming,idling,droning,running", "engine;motor;hum;car", "Engine,engine_idle,Motor hum"),
    _ev("knocking", "hits", None, ["a hammer", "a fist", "a mallet"], "knocks on wood,bangs on a door,taps on wood",
        "knocking on wood,banging on a door,tapping on wood", "knock;door;wood;hit", "Knocking,knock_door,Door knocks"),
    _ev("clicking", "hits", None, ["a pen", "a switch", "a computer mouse", "a clicker"], "clicks,clacks",
        "clicking,clacking", "click;switch;mechanical;tick", "Clicks,click_switch,Mouse clicks"),
    _ev("dripping", "hits", {"high": 1400, "low": 500}, ["a tap", "a faucet", "a leaky pipe"], "drips,leaks",
        "dripping,leaking", "drip;water;drop;leak", "Dripping,water_drip,Drops,dripping tap"),
    _ev("whistle", "continuous", {"high": 2600, "low": 1100}, ["a kettle", "a tea kettle", "a steam whistle"],
        "whistles,shrieks", "whistling,shrieking", "whistle;kettle;steam;tone", "Whistle,kettle_whistle,Steam whistle"),
    _ev("rumble", "continuous", None, ["thunder", "a storm", "a thunderstorm"], "rumbles,roars,grumbles",
        "rumbling,roaring,grumbling", "thunder;rumble;storm;low", "Thunder,rumble_low,Storm rumble"),
    _ev("buzzing", "continuous", {"high": 420, "low": 120}, ["a bee", "an insect", "a fly", "an electric transformer"],
        "buzzes,drones", "buzzing,droning", "buzz;insect;electric;drone", "Buzzing,bee_buzz,Buzz,insect buzz"),
    _ev("dog", "hits", {"high": 650, "low": 280}, ["a dog", "a hound", "a guard dog"], "barks,woofs",
        "barking,woofing", "dog;bark;animal;pet", "Dog bark,dog_barking,Barking dog"),
]}


def event_catalogue() -> list[dict[str, str]]:
    """The event types with their attributes and words, one dict a type (a table in notebook 00).

    Taught in notebook 00, section 4.
    """
    rows = []
    for event in EVENT_TYPES.values():
        attributes = ["pitch (high/low)"] if event.pitches_hz else []
        attributes += ["loud/quiet"]
        attributes += ["once/fast/slow"] if event.kind == "hits" else (["fast/slow cycles"] if event.name == "siren" else [])
        attributes += ["steady/louder/fading", "start/middle/end" + ("/throughout" if event.kind == "continuous" else "")]
        rows.append({"event": event.name, "kind": event.kind, "attributes": ", ".join(attributes),
                     "named as": ", ".join(noun for _, noun in event.subjects), "verbs": ", ".join(event.verbs)})
    return rows


# --- scenes ----------------------------------------------------------------------------------


def sample_scene(rng: np.random.Generator, seconds: float) -> Scene:
    """Draw a background and 1-3 different events with random attributes."""
    n_events = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25]))
    names = rng.choice(list(EVENT_TYPES), size=n_events, replace=False)
    positions = [str(p) for p in rng.permutation(["start", "middle", "end"])]
    events = []
    for name in names:
        kind = EVENT_TYPES[name]
        position = positions.pop()
        if kind.kind == "continuous" and rng.random() < 0.35 and all(e.position != "throughout" for e in events):
            position = "throughout"
        rate = str(rng.choice(["once", "fast", "slow"], p=[0.25, 0.4, 0.35])) if kind.kind == "hits" else None
        rate = str(rng.choice(["fast", "slow"])) if name == "siren" else rate
        dynamics = "steady" if rate == "once" else str(rng.choice(["steady", "louder", "fading"], p=[0.4, 0.3, 0.3]))
        pitch = str(rng.choice(["high", "low"])) if kind.pitches_hz else None
        events.append(Event(str(name), position, str(rng.choice(["loud", "quiet"])), pitch, rate, dynamics))
    return Scene(round(float(seconds), 3), str(rng.choice(list(BACKGROUND_RMS))), tuple(events))


# --- audio -------------------------------------------------------------------------------------


@cache
def _sos(kind: str, *cutoffs_hz: float, order: int = 2) -> np.ndarray:
    return signal.butter(order, cutoffs_hz if len(cutoffs_hz) > 1 else cutoffs_hz[0], btype=kind, fs=SAMPLE_RATE, output="sos")


def _filter(x: np.ndarray, kind: str, *cutoffs_hz: float) -> np.ndarray:
    return signal.sosfilt(_sos(kind, *cutoffs_hz), x).astype(np.float32)


def _times(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _tone(freqs: np.ndarray) -> np.ndarray:
    """A sine whose frequency follows ``freqs`` (Hz per sample)."""
    return np.sin(2 * np.pi * np.cumsum(freqs) / SAMPLE_RATE)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    """Pink (1/f) noise from white noise through Paul Kellet's 3-pole filter."""
    b, a = [0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875, -0.522189400]
    return signal.lfilter(b, a, rng.standard_normal(n)).astype(np.float32) * 8


def _wobble(rng: np.random.Generator, n: int, per_second: float, depth: float) -> np.ndarray:
    """A slow random gain between 1-depth and 1 (gusts, passing cars)."""
    points = rng.random(int(n / SAMPLE_RATE * per_second) + 2)
    return (1 - depth * np.interp(np.arange(n), np.linspace(0, n, len(points)), points)).astype(np.float32)


def _hit_sound(name: str, rng: np.random.Generator, f: float) -> np.ndarray:
    """One short sound of a hits event (a ring, a beep, a chirp, a bark, ...)."""
    if name == "bell":
        t = _times(1.5)
        ratios, amps = np.array([1, 2, 2.76, 5.4, 8.93]), np.array([1, 0.5, 0.35, 0.2, 0.1])  # inharmonic partials
        decays = np.array([0.6, 0.45, 0.3, 0.2, 0.15])
        return (amps[:, None] * np.exp(-t / decays[:, None]) * np.sin(2 * np.pi * f * ratios[:, None] * t)).sum(0)
    if name == "beep":
        t = _times(0.12)
        return (np.sin(2 * np.pi * f * t) + 0.2 * np.sin(4 * np.pi * f * t)) * np.minimum(1, np.minimum(t, t[-1] - t) / 0.005)
    if name == "bird":
        t = _times(0.09)
        return _tone(f * 1.7 ** (t / t[-1])) * np.sin(np.pi * t / t[-1]) ** 2
    if name == "dog":
        t = _times(0.2)
        f0 = f * (1.2 - 0.4 * t / t[-1])
        voice = sum(_tone(k * f0) / k for k in range(1, 7))
        growl = _filter(rng.standard_normal(len(t)), "bandpass", 300, 3000)
        return (voice + 1.5 * growl) * np.minimum(1, t / 0.01) * np.exp(-t / 0.06)
    if name == "knocking":
        t = _times(0.15)
        body = np.sin(2 * np.pi * 180 * t) * np.exp(-t / 0.02) + 0.5 * np.sin(2 * np.pi * 420 * t) * np.exp(-t / 0.01)
        return body + 0.6 * rng.standard_normal(len(t)) * np.exp(-t / 0.003)
    if name == "clicking":
        t = _times(0.012)
        return rng.standard_normal(len(t)) * np.exp(-t / 0.0008) + np.sin(2 * np.pi * 3500 * t) * np.exp(-t / 0.002)
    if name == "dripping":
        t = _times(0.08)
        return _tone(f * (1 + 1.2 * np.minimum(1, t / 0.04))) * np.minimum(1, t / 0.001) * np.exp(-t / 0.02)
    raise KeyError(name)


def _continuous_sound(event: Event, rng: np.random.Generator, n: int, f: float) -> np.ndarray:
    """``n`` samples of a continuous event (a siren, rain, wind, ...)."""
    t = np.arange(n) / SAMPLE_RATE
    if event.name == "siren":
        sweep = f * (1 + 0.25 * np.sin(2 * np.pi * SIREN_CYCLES_PER_SECOND[event.rate] * t))
        return _tone(sweep) + 0.3 * _tone(2 * sweep)
    if event.name == "rain":
        drops = (rng.random(n) < 0.002) * rng.standard_normal(n) * 6
        return _filter(rng.standard_normal(n) + drops, "highpass", 1500)
    if event.name == "wind":
        return _filter(rng.standard_normal(n), "lowpass", 500) * _wobble(rng, n, 0.7, 0.8)
    if event.name == "engine":
        wander = f * (1 + 0.01 * _wobble(rng, n, 2, 1))
        return sum(_tone(k * wander) / k for k in range(1, 9)) * (1 - 0.3 * np.sin(2 * np.pi * f / 2 * t) ** 2)
    if event.name == "whistle":
        breath = _filter(rng.standard_normal(n), "bandpass", f * 0.8, f * 1.25)
        return _tone(f * (1 + 0.015 * np.sin(2 * np.pi * 5 * t))) + 0.1 * breath
    if event.name == "rumble":
        return _filter(rng.standard_normal(n), "lowpass", 90) * _wobble(rng, n, 1.0, 0.7)
    if event.name == "buzzing":
        return _filter(signal.sawtooth(2 * np.pi * f * t), "lowpass", 4000) * (1 - 0.2 * np.sin(2 * np.pi * 11 * t))
    raise KeyError(event.name)


def _level_ramp(dynamics: str, n: int) -> np.ndarray:
    """Gain across an event: flat, rising 24 dB (getting louder) or falling 24 dB (fading)."""
    decibels = {"steady": np.zeros(n), "louder": np.linspace(-24, 0, n), "fading": np.linspace(0, -24, n)}[dynamics]
    return 10 ** (decibels / 20)


def render_event(event: Event, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The event alone in a clip of ``n_samples`` (float32, peak = its loudness gain). Taught in notebook 00, section 4."""
    kind = EVENT_TYPES[event.name]
    freq = kind.pitches_hz[event.pitch] * rng.uniform(0.95, 1.05) if kind.pitches_hz else 0.0
    start, end = (int(fraction * n_samples) for fraction in SEGMENTS[event.position])
    out = np.zeros(n_samples, np.float32)
    if kind.kind == "hits":
        hit = _hit_sound(event.name, rng, freq)
        if event.rate == "once":
            onsets = np.array([rng.integers(start, max(start + 1, end - min(len(hit), (end - start) // 2)))])
        else:
            interval = rng.uniform(*HIT_INTERVAL_SECONDS[event.rate]) * SAMPLE_RATE
            interval = min(interval, (end - start) / 3)  # at least three hits, so "repeatedly" is true
            onsets = (start + np.arange(0, end - start, interval) * rng.uniform(0.95, 1.0)).astype(int)
        train = np.zeros(n_samples, np.float32)
        train[onsets] = rng.uniform(0.85, 1.0, len(onsets)) * _level_ramp(event.dynamics, len(onsets))
        out += signal.oaconvolve(train, hit.astype(np.float32))[:n_samples]
    else:
        sound = _continuous_sound(event, rng, end - start, freq) * _level_ramp(event.dynamics, end - start)
        edge = min(int(0.08 * SAMPLE_RATE), (end - start) // 4)
        fade = np.sin(np.linspace(0, np.pi / 2, edge)) ** 2
        sound[:edge] *= fade
        sound[len(sound) - edge:] *= fade[::-1]
        out[start:end] = sound
    return out * (LOUDNESS_GAIN[event.loudness] / max(float(np.abs(out).max()), 1e-9))


def render_background(name: str, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """A quiet room tone, a street (low traffic rumble with swells) or an outdoor breeze."""
    if name == "room":
        sound = _pink(rng, n_samples) + 0.3 * np.sin(2 * np.pi * 50 * np.arange(n_samples) / SAMPLE_RATE)
    elif name == "street":
        traffic = _filter(rng.standard_normal(n_samples), "lowpass", 350) * _wobble(rng, n_samples, 0.25, 0.7)
        sound = traffic + 0.2 * _pink(rng, n_samples)
    elif name == "outdoors":
        sound = _filter(_pink(rng, n_samples), "lowpass", 2500) * _wobble(rng, n_samples, 0.5, 0.5)
    else:
        raise KeyError(f"Unknown background {name!r}; choose one of {', '.join(BACKGROUND_RMS)}.")
    return (sound * (BACKGROUND_RMS[name] / max(float(np.sqrt(np.mean(sound**2))), 1e-9))).astype(np.float32)


def render_scene(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The mixed clip as float32 in [-1, 1]: background plus every event."""
    n_samples = int(round(scene.seconds * SAMPLE_RATE))
    mix = render_background(scene.background, n_samples, rng)
    for event in scene.events:
        mix += render_event(event, n_samples, rng)
    peak = float(np.abs(mix).max())
    return mix * (0.98 / peak) if peak > 0.98 else mix

