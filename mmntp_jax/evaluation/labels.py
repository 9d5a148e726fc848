"""What a caption says an image shows, as classifier labels: shapes attributes or the caption as a class.

Two label schemes (`image_scheme`, from the captions alone):

    shapes  every caption is a captioned-shapes caption. Three heads:
              colour      the objects' colours         (10 names)
              shape       the objects' visual shapes   (5: square and diamond are one)
              background  the background colour        (10 names)
            A square and a diamond are the same figure turned by 45°; both are
            drawn at uniformly random angles and overlapping sizes, so no image
            can tell them apart and the judge counts them as one shape,
            "square/diamond". The prompted value of colour and shape is the first
            object's; an image shows it when it is among the `named` values the
            classifier ranks highest, `named` being how many distinct values of
            that head the caption names (painting order is not visible in an
            image, so "first" cannot be). For the background `named` is 1.
    class   at most `MAX_CLASSES` distinct captions: one head, `class`, whose
            classes are the distinct stripped training captions; a caption is
            its own class (named = 1). A caption that is no training class has
            prompted value -1 and is never recognised.
    None    free text: no labels, no judge.

Dimension legend: N items, K classes of a head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmntp_jax.evaluation.captions import MAX_CLASSES, distinct_captions
from mmntp_jax.evaluation.shapes_grammar import COLOUR_NAMES, SHAPE_NAMES, VISUAL_SHAPES, all_shapes_captions, parse_shapes_caption
SHAPE_CLASSES = tuple(dict.fromkeys(VISUAL_SHAPES.get(s, s) for s in SHAPE_NAMES))
SHAPES_HEADS = {"colour": COLOUR_NAMES, "shape": SHAPE_CLASSES, "background": COLOUR_NAMES}


@dataclass(frozen=True)
class ImageLabels:
    """Per head: training targets `[N, K]` (rows sum to 1), the prompted class `[N]` (-1: none)
    and how many top-ranked classes may hold it `[N]`."""

    scheme: str
    classes: dict[str, tuple[str, ...]]
    targets: dict[str, np.ndarray]
    prompted: dict[str, np.ndarray]
    named: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.prompted.values())))


def image_scheme(captions) -> str | None:
    """"shapes", "class" or None (free text) for a set of captions."""
    captions = list(captions)
    if not captions:
        raise ValueError("image labels: no captions")
    if all_shapes_captions(captions):
        return "shapes"
    return "class" if len(distinct_captions(captions)) <= MAX_CLASSES else None


def label_classes(train_captions, scheme: str) -> dict[str, tuple[str, ...]]:
    """The heads and their class names for captions of `scheme`."""
    if scheme == "shapes":
        return dict(SHAPES_HEADS)
    if scheme == "class":
        return {"class": tuple(distinct_captions(train_captions))}
    raise ValueError(f"image labels: scheme {scheme!r} is not one of shapes, class")


def _shapes_values(caption: str) -> dict[str, list[str]]:
    parsed = parse_shapes_caption(caption)
    if parsed is None:
        raise ValueError(f"not a captioned-shapes caption: {caption!r}")
    return {
        "colour": [o.colour for o in parsed.objects],
        "shape": [VISUAL_SHAPES.get(o.shape, o.shape) for o in parsed.objects],
        "background": [parsed.background.colour],
    }


def _class_values(caption: str) -> dict[str, list[str]]:
    return {"class": [caption.strip()]}


def caption_labels(captions, classes: dict[str, tuple[str, ...]], scheme: str) -> ImageLabels:
    """Labels of `captions` over the heads `classes` (from `label_classes`)."""
    captions = list(captions)
    values_of = _shapes_values if scheme == "shapes" else _class_values
    N = len(captions)
    targets = {h: np.zeros((N, len(c)), np.float32) for h, c in classes.items()}
    prompted = {h: np.full(N, -1, np.int32) for h in classes}
    named = {h: np.ones(N, np.int32) for h in classes}
    index = {h: {name: k for k, name in enumerate(c)} for h, c in classes.items()}
    for i, caption in enumerate(captions):
        for head, values in values_of(caption).items():
            known = sorted({index[head][v] for v in values if v in index[head]})
            if values[0] in index[head]:
                prompted[head][i] = index[head][values[0]]
            named[head][i] = max(len(set(values)), 1)
            if known:
                targets[head][i, known] = 1.0 / len(known)
    return ImageLabels(scheme, dict(classes), targets, prompted, named)


def recognised(probs: dict[str, np.ndarray], labels: ImageLabels) -> dict[str, np.ndarray]:
    """Per head, bool `[N]`: is the prompted class among the `named` highest-ranked classes?
    Ties rank by class index, so the answer is deterministic."""
    out = {}
    for head, probs_NK in probs.items():
        probs_NK = np.asarray(probs_NK)
        order_NK = np.argsort(-probs_NK, axis=-1, kind="stable")
        rank_NK = np.empty_like(order_NK)
        np.put_along_axis(rank_NK, order_NK, np.arange(probs_NK.shape[1])[None, :].repeat(len(probs_NK), 0), axis=-1)
        prompted, named = labels.prompted[head], labels.named[head]
        rank_N = np.take_along_axis(rank_NK, np.maximum(prompted, 0)[:, None], axis=-1)[:, 0]
        out[head] = (prompted >= 0) & (rank_N < named)
    return out


def ignoring_chance(labels: ImageLabels) -> dict[str, float]:
    """Per head, the expected fraction recognised when the classifier's ranking has nothing to
    do with the prompt (a uniformly random ranking): the mean over items of named / K."""
    return {h: float(np.mean(np.where(labels.prompted[h] >= 0, labels.named[h] / len(c), 0.0))) for h, c in labels.classes.items()}
