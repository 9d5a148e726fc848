"""Scaling-law fit benchmark: the Approach 3 fit from Hoffmann et al.'s 4,500-start grid.

    PYTHONPATH=. python tools/bench/scaling_fit.py                  # Chinchilla points (../shared/data) or synthetic
    PYTHONPATH=. python tools/bench/scaling_fit.py --stride 10      # every 10th start

Data: the 240 Chinchilla runs digitised by Besiroglu et al. 2024 (five highest
losses dropped) when ../shared/data/svg_extracted_data.csv exists, else 240
synthetic points from Hoffmann et al.'s published law with 1 % noise. Times the
whole `fit_law` (float32 pass over every start, float64 polish of the best 32)
cold (compilation included) and warm, and a 200-replicate bootstrap. Prints one
JSON object: `points`, `starts`, `cold_s`, `warm_s`, `bootstrap_s`, `cpu_s`
(process CPU time), `objective`, `alpha`, `beta`, `E`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mmntp_jax.scaling import fit, uncertainty
from mmntp_jax.scaling.table import drop_highest_loss, load_runs

CSV = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "svg_extracted_data.csv"


def points():
    if CSV.is_file():
        runs = drop_highest_loss(load_runs(CSV), 5)
        return "chinchilla", runs.N, runs.D, runs.loss
    rng = np.random.default_rng(0)
    n, d = np.exp(rng.uniform(np.log(4e7), np.log(1.6e10), 240)), np.exp(rng.uniform(np.log(5e9), np.log(5e11), 240))
    law = fit.HOFFMANN_PUBLISHED
    loss = (law["E"] + law["A"] / n ** law["alpha"] + law["B"] / d ** law["beta"]) * (1 + 0.01 * rng.standard_normal(240))
    return "synthetic", n, d, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stride", type=int, default=1, help="use every S-th start of the 4,500-point grid")
    parser.add_argument("--bootstrap", type=int, default=200)
    args = parser.parse_args()
    name, n, d, loss = points()
    starts = fit.grid_starts()[:: args.stride]
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    law = fit.fit_law(n, d, loss, starts=starts)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit.fit_law(n, d, loss, starts=starts)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    uncertainty.bootstrap_law(law, n, d, loss, np.random.default_rng(0), args.bootstrap)
    boot = time.perf_counter() - t0
    print(json.dumps({
        "data": name, "points": int(len(n)), "starts": int(len(starts)), "cold_s": round(cold, 2), "warm_s": round(warm, 2),
        "bootstrap": args.bootstrap, "bootstrap_s": round(boot, 2), "cpu_s": round(time.process_time() - cpu0, 1),
        "objective": law.objective, "alpha": law.alpha, "beta": law.beta, "E": law.E,
    }))


if __name__ == "__main__":
    main()
