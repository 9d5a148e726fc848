"""Approach 3 fits: the Chinchilla refit of Besiroglu et al. 2024, synthetic recovery, the optimiser."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from mmntp_jax.scaling import fit, lbfgs
from mmntp_jax.scaling.table import RunsError, drop_highest_loss, load_runs

REPO = Path(__file__).resolve().parents[1]
CHINCHILLA_CSV = REPO.parent / "shared" / "data" / "svg_extracted_data.csv"
needs_csv = pytest.mark.skipif(not CHINCHILLA_CSV.is_file(), reason=f"third-party Chinchilla data not present at {CHINCHILLA_CSV}")

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
N_GRID, D_GRID = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 6), np.geomspace(1e9, 1e12, 6)))


def _law(n, d, p=TRUE):
    return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]


@needs_csv
def test_chinchilla_refit_matches_besiroglu_et_al():
    runs = drop_highest_loss(load_runs(CHINCHILLA_CSV), 5)
    assert len(runs) == 240 and len(runs.dropped) == 5
    # fast setting: every 10th start of Hoffmann's grid (the full grid: the slow CLI test below)
    law = fit.fit_law(runs.N, runs.D, runs.loss, starts=fit.grid_starts()[::10])
    assert law.alpha == pytest.approx(0.3473, abs=0.002)
    assert law.beta == pytest.approx(0.3672, abs=0.003)
    assert law.E == pytest.approx(1.8172, abs=0.005)
    assert law.a_opt == pytest.approx(0.514, abs=0.005)
    assert law.objective <= 1.0183e-3
    assert fit.score(fit.HOFFMANN_PUBLISHED, runs.N, runs.D, runs.loss) == pytest.approx(4.12e-3, abs=0.005e-3)
    # an independent check of the optimum: scipy's L-BFGS-B from our answer finds nothing lower
    theta = law.theta
    ref = scipy.optimize.minimize(lambda t: _scipy_objective(t, runs), theta, method="L-BFGS-B")
    assert ref.fun >= law.objective - 1e-12
    np.testing.assert_allclose(ref.x, theta, atol=1e-4)


def _scipy_objective(theta, runs):
    a, b, e, alpha, beta = theta
    pred = scipy.special.logsumexp([a - alpha * np.log(runs.N), b - beta * np.log(runs.D), np.full(len(runs), e)], axis=0)
    return np.sum(scipy.special.huber(1e-3, pred - np.log(runs.loss)))


@needs_csv
@pytest.mark.slow
def test_chinchilla_refit_full_grid_through_cli(tmp_path):
    out = tmp_path / "fit"
    cmd = [sys.executable, "-m", "mmntp_jax.cli", "scaling", "fit", "--runs", str(CHINCHILLA_CSV), "--drop-highest-loss", "5", "--out", str(out), "--bootstrap", "20"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "fit.json").read_text())
    assert result["settings"]["n_starts"] == 4500
    assert result["alpha"] == pytest.approx(0.3473, abs=0.002) and result["beta"] == pytest.approx(0.3672, abs=0.003)
    assert result["E"] == pytest.approx(1.8172, abs=0.005) and result["a_approach3"] == pytest.approx(0.514, abs=0.005)
    assert result["objective"] <= 1.0183e-3 and result["n_points"] == 240 and len(result["dropped"]) == 5
    assert result["hoffmann_2022_objective"] == pytest.approx(4.12e-3, abs=0.005e-3)
    assert result["ci"]["alpha"]["lo"] <= result["alpha"] <= result["ci"]["alpha"]["hi"]
    assert {"isoflop.png", "frontier.png", "residuals.png"} <= {p.name for p in out.iterdir()}


def test_huber_matches_scipy():
    r = np.linspace(-5e-3, 5e-3, 101)
    with __import__("jax").enable_x64(True):
        ours = np.asarray(fit.huber(r, 1e-3))
    np.testing.assert_allclose(ours, scipy.special.huber(1e-3, r), rtol=1e-12, atol=1e-18)


def test_synthetic_recovery_exact_without_noise():
    law = fit.fit_law(N_GRID, D_GRID, _law(N_GRID, D_GRID), starts=fit.grid_starts()[::60])
    for name in ("alpha", "beta", "E"):
        assert abs(getattr(law, name) - TRUE[name]) < 1e-4, (name, getattr(law, name))
    assert law.A == pytest.approx(TRUE["A"], rel=1e-3) and law.B == pytest.approx(TRUE["B"], rel=1e-3)
    assert law.objective < 1e-20
    assert law.predict(1e9, 2e10) == pytest.approx(_law(1e9, 2e10), rel=1e-9)


def test_synthetic_recovery_with_one_percent_noise_over_20_seeds():
    """Tolerances: mean over seeds within 0.01 (α, β, a) / 0.03 (E); every seed within 0.06 / 0.2."""
    rng = np.random.default_rng(0)
    losses = _law(N_GRID, D_GRID) * (1 + 0.01 * rng.standard_normal((20, len(N_GRID))))
    theta, _ = fit.refit_batch(N_GRID, D_GRID, losses, fit.grid_starts()[::150])
    alpha, beta, e = theta[:, 3], theta[:, 4], np.exp(theta[:, 2])
    a = beta / (alpha + beta)
    for values, truth, mean_tol, max_tol in ((alpha, 0.34, 0.01, 0.06), (beta, 0.28, 0.01, 0.06), (a, 0.28 / 0.62, 0.01, 0.06), (e, 1.69, 0.03, 0.2)):
        assert abs(values.mean() - truth) < mean_tol
        assert np.abs(values - truth).max() < max_tol


def test_fit_is_deterministic_and_batch_independent():
    loss = _law(N_GRID, D_GRID) * (1 + 0.01 * np.random.default_rng(1).standard_normal(len(N_GRID)))
    starts = fit.grid_starts()[::300]
    data = (np.log(N_GRID), np.log(D_GRID), 1e-3, np.log(loss), np.ones_like(loss))
    together = lbfgs.minimize(fit.objective, starts, data)
    again = lbfgs.minimize(fit.objective, starts, data)
    np.testing.assert_array_equal(together.x_SP, again.x_SP)
    # each start alone (batch of one) follows the same path as inside the batch
    for i in (0, 7):
        alone = lbfgs.minimize(fit.objective, starts[i : i + 1], data)
        np.testing.assert_allclose(alone.x_SP[0], together.x_SP[i], rtol=1e-9, atol=1e-9)
        assert alone.iters_S[0] == together.iters_S[i]


def test_lbfgs_finds_rosenbrock_minimum():
    import jax.numpy as jnp

    def rosenbrock(x, scale):
        return jnp.sum(scale * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    starts = np.array([[-1.2, 1.0], [2.0, -1.0], [0.0, 0.0]])  # 2-D: the only minimum is (1, 1)
    res = lbfgs.minimize(rosenbrock, starts, (100.0,))
    np.testing.assert_allclose(res.x_SP, np.ones_like(starts), atol=1e-6)
    assert res.converged_S.all()
    weights = np.array([[1.0], [10.0], [100.0]])  # one scale per start, as a batched argument
    res = lbfgs.minimize(lambda x, s: rosenbrock(x, s[0]), starts, (), (weights,))
    np.testing.assert_allclose(res.x_SP, np.ones_like(starts), atol=1e-6)


def test_too_few_points_and_bad_values():
    with pytest.raises(RunsError, match="at least 6 points"):
        fit.fit_law(N_GRID[:5], D_GRID[:5], _law(N_GRID[:5], D_GRID[:5]))
    with pytest.raises(RunsError, match="loss must be finite and > 0"):
        fit.fit_law(N_GRID, D_GRID, -_law(N_GRID, D_GRID))
    with pytest.raises(RunsError, match="2 distinct N"):
        fit.fit_law(np.full(8, 1e8), D_GRID[:8], _law(1e8, D_GRID[:8]))
    with pytest.raises(ValueError, match=r"\[S, P\]"):
        lbfgs.minimize(fit.objective, np.zeros(5))
