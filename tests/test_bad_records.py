"""Bad shard records end to end: truncated shards and records, ids outside the vocabulary and a wrong
token_dtype are named by shard, record and manifest line; data.on_error=skip drops them with a count."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import tiny_config

from mmntp_jax.config import ConfigError, load_config
from mmntp_jax.data.pipeline import make_dataset
from mmntp_jax.data.prepare import PrepareOptions, prepare
from mmntp_jax.data.records import REPORT_FILE, DataError, DataErrors, report_path
from mmntp_jax.data.shards import HEADER, ShardSet, write_documents
from mmntp_jax.data.sources import eval_mask
from mmntp_jax.data.vocab import Vocab

DOCS, PER_SHARD = 12, 4
CLI_EXPERIMENT = Path(__file__).with_name("cli_tiny_experiment.py")


def write_text_manifest(path: Path, n: int) -> list[int]:
    """n text documents with a blank line after the first (so line ≠ index + 1); returns each one's line."""
    lines, out = [], []
    for i in range(n):
        out.append(json.dumps({"segments": [{"type": "text", "text": f"document {i}: " + "abcdefgh" * (i % 5 + 1)}], "id": f"d{i}"}))
        lines.append(len(out))
        if i == 0:
            out.append("")
    path.write_text("\n".join(out) + "\n")
    return lines


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A clean prepared set (12 text documents in 3 shards) and the manifest line of each document."""
    root = tmp_path_factory.mktemp("bad_records")
    lines = write_text_manifest(root / "m.jsonl", DOCS)
    prepare(root / "m.jsonl", root / "clean", PrepareOptions(docs_per_shard=PER_SHARD, progress=False))
    return root, lines


@pytest.fixture
def data(prepared, tmp_path):
    """A fresh copy of the clean set to damage."""
    root, lines = prepared
    shutil.copytree(root / "clean", tmp_path / "data")
    return tmp_path / "data", lines, str(root / "m.jsonl")


def shard_file(folder: Path, k: int) -> Path:
    return folder / f"shard-{k:05d}.array_record"


def read_records(path: Path) -> list[bytes]:
    import grain

    source = grain.sources.ArrayRecordDataSource([str(path)])
    return [source[i] for i in range(len(source))]


def rewrite_records(path: Path, records: list[bytes]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), "group_size:1")
    for record in records:
        writer.write(record)
    writer.close()


def damage_record(folder: Path, k: int, r: int, change) -> None:
    records = read_records(shard_file(folder, k))
    records[r] = change(records[r])
    rewrite_records(shard_file(folder, k), records)


def with_token(record: bytes, position: int, value: int) -> bytes:
    data = bytearray(record)
    data[HEADER.size + 2 * position : HEADER.size + 2 * position + 2] = int(value).to_bytes(2, "little")
    return bytes(data)


def all_documents(folder, on_error="stop"):
    docs = ShardSet(folder).documents(on_error=on_error)
    return [docs[i] for i in range(len(docs))]


def shards_config(folder, **data):
    """The tiny config on `folder`; every document is a training one unless `eval_fraction` says otherwise."""
    return tiny_config(data=dict(dict(source="shards", path=str(folder), eval_fraction=0.0, pack_window=4), **data),
                       train=dict(seq_len=32, batch_size=4))


# -- stop: one error naming shard, record and manifest line ------------------------------


def test_truncated_shard_file_is_refused_at_open_naming_shard_and_lines(data):
    folder, lines, manifest = data
    path = shard_file(folder, 1)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(DataError) as err:
        ShardSet(folder).documents()
    message = str(err.value)
    assert str(path) in message and "records 0–3" in message and f"lines {lines[4]}–{lines[7]}" in message and "truncated" in message
    with pytest.raises(DataError, match="data.on_error=skip"):  # the pipeline says how to go on
        make_dataset(shards_config(folder), "train")


def test_out_of_range_id_is_named_by_shard_record_and_manifest_line(data):
    folder, lines, manifest = data
    damage_record(folder, 0, 2, lambda rec: with_token(rec, 3, 9999))
    docs = ShardSet(folder).documents()
    assert docs[1]["tokens"].size > 0  # the others read as before
    with pytest.raises(DataError) as err:
        docs[2]
    assert str(err.value) == (f"{shard_file(folder, 0)} record 2 ({manifest} line {lines[2]}): "
                              "token id 9999 at position 3 is outside the vocabulary [0, 272)")


def test_truncated_record_is_named(data):
    folder, lines, manifest = data
    damage_record(folder, 2, 1, lambda rec: rec[:-7])
    with pytest.raises(DataError, match=rf"shard-00002.array_record record 1 \(.*m.jsonl line {lines[9]}\): record is \d+ bytes but its header .* gives \d+: truncated"):
        all_documents(folder)


def test_the_pipeline_stops_with_the_named_error(data):
    folder, lines, _ = data
    damage_record(folder, 1, 0, lambda rec: with_token(rec, 1, 5000))
    _, batches = make_dataset(shards_config(folder), "train")
    it = iter(batches)
    with pytest.raises(DataError, match=rf"shard-00001.array_record record 0 \(.*line {lines[4]}\): token id 5000 .*data.on_error=skip"):
        for _ in range(20):
            next(it)


# -- skip: dropped, counted, reported -------------------------------------------------------


def test_skip_drops_bad_records_counts_and_reports_them(data, tmp_path):
    folder, lines, manifest = data
    damage_record(folder, 0, 1, lambda rec: with_token(rec, 2, 60000))
    damage_record(folder, 2, 3, lambda rec: rec[: HEADER.size + 3])
    docs = all_documents(folder, on_error="skip")
    dropped = [i for i, d in enumerate(docs) if "error" in d]
    assert dropped == [1, 11] and all(d["tokens"].size == 0 for d in (docs[1], docs[11]))
    _, batches = make_dataset(shards_config(folder, on_error="skip"), "train")
    it = iter(batches)
    rows = [next(it) for _ in range(12)]  # a few epochs of the 10 good documents
    errors = batches.data_errors
    assert errors.count >= 2 and {e["record"] for e in errors.entries.values()} == {1, 3}
    assert all((r["inputs"] < 272).all() and (r["targets"] < 272).all() for r in rows)
    report = report_path(tmp_path)
    assert errors.write_report(report) == 2
    entries = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(Path(e["shard"]).name, e["record"], e["line"], e["manifest"]) for e in entries] == [
        ("shard-00000.array_record", 1, lines[1], manifest), ("shard-00002.array_record", 3, lines[11], manifest)]
    assert "outside the vocabulary" in entries[0]["reason"] and "truncated" in entries[1]["reason"]


def test_skip_of_an_unreadable_shard_counts_each_of_its_records(data):
    folder, lines, _ = data
    shard_file(folder, 1).write_bytes(b"\0" * 1000)
    docs = all_documents(folder, on_error="skip")
    assert [i for i, d in enumerate(docs) if "error" in d] == [4, 5, 6, 7]
    assert [d["error"]["line"] for d in docs[4:8]] == lines[4:8]
    assert "the shard file cannot be read" in docs[4]["error"]["reason"]


def test_resume_with_skipped_records_is_exact(data):
    """Whether a record is dropped depends only on its bytes: a restored iterator gives the same batches and count."""
    folder, _, _ = data
    damage_record(folder, 0, 2, lambda rec: with_token(rec, 1, 9999))
    damage_record(folder, 1, 3, lambda rec: with_token(rec, 1, 9999))
    config = shards_config(folder, on_error="skip")
    _, first = make_dataset(config, "train", prefetch=False)
    it = iter(first)
    for _ in range(7):
        next(it)
    state, count = it.get_state(), first.data_errors.count
    rest = [next(it) for _ in range(15)]
    _, second = make_dataset(config, "train", prefetch=False)
    resumed = iter(second)
    resumed.set_state(state)
    again = [next(resumed) for _ in range(15)]
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(rest, again) for k in a)
    assert first.data_errors.count == second.data_errors.count > count > 0


def test_report_merges_with_an_earlier_one(tmp_path):
    path = tmp_path / REPORT_FILE
    one, two = DataErrors(), DataErrors()
    one.record({"shard": "a", "record": 3, "manifest": None, "line": None, "reason": "x"})
    two.record({"shard": "a", "record": 3, "manifest": None, "line": None, "reason": "x"})
    two.record({"shard": "a", "record": 1, "manifest": None, "line": None, "reason": "y"})
    assert one.write_report(path) == 1 and two.write_report(path) == 2
    assert [json.loads(t)["record"] for t in path.read_text().splitlines()] == [1, 3]
    assert DataErrors(parts=[one, two]).count == 3


# -- the declared token dtype ----------------------------------------------------------------


def edit_index(folder: Path, **changes) -> None:
    index = json.loads((folder / "dataset.json").read_text())
    index.update(changes)
    (folder / "dataset.json").write_text(json.dumps(index))


def test_wrong_token_dtype_is_refused_at_open_naming_the_field(data):
    folder, _, _ = data
    edit_index(folder, token_dtype="int32")
    with pytest.raises(DataError, match=r"dataset.json: token_dtype='int32' does not match the records: .*shard-00000.array_record record 0 is \d+ bytes, which fits token_dtype='uint16'"):
        ShardSet(folder).documents()
    edit_index(folder, token_dtype="float32")
    with pytest.raises(DataError, match=r"token_dtype='float32' is not one of uint16, int32"):
        ShardSet(folder)


def test_uint16_shards_with_a_vocabulary_beyond_65536_ids_are_refused(data):
    folder, _, _ = data
    edit_index(folder, vocab=json.loads(Vocab.build(text=256, image=70000).to_json()))
    with pytest.raises(DataError, match=r"token_dtype='uint16' holds 65536 ids but the vocabulary has 70272"):
        ShardSet(folder)


def test_writing_refuses_ids_that_do_not_fit(tmp_path):
    vocab = Vocab.build(text=256)
    bad = {"tokens": np.array([1, 300, 2]), "modality": np.zeros(3, np.uint8), "loss": np.ones(3, np.uint8)}
    with pytest.raises(ValueError, match=r"document 0 has token ids in \[1, 300\], outside the vocabulary \[0, 272\)"):
        write_documents(tmp_path / "w", [bad], vocab)


# -- older data sets --------------------------------------------------------------------------


def test_shards_without_provenance_still_read(data, tmp_path):
    """Shards prepared before `lines` and `max_len` were recorded: the same documents; a bad record's line
    comes from its own metadata; sets without any provenance say the line is unknown."""
    folder, lines, manifest = data
    before = all_documents(folder)
    for stats in folder.glob("shard-*.json"):
        payload = json.loads(stats.read_text())
        payload.pop("lines")
        stats.write_text(json.dumps(payload))
    index = json.loads((folder / "dataset.json").read_text())
    edit_index(folder, shards=[{k: v for k, v in s.items() if k != "max_len"} for s in index["shards"]])
    after = all_documents(folder)
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(before, after) for k in ("tokens", "modality", "loss"))
    damage_record(folder, 1, 2, lambda rec: with_token(rec, 0, 400))
    with pytest.raises(DataError, match=rf"record 2 \({manifest} line {lines[6]}\): token id 400"):
        all_documents(folder)
    vocab = Vocab.build(text=256)
    plain = [{"tokens": np.array([1, 20, 30, 2]), "modality": np.zeros(4, np.uint8), "loss": np.ones(4, np.uint8)}] * 3
    generated = write_documents(tmp_path / "generated", plain, vocab).folder
    damage_record(generated, 0, 1, lambda rec: with_token(rec, 2, 999))
    with pytest.raises(DataError, match=r"record 1 \(manifest line unknown\): token id 999"):
        all_documents(generated)


# -- configuration and the CLI ----------------------------------------------------------------


def test_on_error_is_validated_with_its_choices():
    with pytest.raises(ConfigError, match=r"'data.on_error': 'ignore' is not one of stop, skip"):
        load_config(CLI_EXPERIMENT, ["data.on_error=ignore"])
    assert load_config(CLI_EXPERIMENT, ["data.on_error=skip"]).data.on_error == "skip"


def mmntp(*args):
    return subprocess.run([sys.executable, "-m", "mmntp_jax.cli", *map(str, args)], capture_output=True, text=True)


def test_cli_train_on_a_truncated_shard_prints_one_line_and_exits_2(data, tmp_path):
    folder, _, _ = data
    path = shard_file(folder, 0)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    out = mmntp("train", "--config", CLI_EXPERIMENT, "--workdir", tmp_path / "run", "--set", "data.source=shards", "--set", f"data.path={folder}")
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith(f"mmntp train: error: {path} (records 0–3, ") and "data.on_error=skip" in lines[0]


@pytest.mark.slow
def test_cli_training_with_skip_logs_the_count_and_writes_the_report(data, tmp_path):
    """Stop names the record in one line; the same command with data.on_error=skip trains, logs
    data/skipped_records and lists the record in WORKDIR/data_errors.jsonl."""
    from mmntp_jax.train.metrics import read_metrics

    folder, lines, manifest = data
    bad = int(np.flatnonzero(~eval_mask(DOCS, 0.2))[1])  # a training document
    damage_record(folder, bad // PER_SHARD, bad % PER_SHARD, lambda rec: with_token(rec, 2, 7000))
    base = ["train", "--config", CLI_EXPERIMENT, "--workdir", tmp_path / "run", "--set", "data.source=shards", "--set", f"data.path={folder}",
            "--set", "data.eval_fraction=0.2", "--set", "data.pack_window=4", "--set", "train.progress=false"]
    stopped = mmntp(*base)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr, stopped.stderr
    error = [t for t in stopped.stderr.splitlines() if t.startswith("mmntp train: error:")]
    assert len(error) == 1 and f"record {bad % PER_SHARD} ({manifest} line {lines[bad]}): token id 7000" in error[0]
    skipped = mmntp(*base, "--set", "data.on_error=skip")
    assert skipped.returncode == 0, skipped.stderr
    counts = [r["data/skipped_records"] for r in read_metrics(tmp_path / "run") if "data/skipped_records" in r]
    assert counts and counts[-1] >= 1
    report = [json.loads(t) for t in (tmp_path / "run" / REPORT_FILE).read_text().splitlines()]
    assert [(e["record"], e["line"]) for e in report] == [(bad % PER_SHARD, lines[bad])]
