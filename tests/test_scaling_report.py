"""`mmntp scaling fit`: Approach 2, the mixed-modal law, fit.json, skipped fits and bad input."""

import json

import numpy as np
import pytest

from mmntp_jax.cli import main as cli_main
from mmntp_jax.scaling import fit, isoflop
from mmntp_jax.scaling.mixed import fit_interaction
from mmntp_jax.scaling.report import fit_runs
from mmntp_jax.scaling.table import RunsError, load_runs, runs_from_records, write_table

LAW = fit.LawFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0, n_starts=0, n_converged=0, start=())
FEW_STARTS = fit.grid_starts()[::150]


def isoflop_records(budgets=(1e18, 1e19, 1e20, 1e21), span=(0.25, 0.5, 1.0, 2.0, 4.0), law=LAW, budget_column=True):
    """IsoFLOP profiles of `law`: for each budget, N spread around the true optimum, D = C/(6N)."""
    records = []
    for c in budgets:
        for f in span:
            n = law.n_opt(c) * f
            d = c / (6 * n)
            rec = {"N": n, "D": d, "C": c, "loss": float(law.predict(n, d))}
            if budget_column:
                rec["budget"] = c
            records.append(rec)
    return records


def test_approach2_recovers_exponent_from_isoflop_profiles():
    runs = runs_from_records(isoflop_records())
    a2 = isoflop.fit_approach2(runs)
    assert a2.grouping == "budget column" and all(g.used for g in a2.groups)
    assert a2.a == pytest.approx(LAW.a_opt, abs=0.005)
    for g in a2.groups:  # parabola vertices land near the true optima
        assert g.n_opt == pytest.approx(float(LAW.n_opt(g.budget)), rel=0.1)
    # without a budget column the groups come from clustering log C (here ±3 % jitter)
    rng = np.random.default_rng(0)
    records = isoflop_records(budget_column=False)
    for rec in records:
        rec["C"] *= 1 + 0.03 * rng.uniform(-1, 1)
    clustered = isoflop.fit_approach2(runs_from_records(records))
    assert clustered.grouping.startswith("clustered") and len(clustered.groups) == 4
    assert clustered.a == pytest.approx(a2.a, abs=0.02)
    boot = isoflop.bootstrap_approach2(runs, a2, np.random.default_rng(1), 30)
    np.testing.assert_array_equal(boot, isoflop.bootstrap_approach2(runs, a2, np.random.default_rng(1), 30))


def test_approach2_unsupported_and_vertex_outside_range():
    one_side = isoflop_records(span=(1.5, 2.0, 3.0, 4.0))  # all runs right of the optimum
    with pytest.raises(RunsError, match="Approach 2 needs"):
        isoflop.fit_approach2(runs_from_records(one_side))
    n = np.array([1e8, 2e8, 4e8, 8e8])
    _, _, _, reason = isoflop.parabola_vertex(n, (np.log10(n) - 7.0) ** 2 + 2.0)  # minimum at N = 1e7
    assert "outside the sampled N range" in reason


def test_mixed_modal_interaction_recovered():
    law_t = fit.LawFit(E=0.8, A=50.0, B=300.0, alpha=0.3, beta=0.35, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    law_i = fit.LawFit(E=3.0, A=20.0, B=900.0, alpha=0.25, beta=0.4, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    true = dict(C=0.2, A=30.0, alpha=0.3, B=400.0, beta=0.45)
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e5, 1e8, 5), np.geomspace(1e6, 1e10, 5)))
    inter = -true["C"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"]
    loss = 0.5 * (law_t.predict(n, d / 2) + law_i.predict(n, d / 2)) + inter
    got = fit_interaction(("text", "image"), law_t, law_i, n, d / 2, d / 2, loss)
    assert got.objective < 1e-12
    np.testing.assert_allclose([got.C, got.alpha, got.beta], [true["C"], true["alpha"], true["beta"]], atol=2e-3)
    np.testing.assert_allclose(got(n, d), inter, atol=1e-4)
    summary = got.summary(n, d)
    assert summary["relation"] == "competes at small scale, helps at large scale"
    assert summary["interaction_limit"] == pytest.approx(-true["C"], abs=2e-3)


def _mixed_records():
    """Unimodal text/image runs and text+image runs from known laws (exact, no noise)."""
    law_t = fit.LawFit(E=0.8, A=50.0, B=300.0, alpha=0.3, beta=0.35, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    law_i = fit.LawFit(E=3.0, A=20.0, B=900.0, alpha=0.25, beta=0.4, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    records = []
    for n in np.geomspace(1e5, 1e8, 4):
        for d in np.geomspace(1e6, 1e10, 4):
            records.append({"N": n, "D": d, "loss": float(law_t.predict(n, d)), "modalities": "text"})
            records.append({"N": n, "D": d, "loss": float(law_i.predict(n, d)), "modalities": "image"})
            loss = 0.5 * (law_t.predict(n, d / 2) + law_i.predict(n, d / 2)) + (0.1 + 5.0 / n**0.3)  # always competes
            records.append({"N": n, "D": d, "loss": float(loss), "modalities": "text+image", "tokens_text": d / 2, "tokens_image": d / 2})
    return records, law_t, law_i


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_fit_runs_mixed_modal_report(tmp_path):
    records, law_t, law_i = _mixed_records()
    result = fit_runs(runs_from_records(records, "mixed.csv"), out_dir=tmp_path, n_boot=0, starts=FEW_STARTS)
    assert result["primary_group"] == "text+image" and result["n_points"] == 16
    assert result["unimodal"]["text"]["alpha"] == pytest.approx(0.3, abs=1e-3)
    assert result["unimodal"]["image"]["E"] == pytest.approx(3.0, abs=1e-3)
    pair = result["mixed_modal"]["text+image"]
    assert pair["relation"] == "competes" and pair["interaction_min"] > 0
    saved = json.loads((tmp_path / "fit.json").read_text())
    assert saved["mixed_modal"]["text+image"]["relation"] == "competes"
    assert (tmp_path / "mixed_modal.png").stat().st_size > 1000
    assert any(s["fit"] == "approach2" for s in saved["skipped"])  # no IsoFLOP groups: noted, not an error


def test_fit_cli_writes_fit_json_and_notes_skipped_fits(tmp_path, capsys):
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e7, 1e10, 4), np.geomspace(1e9, 1e12, 4)))
    d = d * np.exp(np.random.default_rng(0).uniform(-1, 1, d.shape))  # no two runs share a compute budget
    write_table([{"N": a, "D": b, "loss": float(LAW.predict(a, b))} for a, b in zip(n, d)], tmp_path, "grid")
    out = tmp_path / "fit"
    code = cli_main(["scaling", "fit", "--runs", str(tmp_path / "grid.csv"), "--out", str(out), "--bootstrap", "0", "--grid-stride", "150"])
    assert code == 0
    result = json.loads((out / "fit.json").read_text())
    for key in ("E", "A", "B", "alpha", "beta", "a_approach2", "a_approach3", "objective", "n_points", "dropped", "ci"):
        assert key in result
    assert result["alpha"] == pytest.approx(0.34, abs=1e-4) and result["a_approach2"] is None
    assert result["settings"]["n_starts"] == 30
    assert [s["fit"] for s in result["skipped"]] == ["approach2"]
    assert "Approach 2 needs" in result["skipped"][0]["reason"]
    assert "skipped approach2" in capsys.readouterr().err
    # the same fit, required explicitly, is an error: one line, exit 2
    code = cli_main(["scaling", "fit", "--runs", str(tmp_path / "grid.csv"), "--out", str(out), "--fits", "approach2", "--bootstrap", "0", "--grid-stride", "150"])
    assert code == 2 and "Approach 2 needs" in capsys.readouterr().err


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"params": 1e8, "loss": 2.0}], "needs a token column D"),
        ([{"N": 1e8, "D": 1e9}], "missing column loss"),
        ([{"N": 1e8, "D": 1e9, "loss": -2.0}], r"row 1: loss=-2.0 must be a finite number > 0"),
        ([{"N": 1e8, "D": 1e9, "loss": 2.0}, {"N": 0, "D": 1e9, "loss": 2.0}], r"row 2: N=0 must be"),
        ([{"N": "big", "D": 1e9, "loss": 2.0}], "row 1: N='big' is not a number"),
    ],
)
def test_bad_tables_name_file_row_and_field(tmp_path, capsys, rows, message):
    path = tmp_path / "runs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RunsError, match=message):
        load_runs(path)
    assert cli_main(["scaling", "fit", "--runs", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and len(err.strip().splitlines()) == 1


def test_too_few_points_and_missing_inputs(tmp_path, capsys):
    write_table([{"N": 1e8 * (i + 1), "D": 1e9, "loss": 2.0 + i} for i in range(4)], tmp_path, "few")
    assert cli_main(["scaling", "fit", "--runs", str(tmp_path / "few.csv"), "--out", str(tmp_path / "o"), "--fits", "approach3"]) == 2
    assert "needs at least 6 points, got 4" in capsys.readouterr().err
    assert cli_main(["scaling", "fit", "--runs", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli_main(["scaling", "fit", "--runs", str(tmp_path / "few.csv"), "--out", str(tmp_path / "o"), "--drop-highest-loss", "9"]) == 2
    assert "cannot drop 9 of 4 rows" in capsys.readouterr().err
    assert cli_main(["scaling", "fit", "--runs", str(tmp_path / "few.csv"), "--out", str(tmp_path / "o"), "--fits", "approach4"]) == 2
    assert "unknown fit 'approach4'" in capsys.readouterr().err


def test_chinchilla_column_names_and_derived_tokens(tmp_path):
    path = tmp_path / "epoch.csv"
    path.write_text("x,Model Size,Training FLOP,loss\n1,1e8,6e18,3.0\n2,2e8,6e18,2.9\n")
    runs = load_runs(path)
    np.testing.assert_allclose(runs.D, [1e10, 5e9])
    assert "x" in runs.columns


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_fit_runs_isoflop_sweep_report(tmp_path):
    """Exact IsoFLOP data: both approaches agree, the hold-out predicts the largest budget, plots are written."""
    runs = runs_from_records(isoflop_records(), "sweep.csv")
    result = fit_runs(runs, out_dir=tmp_path, n_boot=10, starts=FEW_STARTS)
    assert result["alpha"] == pytest.approx(0.34, abs=1e-4) and result["E"] == pytest.approx(1.69, abs=1e-4)
    assert result["a_approach2"] == pytest.approx(result["a_approach3"], abs=0.005)
    hold = result["holdout"]
    assert hold["budget"] == 1e21 and hold["fitted_on_budgets"] == [1e18, 1e19, 1e20]
    assert abs(hold["relative_error"]) < 1e-3
    for name in ("alpha", "beta", "E", "a_approach3", "a_approach2"):
        assert result["ci"][name]["lo"] <= result[name] + 1e-9 and result[name] - 1e-9 <= result["ci"][name]["hi"]
    assert result["a_intervals_overlap"] is True and result["skipped"] == []
    assert result["flops_per_param_token"]["median"] == pytest.approx(6.0)
    assert {"isoflop.png", "frontier.png", "residuals.png"} <= set(result["plots"])


def test_degenerate_unimodal_law_is_refused_not_classified():
    """A unimodal law whose A overflowed (α → hundreds) predicts no finite loss: the interaction is refused with the reason."""
    law_t = fit.LawFit(E=0.8, A=50.0, B=300.0, alpha=0.3, beta=0.35, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    law_i = fit.LawFit(E=4.0, A=float("inf"), B=789.0, alpha=523.0, beta=0.53, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    n, d = (x.ravel() for x in np.meshgrid(np.geomspace(1e4, 1e5, 3), np.geomspace(1e5, 1e6, 3)))
    with pytest.raises(RunsError, match="image law .* degenerate"):
        fit_interaction(("text", "image"), law_t, law_i, n, d / 2, d / 2, np.full(n.shape, 3.0))
    flat = fit.LawFit(E=1.0, A=1.0, B=1.0, alpha=0.0, beta=0.0, objective=0, n_points=0, n_starts=0, n_converged=0, start=())
    assert np.isnan(flat.G) and np.isnan(flat.a_opt) and np.isnan(flat.b_opt)  # no frontier, not a ZeroDivisionError
    assert flat.summary()["n_points"] == 0
