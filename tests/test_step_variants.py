"""Every train-step variant trains the same model: 20 steps from one seed on the same batches.

Reference: the plain float32 decoder (XLA attention over the whole [T, T]
matrix, logits of every position at once). The library's fast path (blockwise
attention, fused chunked loss) must reach the same losses within 1e-4 in
float32; bfloat16 compute (float32 parameters, losses and softmax statistics)
within 1e-2, with every parameter and optimizer moment still float32.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmntp_jax.sharding import make_mesh
from mmntp_jax.train.step import StepBuilder
from tiny import tiny_config

STEPS, B, T, V = 20, 4, 64, 272


def batches():
    rng = np.random.default_rng(0)
    out = []
    for _ in range(STEPS):
        tokens = (np.arange(T + 1)[None] * rng.integers(1, 7, (B, 1)) + rng.integers(0, V, (B, 1))) % V  # learnable strides
        tokens = tokens.astype(np.int32)
        out.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones((B, T), np.int32),
                    "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(), "loss_mask": np.ones((B, T), np.float32),
                    "modality": np.zeros((B, T), np.int32), "block_ids": np.zeros((B, T), np.int32)})
    return out


def losses(attention: str, loss_chunk: int, dtype: str = "float32", block: int = 16):
    config = tiny_config(model=dict(attention=attention, attention_block=block, dtype=dtype, vocab_size=V),
                         train=dict(batch_size=B, seq_len=T, loss_chunk=max(loss_chunk, 0), steps=STEPS), optim=dict(lr=3e-3, warmup_steps=2))
    builder = StepBuilder(config, make_mesh(config.mesh, jax.devices()[:1]))
    if loss_chunk < 0:  # as tools/bench/train_step.py's plain variant: full [B, T, V] logits, plain autodiff
        builder.loss_chunk, builder.fused_loss = 0, False
    state, out = builder.init_state(0), []
    for batch in batches():
        state, metrics = builder.train_step(state, batch)
        out.append(float(metrics["loss"]))
    return np.array(out), state


@pytest.fixture(scope="module")
def plain():
    return losses("xla", -1)


SLOW = pytest.mark.slow  # the other variants: under -m slow, so the default suite stays under 15 minutes


@pytest.mark.parametrize("attention, loss_chunk", [("blockwise", 16), pytest.param("blockwise", 0, marks=SLOW),
                                                   pytest.param("xla", 16, marks=SLOW), pytest.param("reference", -1, marks=SLOW)])
def test_float32_variants_reach_the_plain_decoders_losses(plain, attention, loss_chunk):
    want, _ = plain
    got, _ = losses(attention, loss_chunk)
    assert want[-1] < want[0] - 0.5  # the model learns: the comparison is not between two flat curves
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", [pytest.param("blockwise", marks=SLOW), pytest.param("xla", marks=SLOW)])
def test_bfloat16_compute_stays_within_1e2_of_float32(plain, attention):
    want, _ = plain
    got, state = losses(attention, 16, dtype="bfloat16")
    assert np.abs(got - want).max() < 1e-2, np.abs(got - want)
    dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
