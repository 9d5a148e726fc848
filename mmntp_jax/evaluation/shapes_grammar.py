"""The grammar of captioned-shapes captions: parse a caption into its attributes, and compose one back.

A caption of `synthetic.shape_image` is, exactly:

    caption    := object (" and " object)* " on " article " " background " background"
    object     := "a " size " " colour " " shape " at " place
    place      := "the centre" | "the " row " " column          (never "the middle centre")
    background := "plain " colour | colour " and " shade " " colour " " pattern   (the same colour twice)
    article    := "an" before a vowel, else "a"                   (of the background's first word)

    size ∈ small medium large          row ∈ top middle bottom       column ∈ left centre right
    shade ∈ light dark                 pattern ∈ gradient striped checkered mottled
    colour, shape: the names in `synthetic.COLOURS`, `synthetic.SHAPES`

Objects are listed in the order they were painted, so the first one may be
partly covered by the later ones. The parser is written from this grammar
alone (it does not call the generator) and is strict: any text outside it —
a wrong article, two different background colours, a trailing full stop — is
unparseable and `parse_shapes_caption` returns None. Surrounding whitespace
is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmntp_jax.data import synthetic

COLOUR_NAMES = tuple(synthetic.COLOURS)
SHAPE_NAMES = tuple(synthetic.SHAPES)
SIZE_NAMES = tuple(word for _, word in synthetic.SIZE_WORDS)
PATTERNS = tuple(kind for kind in synthetic.BACKGROUNDS if kind != "plain")
SHADES = ("light", "dark")
ROWS = ("top", "middle", "bottom")
COLUMNS = ("left", "centre", "right")
CENTRE = "centre"  # the place word of the middle cell


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_COLOUR, _SHAPE, _SIZE = _alternatives(COLOUR_NAMES), _alternatives(SHAPE_NAMES), _alternatives(SIZE_NAMES)
_PLACE = rf"centre|(?:{_alternatives(ROWS)}) (?:{_alternatives(COLUMNS)})"
_OBJECT = rf"a (?P<size>{_SIZE}) (?P<colour>{_COLOUR}) (?P<shape>{_SHAPE}) at the (?P<place>{_PLACE})"
_OBJECT_RE = re.compile(_OBJECT)
_UNNAMED_OBJECT = re.sub(r"\(\?P<\w+>", "(?:", _OBJECT)
_CAPTION_RE = re.compile(
    rf"(?P<objects>{_UNNAMED_OBJECT}(?: and {_UNNAMED_OBJECT})*)"
    rf" on (?P<article>an|a) "
    rf"(?:plain (?P<plain>{_COLOUR})"
    rf"|(?P<base>{_COLOUR}) and (?P<shade>{_alternatives(SHADES)}) (?P<again>{_COLOUR}) (?P<pattern>{_alternatives(PATTERNS)}))"
    r" background"
)


@dataclass(frozen=True)
class ShapeObject:
    """One painted shape: size word, colour, shape and place ("centre" or "<row> <column>")."""

    size: str
    colour: str
    shape: str
    place: str


@dataclass(frozen=True)
class Background:
    """The background: its colour, the shade it is mixed with (None when plain) and its pattern."""

    colour: str
    shade: str | None
    pattern: str  # "plain" or one of PATTERNS


@dataclass(frozen=True)
class ShapesCaption:
    objects: tuple[ShapeObject, ...]
    background: Background

    def attributes(self) -> dict[str, str]:
        """The scored attributes: the first object's colour and shape, and the background colour."""
        first = self.objects[0]
        return {"colour": first.colour, "shape": first.shape, "background": self.background.colour}


VISUAL_SHAPES = {"diamond": "square/diamond", "square": "square/diamond"}  # one figure at random angles: no image tells them apart


def visual_shape(shape: str) -> str:
    """The shape as an image can show it: a square and a diamond are one figure."""
    return VISUAL_SHAPES.get(shape, shape)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _place_ok(place: str) -> bool:
    return place == CENTRE or place != f"middle {CENTRE}"


def parse_shapes_caption(text: str) -> ShapesCaption | None:
    """The caption's objects and background, or None if `text` is not in the grammar."""
    if not isinstance(text, str):
        return None
    match = _CAPTION_RE.fullmatch(text.strip())
    if match is None:
        return None
    objects = tuple(
        ShapeObject(m["size"], m["colour"], m["shape"], m["place"]) for m in _OBJECT_RE.finditer(match["objects"])
    )
    if not all(_place_ok(o.place) for o in objects):
        return None
    if match["plain"] is not None:
        background, first_word = Background(match["plain"], None, "plain"), "plain"
    else:
        if match["base"] != match["again"]:
            return None
        background, first_word = Background(match["base"], match["shade"], match["pattern"]), match["base"]
    if match["article"] != _article(first_word):
        return None
    return ShapesCaption(objects, background)


def compose_shapes_caption(caption: ShapesCaption) -> str:
    """The text of a parsed caption (the inverse of `parse_shapes_caption`)."""
    phrases = [f"a {o.size} {o.colour} {o.shape} at the {o.place}" for o in caption.objects]
    bg = caption.background
    words = f"plain {bg.colour}" if bg.pattern == "plain" else f"{bg.colour} and {bg.shade} {bg.colour} {bg.pattern}"
    return " and ".join(phrases) + f" on {_article(words)} {words} background"


def shapes_attributes(text: str) -> dict[str, str] | None:
    """`parse_shapes_caption(text).attributes()`, or None when unparseable."""
    parsed = parse_shapes_caption(text)
    return None if parsed is None else parsed.attributes()


def is_shapes_caption(text: str) -> bool:
    return parse_shapes_caption(text) is not None


def all_shapes_captions(texts) -> bool:
    """True when there is at least one text and every one is in the grammar."""
    texts = list(texts)
    return bool(texts) and all(is_shapes_caption(t) for t in texts)
