"""A ten-class captioned image set: each image shows one shape, and its caption names the class.

    class k   caption            class k   caption
    0         a red circle       5         a magenta circle
    1         a green square     6         an orange square
    2         a blue triangle    7         a purple triangle
    3         a yellow cross     8         a white cross
    4         a cyan ring        9         a black ring

Item `i` of a split is class `i mod 10` (so any 10 consecutive items hold every
class once), drawn from `numpy.random.default_rng([seed, split, i])` like
`synthetic`: a plain grey background (level in [0.35, 0.65]), one anti-aliased
shape of the class's colour, radius `[0.22, 0.34]·size`, centre within the
middle 30 % of each axis, turned at a random angle (circles and rings are not).
Images are float32 `[H, W, 3]` in [0, 1].

`write_class_captioned(folder, items, seed)` writes, under `folder`:

    images/train/NNNNNN.png, images/heldout/NNNNNN.png
    TRAIN.jsonl    two documents per training image, `captioned.captioned_documents`:
                   caption [image (loss false), text " " + caption]
                   draw    [text caption (loss false), image]
    HELDOUT.jsonl  one line per held-out image, `captioned.heldout_pair`:
                   [image, text caption] — the image and its reference caption

Every line also carries `item` and `class` (the class index) as metadata; TRAIN lines `task` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmntp_jax.data import synthetic
from mmntp_jax.data.captioned import captioned_documents, heldout_pair
from mmntp_jax.tokenizers.media import save_image

CLASSES = (
    ("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "cross"), ("cyan", "ring"),
    ("magenta", "circle"), ("orange", "square"), ("purple", "triangle"), ("white", "cross"), ("black", "ring"),
)
ROUND_SHAPES = ("circle", "ring")  # drawn unturned


def class_caption(k: int) -> str:
    colour, shape = CLASSES[k]
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


CAPTIONS = tuple(class_caption(k) for k in range(len(CLASSES)))


def class_image(index: int, *, size: int = 32, seed: int = 0, split: str = "train") -> tuple[np.ndarray, int]:
    """Item `index`: image float32 `[size, size, 3]` and its class."""
    k = index % len(CLASSES)
    colour, shape = CLASSES[k]
    rng = synthetic._rng(seed, split, index)
    grey = rng.uniform(0.35, 0.65)
    radius = rng.uniform(0.22, 0.34) * size
    cx, cy = rng.uniform(0.35, 0.65, 2) * size
    angle = 0.0 if shape in ROUND_SHAPES else rng.uniform(0, 2 * np.pi)
    y_HW, x_HW = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    alpha_HW = np.clip(0.5 - synthetic._sdf(shape, x_HW - cx, y_HW - cy, radius, angle), 0.0, 1.0)[..., None]
    image_HWC = grey * (1 - alpha_HW) + np.asarray(synthetic.COLOURS[colour], np.float32) * alpha_HW
    return np.clip(image_HWC, 0, 1).astype(np.float32), k


def class_images(n: int, *, size: int = 32, seed: int = 0, split: str = "train", start: int = 0):
    """Items start … start+n-1: images float32 `[N, H, W, 3]`, their captions and classes int32 `[N]`."""
    items = [class_image(start + i, size=size, seed=seed, split=split) for i in range(n)]
    images = np.stack([im for im, _ in items]) if items else np.zeros((0, size, size, 3), np.float32)
    classes = np.array([k for _, k in items], np.int32)
    return images, [CAPTIONS[k] for k in classes], classes


def _write_lines(path: Path, entries) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        for entry in entries:
            f.write(json.dumps(entry) + "\n")
    tmp.replace(path)


def write_class_captioned(folder, items: int, seed: int = 0, *, heldout: int = 100, size: int = 32) -> tuple[Path, Path]:
    """Writes `items` training and `heldout` held-out images with TRAIN.jsonl and HELDOUT.jsonl;
    returns the two manifest paths."""
    if items < 1 or heldout < 1:
        raise ValueError(f"items and heldout must be ≥ 1, got {items} and {heldout}")
    folder = Path(folder)
    paths = {}
    for split, name, n in (("train", "TRAIN", items), ("eval", "HELDOUT", heldout)):
        sub = "train" if split == "train" else "heldout"
        images, captions, classes = class_images(n, size=size, seed=seed, split=split)
        entries = []
        for index, (image, caption, k) in enumerate(zip(images, captions, classes)):
            rel = f"images/{sub}/{index:06d}.png"
            save_image(folder / rel, image)
            docs = captioned_documents(index, rel, caption) if split == "train" else [dict(heldout_pair(rel, caption), item=index)]
            entries += [dict(doc, **{"class": int(k)}) for doc in docs]
        paths[name] = folder / f"{name}.jsonl"
        _write_lines(paths[name], entries)
    return paths["TRAIN"], paths["HELDOUT"]
