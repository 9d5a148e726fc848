"""The captioned-shapes data set as a manifest of image→caption and caption→image documents.

`write_captioned_shapes(folder, items)` draws `items` images with their captions
from `synthetic.shapes_images` (deterministic for a seed), saves each image once
as PNG under `folder/images/`, and writes `folder/manifest.jsonl` with two
documents per image:

    caption  [image (context, "loss": false), text " " + caption]
    draw     [text caption (context, "loss": false), image]

so a model trained on it learns p(caption | image) and p(image | caption): the
prompt `<bos> <boi> codes <eoi>` asks for a caption (it comes with a leading
space), the prompt `<bos> caption <boi>` for the image's codes.
`mmntp data shapes --out DIR` runs it; `mmntp data prepare` then tokenizes the
manifest (see experiments/shapes_mm.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from mmntp_jax.data import synthetic
from mmntp_jax.tokenizers.media import save_image

CHUNK = 256  # images generated at a time


def captioned_documents(index: int, image_path: str, caption: str) -> list[dict]:
    """The two manifest entries of one captioned image."""
    return [
        {"segments": [{"type": "image", "path": image_path, "loss": False}, {"type": "text", "text": " " + caption}],
         "item": index, "task": "caption"},
        {"segments": [{"type": "text", "text": caption, "loss": False}, {"type": "image", "path": image_path}],
         "item": index, "task": "draw"},
    ]


def heldout_pair(image_path: str, caption: str) -> dict:
    """A held-out line: one image and its reference caption (evaluation ignores loss flags)."""
    return {"segments": [{"type": "image", "path": image_path}, {"type": "text", "text": caption}]}


def write_captioned_shapes(folder, items: int, *, size: int = 32, seed: int = 0, split: str = "train", pairs: bool = False, progress: bool = False) -> Path:
    """Writes images and manifest.jsonl under `folder` (with `pairs`: heldout.jsonl of
    image/caption pairs instead of documents); returns the manifest path."""
    from tqdm import tqdm

    if items < 1:
        raise ValueError(f"items must be ≥ 1, got {items}")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    manifest = folder / ("heldout.jsonl" if pairs else "manifest.jsonl")
    tmp = manifest.with_name(manifest.name + ".tmp")
    with open(tmp, "w") as f, tqdm(total=items, unit="image", desc="shapes", disable=not progress) as bar:
        for start in range(0, items, CHUNK):
            images, captions = synthetic.shapes_images(min(CHUNK, items - start), size=size, seed=seed, split=split, start=start)
            for k, (image, caption) in enumerate(zip(images, captions)):
                index = start + k
                rel = f"images/{index:06d}.png"
                save_image(folder / rel, image)
                for entry in [heldout_pair(rel, caption)] if pairs else captioned_documents(index, rel, caption):
                    f.write(json.dumps(entry) + "\n")
            bar.update(len(captions))
    tmp.replace(manifest)
    return manifest
