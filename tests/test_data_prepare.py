"""`mmntp data prepare` / `inspect`: content, determinism, resume, multi-host, workers, bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_standins import PARAMS, InlineScale, PatchMeanTokenizer, TwoLevelTokenizer, patch_codes, random_image, save_png, write_manifest
from flax import nnx

from mmntp_jax.cli import main
from mmntp_jax.data.prepare import PrepareOptions, Preparer, prepare
from mmntp_jax.data.schema import ManifestError
from mmntp_jax.data.shards import ShardSet
from mmntp_jax.data.tokenize import ModalityEncoder


def encoders(tok=None):
    return {"image": ModalityEncoder(tok or PatchMeanTokenizer(), PARAMS, preprocess=InlineScale(), batch_size=4)}


def opts(**kw):
    base = dict(docs_per_shard=7, group_size=5, seq_len=64, progress=False)
    return PrepareOptions(**{**base, **kw})


def read_all(folder):
    shards = ShardSet(folder)
    docs = shards.documents(with_meta=True)
    return shards, [docs[i] for i in range(len(docs))]


def reference_tokens(entry, vocab):
    """Independent layout: <bos> bytes… <boi> codes… <eoi> … <eos>, with loss and modality per token."""
    tokens, loss, modality = [1], [0], [0]
    for k, seg in enumerate(entry["segments"]):
        trained = int(seg.get("loss", True))
        if seg["type"] == "text":
            ids = [16 + b for b in seg["text"].encode()]
            tokens += ids
            loss += [trained] * len(ids)
            modality += [0] * len(ids)
        else:
            image = np.asarray(seg["array"], np.float32) / 255.0 if "array" in seg else random_image(entry["seed"])
            ids = [3, *(vocab.offset("image") + patch_codes(image)).tolist(), 4]
            tokens += ids
            loss += [trained] * len(ids)
            modality += [1] * len(ids)
    return tokens + [2], loss + [1], modality + [0]


def test_prepared_documents_match_an_independent_reference(tmp_path):
    entries = write_manifest(tmp_path, n_docs=20)
    summary = prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(), encoders())
    assert summary["complete"] and summary["docs"] == 20 and summary["shards"] == 3 and summary["skipped"] == 0
    shards, docs = read_all(tmp_path / "out")
    assert shards.vocab.range_size("image") == 16 and shards.vocab.size == 16 + 256 + 16
    assert shards.token_dtype == "uint16" and len(shards.paths) == 3
    for i, (entry, doc) in enumerate(zip(entries, docs)):
        entry = {**entry, "seed": i}
        tokens, loss, modality = reference_tokens(entry, shards.vocab)
        assert doc["tokens"].tolist() == tokens, f"document {i}"
        assert doc["loss"].tolist() == loss and doc["modality"].tolist() == modality
        assert doc["meta"] == {"id": f"doc{i}", "line": i + 1}
    assert shards.max_block == 6  # 8×8 image → 4 codes + 2 markers


def test_output_is_deterministic_and_independent_of_workers(tmp_path):
    write_manifest(tmp_path, n_docs=30)
    prepare(tmp_path / "m.jsonl", tmp_path / "a", opts(), encoders())
    prepare(tmp_path / "m.jsonl", tmp_path / "b", opts(workers=2), encoders())
    for shard in sorted(p.name for p in (tmp_path / "a").glob("shard-*")):
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes(), shard
    assert json.loads((tmp_path / "a/dataset.json").read_text())["shards"] == json.loads((tmp_path / "b/dataset.json").read_text())["shards"]


class FlakyTokenizer(PatchMeanTokenizer):
    """Fails after `budget` encode calls, like a worker that crashes half-way."""

    def __init__(self, budget):
        self.budget, self.calls = budget, 0

    def encode(self, params, x):
        self.calls += 1
        if self.calls > self.budget:
            raise RuntimeError("simulated crash")
        return super().encode(params, x)


def test_resume_skips_finished_shards_and_matches_a_clean_run(tmp_path):
    write_manifest(tmp_path, n_docs=30)
    flaky = FlakyTokenizer(budget=4)
    with pytest.raises(ManifestError, match="simulated crash"):
        prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(), {"image": ModalityEncoder(flaky, PARAMS, InlineScale(), 4, jit=False)})
    done = sorted(p.name for p in (tmp_path / "out").glob("shard-*.json"))
    assert 0 < len(done) < 5 and not (tmp_path / "out/dataset.json").exists()
    assert not list((tmp_path / "out").glob("*.array_record.tmp")), "a failed shard leaves no partial file"
    mtimes = {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in done}
    counting = FlakyTokenizer(budget=10**6)
    summary = prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(), {"image": ModalityEncoder(counting, PARAMS, InlineScale(), 4, jit=False)})
    assert summary["prepared_now"] == 5 - len(done) and summary["complete"]
    assert all((tmp_path / "out" / name).stat().st_mtime_ns == mtimes[name] for name in done), "finished shards were redone"
    prepare(tmp_path / "m.jsonl", tmp_path / "clean", opts(), encoders())
    for p in (tmp_path / "clean").glob("shard-*.array_record"):
        assert p.read_bytes() == (tmp_path / "out" / p.name).read_bytes()
    with pytest.raises(ValueError, match="prepared with other settings .*docs_per_shard"):
        prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(docs_per_shard=8), encoders())


def test_two_hosts_split_one_manifest(tmp_path):
    write_manifest(tmp_path, n_docs=30)
    first = prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(process_index=1, process_count=2), encoders())
    assert not first["complete"] and first["prepared_now"] == 2 and first["missing"] == 3
    assert sorted(p.name for p in (tmp_path / "out").glob("shard-*.json")) == ["shard-00001.json", "shard-00003.json"]
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ShardSet(tmp_path / "out")
    second = prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(process_index=0, process_count=2), encoders())
    assert second["complete"] and second["prepared_now"] == 3 and second["docs"] == 30
    prepare(tmp_path / "m.jsonl", tmp_path / "single", opts(), encoders())
    assert [d["tokens"].tolist() for d in read_all(tmp_path / "out")[1]] == [d["tokens"].tolist() for d in read_all(tmp_path / "single")[1]]


def bad_manifest(tmp_path):
    save_png(tmp_path / "ok.png", random_image(0))
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = [
        {"segments": [{"type": "text", "text": "fine"}]},
        "{this is not json",
        {"segments": [{"type": "image", "path": "missing.png"}]},
        {"segments": [{"type": "picture", "path": "ok.png"}]},
        {"segments": [{"type": "image", "path": "corrupt.png"}]},
        {"segments": [{"type": "text", "text": "also fine"}, {"type": "image", "path": "ok.png"}]},
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    (tmp_path / "bad.jsonl").write_text(text)
    return tmp_path / "bad.jsonl"


@pytest.mark.parametrize("line, message", [
    (2, "malformed JSON"), (3, "missing.png: not found"), (4, "unknown segment type 'picture'"), (5, "corrupt.png: cannot be decoded"),
])
def test_bad_input_names_manifest_and_line(tmp_path, line, message):
    path = bad_manifest(tmp_path)
    lines = path.read_text().splitlines()
    keep = [lines[0], lines[line - 1]]  # the bad line becomes line 2
    (tmp_path / "one.jsonl").write_text("\n".join(keep) + "\n")
    with pytest.raises(ManifestError) as info:
        prepare(tmp_path / "one.jsonl", tmp_path / "out", opts(), encoders())
    assert str(info.value).startswith(f"{tmp_path / 'one.jsonl'}:2: ") and message in str(info.value)


def test_on_error_skip_reports_every_skipped_document(tmp_path, capsys):
    path = bad_manifest(tmp_path)
    code = main(["data", "prepare", "--manifest", str(path), "--out", str(tmp_path / "cli"), "--no-progress", "--seq-len", "64"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"mmntp data: error: {path}:2: malformed JSON")
    code = main(["data", "prepare", "--manifest", str(path), "--out", str(tmp_path / "cli"), "--on-error", "skip", "--no-progress", "--seq-len", "64"])
    assert code == 0 and "skipped 5 bad documents" in capsys.readouterr().out  # no image tokenizer on the command line
    summary = prepare(path, tmp_path / "out2", opts(on_error="skip", docs_per_shard=4), encoders())
    assert summary["docs"] == 2 and summary["skipped"] == 4
    report = json.loads((tmp_path / "out2/report.json").read_text())["skipped"]
    assert [r["line"] for r in report] == [2, 3, 4, 5]
    assert all(r["error"].startswith(f"{path}:{r['line']}: ") for r in report)
    assert json.loads((tmp_path / "out2/dataset.json").read_text())["skipped"] == 4
    assert [d["meta"]["line"] for d in read_all(tmp_path / "out2")[1]] == [1, 6]


def test_block_longer_than_seq_len_is_an_error_at_prepare_time(tmp_path):
    write_manifest(tmp_path, n_docs=3)
    with pytest.raises(ManifestError, match=r"m.jsonl:1: field 'segments\[1\]': image block of 6 tokens .* longer than seq_len=5"):
        prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(seq_len=5), encoders())


def test_parquet_manifest_prepares_like_jsonl(tmp_path):
    entries = write_manifest(tmp_path, n_docs=9)
    pq.write_table(pa.table({"json": [json.dumps(e) for e in entries]}), tmp_path / "m.parquet", row_group_size=4)
    prepare(tmp_path / "m.jsonl", tmp_path / "a", opts(), encoders())
    prepare(tmp_path / "m.parquet", tmp_path / "b", opts(), encoders())
    assert [d["tokens"].tolist() for d in read_all(tmp_path / "a")[1]] == [d["tokens"].tolist() for d in read_all(tmp_path / "b")[1]]


def test_multi_level_codes_use_the_per_level_layout(tmp_path):
    write_manifest(tmp_path, n_docs=3)
    prepare(tmp_path / "m.jsonl", tmp_path / "out", opts(), encoders(TwoLevelTokenizer()))
    shards, docs = read_all(tmp_path / "out")
    vocab = shards.vocab
    assert vocab.num_levels("image") == 2 and vocab.range_size("image") == 8
    ids = docs[0]["tokens"][np.flatnonzero(docs[0]["tokens"] == 3)[0] + 1 : np.flatnonzero(docs[0]["tokens"] == 4)[0]]
    fine = patch_codes(random_image(0))
    expect = np.stack([fine // 4, fine % 4 + 4], axis=-1).reshape(-1) + vocab.offset("image")  # level 1 in sub-range 1
    assert ids.tolist() == expect.tolist()
    assert (vocab.to_codes("image", ids) == np.stack([fine // 4, fine % 4], -1)).all()


def test_inspect_prints_counts_histogram_and_a_decoded_sample(tmp_path, capsys):
    write_manifest(tmp_path, n_docs=12)
    Preparer(tmp_path / "m.jsonl", tmp_path / "out", opts(), encoders()).run()
    assert main(["data", "inspect", str(tmp_path / "out"), "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "12 documents in 2 shards" in out and "tokens by modality: text" in out and "image 48" in out
    assert "document length (tokens):" in out and "#" in out
    assert "<bos>[ctx: Question 0: what is shown?]<image: 4 codes> answer" in out
    assert main(["data", "inspect", str(tmp_path / "out"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["docs"] == 12 and info["tokens_by_modality"]["image"] == 8 * 6


def test_media_files_of_every_modality_load(tmp_path):
    from PIL import Image

    from mmntp_jax.data.tokenize import MediaError, load_media
    from mmntp_jax.tokenizers.media import save_wav

    clip = np.sin(np.linspace(0, 40, 800)).astype(np.float32) * 0.5
    save_wav(tmp_path / "a.wav", clip, 8000)
    audio = load_media("audio", tmp_path / "a.wav")
    assert audio.shape == (800,) and np.abs(audio - clip).max() < 1e-4
    frames = [np.full((4, 6, 3), k * 60, np.uint8) for k in range(3)]
    Image.fromarray(frames[0]).save(tmp_path / "v.gif", save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]])
    video = load_media("video", tmp_path / "v.gif")
    assert video.shape == (3, 4, 6, 3) and np.allclose(video[:, 0, 0, 0], [0, 60 / 255, 120 / 255], atol=0.02)
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(2, 3))
    assert load_media("image", tmp_path / "x.npy").tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(MediaError, match="sample rate 8000 Hz, expected 16000"):
        load_media("audio", tmp_path / "a.wav", sample_rate=16000)
    with pytest.raises(FileNotFoundError, match="nothing.gif: not found"):
        load_media("video", tmp_path / "nothing.gif")


class TinyModuleTokenizer(nnx.Module):
    """An NNX tokenizer in the image tokenizer's form: `encode(x)` with its own parameters."""

    vocab_size = 16

    def __init__(self, rngs):
        self.proj = nnx.Linear(3, 1, rngs=rngs)

    def encode(self, x_BHWC):
        z_BHW = self.proj(x_BHWC)[..., 0]
        return jnp.clip(jnp.floor(jax.nn.sigmoid(z_BHW) * 16), 0, 15).reshape(x_BHWC.shape[0], -1).astype(jnp.int32)


def test_module_encoder_gives_the_modules_own_codes():
    from mmntp_jax.data.tokenize import module_encoder

    module = TinyModuleTokenizer(nnx.Rngs(0))
    encoder = module_encoder(module, batch_size=2)
    images = [random_image(k, size=4) for k in range(3)]
    codes = encoder.encode(images)
    expect = np.asarray(module.encode(np.stack(images)))
    assert encoder.tokenizer.codebook_size == 16 and all((c == e).all() for c, e in zip(codes, expect))
    assert len(set(np.concatenate(codes).tolist())) > 1


@pytest.mark.slow
def test_shapes_mm_experiment_prepares_captioned_shapes(tmp_path, capsys):
    from mmntp_jax.data.captioned import write_captioned_shapes

    manifest = write_captioned_shapes(tmp_path / "manifest", items=3)
    code = main(["data", "prepare", "--manifest", str(manifest), "--out", str(tmp_path / "tokens"), "--config", "experiments/shapes_mm.py", "--no-progress"])
    assert code == 0
    shards, docs = read_all(tmp_path / "tokens")
    assert len(docs) == 6 and shards.vocab.size == 16 + 256 + 1000 and shards.max_block == 66
    caption, draw = docs[0], docs[1]
    assert [d["meta"]["task"] for d in docs[:2]] == ["caption", "draw"]
    image_ids = lambda d: d["tokens"][d["modality"] == 1][1:-1]
    assert (image_ids(caption) == image_ids(draw)).all(), "both documents of an image hold the same codes"
    assert caption["loss"][1:67].sum() == 0 and caption["loss"][67:].all()  # the image is context, the caption is trained
    assert draw["loss"][-67:].all() and draw["loss"][-68] == 0  # the caption is context, the image block is trained
