"""Image–caption pairs read from manifests: the held-out set a job is judged on, and the
training pairs its image classifier learns from.

A pair is a document of exactly one image segment (by `path`) and one text segment,
in either order; loss flags are ignored and the caption is stripped of surrounding
whitespace. `heldout_pairs` requires every line of the held-out manifest to be
one; `training_pairs` takes the pair documents of a training manifest (its
captioning and drawing documents), one per distinct image, and skips the rest.
Paths resolve against the manifest's folder, as `mmntp data prepare` resolves them.
"""

from __future__ import annotations

from pathlib import Path

from mmntp_jax.data.manifest import Manifest
from mmntp_jax.data.schema import ManifestError, validate_document


def _pair(doc):
    images = [s for s in doc.segments if s.type == "image"]
    texts = [s for s in doc.segments if s.type == "text"]
    if len(doc.segments) != 2 or len(images) != 1 or len(texts) != 1:
        return None
    if images[0].path is None:
        raise doc.error("a held-out or training image must be given by 'path'", "segments")
    return images[0].path, texts[0].text.strip()


def _documents(manifest: Manifest):
    for line, obj in manifest.read():
        if isinstance(obj, ManifestError):  # a line that is not JSON
            raise obj
        yield validate_document(obj, str(manifest.path), line)


def heldout_pairs(path) -> tuple[list[Path], list[str]]:
    """(image paths, reference captions) of a held-out manifest; any other line is an error."""
    manifest = Manifest(path)
    images, captions = [], []
    for doc in _documents(manifest):
        pair = _pair(doc)
        if pair is None:
            kinds = ", ".join(s.type for s in doc.segments)
            raise ManifestError(str(manifest.path), doc.line, f"a held-out line holds one image and one text segment, got [{kinds}]", "segments")
        images.append(manifest.resolve(pair[0]))
        captions.append(pair[1])
    if not images:
        raise ValueError(f"held-out manifest {manifest.path}: holds no image/caption pairs; the evaluation needs some")
    return images, captions


def training_pairs(path, limit: int = 0) -> tuple[list[Path], list[str]]:
    """(image paths, captions) of a training manifest's pair documents, one per image
    (the first `limit` images when > 0)."""
    manifest = Manifest(path)
    seen: dict[Path, str] = {}
    for doc in _documents(manifest):
        pair = _pair(doc)
        if pair is not None:
            seen.setdefault(manifest.resolve(pair[0]), pair[1])
            if limit and len(seen) >= limit:
                break
    if not seen:
        raise ValueError(f"training manifest {manifest.path}: holds no image/caption pair documents for the evaluation's classifier")
    return list(seen), list(seen.values())
