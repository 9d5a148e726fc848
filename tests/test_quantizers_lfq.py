"""LFQ and BSQ: codes, straight-through, and the factorised entropy loss against a dense reference."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.quantizers import bsq, bsq_codes_to_vectors, lfq, lfq_codes_to_vectors


def dense_entropy_loss(x, inv_temperature, code_scale, gamma=1.0):
    """vector-quantize-pytorch's formula over the full codebook, exact entropies, float64."""
    x = np.asarray(x, np.float64)
    k = x.shape[-1]
    bits = (np.arange(2**k)[:, None] >> np.arange(k - 1, -1, -1)) & 1
    codebook = (bits * 2 - 1) * code_scale
    logits = 2 * inv_temperature * x.reshape(-1, k) @ codebook.T
    logits -= logits.max(-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(-1, keepdims=True)

    def ent(q):
        return -(q * np.log(np.maximum(q, 1e-300))).sum(-1)

    per_token, batch = ent(p).mean(), ent(p.mean(0))
    return per_token, batch, per_token - gamma * batch


@pytest.mark.parametrize("inv_temperature", [1.0, 100.0])
@pytest.mark.parametrize("bits", [5, 8])
def test_entropy_loss_matches_dense_reference(inv_temperature, bits):
    z = np.random.RandomState(bits).randn(3, 20, bits).astype(np.float32) * 0.1
    out = jax.jit(partial(lfq, inv_temperature=inv_temperature, entropy_weight=1.0, diversity_gamma=0.7))(jnp.asarray(z))
    per_token, batch, loss = dense_entropy_loss(z, inv_temperature, 1.0, 0.7)
    np.testing.assert_allclose(float(out.metrics["per_sample_entropy"]), per_token, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(out.metrics["codebook_entropy"]), batch, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(out.aux_loss), loss, rtol=1e-4, atol=1e-5)


def test_bsq_entropy_and_gradient_match_dense_reference():
    z = np.random.RandomState(0).randn(40, 6).astype(np.float32)
    f = jax.jit(lambda z: bsq(z, inv_temperature=3.0, entropy_weight=1.0).aux_loss)
    zn = z / np.linalg.norm(z, axis=-1, keepdims=True)
    np.testing.assert_allclose(float(f(jnp.asarray(z))), dense_entropy_loss(zn, 3.0, 1 / np.sqrt(6))[2], rtol=1e-4)
    # gradient of the factorised loss equals central differences of the dense one
    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(z)))
    rs = np.random.RandomState(1)
    for _ in range(4):
        n, c = rs.randint(40), rs.randint(6)
        zp, zm = z.astype(np.float64).copy(), z.astype(np.float64).copy()
        zp[n, c] += 1e-4
        zm[n, c] -= 1e-4
        loss = lambda v: dense_entropy_loss(v / np.linalg.norm(v, axis=-1, keepdims=True), 3.0, 1 / np.sqrt(6))[2]
        np.testing.assert_allclose(g[n, c], (loss(zp) - loss(zm)) / 2e-4, rtol=2e-2, atol=1e-4)


@pytest.mark.slow
def test_matches_vector_quantize_pytorch():
    torch = pytest.importorskip("torch")
    vqp = pytest.importorskip("vector_quantize_pytorch")
    z = np.random.RandomState(2).randn(2, 30, 6).astype(np.float32) * 0.05
    for spherical in (False, True):
        ref = vqp.LFQ(codebook_size=64, dim=6, spherical=spherical, commitment_loss_weight=0.3)
        ref.train()
        q, idx, aux = ref(torch.tensor(z), inv_temperature=1.0)
        out = lfq(jnp.asarray(z), inv_temperature=1.0, spherical=spherical, commitment_weight=0.3)
        np.testing.assert_array_equal(np.asarray(out.codes), idx.numpy())
        np.testing.assert_allclose(np.asarray(out.z_q), q.detach().numpy(), atol=1e-6)
        # torch clamps probabilities at 1e-5 inside its entropy; at this temperature none are that small
        np.testing.assert_allclose(float(out.aux_loss), aux.item(), rtol=1e-5)


@pytest.mark.parametrize("spherical", [False, True])
def test_round_trip_covers_whole_codebook(spherical):
    bits = 7
    vectors = lfq_codes_to_vectors(jnp.arange(2**bits), bits, spherical=spherical)
    out = jax.jit(partial(lfq, spherical=spherical))(vectors)
    np.testing.assert_array_equal(np.asarray(out.codes), np.arange(2**bits))
    np.testing.assert_allclose(np.asarray(out.z_q), np.asarray(vectors), atol=1e-6)
    assert float(out.metrics["usage"]) == 1.0
    if spherical:
        np.testing.assert_allclose(np.linalg.norm(np.asarray(out.z_q), axis=-1), 1.0, rtol=1e-6)


def test_codes_first_channel_most_significant_and_groups():
    z = jnp.asarray([[1.0, -1.0, -1.0, 1.0, 1.0, 1.0]])
    assert int(jax.jit(partial(lfq, with_entropy=False))(z).codes[0]) == 0b100111
    out = jax.jit(partial(lfq, num_codebooks=2))(z)
    np.testing.assert_array_equal(np.asarray(out.codes), [[0b100, 0b111]])
    np.testing.assert_array_equal(np.asarray(lfq_codes_to_vectors(out.codes, 3, num_codebooks=2)), np.asarray(z))
    np.testing.assert_allclose(np.asarray(bsq_codes_to_vectors(out.codes, 3, num_codebooks=2)), np.asarray(z) / np.sqrt(3))


def test_straight_through_gradient():
    z = jnp.asarray(np.random.RandomState(3).randn(5, 8), jnp.float32)
    w = jnp.asarray(np.random.RandomState(4).randn(5, 8), jnp.float32)
    g = jax.jit(jax.grad(lambda z: jnp.sum(lfq(z, with_entropy=False).z_q * w)))(z)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_entropy_memory_stays_small_for_2_16_codes():
    z = jax.ShapeDtypeStruct((16, 1024, 16), jnp.float32)
    step = jax.jit(jax.value_and_grad(lambda z: lfq(z).aux_loss))
    mem = step.lower(z).compile().memory_analysis()
    dense_bytes = 16 * 1024 * 2**16 * 4
    assert mem.temp_size_in_bytes < dense_bytes / 32
    loss, grad = step(jnp.asarray(np.random.RandomState(5).randn(16, 1024, 16), jnp.float32) * 0.01)
    assert np.isfinite(float(loss)) and grad.shape == (16, 1024, 16)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="num_codebooks=4"):
        lfq(jnp.zeros((2, 6)), num_codebooks=4)
    with pytest.raises(ValueError, match="int32"):
        lfq(jnp.zeros((2, 31)))
