"""Captioned shapes: image→caption and caption→image documents, images tokenized by the image tokenizer.

    mmntp data shapes --out data/shapes_mm/manifest --items 4000
    mmntp data prepare --manifest data/shapes_mm/manifest/manifest.jsonl --out data/shapes_mm/tokens \\
        --config experiments/shapes_mm.py
    mmntp data inspect data/shapes_mm/tokens
    mmntp train --config experiments/shapes_mm.py --workdir workdirs/shapes_mm

Each 32×32 image becomes 64 FSQ codes (levels 8,5,5,5: 1000 ids) of the VQGAN-family
`ImageTokenizer` (down-sampling 4), a block of 66 tokens with its markers; text is
byte-level. Vocab: 16 specials + 256 bytes + 1000 image codes = 1272 ids. The
prompt side of every document (the image of a captioning document, the caption of a
drawing document) has `"loss": false`.

The image tokenizer: with `MMNTP_IMAGE_TOKENIZER=DIR` set, the trained tokenizer
saved in DIR (e.g. `workdirs/tokenizers/image_fsq/tokenizer` after
`mmntp tokenizer train --config experiments/tokenizers/image_fsq.py`), whose codes
decode back to the images. Without it, an untrained tokenizer of the same family
(deterministic initialisation, seed 0): its codes are a fixed, image-dependent
feature map, so caption→image training learns that map, but decoding generated
codes gives no meaningful image.

Measured on a shared 2-core CPU: `mmntp data shapes` 30 s; prepare 3.3 minutes;
`inspect` shows 8000 documents, 1 449 008 tokens (528 000 in image blocks, 50%
trained on), lengths 128–240. Packing rows of 1024 tokens leaves about 6% padding
(documents of 128–240 tokens leave gaps no whole document fills). A 40-step check
run (`--set train.steps=40`) took the text loss from 4.49 (step 10) to 1.30 and the
image loss from 6.06 to 4.71 nats (ln 1000 ≈ 6.9); eval loss 2.38 (text 1.28,
image 4.62). The full 400 steps have not been timed on this machine.
"""

from mmntp_jax.config import CheckpointConfig, Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

DATA = "data/shapes_mm/tokens"
VOCAB_SIZE = 16 + 256 + 1000


TOKENIZER_ENV = "MMNTP_IMAGE_TOKENIZER"


def image_tokenizer():
    """The image tokenizer module (32×32 images → 8×8 FSQ codes): trained from
    $MMNTP_IMAGE_TOKENIZER if set, else untrained (seed 0)."""
    import os

    from flax import nnx

    from mmntp_jax.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
    from mmntp_jax.tokenizers.io import load_tokenizer

    directory = os.environ.get(TOKENIZER_ENV)
    if directory:
        tokenizer = load_tokenizer(directory)
        if tokenizer.kind != "image" or tokenizer.config.image_size != 32 or tokenizer.vocab_size != 1000:
            raise ValueError(f"{TOKENIZER_ENV}={directory}: need a 32×32 image tokenizer with 1000 codes, got "
                             f"{tokenizer.kind} {getattr(tokenizer.config, 'image_size', '?')}px, {tokenizer.vocab_size} codes")
        return tokenizer.module()
    config = ImageTokenizerConfig(image_size=32, factor=4, channels=32, channel_mult=(1, 2, 2), z_channels=32, norm_groups=8)
    return ImageTokenizer(config, rngs=nnx.Rngs(0))


def get_tokenizers():
    """Modality tokenizers for `mmntp data prepare --config experiments/shapes_mm.py`."""
    from mmntp_jax.data.tokenize import module_encoder

    return {"image": module_encoder(image_tokenizer(), batch_size=32), "text": "bytes"}


def get_config() -> Config:
    return Config(
        name="shapes_mm",
        model=ModelConfig(vocab_size=VOCAB_SIZE, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=768, max_seq_len=1024),
        data=DataConfig(source="shards", path=DATA, eval_fraction=0.02, pack_window=64),
        optim=OptimConfig(lr=3e-3, schedule="cosine", warmup_steps=30, weight_decay=0.1),
        checkpoint=CheckpointConfig(every=100, keep=2),
        train=TrainConfig(steps=400, batch_size=4, seq_len=1024, eval_every=100, eval_batches=4, log_every=10),
    )
