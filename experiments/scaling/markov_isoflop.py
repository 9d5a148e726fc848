"""IsoFLOP sweep on the generated Markov source, whose entropy rate is known.

    mmntp scaling run --config experiments/scaling/markov_isoflop.py --workdir workdirs/scaling/markov --jobs 2
    mmntp scaling fit --runs workdirs/scaling/markov --out workdirs/scaling/markov/fit

Byte-level models of 12k–385k parameters (widths 16–96, 1–3 layers) at three
budgets 3e11, 1e12, 3e12 FLOPs, 64-token rows, 32 rows a step; one constant-lr
run per size with WSD cooldowns (20 %) branched from its checkpoints (1.96e13
FLOPs in all). Source `data.source=markov`: an order-1 chain over 256 bytes, 16
successors each, entropy rate H = 2.3836 nats/token (the least loss any model
can reach). Measured (docs/scaling.md): 24 minutes on the 2-core CPU; best loss
2.4226 (width 48 at 3e12); fitted E = 2.411 (0.027 above H); a = 0.229
(Approach 3) and 0.226 (Approach 2), intervals overlapping; the law fitted on
3e11 and 1e12 predicts the best loss at 3e12 to −0.4 %.
"""

from mmntp_jax.scaling.presets import cpu_sweep


def get_config():
    return cpu_sweep("markov_isoflop", "markov", budgets=(3e11, 1e12, 3e12))
