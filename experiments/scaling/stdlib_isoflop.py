"""IsoFLOP sweep on the Python standard library's source, byte level.

    mmntp scaling run --config experiments/scaling/stdlib_isoflop.py --workdir workdirs/scaling/stdlib --jobs 2
    mmntp scaling fit --runs workdirs/scaling/stdlib --out workdirs/scaling/stdlib/fit

Byte-level models of 12k–0.14M parameters (widths 16–64, 1–2 layers) at four
budgets 1e11–8e11 FLOPs, 64-token rows, 32 rows a step; one constant-lr run per
size with WSD cooldowns (20 %) branched from its checkpoints (4.7e12 FLOPs in all).
Expected (docs/scaling.md has the measured run): IsoFLOP parabolas with interior
minima; Approach 2 and Approach 3 exponents agree within their bootstrap
intervals; the law fitted on the three smaller budgets predicts the best loss at
8e11 within 2 %; about 30 minutes on two shared CPU cores.
"""

import dataclasses

from mmntp_jax.scaling.presets import cpu_sweep


def get_config():
    sweep = cpu_sweep("stdlib_isoflop", "stdlib", budgets=(3e11, 1e12, 3e12))
    base = sweep.base
    return dataclasses.replace(sweep, base=dataclasses.replace(base, data=dataclasses.replace(base.data, piece_bytes=1024)))
