"""Approach 3 of Hoffmann et al. 2022: fit L(N, D) = E + A/N^α + B/D^β.

As in the paper (and the replication of Besiroglu et al. 2024):
  * parameters θ = (a, b, e, α, β) with A = exp a, B = exp b, E = exp e, so
    log L̂ = LSE(a − α log N, b − β log D, e) (log-sum-exp parameterisation);
  * objective Σ_i Huber_δ(log L̂_i − log L_i) with δ = 1e-3, summed, not averaged;
  * L-BFGS from every point of the grid α, β ∈ {0, 0.5, …, 2}, e ∈ {-1, -.5, …, 1},
    a, b ∈ {0, 5, …, 25} (4,500 starts), keeping the lowest objective.
All starts run together (`lbfgs.minimize`, vectorised in JAX): first in float32,
then the best distinct optima again in float64.
The compute-optimal allocation follows in closed form: with C = k·N·D,
N_opt = G (C/k)^a, D_opt = G⁻¹ (C/k)^b, a = β/(α+β), b = α/(α+β),
G = (αA / βB)^(1/(α+β)).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.scaling import lbfgs
from mmntp_jax.scaling.table import RunsError

HUBER_DELTA = 1e-3
PARAM_NAMES = ("a", "b", "e", "alpha", "beta")  # log A, log B, log E, α, β
HOFFMANN_GRID = {
    "alpha": tuple(np.arange(0.0, 2.5, 0.5)),
    "beta": tuple(np.arange(0.0, 2.5, 0.5)),
    "e": tuple(np.arange(-1.0, 1.5, 0.5)),
    "a": tuple(np.arange(0.0, 30.0, 5.0)),
    "b": tuple(np.arange(0.0, 30.0, 5.0)),
}
HOFFMANN_PUBLISHED = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
MIN_POINTS = 6  # more points than the 5 parameters
COARSE_FTOL, COARSE_MAX_ITER = 1e-5, 500


def huber(r, delta):
    """Huber loss: r²/2 inside |r| ≤ δ, δ(|r| − δ/2) outside (scipy.special.huber)."""
    abs_r = jnp.abs(r)
    return jnp.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))


def log_law(theta, log_n, log_d):
    """log L̂(N, D) for θ = (a, b, e, α, β)."""
    a, b, e, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    terms = jnp.stack([a - alpha * log_n, b - beta * log_d, jnp.broadcast_to(e, log_n.shape)])
    return jax.nn.logsumexp(terms, axis=0)


def objective(theta, log_n, log_d, delta, log_loss, weights):
    """Σ_i w_i · Huber_δ(log L̂_i − log L_i)."""
    return jnp.sum(weights * huber(log_law(theta, log_n, log_d) - log_loss, delta))


def grid_starts(grid: dict | None = None) -> np.ndarray:
    """[S, 5] starting points (a, b, e, α, β); Hoffmann's 4,500 by default."""
    g = grid or HOFFMANN_GRID
    rows = [(a, b, e, al, be) for al, be, e, a, b in itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])]
    return np.asarray(rows, np.float64)


def theta_of(params: dict) -> np.ndarray:
    """θ from {E, A, B, alpha, beta}."""
    return np.array([np.log(params["A"]), np.log(params["B"]), np.log(params["E"]), params["alpha"], params["beta"]], np.float64)


@dataclass(frozen=True)
class LawFit:
    """A fitted L(N, D) with its objective and how the optimum was found."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int
    n_starts: int
    n_converged: int
    start: tuple  # the grid start (a, b, e, α, β) that reached the optimum
    basins: tuple = ()  # distinct local optima found (θ tuples, best first), for bootstrap starts

    @property
    def theta(self) -> np.ndarray:
        return theta_of(asdict(self))

    @property
    def a_opt(self) -> float:
        """Exponent of N_opt ∝ C^a: β/(α+β); NaN when α = β = 0 (no compute-optimal frontier)."""
        total = self.alpha + self.beta
        return self.beta / total if total > 0 else math.nan

    @property
    def b_opt(self) -> float:
        total = self.alpha + self.beta
        return self.alpha / total if total > 0 else math.nan

    @property
    def G(self) -> float:
        """N_opt = G·(C/k)^a; NaN when a term of the law vanishes (α·A = 0 or β·B = 0)."""
        num, den, total = self.alpha * self.A, self.beta * self.B, self.alpha + self.beta
        if not (num > 0 and den > 0 and total > 0):
            return math.nan
        return math.exp((math.log(num) - math.log(den)) / total)

    def predict(self, n, d) -> np.ndarray:
        n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def n_opt(self, c, k: float = 6.0) -> np.ndarray:
        """Compute-optimal N for budgets `c` when C = k·N·D."""
        return self.G * (np.asarray(c, np.float64) / k) ** self.a_opt

    def loss_opt(self, c, k: float = 6.0) -> np.ndarray:
        n = self.n_opt(c, k)
        return self.predict(n, np.asarray(c, np.float64) / (k * n))

    def compute_optimal(self, c, k_of_n, n_range) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, L_opt) per budget in `c` when C = k(N)·N·D, by search over N in `n_range`."""
        n = np.geomspace(n_range[0], n_range[1], 2001)
        c = np.atleast_1d(np.asarray(c, np.float64))
        loss = self.predict(n[None, :], c[:, None] / (k_of_n(n)[None, :] * n[None, :]))
        best = np.argmin(loss, axis=1)
        return n[best], loss[np.arange(len(c)), best]

    def summary(self) -> dict:
        return {
            "E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
            "a": self.a_opt, "b": self.b_opt, "G": self.G, "objective": self.objective, "n_points": self.n_points,
            "n_starts": self.n_starts, "n_converged": self.n_converged, "start": list(self.start),
        }


def _check(n, d, loss, what: str):
    n, d, loss = (np.asarray(x, np.float64).reshape(-1) for x in (n, d, loss))
    if not len(n) == len(d) == len(loss):
        raise RunsError(f"{what}: N, D and loss have different lengths {len(n)}, {len(d)}, {len(loss)}")
    for name, x in (("N", n), ("D", d), ("loss", loss)):
        bad = np.flatnonzero(~np.isfinite(x) | (x <= 0))
        if bad.size:
            raise RunsError(f"{what}: {name} must be finite and > 0; point {bad[0]} has {name}={x[bad[0]]}")
    if len(n) < MIN_POINTS:
        raise RunsError(f"{what}: Approach 3 fits 5 parameters and needs at least {MIN_POINTS} points, got {len(n)}")
    if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise RunsError(f"{what}: Approach 3 needs at least 2 distinct N and 2 distinct D, got {len(np.unique(n))} and {len(np.unique(d))}")
    return n, d, loss


def score(params: dict, n, d, loss, delta: float = HUBER_DELTA) -> float:
    """The Huber objective of given parameters {E, A, B, alpha, beta} on points."""
    n, d, loss = (np.asarray(x, np.float64) for x in (n, d, loss))
    with jax.enable_x64(True):
        value = objective(jnp.asarray(theta_of(params)), jnp.log(n), jnp.log(d), delta, jnp.log(loss), jnp.ones_like(jnp.asarray(n)))
        return float(value)


def _distinct(x_SP: np.ndarray, f_S: np.ndarray, k: int) -> tuple:
    """Up to k distinct optima (rounded θ), lowest objective first."""
    out, seen = [], set()
    for i in np.argsort(np.where(np.isfinite(f_S), f_S, np.inf), kind="stable"):
        if not np.isfinite(f_S[i]):
            break
        key = tuple(np.round(x_SP[i], 4))
        if key not in seen:
            seen.add(key)
            out.append(tuple(float(v) for v in x_SP[i]))
        if len(out) >= k:
            break
    return tuple(out)


def fit_law(
    n, d, loss, *, delta: float = HUBER_DELTA, starts: np.ndarray | None = None, what: str = "Approach 3",
    max_iter: int = 1000, n_polish: int = 32, n_basins: int = 16,
) -> LawFit:
    """Fits L(N, D) by multi-start L-BFGS on the summed Huber loss of log loss.

    Every start runs in float32 first (to a relative decrease of `COARSE_FTOL`,
    at most `COARSE_MAX_ITER` iterations); the `n_polish` best distinct results
    are then run again in float64 to full precision and the best of those is kept.
    """
    n, d, loss = _check(n, d, loss, what)
    starts = grid_starts() if starts is None else np.asarray(starts, np.float64)
    data = (np.log(n), np.log(d), delta, np.log(loss), np.ones_like(n))
    coarse = lbfgs.minimize(objective, starts, data, dtype="float32", max_iter=COARSE_MAX_ITER, ftol=COARSE_FTOL)
    f32 = np.where(np.isfinite(coarse.f_S), coarse.f_S, np.inf)
    seeds = np.asarray(_distinct(coarse.x_SP.astype(np.float64), f32, n_polish), np.float64)
    if not len(seeds):
        raise RunsError(f"{what}: no start reached a finite objective")
    fine = lbfgs.minimize(objective, seeds, data, dtype="float64", max_iter=max_iter)
    f = np.where(np.isfinite(fine.f_S), fine.f_S, np.inf)
    best = int(np.argmin(f))
    a, b, e, alpha, beta = (float(v) for v in fine.x_SP[best])
    origin = int(np.flatnonzero(np.all(np.isclose(coarse.x_SP, seeds[best].astype(np.float32)), axis=1))[0])
    return LawFit(
        E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta, objective=float(f[best]),
        n_points=len(n), n_starts=len(starts), n_converged=int(coarse.converged_S.sum()),
        start=tuple(float(v) for v in starts[origin]), basins=_distinct(fine.x_SP, f, n_basins),
    )


def refit_batch(n, d, loss, starts, *, weights=None, delta: float = HUBER_DELTA, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Fits B data sets at once — losses [B, P] and/or weights [B, P] (e.g. bootstrap
    counts) over the same N, D — each from every row of `starts`; returns the best
    θ [B, 5] and objective [B] of each (float64)."""
    n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
    loss = np.asarray(loss, np.float64)
    b = loss.shape[0] if loss.ndim == 2 else np.asarray(weights).shape[0]
    loss_BP = np.broadcast_to(loss, (b, len(n)))
    weights_BP = np.ones((b, len(n))) if weights is None else np.asarray(weights, np.float64)
    n_s = len(starts)
    batch = (np.repeat(np.log(loss_BP), n_s, axis=0), np.repeat(weights_BP, n_s, axis=0))
    res = lbfgs.minimize(objective, np.tile(starts, (b, 1)), (np.log(n), np.log(d), delta), batch, max_iter=max_iter)
    f = np.where(np.isfinite(res.f_S), res.f_S, np.inf).reshape(b, n_s)
    best = np.argmin(f, axis=1)
    return res.x_SP.reshape(b, n_s, -1)[np.arange(b), best], f[np.arange(b), best]
