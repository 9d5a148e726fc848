"""Approach 2 of Hoffmann et al. 2022: IsoFLOP parabolas → N_opt ∝ C^a.

Runs are grouped by compute budget: by the `budget` column when the table has
one (sweeps write it), else by clustering log10 C (a new group starts where
consecutive sorted values differ by more than `cluster_gap` decades). In each
group a parabola loss = p0 + p1·x + p2·x², x = log10 N, is fitted by least
squares; its vertex gives (N_opt, L_opt) for the group's budget (the group's
mean log10 C when clustered). A group is used only if it has ≥ 3 distinct N,
opens upwards (p2 > 0) and has its vertex inside its N range; the others are
listed with the reason. Then log10 N_opt = a·log10 C + c by least squares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mmntp_jax.scaling.table import Runs, RunsError

MIN_GROUP_POINTS = 3
MIN_GROUPS = 2


@dataclass(frozen=True)
class IsoGroup:
    budget: float
    index: np.ndarray  # rows of the runs table
    n_opt: float = float("nan")
    loss_opt: float = float("nan")
    coef: tuple = ()  # parabola (p2, p1, p0) in x = log10 N
    reason: str = ""  # why the group is not used ("" = used)

    @property
    def used(self) -> bool:
        return not self.reason

    def summary(self) -> dict:
        out = {"budget": self.budget, "n_points": int(len(self.index)), "used": self.used}
        if self.used:
            out.update(N_opt=self.n_opt, loss_opt=self.loss_opt, parabola=list(self.coef))
        else:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Approach2Fit:
    a: float
    intercept: float  # log10 N_opt = a·log10 C + intercept
    groups: tuple = field(default_factory=tuple)
    grouping: str = "budget"

    def n_opt(self, c) -> np.ndarray:
        return 10.0 ** (self.a * np.log10(np.asarray(c, np.float64)) + self.intercept)

    def summary(self) -> dict:
        return {"a": self.a, "intercept_log10": self.intercept, "grouping": self.grouping, "groups": [g.summary() for g in self.groups]}


def budget_groups(runs: Runs, cluster_gap: float = 0.02) -> tuple[list[tuple[float, np.ndarray]], str]:
    """(budget, row indices) per IsoFLOP group, and how they were formed."""
    if "budget" in runs.columns:
        values = np.asarray(runs.columns["budget"], np.float64)
        if np.all(np.isfinite(values)) and np.all(values > 0):
            return [(float(b), np.flatnonzero(values == b)) for b in np.unique(values)], "budget column"
    log_c = np.log10(runs.C)
    order = np.argsort(log_c, kind="stable")
    cuts = np.flatnonzero(np.diff(log_c[order]) > cluster_gap) + 1
    out = [(float(10 ** log_c[idx].mean()), np.sort(idx)) for idx in np.split(order, cuts)]
    return out, f"clustered log10 C (gap > {cluster_gap})"


def parabola_vertex(n, loss) -> tuple[float, float, tuple, str]:
    """(N_opt, L_opt, (p2, p1, p0), reason) for one IsoFLOP profile."""
    x, y = np.log10(np.asarray(n, np.float64)), np.asarray(loss, np.float64)
    if len(np.unique(x)) < MIN_GROUP_POINTS:
        return np.nan, np.nan, (), f"{len(np.unique(x))} distinct N (need {MIN_GROUP_POINTS})"
    p2, p1, p0 = np.polyfit(x, y, 2)
    if not p2 > 0:
        return np.nan, np.nan, (p2, p1, p0), "parabola opens downwards (no minimum)"
    xv = -p1 / (2 * p2)
    if not x.min() <= xv <= x.max():
        return np.nan, np.nan, (p2, p1, p0), f"minimum at N={10**xv:.3g} lies outside the sampled N range [{10**x.min():.3g}, {10**x.max():.3g}]"
    return float(10**xv), float(p0 + p1 * xv + p2 * xv * xv), (float(p2), float(p1), float(p0)), ""


def fit_approach2(runs: Runs, *, cluster_gap: float = 0.02) -> Approach2Fit:
    """Parabola minima per budget, then a power law through them. Raises RunsError if unsupported."""
    found, how = budget_groups(runs, cluster_gap)
    groups = []
    for budget, idx in found:
        n_opt, loss_opt, coef, reason = parabola_vertex(runs.N[idx], runs.loss[idx])
        groups.append(IsoGroup(budget, idx, n_opt, loss_opt, coef, reason))
    used = [g for g in groups if g.used]
    if len(used) < MIN_GROUPS:
        raise RunsError(
            f"{runs.source}: Approach 2 needs ≥ {MIN_GROUPS} IsoFLOP groups with ≥ {MIN_GROUP_POINTS} distinct model sizes "
            f"and an interior minimum; found {len(used)} usable of {len(groups)} ({how})"
        )
    log_c = np.log10([g.budget for g in used])
    log_n = np.log10([g.n_opt for g in used])
    a, intercept = np.polyfit(log_c, log_n, 1)
    return Approach2Fit(float(a), float(intercept), tuple(groups), how)


def bootstrap_approach2(runs: Runs, fit: Approach2Fit, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    """Exponents a refitted on runs resampled with replacement within each used group."""
    used = [g for g in fit.groups if g.used]
    out = np.full(n_boot, np.nan)
    for k in range(n_boot):
        log_c, log_n = [], []
        for g in used:
            pick = rng.choice(g.index, size=len(g.index), replace=True)
            n_opt, _, _, reason = parabola_vertex(runs.N[pick], runs.loss[pick])
            if not reason:
                log_c.append(np.log10(g.budget))
                log_n.append(np.log10(n_opt))
        if len(log_c) >= MIN_GROUPS:
            out[k] = np.polyfit(log_c, log_n, 1)[0]
    return out
