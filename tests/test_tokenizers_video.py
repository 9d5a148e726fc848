"""Video: causality in time, first frame coded like an image (inflation), shapes, bad input."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.config import ConfigError
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizer, ImageTokenizerConfig
from mmntp_jax.tokenizers.video import VideoTokenizer, VideoTokenizerConfig, inflate_from_image

FSQ = QuantizerConfig(kind="fsq", levels=(5, 3, 3))
ARCH = dict(image_size=8, factor=4, patch=2, channels=4, num_res_blocks=1, z_channels=4, norm_groups=2, quantizer=FSQ)


@pytest.fixture(scope="module")
def video():
    config = VideoTokenizerConfig(frames=9, temporal_factor=4, channel_mult=(1, 1, 1), attention=True, **ARCH)
    return VideoTokenizer(config, rngs=nnx.Rngs(0))


def test_tokens_depend_only_on_past_frames(video):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(1, 9, 8, 8, 3)), jnp.float32)
    steps = 1 + 8 // 4
    assert video.tokens_per_item() == steps * 2 * 2
    base = np.asarray(video.encode(x)).reshape(1, steps, -1)
    for k in range(1, 9):
        changed = np.asarray(video.encode(x.at[:, k].set(jnp.asarray(rng.uniform(size=(8, 8, 3)), jnp.float32)))).reshape(1, steps, -1)
        first_affected = -(-k // 4)  # step j sees frames ≤ 4j
        np.testing.assert_array_equal(changed[:, :first_affected], base[:, :first_affected], err_msg=f"frame {k} leaked into earlier steps")
    # and the latents (before rounding) of the step holding frame k do change
    z = np.asarray(video.encode_latent(x))
    z8 = np.asarray(video.encode_latent(x.at[:, 8].set(0.0)))
    np.testing.assert_array_equal(z[:, :2], z8[:, :2])
    assert np.abs(z[:, 2] - z8[:, 2]).max() > 1e-4


def test_decoder_is_causal_too(video):
    codes = jnp.asarray(np.random.default_rng(1).integers(0, 45, (1, 12)), jnp.int32)
    frames = np.asarray(video.decode(codes))
    other = np.asarray(video.decode(codes.at[:, 8:].set(0)))  # change the last latent step only
    assert frames.shape == (1, 9, 8, 8, 3)
    np.testing.assert_array_equal(frames[:, :5], other[:, :5])  # frames 0..4 come from steps 0 and 1


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_inflated_video_tokenizer_codes_first_frame_like_the_image_tokenizer():
    image = ImageTokenizer(ImageTokenizerConfig(channel_mult=(1, 2), attention=True, **ARCH), rngs=nnx.Rngs(1))
    video = VideoTokenizer(VideoTokenizerConfig(frames=5, temporal_factor=2, channel_mult=(1, 2), attention=True, **ARCH), rngs=nnx.Rngs(2))
    inflate_from_image(video, image)
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, 5, 8, 8, 3)), jnp.float32)
    video_codes = np.asarray(video.encode(x)).reshape(2, 3, -1)
    np.testing.assert_array_equal(video_codes[:, 0], np.asarray(image.encode(x[:, 0])))
    np.testing.assert_allclose(np.asarray(video.decode(jnp.asarray(video_codes[:, 0]), shape=(1, 8, 8)))[:, 0],
                               np.asarray(image.decode(jnp.asarray(video_codes[:, 0]))), atol=1e-5)
    wrong = VideoTokenizer(VideoTokenizerConfig(frames=5, temporal_factor=2, channel_mult=(1, 1), **ARCH), rngs=nnx.Rngs(2))
    with pytest.raises(ValueError, match="architectures differ|has shape"):
        inflate_from_image(wrong, image)


def test_bad_video_input(video):
    with pytest.raises(ValueError, match=r"8 frames is not 1 \+ n·4 \(shape \(1, 8, 8, 8, 3\)\)"):
        video.encode(jnp.zeros((1, 8, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"image size 6×6 is not divisible by the down-sampling factor 4"):
        video.encode(jnp.zeros((1, 9, 6, 6, 3)))
    with pytest.raises(ValueError, match=r"expected videos \[B, T, H, W, 3\], got shape \(9, 8, 8, 3\)"):
        video.encode(jnp.zeros((9, 8, 8, 3)))
    with pytest.raises(ConfigError, match="frames"):
        VideoTokenizerConfig(frames=8, temporal_factor=4, **ARCH).validate()
