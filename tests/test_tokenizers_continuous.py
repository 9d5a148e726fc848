"""Continuous tokenizers: patch embedding against numpy, MLP projector, Perceiver resampler properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.continuous import ContinuousTokenizerConfig
from mmntp_jax.tokenizers.registry import Tokenizer


def test_patch_embedding_is_a_linear_map_of_raster_patches():
    tok = Tokenizer.create("continuous", ContinuousTokenizerConfig(kind="patch", image_size=8, patch_size=4, width=16))
    x = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype(np.float32)
    emb = np.asarray(tok.embed(tok.params, x))
    patches = x.reshape(2, 2, 4, 2, 4, 3).transpose(0, 1, 3, 2, 4, 5).reshape(2, 4, 48)  # raster order, [py, px, c] inside
    kernel, bias = (np.asarray(v) for v in (tok.params["proj"]["kernel"][...], tok.params["proj"]["bias"][...]))
    np.testing.assert_allclose(emb, patches @ kernel + bias, atol=1e-5)
    assert tok.tokens_per_item() == 4 and tok.tokens_per_item((16, 16)) == 16


def test_mlp_projector_on_features():
    tok = Tokenizer.create("continuous", ContinuousTokenizerConfig(kind="mlp", in_features=10, width=8))
    f = np.random.default_rng(1).standard_normal((3, 5, 10)).astype(np.float32)
    p = tok.params
    h = f @ np.asarray(p["linear_1"]["kernel"][...]) + np.asarray(p["linear_1"]["bias"][...])
    expected = np.asarray(jax.nn.gelu(jnp.asarray(h))) @ np.asarray(p["linear_2"]["kernel"][...]) + np.asarray(p["linear_2"]["bias"][...])
    np.testing.assert_allclose(np.asarray(tok.embed(p, f)), expected, atol=1e-5)


def test_resampler_gives_k_tokens_and_ignores_feature_order():
    tok = Tokenizer.create("continuous", ContinuousTokenizerConfig(kind="resampler", in_features=6, width=16, queries=3, layers=2, heads=4))
    f = np.random.default_rng(2).standard_normal((2, 7, 6)).astype(np.float32)
    out = np.asarray(tok.embed(tok.params, f))
    assert out.shape == (2, 3, 16) and tok.tokens_per_item((7, 6)) == 3
    shuffled = np.asarray(tok.embed(tok.params, f[:, ::-1]))
    np.testing.assert_allclose(out, shuffled, atol=1e-5)  # cross-attention without positions is a set function
    other = np.asarray(tok.embed(tok.params, f + np.random.default_rng(3).standard_normal(f.shape).astype(np.float32)))
    assert np.abs(other - out).max() > 1e-3
    longer = np.asarray(tok.embed(tok.params, np.concatenate([f, f], axis=1)))
    assert longer.shape == (2, 3, 16)


def test_bad_continuous_input():
    tok = Tokenizer.create("continuous", ContinuousTokenizerConfig(kind="patch", image_size=8, patch_size=4, width=8))
    with pytest.raises(ValueError, match=r"image size 10×10 is not divisible by the patch size 4"):
        tok.embed(tok.params, np.zeros((1, 10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected images \[B, H, W, 3\], got shape \(1, 8, 8, 1\)"):
        tok.embed(tok.params, np.zeros((1, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="has no encode"):
        tok.encode(tok.params, np.zeros((1, 8, 8, 3), np.float32))
