"""Unimodal manifests for mixed-modal scaling: captions alone and images alone.

The mixed-modal law compares models trained on one modality with models trained
on both. From the captioned-shapes manifest (`mmntp data shapes`) this writes,
next to it, `manifest_text.jsonl` (one text document per caption) and
`manifest_image.jsonl` (one image document per image); each is then tokenized
with `mmntp data prepare … --config experiments/shapes_mm.py`, so both share the
vocabulary of the captioned data (bytes + image codes). A "text+image" run
trains on the `mixture` of the two prepared folders.

    python -m mmntp_jax.scaling.modal_data data/shapes/manifest.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def split_modalities(manifest) -> tuple[Path, Path]:
    """Writes manifest_text.jsonl and manifest_image.jsonl beside `manifest`; returns their paths."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest}: not found (write it with `mmntp data shapes --out DIR`)")
    text_path, image_path = manifest.with_name("manifest_text.jsonl"), manifest.with_name("manifest_image.jsonl")
    seen_images = set()
    n_text = n_image = 0
    with manifest.open() as f, text_path.open("w") as out_text, image_path.open("w") as out_image:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            doc = json.loads(line)
            for seg in doc.get("segments", []):
                if seg.get("type") == "text" and doc.get("task") == "caption":
                    out_text.write(json.dumps({"segments": [{"type": "text", "text": seg["text"].strip()}], "item": doc.get("item")}) + "\n")
                    n_text += 1
                elif seg.get("type") == "image" and seg["path"] not in seen_images:
                    seen_images.add(seg["path"])
                    out_image.write(json.dumps({"segments": [{"type": "image", "path": seg["path"]}], "item": doc.get("item")}) + "\n")
                    n_image += 1
    if not n_text or not n_image:
        raise ValueError(f"manifest {manifest}: found {n_text} captions and {n_image} images; expected a captioned-shapes manifest")
    return text_path, image_path


def main(argv=None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m mmntp_jax.scaling.modal_data MANIFEST.jsonl", file=sys.stderr)
        return 2
    for path in split_modalities(args[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
