"""Byte-level language model on the Python standard library's source (CPU, minutes).

The byte-level text job (the default job is experiments/captioned.py):

    mmntp train --config experiments/text_stdlib.py --workdir workdirs/text_stdlib
    mmntp sample --workdir workdirs/text_stdlib --prompt "def "

Expected: 300 steps of 16 × 256 bytes (46 GFLOP per step). Train loss falls from
ln(272) ≈ 5.6 to about 2.0 nats/byte and held-out loss to 2.67 / 2.50 / 2.41 at
steps 100 / 200 / 300 (measured). Wall time is about 5 minutes on a quiet 2-core
CPU (measured: 37 minutes with the machine's load average at 12). At this
size greedy decoding soon repeats common words; `--temperature 0.7` shows
Python's structure (indentation, `self`, quotes, assignments). Train longer
(`--set train.steps=2000`) for readable code.
"""

from mmntp_jax.config import CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="text_stdlib",
        model=ModelConfig(vocab_size=272, d_model=192, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=512, max_seq_len=2048),
        data=DataConfig(source="stdlib", eval_fraction=0.02),
        optim=OptimConfig(lr=3e-3, schedule="cosine", warmup_steps=30, weight_decay=0.1),
        checkpoint=CheckpointConfig(every=100, keep=2),
        train=TrainConfig(steps=300, batch_size=16, seq_len=256, eval_every=100, eval_batches=4, log_every=10),
    )
