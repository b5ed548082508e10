"""Captions of synthetic scenes: five true, varied descriptions per clip, like Clotho's.

Taught in notebook 00, section 4. A caption names every event of a scene in time order, joined by words that
are true of the timing ("then" for events one after another, "while" for events that overlap), and
mentions a random few of each event's attributes with varied wording, sometimes the background.

A caption is two things drawn one after the other: its content (which attributes of each event it
mentions, whether a position opens it, whether and where it names the background: a ``Content``) and
the words for that content. ``paraphrase`` keeps a caption's content and draws new words (notebook 09's
caption augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from course_lib.synth_scenes import EVENT_TYPES, SEGMENTS, Event, Scene

__all__ = [
    "T", "LOUDNESS_WORDS", "PITCH_WORDS", "RATE_WORDS", "SIREN_RATE_WORDS", "DYNAMICS_WORDS", "POSITION_AFTER",
    "POSITION_BEFORE", "BACKGROUND_BEFORE", "BACKGROUND_AFTER", "JOINS", "Content", "pick", "describe_scene",
    "describe_scene_with_contents", "paraphrase",
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


@dataclass(frozen=True)
class Content:
    """What a caption says, apart from its words."""

    mentions: tuple[frozenset[str], ...]  # per event in time order: the attributes named (loudness, pitch, ...)
    position_first: bool  # the first event's position, when mentioned, opens the caption ("At the start, ...")
    background: str | None  # "before" (opens the caption), "after" (ends it) or None (not mentioned)


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


def _caption(scene: Scene, rng: np.random.Generator, content: Content | None = None) -> tuple[str, Content]:
    """One caption and its content: every event in time order, some of their attributes, sometimes the background.

    Without ``content`` it is drawn from ``rng`` too, interleaved with the words (the dataset's captions come
    from this exact sequence of draws); with one, ``rng`` only chooses the words.
    """
    ordered = sorted(scene.events, key=lambda e: SEGMENTS[e.position][0])
    position_first = rng.random() < 0.3 if content is None else content.position_first
    text, mentions = "", []
    for i, event in enumerate(ordered):
        mention = _draw_mention(event, rng) if content is None else content.mentions[i]
        mentions.append(frozenset(str(m) for m in mention))
        clause = _clause(event, mention, rng, position_first and i == 0)
        if i:
            used = text.replace(",", "").split()  # no second "then" or "while" in one caption
            joins = [j for j in JOINS["overlap" if _overlap(ordered[i - 1], event) else "sequence"] if j.split()[-1] not in used]
            clause = pick(rng, tuple(joins)) + " " + clause
        text += clause
    background = _draw_background(rng, position_first) if content is None else content.background
    if background == "before":
        text = f"{pick(rng, BACKGROUND_BEFORE[scene.background])}, {text}"
    elif background == "after":
        after = [b for b in BACKGROUND_AFTER[scene.background] if not ("while" in b and "while" in text)]  # one "while" only
        text = f"{text} {pick(rng, tuple(after))}"
    caption = text[0].upper() + text[1:] + ("." if rng.random() < 0.5 else "")
    return caption, Content(tuple(mentions), position_first, background)


def describe_scene_with_contents(scene: Scene, rng: np.random.Generator, n: int = 5, min_words: int = 8,
                                 max_words: int = 20) -> list[tuple[str, Content]]:
    """``n`` different true captions of ``min_words``-``max_words`` words, each with the content it says."""
    described: list[tuple[str, Content]] = []
    for _ in range(2000):
        caption, content = _caption(scene, rng)
        if min_words <= len(caption.split()) <= max_words and _key(caption) not in {_key(c) for c, _ in described}:
            described.append((caption, content))
            if len(described) == n:
                return described
    raise RuntimeError(f"Could not write {n} captions of {min_words}-{max_words} words for {scene}.")


def describe_scene(scene: Scene, rng: np.random.Generator, n: int = 5, min_words: int = 8, max_words: int = 20) -> list[str]:
    """``n`` different true captions of ``min_words``-``max_words`` words, like Clotho's five."""
    return [caption for caption, _ in describe_scene_with_contents(scene, rng, n, min_words, max_words)]


def paraphrase(scene: Scene, content: Content, rng: np.random.Generator, avoid: set[str] | frozenset[str] = frozenset(),
               min_words: int = 8, max_words: int = 20) -> str:
    """A caption with the same content in other words: none of ``avoid`` when the grammar allows, in length if it can."""
    _check_content(scene, content)
    avoided, fallback = {_key(text) for text in avoid}, None
    for _ in range(1000):
        caption, _ = _caption(scene, rng, content)
        if _key(caption) in avoided:
            continue
        if min_words <= len(caption.split()) <= max_words:
            return caption
        fallback = min(fallback or caption, caption, key=lambda c: max(min_words - len(c.split()), len(c.split()) - max_words))
    return fallback or caption  # the nearest to the lengths, or (a content with few wordings) one of ``avoid``


# --- drawing a caption's content, checking a given one ---------------------------------------------


def _draw_mention(event: Event, rng: np.random.Generator) -> set[str]:
    """A few of the event's attributes to mention (like people, few details)."""
    available = _attributes(event)
    how_many = int(rng.choice(4, p=[0.3, 0.35, 0.25, 0.1]))
    return set(rng.choice(available, size=min(how_many, len(available)), replace=False))


def _attributes(event: Event) -> list[str]:
    """The attributes a caption may mention of this event, in the order the draw sees them."""
    available = ["loudness", "position"] + ["pitch"] * bool(event.pitch) + ["rate"] * bool(event.rate)
    return available + ["dynamics"] * (event.rate != "once")  # a single hit has no volume course to speak of


def _draw_background(rng: np.random.Generator, position_first: bool) -> str | None:
    """Whether and where the caption names the background (never before an opening position)."""
    where = rng.random()
    if where < 0.2 and not position_first:
        return "before"
    return "after" if where < 0.4 else None


def _key(caption: str) -> str:
    """A caption as compared for sameness: lower case, no final full stop."""
    return caption.rstrip(".").lower()


def _check_content(scene: Scene, content: Content) -> None:
    """Fail, saying why, when ``content`` could not have been drawn for ``scene``."""
    ordered = sorted(scene.events, key=lambda e: SEGMENTS[e.position][0])
    if len(content.mentions) != len(ordered):
        raise ValueError(f"The content mentions {len(content.mentions)} events but the scene has {len(ordered)}: {scene}.")
    for event, mention in zip(ordered, content.mentions, strict=True):
        if not set(mention) <= set(_attributes(event)):
            unknown = sorted(set(mention) - set(_attributes(event)))
            raise ValueError(f"The content mentions {unknown} of {event}, which has no such attribute.")
    if content.background not in (None, "before", "after"):
        raise ValueError(f"Content.background is {content.background!r}; use 'before', 'after' or None.")
