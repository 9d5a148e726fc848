"""The backbone against independent references: causality, segment isolation,
attention implementations, KV-cache decoding, RoPE layout and the chunked loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.config import ModelConfig
from mmntp_jax.model import attention
from mmntp_jax.model.heads import logits, token_losses
from mmntp_jax.model.layers import apply_rope, dense, rope_cos_sin
from mmntp_jax.model.transformer import Transformer

CFG = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, attention_block=8)


def make(**changes):
    return Transformer(dataclasses.replace(CFG, **changes), rngs=nnx.Rngs(0))


@jax.jit
def _embedding_grad(graph_params, ids, positions, segments, t):
    graph, params = graph_params
    m = nnx.merge(graph, params)
    f = lambda e: jnp.take(logits(run_from_embeddings(m, e, positions, segments), m.head_kernel()), t, axis=1).sum()
    return jax.grad(f)(m.embed_tokens(ids, jnp.float32))


def embedding_grad(model, ids, positions, segments, t):
    """d(sum of logits at position t) / d(input embeddings), per position."""
    return _embedding_grad(nnx.split(model), ids, positions, segments, t)


def run_from_embeddings(model, x_BTD, positions, segments):
    return model.from_embeddings(x_BTD, positions, segments)


@pytest.mark.parametrize("impl", ["reference", "xla", "blockwise"])
def test_causality_gradient_is_exactly_zero_after_t(impl):
    model = make(attention=impl)
    ids = jax.random.randint(jax.random.key(1), (1, 24), 0, 97)
    pos = jnp.arange(24)[None]
    seg = jnp.ones((1, 24), jnp.int32)
    for t in (0, 7, 16):
        g = np.asarray(embedding_grad(model, ids, pos, seg, t))
        assert np.all(g[:, t + 1 :] == 0.0), f"position {t} depends on later inputs"
        assert np.abs(g[:, : t + 1]).sum() > 0


@pytest.mark.parametrize("impl", ["reference", "xla", "blockwise"])
def test_packed_documents_do_not_see_each_other(impl):
    model = make(attention=impl)
    ids = jax.random.randint(jax.random.key(2), (1, 24), 0, 97)
    seg = jnp.array([[1] * 9 + [2] * 11 + [0] * 4])
    pos = jnp.array([list(range(9)) + list(range(11)) + list(range(4))])
    g = np.asarray(embedding_grad(model, ids, pos, seg, 15))  # a token of document 2
    assert np.all(g[:, :9] == 0.0)
    assert np.abs(g[:, 9:16]).sum() > 0
    # and document 2 alone, at positions from 0, gives the same hidden states
    packed = run_from_embeddings(model, model.embed_tokens(ids, jnp.float32), pos, seg)[:, 9:20]
    alone = model(ids[:, 9:20])
    np.testing.assert_allclose(packed, alone, atol=2e-5)


def test_attention_implementations_agree_with_dense_numpy():
    key = jax.random.key(3)
    b, t, h, k, e = 2, 32, 4, 2, 16
    q, kk, v = (jax.random.normal(kx, s) for kx, s in zip(jax.random.split(key, 3), [(b, t, h, e), (b, t, k, e), (b, t, k, e)]))
    seg = jnp.array([[1] * 12 + [2] * 20, [1] * 30 + [0] * 2])
    ids = attention.row_ids(seg, jnp.zeros_like(seg))
    mask = attention.attention_mask(ids, ids)
    # numpy reference, one head at a time
    qn, kn, vn, mn = map(np.asarray, (q, kk, v, mask))
    ref = np.zeros((b, t, h, e))
    for bi in range(b):
        for hi in range(h):
            s = qn[bi, :, hi] @ kn[bi, :, hi // (h // k)].T / np.sqrt(e)
            s = np.where(mn[bi], s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True))
            ref[bi, :, hi] = (p / p.sum(-1, keepdims=True)) @ vn[bi, :, hi // (h // k)]
    for name, out in {
        "reference": attention.reference_attention(q, kk, v, ids, ids),
        "xla": attention.xla_attention(q, kk, v, ids, ids),
        "blockwise": attention.blockwise_attention(q, kk, v, ids, 8),
    }.items():
        np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_kv_cache_decoding_matches_full_forward(qk_norm):
    model = make(qk_norm=qk_norm)
    ids = jax.random.randint(jax.random.key(4), (2, 20), 0, 97)
    full = logits(model(ids), model.head_kernel())
    pos = jnp.broadcast_to(jnp.arange(20), (2, 20))
    graph, params = nnx.split(model)

    @jax.jit
    def prefill_then_steps(params):
        m = nnx.merge(graph, params)
        h, cache = m.decode(ids[:, :12], pos[:, :12], jnp.ones((2, 12), jnp.int32), m.init_cache(2, 24), 0)

        def step(cache, t):
            token, p = jax.lax.dynamic_slice_in_dim(ids, t, 1, 1), jax.lax.dynamic_slice_in_dim(pos, t, 1, 1)
            h, cache = m.decode(token, p, jnp.ones((2, 1), jnp.int32), cache, t)
            return cache, logits(h, m.head_kernel())[:, 0]

        _, rest = jax.lax.scan(step, cache, jnp.arange(12, 20))
        return jnp.concatenate([logits(h, m.head_kernel()), rest.swapaxes(0, 1)], axis=1)

    np.testing.assert_allclose(prefill_then_steps(params), full, atol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_equals_numpy_in_value_and_gradient(dtype):
    rng = np.random.default_rng(0)
    x_NI, w_IO, g_NO = (rng.standard_normal(s).astype(np.float32) for s in ((24, 16), (16, 8), (24, 8)))
    out, vjp = jax.vjp(dense, jnp.asarray(x_NI, dtype), jnp.asarray(w_IO, dtype))
    dx, dw = vjp(jnp.asarray(g_NO, dtype))
    assert out.dtype == dx.dtype == dw.dtype == dtype
    tol = 1e-5 if dtype == jnp.float32 else 5e-2
    for got, want in ((out, x_NI @ w_IO), (dx, g_NO @ w_IO.T), (dw, x_NI.T @ g_NO)):
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol * np.abs(want).max())


def test_rope_is_rotate_half_layout():
    x = np.random.default_rng(0).normal(size=(1, 5, 2, 8)).astype(np.float32)
    pos = np.arange(5)[None]
    cos, sin = rope_cos_sin(jnp.asarray(pos), 8, 10000.0)
    out = np.asarray(apply_rope(jnp.asarray(x), cos, sin))
    inv = 1.0 / 10000.0 ** (np.arange(0, 8, 2) / 8)
    ang = pos[0][:, None] * inv  # [T, 4]
    x1, x2 = x[..., :4], x[..., 4:]
    c, s = np.cos(ang)[None, :, None], np.sin(ang)[None, :, None]
    expected = np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_chunked_loss_equals_dense_reference_and_its_gradient():
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(2, 16, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 50)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 50, size=(2, 16)))
    z = np.asarray(h) @ np.asarray(w)
    lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    ref = lse - np.take_along_axis(z, np.asarray(y)[..., None], -1)[..., 0]
    dense, _ = token_losses(h, w, y, 0)
    chunked, chunk_lse = token_losses(h, w, y, 4)
    np.testing.assert_allclose(dense, ref, rtol=1e-5)
    np.testing.assert_allclose(chunked, ref, rtol=1e-5)
    np.testing.assert_allclose(chunk_lse, lse, rtol=1e-5)
    g_dense = jax.grad(lambda h: token_losses(h, w, y, 0)[0].sum())(h)
    g_chunk = jax.grad(lambda h: token_losses(h, w, y, 4)[0].sum())(h)
    np.testing.assert_allclose(g_chunk, g_dense, rtol=1e-5, atol=1e-6)


def test_scan_and_unrolled_layers_and_remat_agree():
    ids = jax.random.randint(jax.random.key(5), (2, 16), 0, 97)
    base = make(scan_layers="scan")(ids)
    for changes in ({"scan_layers": "unroll"}, {"scan_layers": "auto"}, {"scan_layers": False}, {"remat": "full"}, {"remat": "dots_saveable"}):
        np.testing.assert_allclose(make(**changes)(ids), base, atol=1e-5, err_msg=str(changes))


def test_bfloat16_compute_keeps_float32_params_and_is_close():
    ids = jax.random.randint(jax.random.key(6), (2, 16), 0, 97)
    m16 = make(dtype="bfloat16")
    assert m16.layers.mlp.gate_proj[...].dtype == jnp.float32
    out16 = logits(m16(ids), m16.head_kernel())
    out32 = logits(make()(ids), make().head_kernel())
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, out32, atol=0.05)


@pytest.mark.parametrize("chunk", [0, 4])
def test_fused_cross_entropy_gradients_match_autodiff(chunk):
    from mmntp_jax.model.heads import fused_cross_entropy

    rng = np.random.default_rng(1)
    h = jnp.asarray(rng.normal(size=(2, 16, 8)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 50)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 50, size=(2, 16)))
    m = jnp.asarray(rng.integers(0, 2, size=(2, 16)), jnp.float32)

    def reference(h, w):
        loss, lse = token_losses(h, w, y, 0)
        return jnp.sum(loss * m) + 1e-2 * jnp.sum(m * lse**2)

    fused = lambda h, w: fused_cross_entropy(h, w, y, m, 1e-2, chunk)[0]
    np.testing.assert_allclose(fused(h, w), reference(h, w), rtol=1e-5)
    for got, want in zip(jax.grad(fused, argnums=(0, 1))(h, w), jax.grad(reference, argnums=(0, 1))(h, w)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_layer_loop_auto_unrolls_small_models_only():
    from mmntp_jax.model.transformer import layer_loop

    small, deep = CFG, dataclasses.replace(CFG, n_layers=12)
    assert layer_loop(small, (8, 512, 192)) == "unroll"  # the captioned job's step
    assert layer_loop(small, (8, 1024, 512)) == "scan"  # 4.2M activations (the d512 shape)
    assert layer_loop(deep, (1, 16, 64)) == "scan"
    assert layer_loop(dataclasses.replace(CFG, scan_layers="scan"), (1, 16, 64)) == "scan"
    assert dataclasses.replace(CFG, scan_layers=True).scan_layers == "scan"  # older configs' booleans
    assert dataclasses.replace(CFG, scan_layers="false").scan_layers == "unroll"
