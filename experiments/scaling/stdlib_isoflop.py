"""IsoFLOP sweep on the Python standard library's source, byte level.

    mmntp scaling run --config experiments/scaling/stdlib_isoflop.py --workdir workdirs/scaling/stdlib --jobs 2
    mmntp scaling fit --runs workdirs/scaling/stdlib --out workdirs/scaling/stdlib/fit

Byte-level models of 31k–0.85M parameters (widths 32–128, 1–4 layers) at four
budgets 3e11–2.4e12 FLOPs; one constant-lr run per size with WSD cooldowns
(20 %) from its checkpoints.
Expected (docs/scaling.md): IsoFLOP parabolas with interior minima; Approach 2
and Approach 3 exponents agree within their bootstrap intervals; a law fitted on
the three smaller budgets predicts the best loss at 2.4e12 within 2 %; total
training compute 1.4e13 FLOPs, about an hour on two contended CPU cores.
"""

from mmntp_jax.scaling.presets import cpu_sweep


def get_config():
    return cpu_sweep("stdlib_isoflop", "stdlib", budgets=(3e11, 6e11, 1.2e12, 2.4e12))
