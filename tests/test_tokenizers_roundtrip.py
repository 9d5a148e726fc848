"""Every tokenizer × quantizer combination at tiny sizes: shapes, code ranges and round trips.

The reference for a round trip is the forward pass itself: the latents the
quantizer produced must be exactly what the codes look up, and decoding the
codes must give the reconstruction of the forward pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.tokenizers.audio import AudioTokenizerConfig
from mmntp_jax.tokenizers.bottleneck import KINDS, QuantizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizerConfig
from mmntp_jax.tokenizers.registry import Tokenizer
from mmntp_jax.tokenizers.video import VideoTokenizerConfig

QUANTIZERS = {
    "fsq": QuantizerConfig(kind="fsq", levels=(5, 3, 3)),
    "vq": QuantizerConfig(kind="vq", codebook_size=16, dim=4),
    "rvq": QuantizerConfig(kind="rvq", codebook_size=8, dim=4, num_quantizers=3, quantizer_dropout=True),
    "group_vq": QuantizerConfig(kind="group_vq", codebook_size=8, dim=4, groups=2),
    "lfq": QuantizerConfig(kind="lfq", codebook_size=16),
    "bsq": QuantizerConfig(kind="bsq", codebook_size=16),
    "msvq": QuantizerConfig(kind="msvq", codebook_size=16, dim=4),
}
SMALL = dict(channels=4, num_res_blocks=1, z_channels=4, norm_groups=2)


def tiny(kind, q):
    if kind == "image":
        return ImageTokenizerConfig(image_size=8, factor=4, patch=2, channel_mult=(1, 1), attention=True, quantizer=q, **SMALL)
    if kind == "video":
        return VideoTokenizerConfig(frames=3, image_size=8, factor=2, patch=2, temporal_factor=2, channel_mult=(1, 1), quantizer=q, **SMALL)
    return AudioTokenizerConfig(sample_rate=64, channels=2, strides=(2, 2), dilations=(1,), kernel_size=3, quantizer=q)


def test_every_family_is_covered():
    assert set(QUANTIZERS) == set(KINDS)


@pytest.mark.parametrize("qname", list(QUANTIZERS))
@pytest.mark.parametrize("kind", ["image", "audio", "video"])
def test_round_trip(kind, qname):
    tok = Tokenizer.create(kind, tiny(kind, QUANTIZERS[qname]), seed=1)
    rng = np.random.default_rng(0)
    shape = {"image": (2, 8, 8, 3), "video": (2, 3, 8, 8, 3), "audio": (2, 32)}[kind]
    x = jnp.asarray(rng.uniform(0 if kind != "audio" else -1, 1, shape), jnp.float32)
    item_shape = shape[1:]

    def run(params, x):  # eager: the per-op kernels are shared by every combination
        m = nnx.merge(tok.graphdef, params)
        z = m.encode_latent(x)
        out = m.quantize(z)
        codes = m.encode(x)
        latent = z.shape[:-1]
        looked_up = m.quantize.lookup(codes.reshape(m.quantize.codes_shape(latent)), latent)
        rec = m.decode_latent(out.z_q)
        decoded = m.decode(codes, shape=item_shape)
        return codes, out.z_q, looked_up, rec, decoded

    codes, z_q, looked_up, rec, decoded = jax.device_get(run(tok.params, x))
    n = tok.tokens_per_item(item_shape)
    assert codes.shape == (2, n) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < tok.vocab_size
    np.testing.assert_allclose(looked_up, z_q, atol=1e-5)
    lo, hi = (-1, 1) if kind == "audio" else (0, 1)
    np.testing.assert_allclose(decoded, np.clip(rec, lo, hi), atol=1e-5)
    assert decoded.shape == x.shape


def test_bad_image_input_names_the_shape():
    tok = Tokenizer.create("image", tiny("image", QUANTIZERS["fsq"]))
    with pytest.raises(ValueError, match=r"expected images \[B, H, W, 3\], got shape \(2, 8, 8, 1\)"):
        tok.encode(tok.params, np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ValueError, match=r"image size 10×8 is not divisible by the down-sampling factor 4"):
        tok.encode(tok.params, np.zeros((2, 10, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected codes \[B, 4\] for a 2×2 latent grid, got shape \(2, 5\)"):
        tok.decode(tok.params, np.zeros((2, 5), np.int32))
