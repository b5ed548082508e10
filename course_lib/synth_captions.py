"""Captions of synthetic scenes: five true, varied descriptions per clip, like Clotho's.

Taught in notebook 00, section 4. A caption names every event of a scene in time order, joined by words that
are true of the timing ("then" for events one after another, "while" for events that overlap), and
mentions a random few of each event's attributes with varied wording, sometimes the background.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from course_lib.synth_scenes import EVENT_TYPES, SEGMENTS, Event, Scene

__all__ = [
    "T", "LOUDNESS_WORDS", "PITCH_WORDS", "RATE_WORDS", "SIREN_RATE_WORDS", "DYNAMICS_WORDS", "POSITION_AFTER",
    "POSITION_BEFORE", "BACKGROUND_BEFORE", "BACKGROUND_AFTER", "JOINS", "pick", "describe_scene",
]

T = TypeVar("T")

LOUDNESS_WORDS = {"loud": (("loud",), ("loudly",)), "quiet": (("quiet", "soft", "faint"), ("quietly", "softly", "faintly"))}
PITCH_WORDS = {"high": (("high-pitched", "high"), ("with a high pitch", "in a high tone")),
               "low": (("low-pitched", "low", "deep"), ("with a low pitch", "in a low tone", "with a deep tone"))}
RATE_WORDS = {
    "once": ("once", "a single time", "just once", "one time"),
    "fast": ("rapidly over and over", "quickly and repeatedly", "many times in quick succession", "again and again, quickly"),
    "slow": ("slowly and repeatedly", "a few times, slowly", "repeatedly at a slow pace", "slowly over and over"),
}
SIREN_RATE_WORDS = {"fast": ("rising and falling quickly", "in fast up and down cycles"),
                    "slow": ("rising and falling slowly", "with a slow rise and fall")}
DYNAMICS_WORDS = {"steady": ("steadily", "at a constant volume", "at an even level"),
                  "louder": ("getting louder", "growing louder", "louder and louder", "building in volume"),
                  "fading": ("fading away", "fading out", "getting quieter", "dying away")}
POSITION_AFTER = {"start": ("at the start", "at the beginning", "early on", "first"),
                  "middle": ("in the middle", "halfway through", "midway through"),
                  "end": ("at the end", "near the end", "towards the end", "at the very end"),
                  "throughout": ("throughout", "the whole time", "all the way through", "continuously")}
POSITION_BEFORE = {"start": ("at the start", "at the beginning", "early on"), "middle": ("in the middle", "halfway through"),
                   "end": ("at the end", "near the end", "towards the end", "finally"),
                   "throughout": ("the whole time", "from start to finish", "all along")}
BACKGROUND_BEFORE = {"room": ("in a quiet room", "indoors", "inside a calm room"),
                     "street": ("on a busy street", "in the city", "next to a road"),
                     "outdoors": ("outdoors", "outside", "in an open field")}
BACKGROUND_AFTER = {"room": ("in a quiet room", "indoors", "inside a silent room"),
                    "street": ("with traffic noise in the background", "on a busy street", "while cars pass in the distance"),
                    "outdoors": ("outside", "outdoors in the open air", "in an open field")}
JOINS = {"sequence": (", then", " and then", ", after which", " before", ", and afterwards"),
         "overlap": (" while", " as", ", and at the same time", " and meanwhile")}


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One of the options, drawn with ``rng`` (one integer draw, so the generator's stream stays reproducible)."""
    return options[int(rng.integers(len(options)))]


def _clause(event: Event, mention: set[str], rng: np.random.Generator, position_first: bool) -> str:
    """One event in words, e.g. 'a deep bell rings slowly over and over at the start'."""
    kind = EVENT_TYPES[event.name]
    article, noun = pick(rng, kind.subjects)
    adjectives, adverbs, manner = [], [], ""
    if "loudness" in mention:
        as_adjective, as_adverb = LOUDNESS_WORDS[event.loudness]
        if rng.random() < 0.6:
            adjectives.append(pick(rng, as_adjective))
        else:
            manner = " " + pick(rng, as_adverb)
    if "pitch" in mention:
        as_adjective, as_phrase = PITCH_WORDS[event.pitch]
        (adjectives.append(pick(rng, as_adjective)) if rng.random() < 0.6 else adverbs.append(pick(rng, as_phrase)))
    if "rate" in mention:
        adverbs.append(pick(rng, (SIREN_RATE_WORDS if event.name == "siren" else RATE_WORDS)[event.rate]))
    described = " ".join([*adjectives, noun])
    if article:
        described = ("an " if described[0] in "aeiou" else "a ") + described
    verb, gerund = pick(rng, kind.verbs), pick(rng, kind.gerunds)
    body = pick(rng, (f"{described} {verb}", f"{described} is {gerund}", f"there is {described} {gerund}",
                       f"{described} can be heard {gerund}"))
    body += manner  # "loudly" right after the verb, then "in a high tone", "slowly over and over" in any order
    if adverbs:
        body += " " + pick(rng, (" ", ", ")).join(str(a) for a in rng.permutation(adverbs))
    if "dynamics" in mention:  # "steadily", or a participle ("fading away") after a comma or not
        body += (" " if event.dynamics == "steady" else pick(rng, (" ", ", "))) + pick(rng, DYNAMICS_WORDS[event.dynamics])
    if "position" not in mention:
        return body
    if position_first:
        return f"{pick(rng, POSITION_BEFORE[event.position])}, {body}"
    return f"{body} {pick(rng, POSITION_AFTER[event.position])}"


def _overlap(a: Event, b: Event) -> bool:
    return a.position == b.position or "throughout" in (a.position, b.position)


def _caption(scene: Scene, rng: np.random.Generator) -> str:
    """One caption: every event in time order, some of their attributes, sometimes the background."""
    ordered = sorted(scene.events, key=lambda e: SEGMENTS[e.position][0])
    position_first = rng.random() < 0.3
    text = ""
    for i, event in enumerate(ordered):
        available = ["loudness", "position"] + ["pitch"] * bool(event.pitch) + ["rate"] * bool(event.rate)
        available += ["dynamics"] * (event.rate != "once")  # a single hit has no volume course to speak of
        how_many = int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1]))  # like people, mention few details
        mention = set(rng.choice(available, size=min(how_many, len(available)), replace=False))
        clause = _clause(event, mention, rng, position_first and i == 0)
        if i:
            used = text.replace(",", "").split()  # no second "then" or "while" in one caption
            joins = [j for j in JOINS["overlap" if _overlap(ordered[i - 1], event) else "sequence"] if j.split()[-1] not in used]
            clause = pick(rng, tuple(joins)) + " " + clause
        text += clause
    where = rng.random()
    if where < 0.2 and not position_first:
        text = f"{pick(rng, BACKGROUND_BEFORE[scene.background])}, {text}"
    elif where < 0.4:
        after = [b for b in BACKGROUND_AFTER[scene.background] if not ("while" in b and "while" in text)]  # one "while" only
        text = f"{text} {pick(rng, tuple(after))}"
    return text[0].upper() + text[1:] + ("." if rng.random() < 0.5 else "")


def describe_scene(scene: Scene, rng: np.random.Generator, n: int = 5, min_words: int = 8, max_words: int = 20) -> list[str]:
    """``n`` different true captions of ``min_words``-``max_words`` words, like Clotho's five."""
    captions: list[str] = []
    for _ in range(2000):
        caption = _caption(scene, rng)
        words = len(caption.split())
        if min_words <= words <= max_words and caption.rstrip(".").lower() not in {c.rstrip(".").lower() for c in captions}:
            captions.append(caption)
            if len(captions) == n:
                return captions
    raise RuntimeError(f"Could not write {n} captions of {min_words}-{max_words} words for {scene}.")
