"""Residual VQ against a sequential numpy reference; quantizer dropout; per-layer EMA."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.quantizers import (
    VQState,
    ema_update,
    init_vq_state,
    rvq,
    rvq_codes_to_vectors,
    rvq_ema_update,
    rvq_kmeans_init,
    rvq_residuals,
    rvq_restart_dead_codes,
    rvq_update,
    vq_state,
)


def np_rvq(z, cbs):
    residual = z.reshape(-1, z.shape[-1]).astype(np.float64)
    codes, total = [], np.zeros_like(residual)
    for cb in cbs:
        c = ((residual[:, None] - cb[None]) ** 2).sum(-1).argmin(-1)
        codes.append(c)
        total += cb[c]
        residual = residual - cb[c]
    return np.stack(codes, -1).reshape(*z.shape[:-1], len(cbs)), total.reshape(z.shape)


@pytest.fixture(scope="module")
def data():
    rs = np.random.RandomState(0)
    return rs.randn(4, 30, 6).astype(np.float32), rs.randn(3, 32, 6).astype(np.float32)


def test_codes_and_reconstruction_match_numpy(data):
    z, cbs = data
    out = jax.jit(partial(rvq, beta=0.25))(jnp.asarray(z), jnp.asarray(cbs))
    ref_codes, ref_total = np_rvq(z, cbs)
    np.testing.assert_array_equal(np.asarray(out.codes), ref_codes)
    np.testing.assert_allclose(np.asarray(out.z_q), ref_total, atol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(rvq_codes_to_vectors)(out.codes, jnp.asarray(cbs))), ref_total, atol=1e-5)
    # aux: per layer (beta + 1)·mean(residual_i − q_i)²
    residual, aux = z.astype(np.float64), 0.0
    for i, cb in enumerate(cbs):
        q = cb[ref_codes[..., i]]
        aux += 1.25 * np.mean((residual - q) ** 2)
        residual = residual - q
    np.testing.assert_allclose(float(out.aux_loss), aux, rtol=1e-5)


def test_shared_codebook(data):
    z, cbs = data
    out = jax.jit(partial(rvq, num_quantizers=4))(jnp.asarray(z), jnp.asarray(cbs[0]))
    ref_codes, ref_total = np_rvq(z, [cbs[0]] * 4)
    np.testing.assert_array_equal(np.asarray(out.codes), ref_codes)
    np.testing.assert_allclose(np.asarray(out.z_q), ref_total, atol=1e-5)


def test_quantizer_dropout(data):
    z, cbs = data
    f = jax.jit(lambda k: rvq(jnp.asarray(z), jnp.asarray(cbs), dropout_key=k))
    seen = set()
    for seed in range(12):
        out = f(jax.random.key(seed))
        n = int(out.metrics["active_quantizers"])
        seen.add(n)
        codes = np.asarray(out.codes)
        ref_codes, ref_total = np_rvq(z, cbs[:n])
        np.testing.assert_array_equal(codes[..., :n], ref_codes)
        assert np.all(codes[..., n:] == -1)
        np.testing.assert_allclose(np.asarray(out.z_q), ref_total, atol=1e-5)
        np.testing.assert_allclose(np.asarray(jax.jit(rvq_codes_to_vectors)(out.codes, jnp.asarray(cbs))), ref_total, atol=1e-5)
    assert seen == {1, 2, 3}
    low = jax.jit(partial(rvq, num_active=1))(jnp.asarray(z), jnp.asarray(cbs))
    np.testing.assert_allclose(np.asarray(low.z_q), np_rvq(z, cbs[:1])[1], atol=1e-5)


def test_straight_through_gradient(data):
    z, cbs = data
    w = jnp.asarray(np.random.RandomState(1).randn(*z.shape), jnp.float32)
    states = jax.tree.map(lambda *x: jnp.concatenate(x), *[VQState(*[x[None] for x in vq_state(c)]) for c in cbs])
    g = jax.jit(jax.grad(lambda z: jnp.sum(rvq(z, states).z_q * w)))(jnp.asarray(z))
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def test_ema_update_per_layer_matches_single_layer_updates(data):
    z, cbs = data
    states = jax.tree.map(lambda *x: jnp.stack(x), *[vq_state(c) for c in cbs])
    out = jax.jit(rvq)(jnp.asarray(z), states)
    new = jax.jit(partial(rvq_ema_update, decay=0.9))(states, jnp.asarray(z), out.codes)
    residual = z
    one_update = jax.jit(partial(ema_update, decay=0.9))
    for i, cb in enumerate(cbs):
        ref = one_update(vq_state(cb), jnp.asarray(residual), out.codes[..., i])
        np.testing.assert_allclose(np.asarray(new.codebook_CK[i]), np.asarray(ref.codebook_CK), rtol=1e-4, atol=1e-5)
        residual = residual - cb[np.asarray(out.codes[..., i])]
    forward_residuals = rvq_residuals(jnp.asarray(z), out.codes, states)
    restart = jax.jit(partial(rvq_restart_dead_codes, threshold=0.95))
    restarted = restart(new, jnp.asarray(z), out.codes, jax.random.key(0), residuals=forward_residuals)
    both = jax.jit(partial(rvq_update, decay=0.9, threshold=0.95))(states, jnp.asarray(z), out.codes, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(both.codebook_CK), np.asarray(restarted.codebook_CK), rtol=1e-6, atol=1e-6)
    dead = np.asarray(new.cluster_size_C) < 0.95  # codes no token chose, per layer
    assert dead.any() and not dead.all()
    np.testing.assert_array_equal(np.asarray(restarted.codebook_CK)[~dead], np.asarray(new.codebook_CK)[~dead])
    # a restarted code of layer i is one of the residuals layer i saw
    residual = z.reshape(-1, 6)
    for i, cb in enumerate(cbs):
        for c in np.nonzero(dead[i])[0]:
            assert np.min(np.abs(residual - np.asarray(restarted.codebook_CK[i, c])).sum(-1)) < 1e-5
        residual = residual - cb[np.asarray(out.codes[..., i]).reshape(-1)]


def test_kmeans_init_layer_by_layer(data):
    z, _ = data
    states = jax.tree.map(lambda *x: jnp.stack(x), *[init_vq_state(jax.random.key(0), 8, 6, kmeans=True)] * 2)
    states = jax.jit(partial(rvq_kmeans_init, iters=3))(states, jnp.asarray(z), jax.random.key(1))
    assert bool(jnp.all(states.initted))
    out = jax.jit(rvq)(jnp.asarray(z), states)
    first_only = jax.jit(partial(rvq, num_active=1))(jnp.asarray(z), states)
    assert float(jnp.mean((out.z_q - z) ** 2)) < float(jnp.mean((first_only.z_q - z) ** 2)) < float(jnp.mean(z**2))


def test_bad_codebook_shape():
    with pytest.raises(ValueError, match="num_quantizers"):
        rvq(jnp.zeros((2, 4)), jnp.zeros((8, 4)))
    with pytest.raises(ValueError, match="stacked codebooks"):
        rvq(jnp.zeros((2, 4)), jnp.zeros((3, 8, 4)), num_quantizers=2)
