"""mmntp_jax: multimodal next-token prediction pretraining in JAX/Flax.

    import mmntp_jax as mm
    run = mm.load("WORKDIR")            # resolved config, vocab, params
    logits = run.logits(ids)            # int [B, T] → float32 [B, T, V]
    text = run.generate("def ", max_new_tokens=32, temperature=0.0)
"""

__version__ = "0.1.0"


def load(workdir, step=None):
    """Loads a trained workdir (latest checkpoint unless `step`) as a `Run`."""
    from mmntp_jax.api import load as _load

    return _load(workdir, step=step)


__all__ = ["load", "__version__"]
