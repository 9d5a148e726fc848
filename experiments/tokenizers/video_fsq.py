"""Causal video tokenizer, 1 + 8 frames of 32×32 moving shapes, factor 4 in space and 4 in time, FSQ 2^10.

    mmntp tokenizer train --cpu-devices 2 --config experiments/tokenizers/video_fsq.py --workdir workdirs/tokenizers/video_fsq
    mmntp tokenizer eval --workdir workdirs/tokenizers/video_fsq --json

MAGVIT-v2 style: causal 3-D convolutions, a pixel-unshuffle stem (patch 2),
levels 16×16 (16 channels), then space and time halved (8×8, 32 channels),
then time halved again: 9 frames → 1 + 2 latent steps of 8×8 → 192 tokens per
video; the first step codes frame 0 alone, with the same FSQ vocabulary as
the image tokenizer. Measured on the 2-core CPU with `--cpu-devices 2`: held-out
PSNR 21.1 dB after the 1000 steps, codebook usage 0.93, 25 min (docs/benchmarks.md).
"""

from mmntp_jax.config import CheckpointConfig, OptimConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.experiment import LossConfig, TokenizerDataConfig, TokenizerExperiment, TokenizerTrainConfig
from mmntp_jax.tokenizers.video import VideoTokenizerConfig


def get_config() -> TokenizerExperiment:
    return TokenizerExperiment(
        name="video_fsq",
        kind="video",
        model=VideoTokenizerConfig(
            frames=9, image_size=32, factor=4, temporal_factor=4, patch=2, channels=16, channel_mult=(1, 2, 2),
            num_res_blocks=1, attention=False, z_channels=32, norm_groups=8, quantizer=QuantizerConfig(kind="fsq", levels=(8, 5, 5, 5)),
        ),
        data=TokenizerDataConfig(source="videos", train_items=2048, eval_items=64),
        loss=LossConfig(reconstruction="l2"),
        optim=OptimConfig(lr=2e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05, weight_decay=0.0, b1=0.9, b2=0.99, clip_norm=1.0),
        train=TokenizerTrainConfig(steps=1000, batch_size=8, log_every=25, eval_every=250, samples=4),
        checkpoint=CheckpointConfig(every=250, keep=2),
    )
