"""Document schema validation and manifest reading (JSONL and Parquet)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmntp_jax.data.manifest import Manifest
from mmntp_jax.data.schema import ManifestError, validate_document

GOOD = {"segments": [{"type": "text", "text": "Describe:", "loss": False}, {"type": "image", "path": "a.png"},
                     {"type": "text", "text": "a cat"}], "id": "d1", "source": "web"}


def test_valid_document_keeps_order_flags_and_metadata():
    doc = validate_document(GOOD, "m.jsonl", 7)
    assert [s.type for s in doc.segments] == ["text", "image", "text"]
    assert [s.loss for s in doc.segments] == [False, True, True]
    assert doc.meta == {"id": "d1", "source": "web"} and (doc.manifest, doc.line) == ("m.jsonl", 7)
    inline = validate_document({"segments": [{"type": "audio", "array": [[0.1, 0.2], [0.3, 0.4]]}]})
    assert inline.segments[0].array.shape == (2, 2) and inline.segments[0].array.dtype == np.float32


@pytest.mark.parametrize("obj, field, message", [
    ([1, 2], None, "expected a JSON object"),
    ({"text": "x"}, "segments", "expected a list of segments, got nothing"),
    ({"segments": []}, "segments", "at least one segment"),
    ({"segments": ["hi"]}, "segments[0]", "expected an object"),
    ({"segments": [{"type": "imag", "path": "a.png"}]}, "segments[0].type", "unknown segment type 'imag'"),
    ({"segments": [{"type": "text"}]}, "segments[0].text", "needs a string 'text'"),
    ({"segments": [{"type": "text", "text": "a", "path": "b"}]}, "segments[0].path", "takes 'text', not 'path'"),
    ({"segments": [{"type": "text", "text": "a"}, {"type": "image"}]}, "segments[1].path", "exactly one of 'path' or 'array'"),
    ({"segments": [{"type": "image", "path": "a", "array": [1]}]}, "segments[0].path", "exactly one of"),
    ({"segments": [{"type": "image", "array": [[1, 2], [3]]}]}, "segments[0].array", "rectangular"),
    ({"segments": [{"type": "text", "text": "a", "loss": "no"}]}, "segments[0].loss", "expected true or false"),
    ({"segments": [{"type": "text", "text": "a", "lose": False}]}, "segments[0].lose", "unknown key 'lose'"),
])
def test_errors_name_manifest_line_and_field(obj, field, message):
    with pytest.raises(ManifestError) as info:
        validate_document(obj, "data/m.jsonl", 12)
    err = info.value
    assert str(err).startswith("data/m.jsonl:12: ") and message in str(err)
    assert err.field == field and err.line == 12


def test_jsonl_ranges_skip_blank_lines_and_report_physical_lines(tmp_path):
    path = tmp_path / "m.jsonl"
    lines = [json.dumps({"segments": [{"type": "text", "text": f"doc {i}"}]}) for i in range(10)]
    lines.insert(3, "")
    lines.insert(6, "{broken")
    path.write_text("\n".join(lines) + "\n")
    m = Manifest(path, stride=4)
    assert len(m) == 11  # 10 documents + the broken line; the blank line is no document
    everything = list(m.read())
    assert [line for line, _ in everything] == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12]
    assert isinstance(everything[5][1], ManifestError) and str(everything[5][1]).startswith(f"{path}:7: malformed JSON")
    def plain(entries):  # errors compare by message
        return [(line, str(obj) if isinstance(obj, ManifestError) else obj) for line, obj in entries]

    for start, stop in [(0, 11), (3, 9), (4, 5), (8, 20), (11, 12)]:
        assert plain(m.read(start, stop)) == plain(everything[start:stop])

def test_parquet_manifest_with_segments_column(tmp_path):
    rows = [{"segments": [{"type": "text", "text": f"doc {i}", "path": None, "loss": i % 2 == 0}], "id": i} for i in range(7)]
    path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)
    m = Manifest(path)
    assert len(m) == 7
    got = list(m.read(2, 6))
    assert [line for line, _ in got] == [3, 4, 5, 6]
    docs = [validate_document(obj, str(m), line) for line, obj in got]
    assert [d.segments[0].text for d in docs] == ["doc 2", "doc 3", "doc 4", "doc 5"]
    assert [d.segments[0].loss for d in docs] == [True, False, True, False] and docs[0].meta == {"id": 2}


def test_parquet_manifest_with_json_column(tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"json": [json.dumps(GOOD), "{oops"]}), path)
    got = list(Manifest(path).read())
    assert validate_document(got[0][1]).meta["id"] == "d1"
    assert isinstance(got[1][1], ManifestError) and str(got[1][1]).startswith(f"{path}:2: malformed JSON")


def test_unusable_manifests_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl: not found"):
        Manifest(tmp_path / "nope.jsonl")
    (tmp_path / "m.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown format '.csv'"):
        Manifest(tmp_path / "m.csv")
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(ValueError, match="needs a 'segments' or a 'json' column"):
        Manifest(tmp_path / "t.parquet")
