"""IsoFLOP sweep on the generated Markov source, whose entropy rate is known.

    mmntp scaling run --config experiments/scaling/markov_isoflop.py --workdir workdirs/scaling/markov --jobs 2
    mmntp scaling fit --runs workdirs/scaling/markov --out workdirs/scaling/markov/fit

Byte-level models of 12k–0.14M parameters (widths 16–64, 1–2 layers) at four
budgets 1e11–8e11 FLOPs, 64-token rows, 32 rows a step; one constant-lr run per
size with WSD cooldowns (20 %) branched from its checkpoints (4.7e12 FLOPs in all).
Source `data.source=markov`: an order-1 chain over 256 bytes, 16 successors each,
entropy rate H = 2.3836 nats/token (the least loss any model can reach).
Expected (docs/scaling.md has the measured run): loss falls towards H with N and
D; Approach 2 and Approach 3 exponents agree within their bootstrap intervals;
the fitted E lies within 0.05 nats of H; about 30 minutes on two shared CPU cores.
"""

from mmntp_jax.scaling.presets import cpu_sweep


def get_config():
    return cpu_sweep("markov_isoflop", "markov", budgets=(3e11, 1e12, 3e12))
