"""`mmntp import hf`: Llama/Qwen3 checkpoints made by transformers become our parameters.

References: the safetensors tensors transformers wrote, and the logits of the
transformers model itself.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the [hf] extra; transformers comes with it and must then import
import transformers  # noqa: E402

from export_workdirs import TINY, random_workdir  # noqa: E402
from hf_models import V_HF, make_hf_model  # noqa: E402

from mmntp_jax.api import load  # noqa: E402
from mmntp_jax.cli import main  # noqa: E402
from mmntp_jax.config import ModelConfig  # noqa: E402
from mmntp_jax.data.vocab import Vocab  # noqa: E402
from mmntp_jax.export import hf_layout  # noqa: E402
from mmntp_jax.export.hf import export_hf  # noqa: E402
from mmntp_jax.export.hf_import import NEW_ROW_NOISE, import_hf  # noqa: E402
from mmntp_jax.export.reader import CheckpointReader, flatten  # noqa: E402
from mmntp_jax.export.safetensors_io import SafetensorsReader  # noqa: E402

N_IMAGE = 24


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def imported(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model, tokenizer = make_hf_model(root / "hf", request.param)
    summary = import_hf(root / "hf", root / "workdir", modalities={"image": N_IMAGE})
    return request.param, model, tokenizer, root, summary


def test_params_equal_the_tensors(imported):
    family, model, _, root, summary = imported
    tensors = SafetensorsReader.from_folder(root / "hf")
    reader = CheckpointReader(root / "workdir")
    assert reader.steps == [0] and summary["text_id_shift"] == 16
    cfg = reader.config.model
    assert (cfg.qk_norm, cfg.tie_embeddings, cfg.rope_theta, cfg.norm_eps) == (family == "qwen3", family == "qwen3", 500.0, 1e-5)
    assert cfg.vocab_size == 16 + V_HF + N_IMAGE
    for m in hf_layout.LAYER_MAPPINGS:
        if m.ours not in reader.params_info():
            continue
        for i in range(cfg.n_layers):
            np.testing.assert_array_equal(hf_layout.to_hf(m.kind, reader.read(m.ours, i)), tensors.get(m.hf.format(i=i)))
    np.testing.assert_array_equal(reader.read("norm.weight"), tensors.get("model.norm.weight"))
    embed = reader.read("embed_tokens.embedding")
    np.testing.assert_array_equal(embed[16 : 16 + V_HF], tensors.get("model.embed_tokens.weight"))
    if family == "llama":
        np.testing.assert_array_equal(reader.read("lm_head").T[16 : 16 + V_HF], tensors.get("lm_head.weight"))


def test_new_rows_follow_the_documented_initialisation(imported):
    family, _, _, root, _ = imported
    hf_rows = SafetensorsReader.from_folder(root / "hf").get("model.embed_tokens.weight")
    embed = CheckpointReader(root / "workdir").read("embed_tokens.embedding")
    new_ids = [i for i in range(embed.shape[0]) if not 16 <= i < 16 + V_HF]
    copied = {1: 5, 2: 6} if family == "llama" else {}  # <bos>, <eos> ← the checkpoint's bos/eos rows
    for ours, theirs in copied.items():
        np.testing.assert_array_equal(embed[ours], hf_rows[theirs])
    fresh = np.asarray([embed[i] for i in new_ids if i not in copied])
    z = (fresh - hf_rows.mean(0)) / (NEW_ROW_NOISE * hf_rows.std(0))
    assert abs(z.mean()) < 0.1 and 0.85 < z.std() < 1.15  # mean + NEW_ROW_NOISE·σ·N(0, 1)
    assert len(np.unique(fresh, axis=0)) == len(fresh)


def test_our_logits_equal_transformers_on_shifted_ids(imported):
    _, model, _, root, _ = imported
    run = load(root / "workdir")
    ids = np.random.default_rng(0).integers(0, V_HF, (2, 20))
    with torch.no_grad():
        reference = model(torch.as_tensor(ids)).logits.numpy()
    ours = np.asarray(run.logits(ids + 16))
    np.testing.assert_allclose(ours[..., 16 : 16 + V_HF], reference, atol=1e-4, rtol=0)


def test_text_tokenizer_moves_with_the_ids(imported):
    _, _, tokenizer, root, summary = imported
    assert summary["text_tokenizer"]
    ours = load(root / "workdir").tokenizer
    text = "hello world, def foo(bar)"
    np.testing.assert_array_equal(ours.encode(text), np.asarray(tokenizer.encode(text).ids) + 16)
    assert ours.decode(np.concatenate([[1], ours.encode(text), [16 + V_HF + 3, 2]])) == text


def test_import_then_export_keeps_every_tensor(imported, tmp_path):
    family, model, _, root, _ = imported
    export_hf(root / "workdir", tmp_path / "out")
    original, exported = SafetensorsReader.from_folder(root / "hf"), SafetensorsReader.from_folder(tmp_path / "out")
    assert set(exported.keys()) == set(original.keys()) - {"lm_head.weight" if family == "qwen3" else ""}
    for name in exported.keys():
        got = exported.get(name)
        want = original.get(name)
        np.testing.assert_array_equal(got[16 : 16 + V_HF] if got.shape[0] == 16 + V_HF + N_IMAGE else got, want)
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.random.default_rng(1).integers(0, V_HF, (1, 16))
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(torch.as_tensor(ids + 16)).logits.numpy()[..., 16 : 16 + V_HF], model(torch.as_tensor(ids)).logits.numpy(), atol=1e-5)


def test_mmntp_export_import_export_is_identity(tmp_path, capsys):
    vocab = Vocab.build(text=256, image=16)
    workdir, params = random_workdir(tmp_path / "wd", ModelConfig(**{**TINY, "vocab_size": vocab.size}), seed=3, vocab=vocab)
    modality = workdir / "tokenizers" / "image"
    modality.mkdir(parents=True)
    (modality / "tokenizer.json").write_text(json.dumps({"kind": "fake"}))
    (modality / "tokenizer.safetensors").write_bytes(b"fake weights")
    export_hf(workdir, tmp_path / "a")
    assert main(["import", "hf", "--model", str(tmp_path / "a"), "--out", str(tmp_path / "imported"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["text_id_shift"] == 0 and summary["modality_tokenizers"] == ["image"] and not summary["text_tokenizer"]
    back = flatten(CheckpointReader(tmp_path / "imported").read_params())
    assert set(back) == set(flatten(params))
    for name, value in flatten(params).items():
        np.testing.assert_array_equal(back[name], value)
    export_hf(tmp_path / "imported", tmp_path / "b")
    a, b = SafetensorsReader.from_folder(tmp_path / "a"), SafetensorsReader.from_folder(tmp_path / "b")
    assert set(a.keys()) == set(b.keys())
    for name in a.keys():
        np.testing.assert_array_equal(a.get(name), b.get(name))
    for name in ("config.json", "tokenizer.json", "mmntp_vocab.json", "tokenizers/image/tokenizer.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_type": "gpt2"}, "model_type 'gpt2' is not importable"),
        ({"attention_bias": True}, "attention_bias=True is not supported"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "RoPE scaling 'llama3'"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
    ],
)
def test_unsupported_architectures_fail_clearly(change, message):
    hf = {"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2, "intermediate_size": 64}
    with pytest.raises(hf_layout.NotExpressible, match=message.replace("(", r"\(")):
        hf_layout.model_config_from_hf({**hf, **change}, ModelConfig(), 100)
