"""Workdirs for the export tests: random parameters written fast, or a tiny trained run."""

from __future__ import annotations

import jax
import numpy as np

from mmntp_jax.config import CheckpointConfig, Config, MeshConfig, ModelConfig, OptimConfig, TrainConfig
from mmntp_jax.data.vocab import Vocab
from mmntp_jax.export.checkpoint_tools import write_params_workdir
from mmntp_jax.export.reader import flatten, unflatten
from mmntp_jax.model.init import init_params, param_shardings
from mmntp_jax.sharding import make_mesh

TINY = dict(vocab_size=272, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Gaussian parameters of the shapes init_params makes (numpy: no compile); norm weights
    are 1 + noise, so a dropped or misplaced norm shows."""
    rng = np.random.default_rng(seed)
    shapes = flatten(jax.eval_shape(lambda: init_params(cfg, jax.random.key(0))))
    draw = lambda name, s: (1.0 if "norm" in name else 0.0) + (0.2 if "norm" in name else 0.05) * rng.standard_normal(s.shape)
    return unflatten({name: draw(name, s).astype(np.float32) for name, s in shapes.items()})


def random_workdir(path, cfg: ModelConfig | None = None, *, seed: int = 0, step: int = 0, mesh: MeshConfig | None = None, vocab: Vocab | None = None):
    """A params-only workdir of random parameters; with `mesh`, saved sharded over it. Returns (path, params)."""
    cfg = cfg or ModelConfig(**TINY)
    vocab = vocab or Vocab.build(text=256)
    params = random_params(cfg, seed)
    saved = params
    if mesh is not None:
        saved = jax.device_put(params, param_shardings(cfg, make_mesh(mesh)))
    path.mkdir(parents=True, exist_ok=True)
    write_params_workdir(path, Config(model=cfg), vocab, saved, step)
    return path, params


def trained_workdir(path):
    """Two training steps of the tiny model on a data=2 × fsdp=2 × tensor=2 mesh, started (as after
    `mmntp import hf`) from random parameters saved as a params-only step 0. Returns (path, start params)."""
    from mmntp_jax.train.backbone import train

    config = Config(
        model=ModelConfig(**TINY),
        mesh=MeshConfig(data=2, fsdp=2, tensor=2),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        train=TrainConfig(steps=2, batch_size=4, seq_len=32, eval_every=2, eval_batches=1, log_every=1, progress=False, compilation_cache="", peak_flops=1e9),
        checkpoint=CheckpointConfig(every=2, keep=1, async_save=False),
    )
    start = random_params(config.model, seed=5)
    path.mkdir(parents=True, exist_ok=True)
    write_params_workdir(path, config, Vocab.build(text=256), start, 0)
    train(config, path, log=lambda _: None)
    return path, start
