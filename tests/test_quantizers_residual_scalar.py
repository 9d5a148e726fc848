"""Residual FSQ / LFQ against vector-quantize-pytorch and their own round trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.quantizers import (
    fsq,
    lfq,
    residual_fsq,
    residual_fsq_codes_to_vectors,
    residual_lfq,
    residual_lfq_codes_to_vectors,
)


@pytest.mark.slow
def test_residual_fsq_matches_vector_quantize_pytorch():
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    z = np.random.RandomState(0).randn(2, 60, 4).astype(np.float32) * 0.5
    q, idx = vqp.ResidualFSQ(levels=[8, 5, 5, 5], num_quantizers=3, dim=4)(torch.tensor(z))
    out = jax.jit(lambda z: residual_fsq(z, [8, 5, 5, 5], 3))(jnp.asarray(z))
    np.testing.assert_array_equal(np.asarray(out.codes), idx.numpy())
    np.testing.assert_allclose(np.asarray(out.z_q), q.detach().numpy(), atol=1e-6)


@pytest.mark.slow
def test_residual_lfq_matches_vector_quantize_pytorch():
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    z = np.random.RandomState(1).randn(2, 60, 5).astype(np.float32)
    ref = vqp.ResidualLFQ(dim=5, codebook_size=32, num_quantizers=3)
    ref.eval()
    q, idx, _ = ref(torch.tensor(z))
    out = jax.jit(lambda z: residual_lfq(z, 3))(jnp.asarray(z))
    np.testing.assert_array_equal(np.asarray(out.codes), idx.numpy())
    np.testing.assert_allclose(np.asarray(out.z_q), q.detach().numpy(), atol=1e-6)


def test_residual_fsq_refines_and_round_trips():
    levels = [5, 5, 5]
    z = jnp.asarray(np.random.RandomState(2).uniform(-0.9, 0.9, (500, 3)), jnp.float32)
    errs = []
    for n in (1, 2, 3):
        out = jax.jit(lambda z: residual_fsq(z, levels, 3, num_active=n))(z)
        errs.append(float(jnp.mean((out.z_q - jnp.tanh(z / 1.25) * 1.25) ** 2)))
        np.testing.assert_allclose(np.asarray(jax.jit(lambda c: residual_fsq_codes_to_vectors(c, levels))(out.codes)), np.asarray(out.z_q), atol=1e-6)
        assert np.all(np.asarray(out.codes[:, n:]) == -1)
    assert errs[0] > 5 * errs[1] > 25 * errs[2]
    # layer 0 alone is symmetric FSQ with hard clamp of the soft-clamped input
    single = jax.jit(lambda z: fsq(jnp.tanh(z / 1.25) * 1.25, levels, preserve_symmetry=True, hard_clamp=True))(z)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda z: residual_fsq(z, levels, 1))(z).codes[:, 0]), np.asarray(single.codes))


def test_residual_lfq_round_trip_dropout_and_gradient():
    z = jnp.asarray(np.random.RandomState(3).randn(4, 20, 6), jnp.float32)
    out = jax.jit(lambda z, k: residual_lfq(z, 4, dropout_key=k))(z, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(jax.jit(lambda c: residual_lfq_codes_to_vectors(c, 6))(out.codes)), np.asarray(out.z_q), atol=1e-6)
    n = int(out.metrics["active_quantizers"])
    assert np.all(np.asarray(out.codes[..., n:]) == -1) and np.all(np.asarray(out.codes[..., :n]) >= 0)
    np.testing.assert_array_equal(np.asarray(out.codes[..., 0]), np.asarray(jax.jit(lfq)(z).codes))
    w = jnp.asarray(np.random.RandomState(4).randn(*z.shape), jnp.float32)
    g = jax.jit(jax.grad(lambda z: jnp.sum(residual_lfq(z, 3, with_entropy=False).z_q * w)))(z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)
