"""Sweep presets: the small byte-level sweeps that run on a CPU in about an hour."""

from __future__ import annotations

from mmntp_jax.config import CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from mmntp_jax.scaling.sweep import SweepConfig

CPU_WIDTHS = (16, 24, 32, 48, 64, 96)


def cpu_base(source: str, *, seq_len: int = 64, batch_size: int = 32) -> Config:
    """Template run: byte vocabulary (272 ids), AdamW, eval on 32 fixed held-out batches at the end."""
    return Config(
        name=source,
        model=ModelConfig(vocab_size=272, max_seq_len=seq_len),
        data=DataConfig(source=source, eval_fraction=0.02),
        optim=OptimConfig(weight_decay=0.1, min_lr_ratio=0.0, clip_norm=1.0),
        checkpoint=CheckpointConfig(every=500, keep=2),
        train=TrainConfig(batch_size=batch_size, seq_len=seq_len, eval_every=1_000_000, eval_batches=32, log_every=50, progress=False),
    )


def cpu_sweep(name: str, source: str, *, budgets=(), tokens=(), widths=CPU_WIDTHS, **overrides) -> SweepConfig:
    """Widths 16–96 (head dim 8, d/layers = 32: 1–3 layers), lr 4e-3·(128/d)^0.5, WSD with 20 % cooldowns."""
    settings = dict(
        name=name, base=cpu_base(source), widths=tuple(widths), budgets=tuple(budgets), tokens=tuple(tokens),
        aspect=32, head_dim=8, lr_ref=4e-3, width_ref=128, lr_exponent=0.5, warmup_fraction=0.1, max_warmup=100,
        decay_fraction=0.2, reuse="wsd", min_steps=20,
    )
    settings.update(overrides)
    return SweepConfig(**settings)
