"""Multi-start L-BFGS in JAX: thousands of small problems minimised in lock step.

Dimensions: S starts (independent problems), P parameters, M history pairs,
J line-search trial steps.

Each start runs limited-memory BFGS (two-loop recursion, M = 10 pairs, initial
inverse Hessian γI with γ = sᵀy / yᵀy) with a parallel backtracking line
search: the J trial steps t0·2^-j, j = 0…J-1, are evaluated at once and the
trial of lowest objective among those meeting the Armijo condition
(f(x + t·d) ≤ f(x) + 1e-4 · t · gᵀd) is taken. A start stops when its largest
gradient entry is below `gtol`, when an accepted step lowers f by less than
`ftol`·|f| (`ftol_count` steps in a row), when no trial step meets Armijo twice
in a row (the second time along -g with the history cleared), or at `max_iter`.
Everything runs in float64 (inside `jax.enable_x64`) and is deterministic:
same inputs, same result. The whole batch is one jitted `while_loop` over
vmapped steps, so a grid of 4,500 starts costs about as much as a few hundred
full-batch function evaluations.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ARMIJO_C1 = 1e-4


class LbfgsResult(NamedTuple):
    x_SP: np.ndarray  # final parameters per start
    f_S: np.ndarray  # final objective per start
    iters_S: np.ndarray  # iterations taken per start
    converged_S: np.ndarray  # stopped by gtol/ftol (not by max_iter or a failed line search)


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    s_MP: jax.Array
    y_MP: jax.Array
    n_pairs: jax.Array
    it: jax.Array
    small_steps: jax.Array
    fails: jax.Array
    done: jax.Array
    converged: jax.Array


def _direction(g, s_MP, y_MP, n_pairs):
    """-H·g by the two-loop recursion over the filled part of the history (newest last)."""
    m = s_MP.shape[0]
    valid = jnp.arange(m) >= m - n_pairs
    sy = jnp.sum(s_MP * y_MP, -1)
    rho = jnp.where(valid, 1.0 / jnp.where(valid, sy, 1.0), 0.0)

    def first(q, i):
        j = m - 1 - i
        a = rho[j] * jnp.dot(s_MP[j], q)
        return q - a * y_MP[j], a

    q, alphas = jax.lax.scan(first, g, jnp.arange(m))
    yy = jnp.dot(y_MP[-1], y_MP[-1])
    gamma = jnp.where(n_pairs > 0, sy[-1] / jnp.where(yy > 0, yy, 1.0), 1.0)
    r = gamma * q

    def second(r, i):
        a = alphas[m - 1 - i]
        b = rho[i] * jnp.dot(y_MP[i], r)
        return r + s_MP[i] * (a - b), None

    r, _ = jax.lax.scan(second, r, jnp.arange(m))
    return -r


def _step(fun, args, n_trials, gtol, ftol, ftol_count, st: _State) -> _State:
    vg = jax.value_and_grad(fun)
    d = _direction(st.g, st.s_MP, st.y_MP, st.n_pairs)
    slope = jnp.dot(st.g, d)
    bad = ~(slope < 0) | ~jnp.all(jnp.isfinite(d))
    d = jnp.where(bad, -st.g, d)
    slope = jnp.where(bad, -jnp.dot(st.g, st.g), slope)
    gnorm1 = jnp.sum(jnp.abs(st.g))
    # first step (no curvature yet): unit length in the L1 sense, as L-BFGS-B does
    t0 = jnp.where(st.n_pairs > 0, 2.0, jnp.minimum(1.0, 1.0 / jnp.maximum(gnorm1, 1e-300)))
    t_J = t0 * 0.5 ** jnp.arange(n_trials)
    f_J = jax.vmap(lambda t: fun(st.x + t * d, *args))(t_J)
    ok_J = jnp.isfinite(f_J) & (f_J <= st.f + ARMIJO_C1 * t_J * slope)
    j = jnp.argmin(jnp.where(ok_J, f_J, jnp.inf))
    accepted = jnp.any(ok_J)
    x_new = st.x + t_J[j] * d
    f_new, g_new = vg(x_new, *args)
    s, y = x_new - st.x, g_new - st.g
    keep_pair = accepted & (jnp.dot(s, y) > 1e-12 * jnp.dot(y, y))
    s_MP = jnp.where(keep_pair, jnp.concatenate([st.s_MP[1:], s[None]]), st.s_MP)
    y_MP = jnp.where(keep_pair, jnp.concatenate([st.y_MP[1:], y[None]]), st.y_MP)
    n_pairs = jnp.where(keep_pair, jnp.minimum(st.n_pairs + 1, s_MP.shape[0]), st.n_pairs)
    # a failed line search clears the history (next try is along -g); two in a row stop
    n_pairs = jnp.where(accepted, n_pairs, 0)
    fails = jnp.where(accepted, 0, st.fails + 1)
    x = jnp.where(accepted, x_new, st.x)
    f = jnp.where(accepted, f_new, st.f)
    g = jnp.where(accepted, g_new, st.g)
    small = accepted & (st.f - f_new <= ftol * jnp.abs(st.f))
    small_steps = jnp.where(small, st.small_steps + 1, 0)
    grad_ok = jnp.max(jnp.abs(g)) < gtol
    converged = grad_ok | (small_steps >= ftol_count)
    done = converged | (fails >= 2)
    new = _State(x, f, g, s_MP, y_MP, n_pairs, st.it + 1, small_steps, fails, done, converged)
    # a finished start keeps its state
    return jax.tree.map(lambda a, b: jnp.where(st.done, a, b), st, new)


@partial(jax.jit, static_argnames=("fun", "memory", "n_trials", "max_iter", "ftol_count"))
def _run(fun, x0_SP, args, batch_args, *, memory, n_trials, max_iter, gtol, ftol, ftol_count):
    def init(x0, bargs):
        f, g = jax.value_and_grad(fun)(x0, *args, *bargs)
        p = x0.shape[0]
        z = jnp.zeros((memory, p), x0.dtype)
        return _State(x0, f, g, z, z, jnp.int32(0), jnp.int32(0), jnp.int32(0), jnp.int32(0), ~jnp.isfinite(f), jnp.bool_(False))

    def step(st, bargs):
        return _step(fun, (*args, *bargs), n_trials, gtol, ftol, ftol_count, st)

    st = jax.vmap(init)(x0_SP, batch_args)
    st = jax.lax.while_loop(
        lambda c: (c[1] < max_iter) & ~jnp.all(c[0].done),
        lambda c: (jax.vmap(step)(c[0], batch_args), c[1] + 1),
        (st, jnp.int32(0)),
    )[0]
    return st.x, st.f, st.it, st.converged


def minimize(
    fun: Callable,
    x0_SP,
    args: tuple = (),
    batch_args: tuple = (),
    *,
    memory: int = 10,
    n_trials: int = 12,
    max_iter: int = 1000,
    gtol: float = 1e-12,
    ftol: float = 1e-12,
    ftol_count: int = 3,
) -> LbfgsResult:
    """Minimises `fun(x_P, *args, *batch_args_s)` from every row of `x0_SP`.

    `args` are shared by all starts; each array in `batch_args` has a leading
    axis S and gives start s its own slice (e.g. bootstrap weights).
    """
    with jax.enable_x64(True):
        x0 = jnp.asarray(np.asarray(x0_SP, np.float64))
        if x0.ndim != 2:
            raise ValueError(f"starts must be [S, P], got shape {x0.shape}")
        args = tuple(jnp.asarray(np.asarray(a, np.float64)) for a in args)
        batch_args = tuple(jnp.asarray(np.asarray(a, np.float64)) for a in batch_args)
        for a in batch_args:
            if a.shape[0] != x0.shape[0]:
                raise ValueError(f"batch_args need a leading axis of {x0.shape[0]} (one per start), got shape {a.shape}")
        x, f, it, conv = _run(
            fun, x0, args, batch_args, memory=memory, n_trials=n_trials, max_iter=max_iter,
            gtol=gtol, ftol=ftol, ftol_count=ftol_count,
        )
        return LbfgsResult(np.asarray(x), np.asarray(f), np.asarray(it), np.asarray(conv))
