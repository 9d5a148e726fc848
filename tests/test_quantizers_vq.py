"""VQ forward, gradients and EMA codebook learning against dense numpy references."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.quantizers import (
    VQState,
    ema_update,
    init_vq_state,
    kmeans_init,
    nearest_codes,
    restart_dead_codes,
    vq,
    vq_codes_to_vectors,
    vq_state,
)


def np_nearest(z, cb, cosine=False):
    if cosine:
        z = z / np.linalg.norm(z, axis=-1, keepdims=True)
        cb = cb / np.linalg.norm(cb, axis=-1, keepdims=True)
        return np.argmax(z @ cb.T, -1)
    d = ((z[:, None, :].astype(np.float64) - cb[None].astype(np.float64)) ** 2).sum(-1)
    return np.argmin(d, -1)


@pytest.fixture(scope="module")
def data():
    rs = np.random.RandomState(0)
    return rs.randn(6, 40, 8).astype(np.float32), rs.randn(64, 8).astype(np.float32)


@pytest.mark.parametrize("cosine", [False, True])
def test_codes_losses_and_round_trip(data, cosine):
    z, cb = data
    out = jax.jit(partial(vq, cosine=cosine, beta=0.3))(jnp.asarray(z), jnp.asarray(cb))
    ref = np_nearest(z.reshape(-1, 8), cb, cosine).reshape(6, 40)
    np.testing.assert_array_equal(np.asarray(out.codes), ref)
    cbn = cb / np.linalg.norm(cb, axis=-1, keepdims=True) if cosine else cb
    zn = z / np.linalg.norm(z, axis=-1, keepdims=True) if cosine else z
    np.testing.assert_allclose(np.asarray(out.z_q), cbn[ref], atol=1e-5)
    err = np.mean((zn - cbn[ref]) ** 2)
    np.testing.assert_allclose(float(out.aux_loss), 1.3 * err, rtol=1e-5)
    back = vq_codes_to_vectors(out.codes, jnp.asarray(cb), cosine=cosine)
    np.testing.assert_allclose(np.asarray(back), np.asarray(out.z_q), atol=1e-6)
    used = len(np.unique(ref))
    assert float(out.metrics["usage"]) == pytest.approx(used / 64)
    assert float(out.metrics["dead_codes"]) == 64 - used
    p = np.bincount(ref.ravel(), minlength=64) / ref.size
    assert float(out.metrics["perplexity"]) == pytest.approx(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-5)


def test_chunked_search_equals_dense(data):
    z, cb = data
    flat = z.reshape(-1, 8)
    for chunk in (7, 64, 10_000):
        codes = jax.jit(partial(nearest_codes, chunk_size=chunk))(jnp.asarray(flat), jnp.asarray(cb))
        np.testing.assert_array_equal(np.asarray(codes), np_nearest(flat, cb))


def test_straight_through_gradient(data):
    z, cb = data
    w = jnp.asarray(np.random.RandomState(1).randn(*z.shape), jnp.float32)

    def loss(z):
        return jnp.sum(jnp.sin(vq(z, vq_state(cb)).z_q) * w)

    g_z = jax.jit(jax.grad(loss))(jnp.asarray(z))
    z_q = jax.jit(vq)(jnp.asarray(z), jnp.asarray(cb)).z_q
    g_zq = jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(q) * w)))(z_q)
    np.testing.assert_allclose(np.asarray(g_z), np.asarray(g_zq), rtol=1e-5, atol=1e-6)


def test_codebook_gradient_only_through_codebook_loss(data):
    z, cb = data
    g_cb = jax.jit(jax.grad(lambda c: vq(jnp.asarray(z), c, beta=0.0).aux_loss))(jnp.asarray(cb))
    codes = np_nearest(z.reshape(-1, 8), cb)
    ref = np.zeros_like(cb)
    np.add.at(ref, codes, 2 * (cb[codes] - z.reshape(-1, 8)) / z.size)
    np.testing.assert_allclose(np.asarray(g_cb), ref, atol=1e-6)
    g_state = jax.jit(jax.grad(lambda s: vq(jnp.asarray(z), s).aux_loss, allow_int=True))(vq_state(cb))
    assert float(jnp.abs(g_state.codebook_CK).max()) == 0.0


def test_rotation_trick_value_and_gradient(data):
    z, cb = data
    z2 = jnp.asarray(z.reshape(-1, 8)[:5])
    g = jnp.asarray(np.random.RandomState(3).randn(5, 8), jnp.float32)
    out, (g_z,) = jax.jit(lambda z, g: (lambda o, f: (o, f(g)))(*jax.vjp(lambda z: vq(z, jnp.asarray(cb), rotation=True).z_q, z)))(z2, g)
    codes = np_nearest(np.asarray(z2), cb)
    np.testing.assert_allclose(np.asarray(out), cb[codes], atol=1e-5)
    for n in range(5):
        e, q = np.asarray(z2[n], np.float64), cb[codes[n]].astype(np.float64)
        u, qh = e / np.linalg.norm(e), q / np.linalg.norm(q)
        w = (u + qh) / np.linalg.norm(u + qh)
        jac = (np.eye(8) - 2 * np.outer(w, w) + 2 * np.outer(qh, u)) * np.linalg.norm(q) / np.linalg.norm(e)
        np.testing.assert_allclose(np.asarray(g_z[n]), jac.T @ np.asarray(g[n]), rtol=1e-4, atol=1e-5)


def test_factorised_codes(data):
    z, _ = data
    rs = np.random.RandomState(4)
    p_in, p_out, cb = rs.randn(8, 3).astype(np.float32), rs.randn(3, 8).astype(np.float32), rs.randn(16, 3).astype(np.float32)
    out = jax.jit(lambda z: vq(z, jnp.asarray(cb), cosine=True, project_in_DK=jnp.asarray(p_in), project_out_KD=jnp.asarray(p_out)))(jnp.asarray(z))
    codes = np_nearest(z.reshape(-1, 8) @ p_in, cb, cosine=True).reshape(6, 40)
    np.testing.assert_array_equal(np.asarray(out.codes), codes)
    cbn = cb / np.linalg.norm(cb, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out.z_q), cbn[codes] @ p_out, atol=1e-5)
    assert out.z_q.shape == z.shape


def test_sampled_codes_are_deterministic_and_follow_temperature(data):
    z, cb = data
    f = jax.jit(lambda k, t: vq(jnp.asarray(z), jnp.asarray(cb), sample_temperature=t, key=k).codes)
    a, b = f(jax.random.key(1), 1.0), f(jax.random.key(1), 1.0)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    ref = np_nearest(z.reshape(-1, 8), cb).reshape(6, 40)
    assert np.mean(np.asarray(a) == ref) < 0.9
    np.testing.assert_array_equal(np.asarray(f(jax.random.key(2), 1e-4)), ref)


def test_ema_update_matches_numpy(data):
    z, cb = data
    state = VQState(jnp.asarray(cb), jnp.full((64,), 1.5), jnp.asarray(cb * 1.5), jnp.asarray(True))
    codes = np_nearest(z.reshape(-1, 8), cb)
    new = jax.jit(partial(ema_update, decay=0.9, eps=1e-5))(state, jnp.asarray(z), jnp.asarray(codes.reshape(6, 40)))
    counts = np.bincount(codes, minlength=64).astype(np.float64)
    sums = np.zeros((64, 8))
    np.add.at(sums, codes, z.reshape(-1, 8))
    cs = 1.5 * 0.9 + counts * 0.1
    es = cb * 1.5 * 0.9 + sums * 0.1
    smoothed = (cs + 1e-5) / (cs.sum() + 64e-5) * cs.sum()
    np.testing.assert_allclose(np.asarray(new.cluster_size_C), cs, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(new.embed_sum_CK), es, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(new.codebook_CK), es / smoothed[:, None], rtol=1e-4, atol=1e-5)


def test_kmeans_init_finds_all_16_clusters():
    rs = np.random.RandomState(5)
    centres = rs.randn(16, 4).astype(np.float32) * 10
    labels = rs.randint(0, 16, 4096)
    z = centres[labels] + 0.3 * rs.randn(4096, 4).astype(np.float32)
    state = init_vq_state(jax.random.key(0), 16, 4, kmeans=True)
    state = jax.jit(partial(kmeans_init, iters=5))(state, jnp.asarray(z), jax.random.key(1))
    assert bool(state.initted)
    dist = np.linalg.norm(np.asarray(state.codebook_CK)[:, None] - centres[None], axis=-1)
    assert sorted(dist.argmin(1).tolist()) == list(range(16))
    assert dist.min(1).max() < 0.2
    again = jax.jit(kmeans_init)(state, jnp.asarray(z) + 100.0, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(again.codebook_CK), np.asarray(state.codebook_CK))


def test_dead_code_restart_reaches_full_usage_on_uniform_data():
    rs = np.random.RandomState(6)
    state = vq_state(jnp.asarray(rs.randn(128, 2).astype(np.float32) * 0.01 + 5.0))

    @jax.jit
    def step(state, key):
        k_data, k_restart = jax.random.split(key)
        z = jax.random.uniform(k_data, (2048, 2), minval=-1.0, maxval=1.0)
        out = vq(z, state)
        state = ema_update(state, z, out.codes, decay=0.8)
        return restart_dead_codes(state, z, k_restart, threshold=1.0), out.metrics["usage"]

    keys = jax.random.split(jax.random.key(0), 30)
    for k in keys:
        state, usage = step(state, k)
    assert float(usage) > 0.95
