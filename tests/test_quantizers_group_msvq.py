"""Grouped VQ against per-group VQ; multi-scale VQ against a numpy VAR reference and torch resampling."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.tokenizers.quantizers import (
    ema_update,
    group_vq,
    group_vq_codes_to_vectors,
    group_vq_ema_update,
    group_vq_kmeans_init,
    group_vq_restart_dead_codes,
    init_vq_state,
    kmeans_init,
    msvq,
    msvq_codes_to_vectors,
    msvq_ema_update,
    msvq_inputs,
    msvq_update,
    resample_matrix,
    split_codes,
    tokens_per_image,
    vq,
    vq_state,
)


def stack_states(cbs):
    return jax.tree.map(lambda *x: jnp.stack(x), *[vq_state(c) for c in cbs])


@pytest.fixture(scope="module")
def grouped():
    rs = np.random.RandomState(0)
    return rs.randn(3, 20, 12).astype(np.float32), rs.randn(4, 16, 3).astype(np.float32)


def test_group_vq_equals_one_vq_per_group(grouped):
    z, cbs = grouped
    out = jax.jit(partial(group_vq, beta=0.5))(jnp.asarray(z), jnp.asarray(cbs))
    assert out.codes.shape == (3, 20, 4) and out.z_q.shape == z.shape
    one = jax.jit(partial(vq, beta=0.5))
    parts = [one(jnp.asarray(z[..., 3 * g : 3 * g + 3]), jnp.asarray(cbs[g])) for g in range(4)]
    for g, p in enumerate(parts):
        np.testing.assert_array_equal(np.asarray(out.codes[..., g]), np.asarray(p.codes))
        np.testing.assert_allclose(np.asarray(out.z_q[..., 3 * g : 3 * g + 3]), np.asarray(p.z_q), atol=1e-6)
    np.testing.assert_allclose(float(out.aux_loss), np.mean([float(p.aux_loss) for p in parts]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(jax.jit(group_vq_codes_to_vectors)(out.codes, jnp.asarray(cbs))), np.asarray(out.z_q), atol=1e-6)


def test_group_vq_shared_codebook_and_state_updates(grouped):
    z, cbs = grouped
    shared = jax.jit(partial(group_vq, num_groups=4))(jnp.asarray(z), jnp.asarray(cbs[0]))
    ref = jax.jit(vq)(jnp.asarray(z.reshape(3, 20, 4, 3)), jnp.asarray(cbs[0]))
    np.testing.assert_array_equal(np.asarray(shared.codes), np.asarray(ref.codes))
    states = stack_states(cbs)
    out = jax.jit(group_vq)(jnp.asarray(z), states)
    new = jax.jit(partial(group_vq_ema_update, decay=0.9))(states, jnp.asarray(z), out.codes)
    one_update = jax.jit(partial(ema_update, decay=0.9))
    for g in range(4):
        one = one_update(vq_state(cbs[g]), jnp.asarray(z[..., 3 * g : 3 * g + 3]), out.codes[..., g])
        np.testing.assert_allclose(np.asarray(new.codebook_CK[g]), np.asarray(one.codebook_CK), rtol=1e-5, atol=1e-6)
    restarted = jax.jit(partial(group_vq_restart_dead_codes, threshold=0.95))(new, jnp.asarray(z), jax.random.key(0))
    dead = np.asarray(new.cluster_size_C) < 0.95  # codes no token chose
    assert dead.any() and not dead.all()
    np.testing.assert_array_equal(np.asarray(restarted.codebook_CK)[~dead], np.asarray(new.codebook_CK)[~dead])
    rows = z.reshape(-1, 4, 3)
    for g in range(4):
        for c in np.nonzero(dead[g])[0]:
            assert np.min(np.abs(rows[:, g] - np.asarray(restarted.codebook_CK[g, c])).sum(-1)) < 1e-6


@pytest.mark.slow
def test_group_vq_kmeans_init_equals_per_group_kmeans(grouped):
    z, _ = grouped
    fresh = jax.tree.map(lambda *x: jnp.stack(x), *[init_vq_state(jax.random.key(0), 4, 3, kmeans=True)] * 4)
    init = jax.jit(partial(group_vq_kmeans_init, iters=2))(fresh, jnp.asarray(z), jax.random.key(1))
    assert bool(jnp.all(init.initted))
    one_init = jax.jit(partial(kmeans_init, iters=2))
    for g, k in enumerate(jax.random.split(jax.random.key(1), 4)):
        ref = one_init(jax.tree.map(lambda x: x[g], fresh), jnp.asarray(z[..., 3 * g : 3 * g + 3]), k)
        np.testing.assert_allclose(np.asarray(init.codebook_CK[g]), np.asarray(ref.codebook_CK), rtol=1e-5, atol=1e-6)


def np_msvq(z, cb, shapes, mode="bicubic"):
    """VAR's multi-scale residual quantization written directly in numpy (float64)."""
    b, h, w, d = z.shape
    f_rest, f_hat, codes = z.astype(np.float64), np.zeros(z.shape), []
    for p, q in shapes:
        a_ph, a_qw = resample_matrix(p, h, "area"), resample_matrix(q, w, "area")
        r = np.einsum("ph,bhwd,qw->bpqd", a_ph, f_rest, a_qw)
        c = ((r[..., None, :] - cb) ** 2).sum(-1).argmin(-1)
        codes.append(c.reshape(b, -1))
        u_hp, u_wq = resample_matrix(h, p, mode), resample_matrix(w, q, mode)
        up = np.einsum("hp,bpqd,wq->bhwd", u_hp, cb[c], u_wq) if (p, q) != (h, w) else cb[c]
        f_hat, f_rest = f_hat + up, f_rest - up
    return np.concatenate(codes, -1), f_hat


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_msvq_matches_numpy_reference(mode):
    rs = np.random.RandomState(1)
    z, cb = rs.randn(2, 8, 8, 4).astype(np.float32), rs.randn(32, 4).astype(np.float32)
    scales = (1, 2, 3, 5, 8)
    out = jax.jit(partial(msvq, scales=scales, upsample=mode))(jnp.asarray(z), jnp.asarray(cb))
    ref_codes, ref_hat = np_msvq(z, cb, [(s, s) for s in scales], mode)
    assert out.codes.shape == (2, tokens_per_image(scales)) == (2, 1 + 4 + 9 + 25 + 64)
    np.testing.assert_array_equal(np.asarray(out.codes), ref_codes)
    np.testing.assert_allclose(np.asarray(out.z_q), ref_hat, atol=1e-4)
    back = jax.jit(partial(msvq_codes_to_vectors, size=(8, 8), scales=scales, upsample=mode))(out.codes, jnp.asarray(cb))
    np.testing.assert_allclose(np.asarray(back), np.asarray(out.z_q), atol=1e-5)
    assert [m.shape for m in split_codes(out.codes, scales)] == [(2, s, s) for s in scales]


def test_resample_matrices_known_weights():
    # 2x bicubic upsampling (A = -0.75): interior outputs sit at offsets 0.25 / 0.75
    m = resample_matrix(8, 4, "bicubic")
    np.testing.assert_allclose(m[3, 0:4], [-0.10546875, 0.87890625, 0.26171875, -0.03515625], atol=1e-7)
    np.testing.assert_allclose(m[4, 0:4], [-0.03515625, 0.26171875, 0.87890625, -0.10546875], atol=1e-7)
    for mode in ("bicubic", "bilinear", "area"):
        np.testing.assert_allclose(resample_matrix(7, 3, mode).sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(resample_matrix(2, 5, "area"), [[1 / 3, 1 / 3, 1 / 3, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]], atol=1e-7)
    np.testing.assert_allclose(resample_matrix(4, 2, "bilinear")[1], [0.75, 0.25], atol=1e-7)


@pytest.mark.slow
def test_resample_matrices_match_torch_interpolate():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.RandomState(2).randn(1, 2, 13, 10).astype(np.float32)
    for mode, size, src in [("area", (5, 3), x), ("bicubic", (16, 16), x[..., :4, :6]), ("bilinear", (16, 7), x[..., :4, :6])]:
        ref = F.interpolate(torch.tensor(src), size=size, mode=mode).numpy()
        ours = np.einsum("ph,bchw,qw->bcpq", resample_matrix(size[0], src.shape[2], mode), src, resample_matrix(size[1], src.shape[3], mode))
        np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_msvq_var_scales_ema_and_gradient():
    rs = np.random.RandomState(3)
    z, cb = jnp.asarray(rs.randn(1, 16, 16, 4), jnp.float32), jnp.asarray(rs.randn(64, 4), jnp.float32)
    state = vq_state(cb)
    w = jnp.asarray(rs.randn(1, 16, 16, 4), jnp.float32)
    (_, out), g = jax.jit(jax.value_and_grad(lambda z: (lambda o: (jnp.sum(o.z_q * w), o))(msvq(z, state)), has_aux=True))(z)
    assert out.codes.shape == (1, 680)
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)
    new = jax.jit(partial(msvq_ema_update, decay=0.5))(state, z, out.codes)
    np.testing.assert_allclose(float(new.cluster_size_C.sum()), 64 * 0.5 + 680 * 0.5, rtol=1e-5)
    # restart: codes under threshold take rows of the forward pass's per-scale residuals
    rows, _ = jax.jit(msvq_inputs)(state, z, out.codes)
    both = jax.jit(partial(msvq_update, decay=0.5, threshold=4.0))(state, z, out.codes, jax.random.key(0))
    dead = np.asarray(new.cluster_size_C) < 4.0
    assert dead.any() and not dead.all()
    np.testing.assert_allclose(np.asarray(both.codebook_CK)[~dead], np.asarray(new.codebook_CK)[~dead], rtol=1e-6)
    for row in np.asarray(both.codebook_CK)[dead]:
        assert np.min(np.abs(np.asarray(rows) - row).sum(-1)) < 1e-6
    coarse = jax.jit(partial(msvq_codes_to_vectors, size=(16, 16), scales=(1,)))(out.codes[:, :1], cb)
    np.testing.assert_allclose(np.asarray(coarse[0, 0, 0]), np.asarray(cb[out.codes[0, 0]]), atol=1e-5)


def test_msvq_bad_inputs():
    with pytest.raises(ValueError, match="channels last"):
        msvq(jnp.zeros((4, 8)), jnp.zeros((8, 8)))
    with pytest.raises(ValueError, match="exceed"):
        msvq(jnp.zeros((1, 4, 4, 2)), jnp.zeros((8, 2)), scales=(1, 8))
