"""Multi-start L-BFGS in JAX: thousands of small problems minimised together.

Dimensions: S starts (independent problems), P parameters, M history pairs,
J trial steps per line-search round.

Each start runs limited-memory BFGS (two-loop recursion over M = 10 pairs,
initial inverse Hessian γI with γ = sᵀy / yᵀy; a pair is kept only if sᵀy > 0)
with a backtracking Armijo line search (f(x + t·d) ≤ f(x) + 1e-4 · t · gᵀd)
that evaluates J halvings of t at once: t ∈ t0·{1, ½, …, 2^-(J-1)}, t0 = 1
(on the first iteration t0 = 1/‖g‖₁, as L-BFGS-B), taking the largest step that
passes. If none passes, the next iteration carries on halving from where this
one stopped; after `max_ls` halvings the history is cleared and the search
retried along -g, and if that fails too the start stops. A start also stops
when its largest gradient entry is below `gtol`, when `ftol_count` accepted
steps in a row lower f by less than `ftol`·|f|, or after `max_iter` iterations.

All starts advance together, vmapped inside one jitted `while_loop` of `chunk`
iterations; between chunks the finished starts are dropped and the live ones
packed into a batch of S/4^k rows, so the many quick starts of a grid do not
pay for the few slow ones. Arithmetic is in `dtype` (float64 by default, run
inside `jax.enable_x64`); the result is deterministic: same inputs, same result.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ARMIJO_C1 = 1e-4
TOLERANCES = {"float64": (1e-12, 1e-12), "float32": (1e-7, 1e-6)}  # (gtol, ftol)


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
    halvings: jax.Array  # halvings of t0 carried over from failed rounds
    small_steps: jax.Array
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
        b = rho[i] * jnp.dot(y_MP[i], r)
        return r + s_MP[i] * (alphas[m - 1 - i] - b), None

    r, _ = jax.lax.scan(second, r, jnp.arange(m))
    return -r


def _step(fun, args, n_trials, max_ls, max_iter, gtol, ftol, ftol_count, st: _State) -> _State:
    d = _direction(st.g, st.s_MP, st.y_MP, st.n_pairs)
    slope = jnp.dot(st.g, d)
    bad = ~(slope < 0) | ~jnp.all(jnp.isfinite(d))
    d = jnp.where(bad, -st.g, d)
    slope = jnp.where(bad, -jnp.dot(st.g, st.g), slope)
    one = jnp.ones((), st.f.dtype)
    t0 = jnp.where(st.n_pairs > 0, one, jnp.minimum(one, 1.0 / jnp.maximum(jnp.sum(jnp.abs(st.g)), 1e-30)))
    t_J = t0 * 0.5 ** (st.halvings + jnp.arange(n_trials)).astype(st.f.dtype)
    f_J = jax.vmap(lambda t: fun(st.x + t * d, *args))(t_J)
    ok_J = jnp.isfinite(f_J) & (f_J <= st.f + ARMIJO_C1 * t_J * slope)
    accepted = jnp.any(ok_J)
    t = t_J[jnp.argmax(ok_J)]
    x_new = st.x + t * d
    f_new, g_new = jax.value_and_grad(fun)(x_new, *args)
    s, y = x_new - st.x, g_new - st.g
    keep_pair = accepted & (jnp.dot(s, y) > 1e-10 * jnp.dot(y, y))
    s_MP = jnp.where(keep_pair, jnp.concatenate([st.s_MP[1:], s[None]]), st.s_MP)
    y_MP = jnp.where(keep_pair, jnp.concatenate([st.y_MP[1:], y[None]]), st.y_MP)
    n_pairs = jnp.where(keep_pair, jnp.minimum(st.n_pairs + 1, s_MP.shape[0]), st.n_pairs)
    halvings = jnp.where(accepted, 0, st.halvings + n_trials)
    exhausted = ~accepted & (halvings >= max_ls)
    stuck = exhausted & (st.n_pairs == 0)  # already along -g: give up
    n_pairs = jnp.where(exhausted, 0, n_pairs)
    halvings = jnp.where(exhausted, 0, halvings)
    x = jnp.where(accepted, x_new, st.x)
    f = jnp.where(accepted, f_new, st.f)
    g = jnp.where(accepted, g_new, st.g)
    small = accepted & (st.f - f_new <= ftol * jnp.abs(st.f))
    small_steps = jnp.where(small, st.small_steps + 1, jnp.where(accepted, 0, st.small_steps))
    converged = (jnp.max(jnp.abs(g)) < gtol) | (small_steps >= ftol_count)
    done = converged | stuck | (st.it + 1 >= max_iter)
    new = _State(x, f, g, s_MP, y_MP, n_pairs, st.it + 1, halvings, small_steps, done, converged)
    return jax.tree.map(lambda a, b: jnp.where(st.done, a, b), st, new)  # finished starts stay put


@partial(jax.jit, static_argnames=("fun", "memory"))
def _init(fun, x0_SP, args, batch_args, *, memory):
    def init(x0, bargs):
        f, g = jax.value_and_grad(fun)(x0, *args, *bargs)
        z = jnp.zeros((memory, x0.shape[0]), x0.dtype)
        i0 = jnp.int32(0)
        return _State(x0, f, g, z, z, i0, i0, i0, i0, ~jnp.isfinite(f), jnp.bool_(False))

    return jax.vmap(init)(x0_SP, batch_args)


@partial(jax.jit, static_argnames=("fun", "chunk", "n_trials", "max_ls", "max_iter", "ftol_count"))
def _advance(fun, st, args, batch_args, *, chunk, n_trials, max_ls, max_iter, gtol, ftol, ftol_count):
    """Up to `chunk` iterations of every start."""

    def step(s, bargs):
        return _step(fun, (*args, *bargs), n_trials, max_ls, max_iter, gtol, ftol, ftol_count, s)

    return jax.lax.while_loop(
        lambda c: (c[1] < chunk) & ~jnp.all(c[0].done),
        lambda c: (jax.vmap(step)(c[0], batch_args), c[1] + 1),
        (st, jnp.int32(0)),
    )[0]


def _bucket(n_active: int, n_total: int) -> int:
    """Batch size for `n_active` live starts: n_total / 4^k, at least 64."""
    size = n_total
    while size // 4 >= max(n_active, 64):
        size //= 4
    return size


def minimize(
    fun: Callable,
    x0_SP,
    args: tuple = (),
    batch_args: tuple = (),
    *,
    dtype: str = "float64",
    memory: int = 10,
    n_trials: int = 4,
    max_ls: int = 40,
    max_iter: int = 1000,
    gtol: float | None = None,
    ftol: float | None = None,
    ftol_count: int = 3,
    chunk: int = 25,
) -> LbfgsResult:
    """Minimises `fun(x_P, *args, *batch_args_s)` from every row of `x0_SP`.

    `args` are shared by all starts; each array in `batch_args` has a leading
    axis S and gives start s its own slice (e.g. bootstrap weights).
    """
    if dtype not in TOLERANCES:
        raise ValueError(f"dtype must be one of {', '.join(TOLERANCES)}, got {dtype!r}")
    gtol = TOLERANCES[dtype][0] if gtol is None else gtol
    ftol = TOLERANCES[dtype][1] if ftol is None else ftol
    x0 = np.asarray(x0_SP, dtype)
    if x0.ndim != 2:
        raise ValueError(f"starts must be [S, P], got shape {x0.shape}")
    batch_args = tuple(np.asarray(a, dtype) for a in batch_args)
    for a in batch_args:
        if a.shape[0] != x0.shape[0]:
            raise ValueError(f"batch_args need a leading axis of {x0.shape[0]} (one per start), got shape {a.shape}")
    n = x0.shape[0]
    options = dict(n_trials=n_trials, max_ls=max_ls, max_iter=max_iter, gtol=gtol, ftol=ftol, ftol_count=ftol_count, chunk=chunk)
    with jax.enable_x64(dtype == "float64"):
        args = tuple(jnp.asarray(np.asarray(a, dtype)) for a in args)
        state = jax.device_get(_init(fun, jnp.asarray(x0), args, tuple(map(jnp.asarray, batch_args)), memory=memory))
        while not state.done.all():
            live = np.flatnonzero(~state.done)
            size = _bucket(len(live), n)
            pick = np.concatenate([live, np.full(size - len(live), live[0])])
            sub = jax.tree.map(lambda a: a[pick], state)
            # the padding rows repeat a live start but are marked done, so they stay put
            sub = sub._replace(done=np.arange(size) >= len(live))
            out = jax.device_get(_advance(fun, sub, args, tuple(jnp.asarray(a[pick]) for a in batch_args), **options))
            state = jax.tree.map(lambda full, part: _scatter(full, live, part[: len(live)]), state, out)
    return LbfgsResult(state.x, state.f, state.it, state.converged)


def _scatter(full: np.ndarray, index: np.ndarray, values: np.ndarray) -> np.ndarray:
    full = np.array(full)
    full[index] = values
    return full
