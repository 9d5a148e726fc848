"""Reductions over tokens that also span mesh axes, and codebook-usage metrics.

Dimension legend: N tokens on this device (all leading axes flattened), K
channels, C codebook size, S samples drawn.

Every function takes `axis_name`: None when the arrays are global (plain jit,
sharded or not: XLA inserts the collectives), or the mapped axis name(s) of a
`shard_map`/`pmap` over which the tokens are split. Then sums, means and
counts are reduced with `psum`, and random draws over tokens pick from the
global token set, so an 8-device run equals the 1-device run on the same
global batch. Tokens are assumed split along their flattened leading order
(device i holds global rows [i*N, (i+1)*N)), which is what sharding the
leading (batch) axis gives.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

AxisName = str | tuple[str, ...] | None

# Implicit codebooks larger than this get no usage/perplexity metrics (the
# per-code histogram would cost more than the quantizer).
MAX_USAGE_CODES = 2**20


def global_sum(x: jax.Array, axis_name: AxisName) -> jax.Array:
    return x if axis_name is None else lax.psum(x, axis_name)


def global_mean(x: jax.Array, axis_name: AxisName) -> jax.Array:
    """Mean of all elements of `x` over every device of `axis_name`."""
    total = global_sum(jnp.sum(x, dtype=jnp.float32), axis_name)
    count = global_sum(jnp.asarray(x.size, jnp.float32), axis_name)
    return total / count


def mse(a: jax.Array, b: jax.Array, axis_name: AxisName = None) -> jax.Array:
    return global_mean(jnp.square(a - b), axis_name)


def num_devices(axis_name: AxisName) -> int:
    return 1 if axis_name is None else lax.axis_size(axis_name)


def row_offset(n_local: int, axis_name: AxisName) -> jax.Array:
    """Global index of this device's first row."""
    if axis_name is None:
        return jnp.int32(0)
    return lax.axis_index(axis_name).astype(jnp.int32) * n_local


def code_counts(codes_N: jax.Array, codebook_size: int, axis_name: AxisName = None, weights_N: jax.Array | None = None) -> jax.Array:
    """float32 [C]: how many tokens chose each code (codes < 0 are ignored)."""
    codes_N = codes_N.reshape(-1)
    ones_N = jnp.ones(codes_N.shape, jnp.float32) if weights_N is None else weights_N.reshape(-1).astype(jnp.float32)
    ones_N = jnp.where(codes_N >= 0, ones_N, 0.0)
    counts_C = jax.ops.segment_sum(ones_N, jnp.maximum(codes_N, 0), num_segments=codebook_size)
    return global_sum(counts_C, axis_name)


def entropy(p: jax.Array, axis: int = -1) -> jax.Array:
    """Shannon entropy in nats, 0·log 0 = 0, safe to differentiate."""
    logp = jnp.log(jnp.maximum(p, 1e-30))
    return -jnp.sum(p * logp, axis=axis)


def usage_metrics(counts_C: jax.Array) -> dict:
    """usage: fraction of codes chosen at least once; perplexity: exp(entropy) of code frequencies."""
    counts_C = lax.stop_gradient(counts_C)
    total = jnp.maximum(jnp.sum(counts_C), 1.0)
    return {
        "usage": jnp.mean((counts_C > 0).astype(jnp.float32)),
        "perplexity": jnp.exp(entropy(counts_C / total)),
    }


def _gather_global_rows(x_NK: jax.Array, rows_S: jax.Array, axis_name: AxisName) -> jax.Array:
    """Rows `rows_S` (global indices) of the token matrix spread over devices."""
    n_local = x_NK.shape[0]
    local_S = rows_S - row_offset(n_local, axis_name)
    mine_S = (local_S >= 0) & (local_S < n_local)
    picked_SK = jnp.take(x_NK, jnp.clip(local_S, 0, n_local - 1), axis=0)
    picked_SK = jnp.where(mine_S[:, None], picked_SK, 0.0)
    return global_sum(picked_SK, axis_name) if axis_name is not None else picked_SK


def sample_rows(key: jax.Array, x_NK: jax.Array, num: int, axis_name: AxisName = None) -> jax.Array:
    """`num` rows drawn uniformly (with replacement) from all tokens on all devices."""
    n_global = x_NK.shape[0] * num_devices(axis_name)
    rows_S = jax.random.randint(key, (num,), 0, n_global)
    return _gather_global_rows(x_NK, rows_S, axis_name)


def sample_row_weighted(key: jax.Array, weights_N: jax.Array, x_NK: jax.Array, axis_name: AxisName = None) -> jax.Array:
    """One row drawn with probability proportional to `weights_N` over all devices (Gumbel-max)."""
    n_local = x_NK.shape[0]
    n_global = n_local * num_devices(axis_name)
    gumbel_N = jax.random.gumbel(key, (n_global,), jnp.float32)
    gumbel_N = lax.dynamic_slice(gumbel_N, (row_offset(n_local, axis_name),), (n_local,))
    score_N = jnp.where(weights_N > 0, jnp.log(jnp.maximum(weights_N, 1e-30)) + gumbel_N, -jnp.inf)
    best = jnp.argmax(score_N)
    row = (best + row_offset(n_local, axis_name)).astype(jnp.int32)
    if axis_name is not None:
        top = lax.pmax(score_N[best], axis_name)
        row = lax.pmin(jnp.where(score_N[best] == top, row, jnp.int32(2**31 - 1)), axis_name)
    return _gather_global_rows(x_NK, row[None], axis_name)[0]
