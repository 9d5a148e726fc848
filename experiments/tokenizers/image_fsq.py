"""Image tokenizer, 32×32 synthetic shapes, down-sampling factor 4 (8×8 = 64 tokens), FSQ 2^10.

    mmntp tokenizer train --cpu-devices 2 --config experiments/tokenizers/image_fsq.py --workdir workdirs/tokenizers/image_fsq
    mmntp tokenizer eval --workdir workdirs/tokenizers/image_fsq --json

A pixel-unshuffle stem (patch 2) and two levels (16×16 at 32 channels, 8×8 at
64; no attention), FSQ levels (8, 5, 5, 5) = 1000 codes, L2 loss, 10 000 steps
of batch 16 at lr 4e-3 (cosine), parameters averaged (EMA 0.999) for eval and
export. `--cpu-devices 2` trains data-parallel over the two cores of a CPU-only
machine (1.9× the single-device step rate). Measured on the 2-core CPU, nothing
else running: 14 min 13 s wall, held-out PSNR 30.01 dB (raw parameters 29.95),
codebook usage 0.988. The plain VQ-1024 run (`image_vq.py`) is its comparison.
docs/benchmarks.md ("Tokenizers") has the curve and the variants tried.
"""

from mmntp_jax.config import CheckpointConfig, OptimConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.experiment import LossConfig, TokenizerDataConfig, TokenizerExperiment, TokenizerTrainConfig
from mmntp_jax.tokenizers.image import ImageTokenizerConfig


def get_config() -> TokenizerExperiment:
    return TokenizerExperiment(
        name="image_fsq",
        kind="image",
        model=ImageTokenizerConfig(
            image_size=32, factor=4, patch=2, channels=32, channel_mult=(1, 2), num_res_blocks=1, attention=False,
            z_channels=64, norm_groups=8, quantizer=QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5)),
        ),
        data=TokenizerDataConfig(source="shapes", train_items=16384, eval_items=512),
        loss=LossConfig(reconstruction="l2"),
        optim=OptimConfig(lr=4e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05, weight_decay=0.0, b1=0.9, b2=0.99, clip_norm=1.0),
        train=TokenizerTrainConfig(steps=10000, batch_size=16, log_every=50, eval_every=2500, samples=16, ema_decay=0.999),
        checkpoint=CheckpointConfig(every=2500, keep=2),
    )
