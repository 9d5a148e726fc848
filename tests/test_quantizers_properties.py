"""Property tests over shapes and dtypes: every quantizer keeps shapes and dtypes, codes are in range,
codes map back to z_q, and results do not depend on jit or vmap."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmntp_jax.tokenizers.quantizers import (
    bsq,
    bsq_codes_to_vectors,
    fsq,
    fsq_codes_to_vectors,
    group_vq,
    group_vq_codes_to_vectors,
    lfq,
    lfq_codes_to_vectors,
    msvq,
    msvq_codes_to_vectors,
    residual_fsq,
    residual_fsq_codes_to_vectors,
    rvq,
    rvq_codes_to_vectors,
    vq,
    vq_codes_to_vectors,
)

RS = np.random.RandomState(0)
CB = jnp.asarray(RS.randn(32, 4), jnp.float32)
CBS = jnp.asarray(RS.randn(3, 32, 4), jnp.float32)
GROUP_CBS = jnp.asarray(RS.randn(2, 32, 2), jnp.float32)

# name -> (channels, codebook size, quantize, codes -> vectors, codes per token)
QUANTIZERS = {
    "vq": (4, 32, lambda z: vq(z, CB), lambda c: vq_codes_to_vectors(c, CB), ()),
    "rvq": (4, 32, lambda z: rvq(z, CBS), lambda c: rvq_codes_to_vectors(c, CBS), (3,)),
    "group_vq": (4, 32, lambda z: group_vq(z, GROUP_CBS), lambda c: group_vq_codes_to_vectors(c, GROUP_CBS), (2,)),
    "fsq": (4, 1000, lambda z: fsq(z, [8, 5, 5, 5]), lambda c: fsq_codes_to_vectors(c, [8, 5, 5, 5]), ()),
    "residual_fsq": (3, 125, lambda z: residual_fsq(z, [5, 5, 5], 2), lambda c: residual_fsq_codes_to_vectors(c, [5, 5, 5]), (2,)),
    "lfq": (6, 64, lambda z: lfq(z), lambda c: lfq_codes_to_vectors(c, 6), ()),
    "bsq": (6, 64, lambda z: bsq(z), lambda c: bsq_codes_to_vectors(c, 6), ()),
}
JITTED = {name: (d, c, jax.jit(q), jax.jit(back), extra) for name, (d, c, q, back, extra) in QUANTIZERS.items()}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


CASES = dict(
    name=st.sampled_from(sorted(QUANTIZERS)),
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=3),
    dtype=st.sampled_from(sorted(DTYPES)),
    seed=st.integers(0, 2**16),
)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(**CASES)
def test_shapes_dtypes_ranges_and_round_trip(name, lead, dtype, seed):
    check_shapes_dtypes_ranges_and_round_trip(name, lead, dtype, seed)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(**CASES)
def test_shapes_dtypes_ranges_and_round_trip_many(name, lead, dtype, seed):
    check_shapes_dtypes_ranges_and_round_trip(name, lead, dtype, seed)


def check_shapes_dtypes_ranges_and_round_trip(name, lead, dtype, seed):
    d, size, quantize, back, extra = JITTED[name]
    z32 = np.random.RandomState(seed).randn(*lead, d).astype(np.float32)
    z = jnp.asarray(z32, DTYPES[dtype])
    out = quantize(z)
    assert out.z_q.shape == z.shape and out.z_q.dtype == z.dtype
    assert out.codes.shape == (*lead, *extra) and out.codes.dtype == jnp.int32
    codes = np.asarray(out.codes)
    assert codes.min() >= 0 and codes.max() < size
    assert out.aux_loss.shape == () and np.isfinite(float(out.aux_loss))
    tol = 1e-5 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(np.asarray(back(out.codes)), np.asarray(out.z_q, np.float32), atol=tol, rtol=tol)
    # bfloat16 / float16 inputs quantize exactly as their float32 values do
    ref = quantize(z.astype(jnp.float32))
    np.testing.assert_array_equal(codes, np.asarray(ref.codes))


@settings(max_examples=5, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(QUANTIZERS)), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_vmap_equals_per_example(name, batch, seed):
    d, _, quantize, _, _ = JITTED[name]
    z = jnp.asarray(np.random.RandomState(seed).randn(batch, 5, d), jnp.float32)
    codes = jax.jit(jax.vmap(lambda x: QUANTIZERS[name][2](x).codes))(z)
    for b in range(batch):
        np.testing.assert_array_equal(np.asarray(codes[b]), np.asarray(quantize(z[b]).codes))


@settings(max_examples=2, deadline=None, derandomize=True)
@given(h=st.integers(4, 9), w=st.integers(4, 9), seed=st.integers(0, 2**16))
def test_msvq_any_latent_size(h, w, seed):
    scales = ((1, 1), (2, 2), (h // 2, w // 2), (h, w))
    z = jnp.asarray(np.random.RandomState(seed).randn(2, h, w, 4), jnp.bfloat16)
    out = jax.jit(partial(msvq, scales=scales))(z, CB)
    assert out.codes.shape == (2, sum(p * q for p, q in scales)) and out.z_q.dtype == jnp.bfloat16
    back = jax.jit(partial(msvq_codes_to_vectors, size=(h, w), scales=scales))(out.codes, CB)
    np.testing.assert_allclose(np.asarray(back), np.asarray(out.z_q, np.float32), atol=3e-2, rtol=1e-2)
