"""Hugging Face export checked against transformers itself (torch on CPU).

The reference is `AutoModelForCausalLM.from_pretrained` on the exported folder:
its logits must equal ours, its loader must report no missing or unexpected
keys, and `AutoTokenizer` must produce our ids.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the [hf] extra; transformers comes with it and must then import
import transformers  # noqa: E402

from export_workdirs import TINY, random_workdir, trained_workdir  # noqa: E402

from mmntp_jax.api import load  # noqa: E402
from mmntp_jax.config import ModelConfig  # noqa: E402
from mmntp_jax.export.hf import export_hf  # noqa: E402
from mmntp_jax.export.reader import flatten  # noqa: E402
from mmntp_jax.export.safetensors_io import INDEX_NAME, SafetensorsReader  # noqa: E402
from mmntp_jax.model.generate import generate_ids  # noqa: E402


def hf_load(folder, dtype=torch.float32):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=dtype)
    return model.eval(), info


def assert_clean_load(info):
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.float().numpy()


def random_ids(n=2, t=24, vocab=272, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, (n, t))


@pytest.fixture(scope="module")
def trained_and_start(tmp_path_factory):
    return trained_workdir(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="module")
def trained(trained_and_start):
    return trained_and_start[0]


@pytest.fixture(scope="module")
def trained_export(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "export"
    export_hf(trained, out)
    return out


def test_trained_llama_logits_match_transformers(trained, trained_export):
    model, info = hf_load(trained_export)
    assert_clean_load(info)
    assert type(model).__name__ == "LlamaForCausalLM"
    run = load(trained)
    assert run.step == 2
    ids = random_ids(t=20)
    np.testing.assert_allclose(hf_logits(model, ids), np.asarray(run.logits(ids)), atol=1e-4, rtol=0)


def test_training_continues_from_a_params_only_step_0(trained_and_start):
    workdir, start = trained_and_start
    trained = flatten(load(workdir).params)
    moved = {k: float(np.abs(np.asarray(trained[k]) - v).max()) for k, v in flatten(start).items()}
    assert max(moved.values()) < 2 * 1e-2 * 1.05  # two AdamW steps of lr 1e-2 from the saved start
    assert min(moved.values()) > 1e-4  # and they did train


def test_greedy_generation_matches_transformers(trained, trained_export):
    model, _ = hf_load(trained_export)
    run = load(trained)
    prompt = np.asarray([[1] + list(run.tokenizer.encode("def f(x):"))], np.int32)
    ours = generate_ids(run.graph, run.params, jnp.asarray(prompt), jnp.ones_like(prompt), jnp.arange(prompt.shape[1])[None].astype(jnp.int32), jax.random.key(0), max_new_tokens=8)
    with torch.no_grad():
        theirs = model.generate(torch.as_tensor(prompt), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    np.testing.assert_array_equal(theirs[0, prompt.shape[1]:].numpy(), np.asarray(ours)[0])


def test_tokenizer_ids_match_ours(trained, trained_export):
    tokenizer = transformers.AutoTokenizer.from_pretrained(trained_export)
    ours = load(trained).tokenizer
    for text in ["def f(x):\n\treturn x + 1", "héllo wörld — 日本語 🙂", "a literal <eos> and <boi> stay text", ""]:
        assert tokenizer.encode(text, add_special_tokens=False) == ours.encode(text).tolist()
    text = "print('ok')"
    ids = [1, 3, 272 - 1] + ours.encode(text).tolist() + [4, 2]  # <bos> <boi> (a text byte) … <eoi> <eos>
    assert tokenizer.decode(ids, skip_special_tokens=True) == ours.decode(ids)
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<bos>", "<eos>", "<boi>"]
    assert tokenizer.bos_token_id == 1 and tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 0
    generation = json.loads((trained_export / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (1, 2, 0)


def test_random_llama_tied_sharded_export(tmp_path):
    cfg = ModelConfig(**{**TINY, "head_dim": 8, "tie_embeddings": True, "rope_theta": 500.0, "norm_eps": 1e-5})
    workdir, params = random_workdir(tmp_path / "wd", cfg, seed=1)
    out = tmp_path / "hf"
    summary = export_hf(workdir, out, shard_size=60_000)
    assert (out / INDEX_NAME).exists() and len([f for f in summary["files"] if f.endswith(".safetensors")]) > 1
    index = json.loads((out / INDEX_NAME).read_text())
    assert "lm_head.weight" not in index["weight_map"]
    model, info = hf_load(out)
    assert_clean_load(info)
    assert model.config.tie_word_embeddings and model.config.head_dim == 8
    ids = random_ids(t=16, seed=1)
    np.testing.assert_allclose(hf_logits(model, ids), np.asarray(load(workdir).logits(ids)), atol=1e-4, rtol=0)


def test_qwen3_export_with_qk_norm(tmp_path):
    cfg = ModelConfig(**{**TINY, "qk_norm": True})
    workdir, _ = random_workdir(tmp_path / "wd", cfg, seed=2)
    export_hf(workdir, tmp_path / "hf")
    model, info = hf_load(tmp_path / "hf")
    assert_clean_load(info)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    reader = SafetensorsReader.from_folder(tmp_path / "hf")
    assert "model.layers.1.self_attn.q_norm.weight" in reader and "model.layers.1.self_attn.k_norm.weight" in reader
    ids = random_ids(t=18, seed=2)
    np.testing.assert_allclose(hf_logits(model, ids), np.asarray(load(workdir).logits(ids)), atol=1e-4, rtol=0)


def test_bfloat16_export_loads(trained, tmp_path):
    export_hf(trained, tmp_path / "bf16", dtype="bfloat16")
    reader = SafetensorsReader.from_folder(tmp_path / "bf16")
    assert {str(reader.dtype(k)) for k in reader.keys()} == {"bfloat16"}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model, info = hf_load(tmp_path / "bf16", dtype=torch.bfloat16)
    assert_clean_load(info)
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = random_ids(t=16)
    ours = np.asarray(load(trained).logits(ids))
    theirs = hf_logits(model, ids)
    assert np.isfinite(theirs).all()
    assert np.abs(theirs - ours).max() < 0.05 * np.abs(ours).max() + 0.05
