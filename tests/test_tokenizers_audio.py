"""Audio: spectral features against transformers' numpy reference, SI-SNR, bitrates, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.tokenizers import spectral
from mmntp_jax.tokenizers.audio import AudioTokenizer, AudioTokenizerConfig
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig


def test_log_mel_matches_transformers_reference():
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    x = np.random.default_rng(0).standard_normal((2, 3200)).astype(np.float32)
    bank = mel_filter_bank(201, 40, 0, 8000, 16000, norm=None, mel_scale="htk")
    np.testing.assert_allclose(spectral.mel_filterbank(400, 40, 16000), bank, atol=1e-6)
    reference = np.stack([spectrogram(c, window_function(400, "hann"), 400, 160, power=1.0, mel_filters=bank, log_mel="log").T for c in x])
    np.testing.assert_allclose(np.asarray(spectral.log_mel(x, 16000, n_mels=40)), reference, atol=1e-4)


def test_stft_matches_numpy_and_si_snr_formula():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 1000)).astype(np.float32)
    padded = np.pad(x[0], 128, mode="reflect")
    frame = padded[64 * 3: 64 * 3 + 256] * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(256) / 256))
    np.testing.assert_allclose(np.asarray(spectral.stft(x, 256, 64))[0, 3], np.fft.rfft(frame), atol=1e-3)
    ref = rng.standard_normal((3, 500))
    est = 2.0 * ref + 0.1 * rng.standard_normal((3, 500))
    r0, e0 = ref - ref.mean(-1, keepdims=True), est - est.mean(-1, keepdims=True)
    target = (e0 * r0).sum(-1, keepdims=True) / (r0 * r0).sum(-1, keepdims=True) * r0
    expected = 10 * np.log10((target**2).sum(-1) / ((e0 - target) ** 2).sum(-1))
    np.testing.assert_allclose(np.asarray(spectral.si_snr(jnp.asarray(est), jnp.asarray(ref))), expected, rtol=1e-4)
    assert float(spectral.multi_resolution_stft_loss(x, x)) < 1e-3
    assert float(spectral.mel_distance(x, x, 16000)[0]) == 0.0


@pytest.fixture(scope="module")
def codec():
    q = QuantizerConfig(kind="rvq", codebook_size=16, dim=4, num_quantizers=4, quantizer_dropout=True)
    return AudioTokenizer(AudioTokenizerConfig(sample_rate=800, channels=2, strides=(2, 4), dilations=(1,), kernel_size=3, quantizer=q), rngs=nnx.Rngs(0))


def test_bitrates_and_partial_codes(codec):
    assert codec.config.hop == 8 and codec.config.frame_rate == 100
    assert codec.bitrate() == 100 * 4 * 4 and codec.bitrate(1) == 100 * 4
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64)), jnp.float32)
    full = np.asarray(codec.encode(x))
    two = np.asarray(codec.encode(x, n_quantizers=2))
    assert full.shape == (2, 8 * 4) and two.shape == (2, 8 * 2)
    np.testing.assert_array_equal(full.reshape(2, 8, 4)[..., :2].reshape(2, -1), two)  # residual levels are nested
    z = codec.encode_latent(x)
    expected = codec.decode_latent(codec.quantize(z, n_quantizers=2).z_q)
    np.testing.assert_allclose(np.asarray(codec.decode(jnp.asarray(two), n_quantizers=2)), np.clip(np.asarray(expected), -1, 1), atol=1e-5)
    _, out = codec(x, key=jax.random.key(3), train=True)
    assert 1 <= float(out.metrics["active_quantizers"]) <= 4


def test_bad_audio_input_names_the_shape(codec):
    with pytest.raises(ValueError, match=r"not a multiple of the hop 8.*\(2, 60\)|clip length 60"):
        codec.encode(jnp.zeros((2, 60)))
    with pytest.raises(ValueError, match=r"mono clips \[B, L\], got shape \(2, 64, 2\)"):
        codec.encode(jnp.zeros((2, 64, 2)))
    with pytest.raises(ValueError, match="n_quantizers=5"):
        codec.encode(jnp.zeros((2, 64)), n_quantizers=5)
