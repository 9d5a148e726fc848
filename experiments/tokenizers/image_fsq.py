"""Image tokenizer, 32×32 synthetic shapes, down-sampling factor 4 (8×8 = 64 tokens), FSQ 2^10.

    mmntp tokenizer train --config experiments/tokenizers/image_fsq.py --workdir workdirs/tokenizers/image_fsq
    mmntp tokenizer eval --workdir workdirs/tokenizers/image_fsq --json

A pixel-unshuffle stem (patch 2) and two levels (16×16 at 32 channels, 8×8 at
64 with attention), FSQ levels (8, 5, 5, 5) = 1000 codes, L2 loss, 6000 steps of
batch 16. Measured on the 2-core CPU, nothing else running: 16 min 52 s wall
(1313 CPU-seconds), held-out PSNR 28.8 dB, codebook usage 0.971 (perplexity
569); the plain VQ-1024 run (`image_vq.py`) uses 2.5% of its codebook.
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
            image_size=32, factor=4, patch=2, channels=32, channel_mult=(1, 2), num_res_blocks=1, attention=True,
            z_channels=64, norm_groups=8, quantizer=QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5)),
        ),
        data=TokenizerDataConfig(source="shapes", train_items=16384, eval_items=512),
        loss=LossConfig(reconstruction="l2"),
        optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05, weight_decay=0.0, b1=0.9, b2=0.99, clip_norm=1.0),
        train=TokenizerTrainConfig(steps=6000, batch_size=16, log_every=50, eval_every=1000, samples=16),
        checkpoint=CheckpointConfig(every=1000, keep=2),
    )
