"""A tiny byte-level experiment for CLI tests: 4 steps, checkpoints every 2."""

from mmntp_jax.config import CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config():
    return Config(
        name="cli_tiny",
        model=ModelConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=128),
        data=DataConfig(read_threads=1),
        optim=OptimConfig(lr=1e-2, warmup_steps=1),
        checkpoint=CheckpointConfig(every=2, keep=2),
        train=TrainConfig(steps=4, batch_size=8, seq_len=32, eval_every=2, eval_batches=1, log_every=1, peak_flops=1e11, compilation_cache=""),
    )
