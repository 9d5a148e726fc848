"""FSQ against a from-scratch numpy reference of the published formula and against vector-quantize-pytorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.quantizers import FSQ_PRESETS, fsq, fsq_codes_to_vectors, fsq_implicit_codebook, fsq_levels

LEVELS = [[8, 5, 5, 5], [8, 6, 5], [7, 5, 5, 5, 5], [3, 4]]


def jfsq(z, levels, **kw):
    return jax.jit(lambda z: fsq(z, levels, **kw))(z)


def numpy_fsq(z, levels, eps=1e-3):
    """Mentzer et al. 2023 appendix A.1 with the eps bound of vector-quantize-pytorch, in float32 numpy."""
    z = np.asarray(z, np.float32)
    lv = np.asarray(levels, np.int32)
    half_l = ((lv - 1) * np.float32(1 + eps) / 2).astype(np.float32)
    offset = np.where(lv % 2 == 0, 0.5, 0.0).astype(np.float32)
    shift = np.arctanh(offset / half_l).astype(np.float32)
    bounded = (np.tanh(z + shift) * half_l - offset).astype(np.float32)
    half_width = lv // 2
    zhat = np.round(bounded) / half_width
    digits = np.round(zhat * half_width + half_width).astype(np.int64)
    basis = np.cumprod([1] + list(levels[:-1]))
    return zhat.astype(np.float32), (digits * basis).sum(-1)


@pytest.mark.parametrize("levels", LEVELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_codes_match_numpy_reference(levels, dtype):
    z = np.random.RandomState(len(levels)).randn(3, 50, len(levels)).astype(np.float32) * 2.0
    z_in = jnp.asarray(z, dtype)
    out = jfsq(z_in, levels)
    ref_zhat, ref_codes = numpy_fsq(np.asarray(z_in.astype(jnp.float32)), levels)
    np.testing.assert_array_equal(np.asarray(out.codes), ref_codes)
    assert out.codes.dtype == jnp.int32 and out.z_q.dtype == dtype
    np.testing.assert_allclose(np.asarray(out.z_q, np.float32), ref_zhat, atol=1e-2 if dtype == jnp.bfloat16 else 0)


@pytest.mark.slow
def test_codes_match_vector_quantize_pytorch():
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    for levels in LEVELS:
        z = np.random.RandomState(1).randn(2, 300, len(levels)).astype(np.float32) * 3.0
        ref_q, ref_idx = vqp.FSQ(levels)(torch.tensor(z))
        out = jfsq(jnp.asarray(z), levels)
        np.testing.assert_array_equal(np.asarray(out.codes), ref_idx.numpy())
        np.testing.assert_array_equal(np.asarray(out.z_q), ref_q.numpy())
        np.testing.assert_array_equal(np.asarray(fsq_codes_to_vectors(out.codes, levels)), ref_q.numpy())


def _inputs_for_codes(levels, eps=1e-3):
    """Inverse of the bound: an input that quantizes to each implicit code."""
    lv = np.asarray(levels, np.float64)
    half_l = (lv - 1) * (1 + eps) / 2
    offset = np.where(np.asarray(levels) % 2 == 0, 0.5, 0.0)
    shift = np.arctanh(offset / half_l)
    digits = np.asarray(fsq_implicit_codebook(levels), np.float64) * (np.asarray(levels) // 2)
    return (np.arctanh((digits + offset) / half_l) - shift).astype(np.float32)


@pytest.mark.parametrize("levels", LEVELS)
def test_round_trip_covers_whole_implicit_codebook(levels):
    size = int(np.prod(levels))
    z = _inputs_for_codes(levels)
    out = jfsq(jnp.asarray(z), levels)
    np.testing.assert_array_equal(np.asarray(out.codes), np.arange(size))
    np.testing.assert_array_equal(np.asarray(fsq_codes_to_vectors(out.codes, levels)), np.asarray(out.z_q))
    assert float(out.metrics["usage"]) == 1.0
    assert float(out.metrics["perplexity"]) == pytest.approx(size, rel=1e-4)


def test_preserve_symmetry_round_trip_and_level_two():
    levels = [2, 3, 4]
    z = np.random.RandomState(0).randn(500, 3).astype(np.float32) * 2
    out = jfsq(jnp.asarray(z), levels, preserve_symmetry=True)
    codes = np.asarray(out.codes)
    assert codes.min() >= 0 and codes.max() < 24 and len(np.unique(codes)) == 24
    back = fsq_codes_to_vectors(out.codes, levels, preserve_symmetry=True)
    np.testing.assert_allclose(np.asarray(back), np.asarray(out.z_q), atol=1e-6)
    # the symmetric grid is 2/(L-1)·floor((L-1)(tanh z + 1)/2 + 1/2) - 1
    lv = np.asarray(levels, np.float32)
    ref = 2 / (lv - 1) * np.floor((lv - 1) * (np.tanh(z) + 1) / 2 + 0.5) - 1
    np.testing.assert_allclose(np.asarray(out.z_q), ref, atol=1e-6)


def test_presets():
    for size, levels in FSQ_PRESETS.items():
        assert fsq_levels(size) == levels
        assert 0.9 * size <= np.prod(levels) <= 1.1 * size
    with pytest.raises(ValueError, match="no FSQ preset"):
        fsq_levels(1000)


def test_gradient_is_straight_through_of_the_bound():
    levels = [8, 5, 5, 5]
    z = jnp.asarray(np.random.RandomState(2).randn(10, 4), jnp.float32)
    g = jax.jit(jax.grad(lambda z: jnp.sum(fsq(z, levels).z_q * jnp.arange(1.0, 5.0))))(z)
    lv = jnp.asarray(levels, jnp.float32)
    half_l = (lv - 1) * 1.001 / 2
    shift = jnp.arctanh(jnp.where(lv % 2 == 0, 0.5, 0.0) / half_l)
    expected = (1 - jnp.tanh(z + shift) ** 2) * half_l / (lv // 2) * jnp.arange(1.0, 5.0)
    np.testing.assert_allclose(np.asarray(g), np.asarray(expected), rtol=1e-5)


def test_any_leading_shape_jit_and_vmap():
    z = jnp.asarray(np.random.RandomState(0).randn(2, 3, 4, 5, 4), jnp.float32)
    out = jax.jit(lambda z: fsq(z, [8, 5, 5, 5]))(z)
    assert out.codes.shape == (2, 3, 4, 5)
    vm = jax.jit(jax.vmap(lambda z: fsq(z, [8, 5, 5, 5]).codes))(z)
    np.testing.assert_array_equal(np.asarray(vm), np.asarray(out.codes))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="must equal len"):
        fsq(jnp.zeros((3, 5)), [8, 5, 5, 5])
    with pytest.raises(ValueError, match="contain 2"):
        fsq(jnp.zeros((3, 2)), [2, 5])
    with pytest.raises(ValueError, match=">= 2"):
        fsq(jnp.zeros((3, 2)), [1, 5])
