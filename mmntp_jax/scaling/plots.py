"""Scaling-law plots (matplotlib, Agg backend, PNG): IsoFLOP curves, frontier, residuals, mixed-modal."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 120


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path.name


def isoflop_plot(path: Path, runs, law, a2, k_of_n) -> str:
    """Loss vs N per compute budget, parabolas (Approach 2) and the Approach 3 law's IsoFLOP curves."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if a2 is not None:
        log_c = np.log10([g.budget for g in a2.groups])
        norm = plt.Normalize(log_c.min(), max(log_c.max(), log_c.min() + 1e-9))
        for g in a2.groups:
            color = plt.cm.viridis(0.9 * norm(np.log10(g.budget)))
            n, loss = runs.N[g.index], runs.loss[g.index]
            ax.scatter(n, loss, color=color, s=18, label=f"C = {g.budget:.2g}", zorder=3)
            n_line = np.geomspace(n.min(), n.max(), 100)
            if g.used:
                p2, p1, p0 = g.coef
                x = np.log10(n_line)
                ax.plot(n_line, p0 + p1 * x + p2 * x * x, color=color, lw=1)
                ax.scatter([g.n_opt], [g.loss_opt], color=color, marker="*", s=90, edgecolor="k", zorder=4)
            if law is not None:
                ax.plot(n_line, law.predict(n_line, g.budget / (k_of_n(n_line) * n_line)), color=color, lw=1, ls="--")
        if len(a2.groups) <= 8:
            ax.legend(fontsize=7, ncol=2)
        else:
            mappable = plt.cm.ScalarMappable(norm=plt.Normalize(log_c.min(), log_c.min() + (log_c.max() - log_c.min()) / 0.9), cmap="viridis")
            fig.colorbar(mappable, ax=ax, label="log10 C")
        ax.set_title("IsoFLOP profiles: parabolas (—), Approach 3 law (--), minima (★)", fontsize=9)
    else:
        sc = ax.scatter(runs.N, runs.loss, c=np.log10(runs.C), s=12, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="log10 C")
        ax.set_title("runs by compute", fontsize=9)
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel("loss")
    return _save(fig, path)


def frontier_plot(path: Path, runs, law, a2, k_of_n) -> str:
    """Compute-optimal N vs C from both approaches."""
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    c = np.geomspace(runs.C.min(), runs.C.max(), 100)
    if a2 is not None:
        used = [g for g in a2.groups if g.used]
        ax.scatter([g.budget for g in used], [g.n_opt for g in used], color="C0", zorder=3, label="IsoFLOP minima")
        ax.plot(c, a2.n_opt(c), color="C0", label=f"Approach 2: a = {a2.a:.3f}")
    if law is not None:
        n_opt, _ = law.compute_optimal(c, k_of_n, (runs.N.min() / 100, runs.N.max() * 100))
        ax.plot(c, n_opt, color="C1", ls="--", label=f"Approach 3: a = β/(α+β) = {law.a_opt:.3f}")
    ax.scatter(runs.C, runs.N, color="0.7", s=8, label="runs", zorder=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("compute-optimal N")
    ax.legend(fontsize=8)
    return _save(fig, path)


def residuals_plot(path: Path, runs, law) -> str:
    """log L_observed − log L_fitted against N and D."""
    resid = np.log(runs.loss) - np.log(law.predict(runs.N, runs.D))
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.6), sharey=True)
    for ax, x, name, other in ((axes[0], runs.N, "parameters N", runs.D), (axes[1], runs.D, "tokens D", runs.N)):
        sc = ax.scatter(x, resid, c=np.log10(other), s=12, cmap="viridis")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(name)
        fig.colorbar(sc, ax=ax, label="log10 " + ("D" if other is runs.D else "N"))
    axes[0].set_ylabel("log L − log L̂")
    fig.suptitle(f"Approach 3 residuals (Huber objective {law.objective:.3g}, {len(runs)} points)", fontsize=9)
    return _save(fig, path)


def mixed_plot(path: Path, runs, fitted) -> str:
    """Observed and fitted interaction I_ij(N, D) for each modality pair."""
    fig, axes = plt.subplots(1, len(fitted), figsize=(5.2 * len(fitted), 3.8), squeeze=False)
    for ax, (inter, law_i, law_j, idx, d_i, d_j) in zip(axes[0], fitted):
        from mmntp_jax.scaling.mixed import mixed_loss

        n = runs.N[idx]
        observed = mixed_loss(runs, idx, inter.pair) - 0.5 * (law_i.predict(n, d_i) + law_j.predict(n, d_j))
        d = d_i + d_j
        sc = ax.scatter(n, observed, c=np.log10(d), cmap="viridis", s=18, label="observed")
        for dv in np.unique(d):
            n_line = np.geomspace(n.min(), n.max(), 50)
            ax.plot(n_line, inter(n_line, dv), color=plt.cm.viridis((np.log10(dv) - np.log10(d.min())) / max(np.ptp(np.log10(d)), 1e-9)), lw=1)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("parameters N")
        ax.set_ylabel("interaction I (nats; > 0 compete, < 0 help)")
        ax.set_title(f"{'+'.join(inter.pair)}: C = {inter.C:.3g}", fontsize=9)
        fig.colorbar(sc, ax=ax, label="log10 D")
    return _save(fig, path)


def write_all(out: Path, runs, law, a2, k_of_n, fitted, all_runs=None) -> list[str]:
    """Every plot the fits support; returns the file names."""
    names = [isoflop_plot(out / "isoflop.png", runs, law, a2, k_of_n)]
    if law is not None or a2 is not None:
        names.append(frontier_plot(out / "frontier.png", runs, law, a2, k_of_n))
    if law is not None:
        names.append(residuals_plot(out / "residuals.png", runs, law))
    if fitted:
        names.append(mixed_plot(out / "mixed_modal.png", all_runs if all_runs is not None else runs, fitted))
    return names
