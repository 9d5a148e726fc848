"""`mmntp scaling fit`: every fit the runs table supports, written to DIR/fit.json with plots.

Fits, on the *primary* rows (all rows; or, when a `modalities` column names
several groups, the group mixing the most modalities):
  approach3   L(N, D) = E + A/N^α + B/D^β (`fit.py`) with bootstrap intervals;
  approach2   IsoFLOP parabolas → N_opt ∝ C^a (`isoflop.py`) with bootstrap intervals;
  holdout     with ≥ 3 IsoFLOP budgets: Approach 3 refitted without the largest
              budget predicts that budget's best loss (min over N of L(N, C/(k(N)·N)),
              k(N) = C/(N·D) of the table's runs, interpolated in log N), compared
              with the best observed;
  per_modality  a law per `loss_<m>` column (D = `tokens_<m>` where present) that
              differs from `loss` (a single-modality table has none);
  mixed       unimodal laws on single-modality groups (loss `loss_<m>` and tokens
              `tokens_<m>` where the table has them) and the Aghajanyan et al.
              interaction for each pair group (`mixed.py`).
A fit the table cannot support is skipped and noted under "skipped" — unless it
is named in `required`, then it is an error. Hoffmann et al.'s published law is
scored on the same points ("hoffmann_2022_objective").
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from mmntp_jax.scaling import fit as fit3
from mmntp_jax.scaling import isoflop, mixed, uncertainty
from mmntp_jax.scaling.table import Runs, RunsError, flops_per_param_token
from mmntp_jax.scaling.table import drop_highest_loss as drop_rows

FITS = ("approach2", "approach3", "mixed")


def primary_rows(runs: Runs) -> tuple[np.ndarray, str]:
    groups = mixed.modality_groups(runs)
    if len(groups) <= 1:
        return np.arange(len(runs)), next(iter(groups), "")
    label = max(groups, key=lambda g: (g.count("+"), len(groups[g]), g))
    return groups[label], label


def _law_dict(law: fit3.LawFit) -> dict:
    return {k: v for k, v in law.summary().items()}


def _holdout(runs: Runs, a2: isoflop.Approach2Fit, k_of_n, law_fit) -> dict:
    budgets = sorted(g.budget for g in a2.groups)
    largest = budgets[-1]
    top = next(g for g in a2.groups if g.budget == largest)
    rest = np.setdiff1d(np.arange(len(runs)), top.index)
    law = law_fit(runs.N[rest], runs.D[rest], runs.loss[rest], what="hold-out Approach 3 (smaller budgets)")
    n_opt, loss_opt = law.compute_optimal(largest, k_of_n, (runs.N.min() / 10, runs.N.max() * 10))
    observed = float(runs.loss[top.index].min())
    predicted = float(loss_opt[0])
    return {
        "budget": largest, "fitted_on_budgets": budgets[:-1], "predicted_best_loss": predicted, "observed_best_loss": observed,
        "relative_error": (predicted - observed) / observed, "N_opt_predicted": float(n_opt[0]), "law": _law_dict(law),
    }


def _per_modality(runs: Runs, index: np.ndarray, skipped: list, law_fit) -> dict:
    out = {}
    for name in sorted(runs.columns):
        if not name.startswith("loss_"):
            continue
        modality = name[len("loss_"):]
        loss = np.asarray(runs.columns[name], np.float64)[index]
        if np.allclose(loss, runs.loss[index], rtol=1e-6, atol=0):
            continue  # one modality only: its law is the main law
        tokens = runs.columns.get(f"tokens_{modality}")
        d = runs.D[index] if tokens is None else np.asarray(tokens, np.float64)[index]
        try:
            law = law_fit(runs.N[index], d, loss, what=f"per-modality law {modality}")
        except RunsError as err:
            skipped.append({"fit": f"per_modality:{modality}", "reason": str(err)})
            continue
        out[modality] = {**_law_dict(law), "D_column": "D" if tokens is None else f"tokens_{modality}"}
    return out


def _mixed(runs: Runs, skipped: list, law_fit) -> tuple[dict, dict, list]:
    groups = mixed.modality_groups(runs)
    unimodal, laws, pairs, fitted = {}, {}, {}, []
    for label, idx in groups.items():
        if "+" in label:
            continue
        loss = np.asarray(runs.columns.get(f"loss_{label}", runs.loss), np.float64)[idx]
        d = np.asarray(runs.columns.get(f"tokens_{label}", runs.D), np.float64)[idx]
        if not np.all(np.isfinite(loss)):
            loss = runs.loss[idx]
        if not np.all(np.isfinite(d)):
            d = runs.D[idx]
        try:
            laws[label] = law_fit(runs.N[idx], d, loss, what=f"unimodal law {label}")
            unimodal[label] = _law_dict(laws[label])
        except RunsError as err:
            skipped.append({"fit": f"unimodal:{label}", "reason": str(err)})
    for label, idx in groups.items():
        parts = label.split("+")
        if len(parts) != 2:
            continue
        missing = [p for p in parts if p not in laws]
        cols = [f"tokens_{p}" for p in parts]
        if missing:
            skipped.append({"fit": f"mixed:{label}", "reason": f"no unimodal law for {', '.join(missing)} (needs ≥ {fit3.MIN_POINTS} runs with modalities={missing[0]!r})"})
            continue
        if not all(c in runs.columns for c in cols):
            skipped.append({"fit": f"mixed:{label}", "reason": f"the table has no {' / '.join(cols)} columns (tokens of each modality)"})
            continue
        d_i, d_j = (np.asarray(runs.columns[c], np.float64)[idx] for c in cols)
        try:
            inter = mixed.fit_interaction(parts, laws[parts[0]], laws[parts[1]], runs.N[idx], d_i, d_j, mixed.mixed_loss(runs, idx, parts), delta=law_fit.keywords["delta"])
        except RunsError as err:
            skipped.append({"fit": f"mixed:{label}", "reason": str(err)})
            continue
        pairs[label] = inter.summary(runs.N[idx], d_i + d_j)
        fitted.append((inter, laws[parts[0]], laws[parts[1]], idx, d_i, d_j))
    return unimodal, pairs, fitted


def fit_runs(
    runs: Runs, *, out_dir=None, drop_highest_loss: int = 0, n_boot: int = 200, seed: int = 0,
    required: tuple = (), plots: bool = True, delta: float = fit3.HUBER_DELTA, starts=None,
) -> dict:
    """Runs every supported fit; writes `out_dir/fit.json` (+ PNG plots) when given."""
    rows_total = len(runs)
    runs = drop_rows(runs, drop_highest_loss)
    index, label = primary_rows(runs)
    main = runs.take(index)
    rng = np.random.default_rng(seed)
    law_fit = functools.partial(fit3.fit_law, delta=delta, starts=starts)  # every law: same objective and starts
    skipped, result = [], {k: None for k in ("E", "A", "B", "alpha", "beta", "a_approach2", "a_approach3", "objective")}
    result.update(n_points=len(main), rows_total=rows_total, primary_group=label, dropped=list(runs.dropped), ci={})
    k_of_n = flops_per_param_token(main)
    ratio = main.C / (main.N * main.D)
    result["flops_per_param_token"] = {"min": float(ratio.min()), "median": float(np.median(ratio)), "max": float(ratio.max())}
    law = a2 = None
    try:
        law = law_fit(main.N, main.D, main.loss)
        result.update({n: getattr(law, n) for n in ("E", "A", "B", "alpha", "beta", "objective")}, a_approach3=law.a_opt)
        result["approach3"] = _law_dict(law)
        if n_boot:
            result["ci"].update(uncertainty.intervals(uncertainty.bootstrap_law(law, main.N, main.D, main.loss, rng, n_boot, delta=delta)))
            result["ci"]["a_approach3"] = result["ci"].pop("a")
    except RunsError as err:
        _skip_or_raise("approach3", err, required, skipped)
    result["hoffmann_2022_objective"] = fit3.score(fit3.HOFFMANN_PUBLISHED, main.N, main.D, main.loss, delta)
    try:
        a2 = isoflop.fit_approach2(main)
        result["a_approach2"] = a2.a
        result["approach2"] = a2.summary()
        if n_boot:
            result["ci"]["a_approach2"] = uncertainty.percentile_ci(isoflop.bootstrap_approach2(main, a2, rng, n_boot))
    except RunsError as err:
        _skip_or_raise("approach2", err, required, skipped)
    if "a_approach2" in result["ci"] and "a_approach3" in result["ci"]:
        result["a_intervals_overlap"] = uncertainty.overlap(result["ci"]["a_approach2"], result["ci"]["a_approach3"])
    if a2 is not None and a2.grouping == "budget column" and len(a2.groups) >= 3:
        try:
            result["holdout"] = _holdout(main, a2, k_of_n, law_fit)
        except RunsError as err:
            skipped.append({"fit": "holdout", "reason": str(err)})
    result["per_modality"] = _per_modality(runs, index, skipped, law_fit)
    unimodal, pairs, fitted = _mixed(runs, skipped, law_fit)
    if not pairs and "mixed" in required:
        reasons = "; ".join(s["reason"] for s in skipped if s["fit"].startswith(("mixed", "unimodal")))
        raise RunsError(f"{runs.source}: mixed-modal law requested but not fitted: {reasons or 'the table has no modalities column with a pair group such as text+image'}")
    result.update(unimodal=unimodal, mixed_modal=pairs, skipped=skipped)
    result["settings"] = {
        "huber_delta": delta, "n_starts": len(fit3.grid_starts()) if starts is None else len(starts), "bootstrap": n_boot, "seed": seed,
        "ci_level": uncertainty.LEVEL, "source": runs.source, "drop_highest_loss": drop_highest_loss,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            from mmntp_jax.scaling import plots as plotting

            result["plots"] = plotting.write_all(out, main, law, a2, k_of_n, fitted, runs)
        (out / "fit.json").write_text(json.dumps(result, indent=1, default=_json_default))
    return result


def _skip_or_raise(name: str, err: Exception, required: tuple, skipped: list) -> None:
    if name in required:
        raise err
    skipped.append({"fit": name, "reason": str(err)})


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
