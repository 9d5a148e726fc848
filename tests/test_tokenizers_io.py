"""Saving and loading tokenizers: identical codes after a round trip; mismatches fail clearly."""

import dataclasses
import json

import numpy as np
import pytest

from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizerConfig
from mmntp_jax.tokenizers.io import TokenizerFileError, load_tokenizer, save_tokenizer
from mmntp_jax.tokenizers.registry import Tokenizer

CONFIG = ImageTokenizerConfig(image_size=8, factor=4, patch=2, channels=4, channel_mult=(1, 1), num_res_blocks=1, z_channels=4, norm_groups=2,
                              attention=False, quantizer=QuantizerConfig(kind="vq", codebook_size=32, dim=4, ema=True))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tok = Tokenizer.create("image", CONFIG, seed=5)
    directory = save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "image")
    return tok, directory


def test_save_load_gives_identical_codes_and_decodes(saved):
    tok, directory = saved
    x = np.random.default_rng(0).uniform(size=(3, 8, 8, 3)).astype(np.float32)
    loaded = load_tokenizer(directory)
    assert loaded.config == CONFIG and loaded.kind == "image"
    codes = np.asarray(tok.encode(tok.params, x))
    np.testing.assert_array_equal(np.asarray(loaded.encode(loaded.params, x)), codes)
    np.testing.assert_array_equal(np.asarray(loaded.decode(loaded.params, codes)), np.asarray(tok.decode(tok.params, codes)))
    meta = json.loads((directory / "tokenizer.json").read_text())
    assert meta["version"] == 1 and meta["vocab_size"] == 32 and meta["tokens_per_item"] == 4
    fresh = Tokenizer.create("image", CONFIG, seed=6)  # a differently initialised tokenizer codes differently
    assert not np.array_equal(np.asarray(fresh.encode(fresh.params, x)), codes)


def test_loading_against_a_different_config_names_the_keys(saved):
    _, directory = saved
    other = dataclasses.replace(CONFIG, channels=8, quantizer=dataclasses.replace(CONFIG.quantizer, codebook_size=64))
    with pytest.raises(TokenizerFileError, match=r"different config.*channels: 4 in the file, 8 expected.*quantizer.codebook_size: 32 in the file, 64"):
        load_tokenizer(directory, expect_config=other)


def test_tensors_that_do_not_fit_the_config(saved, tmp_path):
    tok, directory = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    meta = json.loads((directory / "tokenizer.json").read_text())
    meta["config"]["quantizer"]["codebook_size"] = 16
    (bad / "tokenizer.json").write_text(json.dumps(meta))
    (bad / "tokenizer.safetensors").write_bytes((directory / "tokenizer.safetensors").read_bytes())
    with pytest.raises(TokenizerFileError, match=r"tensors do not match.*quantize.embedding \(32, 4\) vs \(16, 4\)"):
        load_tokenizer(bad)
    (bad / "tokenizer.safetensors").write_bytes(b"garbage")
    meta["config"]["quantizer"]["codebook_size"] = 32
    (bad / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerFileError, match="not a readable safetensors"):
        load_tokenizer(bad)
    meta["version"] = 99
    (bad / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerFileError, match="version 99 is newer"):
        load_tokenizer(bad)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path / "nowhere")
