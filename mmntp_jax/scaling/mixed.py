"""Per-modality laws and the mixed-modal law of Aghajanyan et al. 2023.

Unimodal law of modality i (runs trained on i alone): L_i(N, D) = E_i + A_i/N^α_i + B_i/D^β_i,
fitted as in `fit.py`. Mixed-modal law of a pair (i, j), fitted on runs trained
on both with D_i and D_j tokens of each, the unimodal laws held fixed:

    L_ij(N, D_i, D_j) = [L_i(N, D_i) + L_j(N, D_j)] / 2 + I_ij(N, D_i + D_j)
    I_ij(N, D) = −C_ij + A_ij / N^α_ij + B_ij / D^β_ij

I_ij > 0: the modalities compete (the mixed model is worse than the average of
two unimodal models of the same size and data); I_ij < 0: they help each other.
The observed L_ij of a mixed run is the mean of its per-modality losses
(`loss_i`, `loss_j`), or its `loss` when those are absent. The interaction is
fitted like Approach 3: θ = (C, log A, log B, α, β), summed Huber (δ = 1e-3) of
log L_ij, multi-start L-BFGS from the grid `INTERACTION_GRID`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from mmntp_jax.scaling import lbfgs
from mmntp_jax.scaling.fit import HUBER_DELTA, MIN_POINTS, LawFit, huber
from mmntp_jax.scaling.table import RunsError

INTERACTION_GRID = {
    "C": (-0.5, 0.0, 0.5, 1.0),
    "a": (-5.0, 0.0, 5.0, 10.0),
    "b": (-5.0, 0.0, 5.0, 10.0),
    "alpha": (0.0, 0.5, 1.0),
    "beta": (0.0, 0.5, 1.0),
}


def interaction(theta, log_n, log_d):
    c, a, b, alpha, beta = theta[0], theta[1], theta[2], theta[3], theta[4]
    return -c + jnp.exp(a - alpha * log_n) + jnp.exp(b - beta * log_d)


def _mixed_objective(theta, log_n, log_d, base, log_loss, delta):
    pred = base + interaction(theta, log_n, log_d)
    # a non-positive prediction has no log: penalise it smoothly instead of NaN
    safe = jnp.where(pred > 1e-12, pred, 1e-12)
    return jnp.sum(huber(jnp.log(safe) - log_loss, delta)) + 1e3 * jnp.sum(jnp.square(jnp.minimum(pred - 1e-12, 0.0)))


def interaction_starts() -> np.ndarray:
    g = INTERACTION_GRID
    return np.asarray(list(itertools.product(g["C"], g["a"], g["b"], g["alpha"], g["beta"])), np.float64)


@dataclass(frozen=True)
class InteractionFit:
    pair: tuple[str, str]
    C: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float
    n_points: int

    def __call__(self, n, d) -> np.ndarray:
        n, d = np.asarray(n, np.float64), np.asarray(d, np.float64)
        return -self.C + self.A / n**self.alpha + self.B / d**self.beta

    def summary(self, n, d) -> dict:
        values = self(n, d)
        largest = int(np.argmax(np.asarray(n) * np.asarray(d)))
        sign_small, sign_large = np.sign(values[int(np.argmin(np.asarray(n) * np.asarray(d)))]), np.sign(values[largest])
        if np.all(values > 0):
            relation = "competes"
        elif np.all(values < 0):
            relation = "helps"
        elif sign_small > 0 > sign_large:
            relation = "competes at small scale, helps at large scale"
        else:
            relation = "helps at small scale, competes at large scale" if sign_small < 0 < sign_large else "mixed"
        return {
            "pair": "+".join(self.pair), "C": self.C, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
            "objective": self.objective, "n_points": self.n_points, "relation": relation,
            "interaction_min": float(values.min()), "interaction_max": float(values.max()),
            "interaction_at_largest_run": float(values[largest]), "interaction_limit": -self.C,
        }


def fit_interaction(pair, law_i: LawFit, law_j: LawFit, n, d_i, d_j, loss, *, delta: float = HUBER_DELTA, max_iter: int = 1000) -> InteractionFit:
    """Fits I_ij on mixed runs given the two unimodal laws."""
    n, d_i, d_j, loss = (np.asarray(x, np.float64).reshape(-1) for x in (n, d_i, d_j, loss))
    what = f"mixed-modal law {'+'.join(pair)}"
    if len(n) < MIN_POINTS:
        raise RunsError(f"{what}: the interaction has 5 parameters and needs at least {MIN_POINTS} mixed runs, got {len(n)}")
    for name, x in (("N", n), (f"tokens_{pair[0]}", d_i), (f"tokens_{pair[1]}", d_j), ("loss", loss)):
        if not np.all(np.isfinite(x) & (x > 0)):
            raise RunsError(f"{what}: {name} must be finite and > 0 on every mixed run")
    predictions = []
    for name, law, d in ((pair[0], law_i, d_i), (pair[1], law_j, d_j)):
        with np.errstate(all="ignore"):
            predictions.append(law.predict(n, d))
        finite = np.isfinite(predictions[-1])
        if not np.all(finite):
            raise RunsError(f"{what}: the {name} law (E={law.E:.4g}, A={law.A:.4g}, α={law.alpha:.4g}, B={law.B:.4g}, β={law.beta:.4g}) "
                            f"gives no finite loss on {int((~finite).sum())} mixed runs; its fit is degenerate, so the interaction cannot be fitted")
    base = 0.5 * (predictions[0] + predictions[1])
    starts = interaction_starts()
    res = lbfgs.minimize(_mixed_objective, starts, (np.log(n), np.log(d_i + d_j), base, np.log(loss), np.float64(delta)), max_iter=max_iter)
    f = np.where(np.isfinite(res.f_S), res.f_S, np.inf)
    best = int(np.argmin(f))
    if not np.isfinite(f[best]):
        raise RunsError(f"{what}: no start of the interaction fit reached a finite objective")
    c, a, b, alpha, beta = (float(v) for v in res.x_SP[best])
    return InteractionFit(tuple(pair), c, float(np.exp(a)), float(np.exp(b)), alpha, beta, float(f[best]), len(n))


def modality_groups(runs) -> dict[str, np.ndarray]:
    """Row indices per value of the `modalities` column ("text", "image", "text+image", …)."""
    if "modalities" not in runs.columns:
        return {}
    values = np.asarray([str(v) for v in runs.columns["modalities"]], dtype=object)
    return {v: np.flatnonzero(values == v) for v in sorted(set(values.tolist())) if v}


def mixed_loss(runs, index, pair) -> np.ndarray:
    """Observed L_ij: the mean of the pair's per-modality losses, or `loss`."""
    cols = [f"loss_{m}" for m in pair]
    if all(c in runs.columns for c in cols):
        values = np.mean([np.asarray(runs.columns[c], np.float64)[index] for c in cols], axis=0)
        if np.all(np.isfinite(values)):
            return values
    return runs.loss[index]
