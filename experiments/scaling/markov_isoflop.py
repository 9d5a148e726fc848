"""IsoFLOP sweep on the generated order-3 Markov source, whose entropy rate is known.

    mmntp scaling run --config experiments/scaling/markov_isoflop.py --workdir workdirs/scaling/markov --jobs 2
    mmntp scaling fit --runs workdirs/scaling/markov --out workdirs/scaling/markov/fit

Byte-level models of 31k–0.85M parameters (widths 32–128, 1–4 layers) at four
budgets 3e11–2.4e12 FLOPs; one constant-lr run per size with WSD cooldowns
(20 %) from its checkpoints. Source: `data.source=markov`, alphabet 16, order 3,
branching 4, entropy rate H = 1.0861 nats/token (row floor at T = 256: 1.1048).
Expected (docs/scaling.md): the loss falls towards H with N and D; Approach 2 and
Approach 3 exponents agree within their bootstrap intervals; the fitted E lies
within 0.05 nats of H; total training compute 1.4e13 FLOPs, about an hour on
two contended CPU cores.
"""

from mmntp_jax.scaling.presets import cpu_sweep


def get_config():
    return cpu_sweep("markov_isoflop", "markov", budgets=(3e11, 6e11, 1.2e12, 2.4e12))
