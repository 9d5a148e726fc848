"""Tiny configurations shared by the tests."""

import dataclasses

from mmntp_jax.config import CheckpointConfig, Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def tiny_config(**sections) -> Config:
    """A 2-layer byte model on the stdlib corpus; `sections` replace fields per section,
    e.g. tiny_config(train=dict(steps=6), mesh=dict(data=4, fsdp=2))."""
    config = Config(
        name="tiny",
        model=ModelConfig(vocab_size=272, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256),
        data=DataConfig(source="stdlib", eval_fraction=0.05, read_threads=1),
        optim=OptimConfig(lr=1e-2, warmup_steps=2, weight_decay=0.1),
        mesh=MeshConfig(data=-1),
        checkpoint=CheckpointConfig(every=3, keep=5, async_save=False),
        train=TrainConfig(steps=6, batch_size=8, seq_len=64, eval_every=3, eval_batches=2, log_every=1, progress=False, compilation_cache="", peak_flops=1e11),
    )
    for section, values in sections.items():
        config = dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})
    return config
