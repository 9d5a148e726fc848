"""Bootstrap confidence intervals: resample runs with replacement, refit, take percentiles.

Approach 3: each replicate weights the points by their multinomial resampling
counts (the summed Huber objective with weights is the fit on the resampled
set) and restarts L-BFGS from the distinct optima the full fit found (its
`basins`), all replicates × starts in one vectorised batch. Approach 2: runs
are resampled within each IsoFLOP group and the parabolas refitted. Intervals
are the 2.5 / 97.5 percentiles (95 %); the seed makes them reproducible.
"""

from __future__ import annotations

import numpy as np

from mmntp_jax.scaling.fit import HUBER_DELTA, LawFit, refit_batch

LEVEL = 0.95


def percentile_ci(samples: np.ndarray, level: float = LEVEL) -> dict:
    """{lo, hi, std, n} of the finite samples (NaN when none)."""
    s = np.asarray(samples, np.float64)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return {"lo": None, "hi": None, "std": None, "n": 0}
    q = (1 - level) / 2
    lo, hi = np.quantile(s, [q, 1 - q])
    return {"lo": float(lo), "hi": float(hi), "std": float(np.std(s, ddof=1)) if s.size > 1 else 0.0, "n": int(s.size)}


def resample_counts(n_points: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[B, P] resampling counts: each row sums to P."""
    return rng.multinomial(n_points, np.full(n_points, 1.0 / n_points), size=n_boot).astype(np.float64)


def bootstrap_law(fit: LawFit, n, d, loss, rng: np.random.Generator, n_boot: int, *, delta: float = HUBER_DELTA) -> dict:
    """Bootstrap samples of E, A, B, alpha, beta and a = β/(α+β): name → array [B]."""
    counts = resample_counts(len(n), n_boot, rng)
    starts = np.asarray(fit.basins or (tuple(fit.theta),), np.float64)
    theta, _ = refit_batch(n, d, loss, starts, weights=counts, delta=delta)
    a, b, e, alpha, beta = theta.T
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha, "beta": beta, "a": beta / (alpha + beta)}


def intervals(samples: dict, level: float = LEVEL) -> dict:
    return {name: percentile_ci(values, level) for name, values in samples.items()}


def overlap(ci_1: dict, ci_2: dict) -> bool | None:
    """Whether two intervals overlap (None when either is missing)."""
    if ci_1.get("lo") is None or ci_2.get("lo") is None:
        return None
    return bool(ci_1["lo"] <= ci_2["hi"] and ci_2["lo"] <= ci_1["hi"])
