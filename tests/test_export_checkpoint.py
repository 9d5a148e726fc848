"""Checkpoint inspect/consolidate, the safetensors writer, the bundle and bad-input handling."""

import json

import ml_dtypes
import numpy as np
import pytest
from export_workdirs import TINY, random_workdir

from mmntp_jax.api import load
from mmntp_jax.cli import main
from mmntp_jax.config import MeshConfig, ModelConfig, load_config
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.export import safetensors_io
from mmntp_jax.export.checkpoint_tools import consolidate, inspect
from mmntp_jax.export.hf import export_hf
from mmntp_jax.export.hf_layout import NotExpressible
from mmntp_jax.export.reader import CheckpointError, CheckpointReader, flatten
from mmntp_jax.export.text_tokenizer import byte_tokenizer_json
from mmntp_jax.tokenizers.text import ByteTokenizer


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """Random params saved from a data=2 × fsdp=2 × tensor=2 mesh at step 7, with fake modality tokenizers."""
    root = tmp_path_factory.mktemp("sharded")
    vocab = Vocab.build(text=256, image=32, audio=8)
    workdir, params = random_workdir(root / "wd", ModelConfig(**{**TINY, "vocab_size": vocab.size}), step=7, mesh=MeshConfig(data=2, fsdp=2, tensor=2), vocab=vocab)
    for modality in ("image", "audio"):
        folder = workdir / "tokenizers" / modality
        folder.mkdir(parents=True)
        (folder / "tokenizer.json").write_text(json.dumps({"modality": modality}))
        (folder / "tokenizer.safetensors").write_bytes(modality.encode() * 10)
    return workdir, params, vocab


def test_inspect_reports_steps_shapes_dtypes_sizes_and_mesh(sharded):
    workdir, params, _ = sharded
    report = inspect(workdir)
    assert [s["step"] for s in report["steps"]] == [7] and report["steps"][0]["disk_bytes"] > 0
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "sequence": 1}
    arrays = {r["name"]: r for r in report["params"]["arrays"]}
    flat = flatten(params)
    assert set(arrays) == {f"params.{k}" for k in flat}
    for name, value in flat.items():
        row = arrays[f"params.{name}"]
        assert (tuple(row["shape"]), row["dtype"], row["bytes"]) == (value.shape, "float32", value.nbytes)
    assert arrays["params.layers.mlp.gate_proj"]["partition_spec"] == [None, "fsdp", "tensor"]
    assert report["params"]["count"] == sum(v.size for v in flat.values())
    assert load_config(workdir / "config.json") == CheckpointReader(workdir).config  # a workdir's config.json is a --config


def test_consolidate_bfloat16_params_only(sharded, tmp_path):
    workdir, params, vocab = sharded
    summary = consolidate(workdir, tmp_path / "c", dtype="bfloat16")
    assert summary["source_mesh"]["tensor"] == 2 and summary["step"] == 7
    reader = CheckpointReader(tmp_path / "c")
    assert set(reader.tree) == {"params"} and reader.mesh() == {}
    for name, value in flatten(params).items():
        got = reader.read(name)
        assert got.dtype == ml_dtypes.bfloat16
        np.testing.assert_array_equal(got, value.astype(ml_dtypes.bfloat16))
    assert load(tmp_path / "c").vocab == vocab
    assert (tmp_path / "c" / "tokenizers" / "image" / "tokenizer.safetensors").exists()


def test_export_bundle_copies_modality_tokenizers_and_explains_the_vocab(sharded, tmp_path):
    workdir, _, vocab = sharded
    summary = export_hf(workdir, tmp_path / "hf", dtype="bfloat16")
    out = tmp_path / "hf"
    for modality in ("image", "audio"):
        assert (out / "tokenizers" / modality / "tokenizer.safetensors").read_bytes() == modality.encode() * 10
    readme = (out / "README.md").read_text()
    assert f"{vocab.offset('image')} … {vocab.offset('image') + 31}" in readme and "`<boi>` `<eoi>`" in readme
    assert "tokenizers included: audio, image" in readme
    assert Vocab.from_json((out / "mmntp_vocab.json").read_text()) == vocab
    tokens = {t["content"]: t["id"] for t in json.loads((out / "tokenizer.json").read_text())["added_tokens"]}
    assert tokens["<image_0>"] == vocab.offset("image") and tokens["<audio_7>"] == vocab.offset("audio") + 7 and tokens["<eoi>"] == 4
    assert summary["step"] == 7


def test_byte_tokenizer_json_encodes_like_ours():
    from tokenizers import Tokenizer

    vocab = Vocab.build(text=256, image=4)
    tokenizer = Tokenizer.from_str(byte_tokenizer_json(vocab))
    tokenizer.encode_special_tokens = True
    ours = ByteTokenizer(vocab)
    text = "".join(chr(c) for c in range(1, 600)) + " <pad><eos> 🙂"
    assert tokenizer.encode(text, add_special_tokens=False).ids == ours.encode(text).tolist()
    assert tokenizer.decode([1, vocab.offset("image") + 2] + ours.encode(text).tolist(), skip_special_tokens=True) == text


def test_safetensors_writer_matches_the_reference_reader(tmp_path):
    from safetensors.numpy import load_file

    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((3, 5)).astype(np.float32), "b.c": rng.integers(0, 9, (7,)).astype(np.int32), "d": np.zeros((0, 4), np.float16)}
    plans = [safetensors_io.TensorPlan(k, v.shape, v.dtype, lambda v=v: v) for k, v in arrays.items()]
    files = safetensors_io.write_model(tmp_path, plans, shard_bytes=64)
    index = json.loads((tmp_path / safetensors_io.INDEX_NAME).read_text())
    assert files[-1] == safetensors_io.INDEX_NAME and len(files) == 3  # [a: 60 B] [b.c: 28 B, d: 0 B]
    assert index["weight_map"] == {"a": files[0], "b.c": files[1], "d": files[1]} and index["metadata"]["total_size"] == 88
    loaded = {}
    for name in files[:-1]:
        loaded.update(load_file(tmp_path / name))
    reader = safetensors_io.SafetensorsReader.from_folder(tmp_path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(loaded[k], v)
        np.testing.assert_array_equal(reader.get(k), v)
    bf16 = np.asarray([1.5, -2.25], ml_dtypes.bfloat16)
    safetensors_io.write_file(tmp_path / "x.safetensors", [safetensors_io.TensorPlan("w", (2,), bf16.dtype, lambda: bf16)])
    assert safetensors_io.SafetensorsReader([tmp_path / "x.safetensors"]).get("w").tolist() == bf16.tolist()
    assert safetensors_io.parse_size("5GB") == 5 * 10**9 and safetensors_io.parse_size("2GiB") == 2 * 2**30
    with pytest.raises(ValueError, match="size 'lots'"):
        safetensors_io.parse_size("lots")


def test_bad_inputs_fail_clearly_and_overwrite_nothing(sharded, tmp_path, capsys):
    workdir, _, _ = sharded
    empty = tmp_path / "no_ckpt"
    empty.mkdir()
    (empty / "config.json").write_text((workdir / "config.json").read_text())
    with pytest.raises(CheckpointError, match="has no checkpoints"):
        export_hf(empty, tmp_path / "o1")
    with pytest.raises(CheckpointError, match="no checkpoint for step 3; saved steps: 7"):
        export_hf(workdir, tmp_path / "o2", step=3)
    with pytest.raises(CheckpointError, match="not a workdir"):
        consolidate(tmp_path, tmp_path / "o3")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for argv in (["export", "hf"], ["export", "stablehlo"], ["checkpoint", "consolidate"]):
        assert main(argv + ["--workdir", str(workdir), "--out", str(busy)]) == 2
        assert "is not empty; pass --force" in capsys.readouterr().err
    assert main(["export", "hf", "--workdir", str(workdir), "--out", str(tmp_path / "o4"), "--step", "3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"mmntp export: error: workdir {workdir} has no checkpoint for step 3; saved steps: 7"]
    assert main(["import", "hf", "--model", str(tmp_path), "--out", str(busy)]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    assert main(["export", "hf", "--workdir", str(workdir), "--out", str(busy), "--force", "--json"]) == 0
    assert not (busy / "keep.txt").exists() and (busy / "model.safetensors").exists()
    assert json.loads(capsys.readouterr().out)["architecture"] == "LlamaForCausalLM"
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_inexpressible_parameters_are_refused(tmp_path):
    workdir, params = random_workdir(tmp_path / "wd")
    from mmntp_jax.config import Config
    from mmntp_jax.export.checkpoint_tools import write_params_workdir

    extra = tmp_path / "extra"
    extra.mkdir()
    write_params_workdir(extra, Config(model=ModelConfig(**TINY)), Vocab.build(), {**params, "modality_head": np.zeros((64, 4), np.float32)}, 0)
    with pytest.raises(NotExpressible, match="modality_head have no counterpart in LlamaForCausalLM"):
        export_hf(extra, tmp_path / "out")
    assert main(["checkpoint", "inspect", "--workdir", str(extra), "--json"]) == 0
    assert not (tmp_path / "out").exists()
