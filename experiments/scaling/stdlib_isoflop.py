"""IsoFLOP sweep on the Python standard library's source, byte level.

    mmntp scaling run --config experiments/scaling/stdlib_isoflop.py --workdir workdirs/scaling/stdlib --jobs 2
    mmntp scaling fit --runs workdirs/scaling/stdlib --out workdirs/scaling/stdlib/fit

Byte-level models of 12k–385k parameters (widths 16–96, 1–3 layers) at three
budgets 3e11, 1e12, 3e12 FLOPs, 64-token rows, 32 rows a step; one constant-lr
run per size with WSD cooldowns (20 %) branched from its checkpoints (1.96e13
FLOPs in all). The files are cut into pieces of at most 1 KiB before the
shuffle (`data.piece_bytes`), so a batch draws from many files. Measured
(docs/scaling.md): 17 minutes on the 2-core CPU; IsoFLOP minima at 26k, 45k and
70k parameters; a = 0.435 (Approach 2) and 0.332 (Approach 3), intervals
overlapping; the law fitted on 3e11 and 1e12 predicts the best loss at 3e12
(1.520) to +2.0 %.
"""

import dataclasses

from mmntp_jax.scaling.presets import cpu_sweep


def get_config():
    sweep = cpu_sweep("stdlib_isoflop", "stdlib", budgets=(3e11, 1e12, 3e12))
    base = sweep.base
    return dataclasses.replace(sweep, base=dataclasses.replace(base, data=dataclasses.replace(base.data, piece_bytes=1024)))
