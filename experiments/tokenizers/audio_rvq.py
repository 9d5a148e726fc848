"""Audio codec, 16 kHz synthetic spoken-digit clips, 50 frames/s, residual VQ 8 × 1024 with quantizer dropout.

    mmntp tokenizer train --config experiments/tokenizers/audio_rvq.py --workdir workdirs/tokenizers/audio_rvq
    mmntp tokenizer eval --workdir workdirs/tokenizers/audio_rvq --json

SoundStream/EnCodec-style: strides (2, 4, 5, 8) = hop 320, channels 16 → 256,
residual units with dilations 1, 3 and 9, RVQ of 8 codebooks of 1024 codes
(10 bits, 500 bit/s each) trained with quantizer dropout so one model serves
1, 2, 4 and 8 quantizers (0.5 – 4 kbit/s). Loss: L1 on samples + multi-resolution
STFT. `eval --json` reports SI-SNR and mel distance per bitrate (q1/…, q2/…, q4/…,
q8/…); docs/benchmarks.md has the table (mel distance 0.45 → 0.405 from 1 to 8
quantizers; SI-SNR still negative at this training length).
"""

from mmntp_jax.config import CheckpointConfig, OptimConfig
from mmntp_jax.tokenizers.audio import AudioTokenizerConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.experiment import LossConfig, TokenizerDataConfig, TokenizerExperiment, TokenizerTrainConfig


def get_config() -> TokenizerExperiment:
    return TokenizerExperiment(
        name="audio_rvq",
        kind="audio",
        model=AudioTokenizerConfig(
            sample_rate=16000, channels=16, strides=(2, 4, 5, 8), dilations=(1, 3, 9), kernel_size=7,
            quantizer=QuantizerConfig(kind="rvq", codebook_size=1024, dim=32, num_quantizers=8, quantizer_dropout=True,
                                      ema=True, kmeans_init=True, dead_threshold=0.5, decay=0.95),
        ),
        data=TokenizerDataConfig(source="digits", train_items=4096, eval_items=128, clip_seconds=0.5),
        loss=LossConfig(reconstruction="l1", reconstruction_weight=1.0, stft_weight=1.0),
        optim=OptimConfig(lr=1e-3, schedule="cosine", warmup_steps=100, min_lr_ratio=0.05, weight_decay=0.0, b1=0.9, b2=0.99, clip_norm=1.0),
        train=TokenizerTrainConfig(steps=6000, batch_size=16, log_every=50, eval_every=1000, samples=4),
        checkpoint=CheckpointConfig(every=500, keep=2),
    )
