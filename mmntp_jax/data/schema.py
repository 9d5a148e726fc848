"""The example schema: a document is an ordered list of typed segments.

One manifest entry (a JSONL line, or a Parquet row) is a JSON object:

    {"segments": [
        {"type": "text",  "text": "Describe the picture.", "loss": false},
        {"type": "image", "path": "images/cat.png"},
        {"type": "text",  "text": "A cat on a mat."}
     ],
     "id": "doc-17", "source": "web"}           # any other keys: document metadata

Segment fields:
    type   "text" | "image" | "audio" | "video"                       (required)
    text   the text of a text segment                                 (text only)
    path   a media file, relative to the manifest's folder            (media)
    array  the media inline, as a nested list of numbers              (media)
    loss   false: the segment's tokens are context, not targets       (default true)

A media segment has exactly one of `path` / `array`. Validation errors are
`ManifestError`s naming the manifest, the line and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmntp_jax.data.vocab import MODALITIES

MEDIA_TYPES = tuple(m for m in MODALITIES if m != "text")
SEGMENT_KEYS = ("type", "text", "path", "array", "loss")


class ManifestError(ValueError):
    """A bad manifest entry; the message starts with `manifest:line:`."""

    def __init__(self, manifest: str, line: int, message: str, field: str | None = None):
        self.manifest, self.line, self.field = str(manifest), int(line), field
        self.reason = message
        where = f"{manifest}:{line}"
        super().__init__(f"{where}: field {field!r}: {message}" if field else f"{where}: {message}")

    def __reduce__(self):  # keeps the fields when sent between processes
        return (ManifestError, (self.manifest, self.line, self.reason, self.field))


@dataclass(frozen=True)
class Segment:
    type: str
    text: str | None = None
    path: str | None = None
    array: Any = None
    loss: bool = True

    @property
    def is_media(self) -> bool:
        return self.type in MEDIA_TYPES


@dataclass(frozen=True)
class Document:
    segments: tuple[Segment, ...]
    meta: dict = field(default_factory=dict)
    manifest: str = "<memory>"
    line: int = 0

    def error(self, message: str, field: str | None = None) -> ManifestError:
        return ManifestError(self.manifest, self.line, message, field)


def _present(entry: dict, key: str) -> bool:
    return key in entry and entry[key] is not None


def _parse_segment(entry: Any, k: int, manifest: str, line: int) -> Segment:
    where = f"segments[{k}]"

    def fail(message: str, key: str | None = None) -> ManifestError:
        return ManifestError(manifest, line, message, f"{where}.{key}" if key else where)

    if not isinstance(entry, dict):
        raise fail(f"expected an object, got {type(entry).__name__}")
    unknown = sorted(k for k in entry if k not in SEGMENT_KEYS and entry[k] is not None)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; a segment has {', '.join(SEGMENT_KEYS)}", unknown[0])
    kind = entry.get("type")
    if kind not in MODALITIES:
        raise fail(f"unknown segment type {kind!r}; expected one of {', '.join(MODALITIES)}", "type")
    loss = entry.get("loss", True)
    if loss is None:
        loss = True
    if not isinstance(loss, bool):
        raise fail(f"expected true or false, got {loss!r}", "loss")
    if kind == "text":
        for key in ("path", "array"):
            if _present(entry, key):
                raise fail(f"a text segment takes 'text', not {key!r}", key)
        text = entry.get("text")
        if not isinstance(text, str):
            raise fail(f"a text segment needs a string 'text', got {type(text).__name__}", "text")
        return Segment("text", text=text, loss=loss)
    if _present(entry, "text"):
        raise fail(f"an {kind} segment takes 'path' or 'array', not 'text'", "text")
    has_path, has_array = _present(entry, "path"), _present(entry, "array")
    if has_path == has_array:
        raise fail(f"an {kind} segment needs exactly one of 'path' or 'array'", "path")
    if has_path:
        if not isinstance(entry["path"], str) or not entry["path"]:
            raise fail(f"expected a file path string, got {entry['path']!r}", "path")
        return Segment(kind, path=entry["path"], loss=loss)
    try:
        array = np.asarray(entry["array"], dtype=np.float32)
    except (TypeError, ValueError):
        raise fail("expected a nested list of numbers of rectangular shape", "array") from None
    if array.size == 0:
        raise fail("the inline array is empty", "array")
    return Segment(kind, array=array, loss=loss)


def validate_document(obj: Any, manifest: str = "<memory>", line: int = 0) -> Document:
    """Checks one manifest entry and returns it as a `Document`."""
    if not isinstance(obj, dict):
        raise ManifestError(manifest, line, f"expected a JSON object, got {type(obj).__name__}")
    segments = obj.get("segments")
    if not isinstance(segments, (list, tuple)):
        got = "nothing" if segments is None else type(segments).__name__
        raise ManifestError(manifest, line, f"expected a list of segments, got {got}", "segments")
    if not segments:
        raise ManifestError(manifest, line, "a document needs at least one segment", "segments")
    parsed = tuple(_parse_segment(s, k, manifest, line) for k, s in enumerate(segments))
    meta = {k: v for k, v in obj.items() if k != "segments" and v is not None}
    return Document(parsed, meta, str(manifest), int(line))
