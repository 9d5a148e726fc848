"""Spectral features and measures for audio: STFT, log-mel features, multi-resolution STFT loss, SI-SNR.

Dimension legend: B batch, L samples, F frames, K frequency bins (n_fft/2 + 1), M mel bands.

Conventions match `transformers.audio_utils.spectrogram` (periodic Hann window,
centred frames with reflect padding, HTK mel scale, no filter normalisation),
so `log_mel` features equal that reference's `log_mel="log"` output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def hann(n: int) -> np.ndarray:
    """Periodic Hann window (as torch.hann_window and transformers' window_function)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def stft(x_BL, n_fft: int, hop: int):
    """Complex STFT `[B, F, K]` of centred, reflect-padded, Hann-windowed frames; F = 1 + L // hop."""
    x_BL = jnp.asarray(x_BL, jnp.float32)
    padded_BL = jnp.pad(x_BL, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    n_frames = 1 + (padded_BL.shape[-1] - n_fft) // hop
    index_FN = np.arange(n_frames)[:, None] * hop + np.arange(n_fft)[None, :]
    frames_BFN = padded_BL[:, index_FN] * hann(n_fft)
    return jnp.fft.rfft(frames_BFN, axis=-1)


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
    """Triangular HTK-mel filters `[K, M]` over the FFT bin frequencies."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m, np.float64) / 2595.0) - 1.0)

    bins_K = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising_KM = (bins_K[:, None] - lower) / (centre - lower)
    falling_KM = (upper - bins_K[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising_KM, falling_KM)).astype(np.float32)


def log_mel(x_BL, sample_rate: int, *, n_fft: int = 400, hop: int = 160, n_mels: int = 80, floor: float = 1e-10):
    """Natural-log mel magnitude spectrogram `[B, F, M]` (continuous audio features)."""
    mag_BFK = jnp.abs(stft(x_BL, n_fft, hop))
    mel_BFM = jnp.einsum("bfk,km->bfm", mag_BFK, mel_filterbank(n_fft, n_mels, sample_rate))
    return jnp.log(jnp.maximum(mel_BFM, floor))


def stft_loss(x_BL, y_BL, n_fft: int, hop: int, eps: float = 1e-7):
    """Spectral convergence + L1 of log magnitudes at one resolution (Parallel WaveGAN)."""
    mx_BFK = jnp.sqrt(jnp.square(jnp.abs(stft(x_BL, n_fft, hop))) + eps)
    my_BFK = jnp.sqrt(jnp.square(jnp.abs(stft(y_BL, n_fft, hop))) + eps)
    convergence = jnp.linalg.norm(my_BFK - mx_BFK) / jnp.maximum(jnp.linalg.norm(my_BFK), eps)
    log_mag = jnp.mean(jnp.abs(jnp.log(my_BFK) - jnp.log(mx_BFK)))
    return convergence + log_mag


def multi_resolution_stft_loss(x_BL, y_BL, resolutions=((512, 128), (1024, 256), (256, 64), (128, 32))):
    """Mean of `stft_loss` over (n_fft, hop) resolutions; x reconstruction, y reference."""
    return sum(stft_loss(x_BL, y_BL, n, h) for n, h in resolutions) / len(resolutions)


def mel_distance(x_BL, y_BL, sample_rate: int, *, n_fft: int = 1024, hop: int = 256, n_mels: int = 64):
    """Per-clip mean |log-mel(x) − log-mel(y)| `[B]` (log floor 1e-5): the spectral distance of eval."""
    lx = log_mel(x_BL, sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels, floor=1e-5)
    ly = log_mel(y_BL, sample_rate, n_fft=n_fft, hop=hop, n_mels=n_mels, floor=1e-5)
    return jnp.mean(jnp.abs(lx - ly), axis=(1, 2))


def si_snr(estimate_BL, reference_BL, eps: float = 1e-8):
    """Scale-invariant signal-to-noise ratio in dB, per clip `[B]` (zero-mean signals)."""
    est = estimate_BL - jnp.mean(estimate_BL, -1, keepdims=True)
    ref = reference_BL - jnp.mean(reference_BL, -1, keepdims=True)
    scale = jnp.sum(est * ref, -1, keepdims=True) / (jnp.sum(ref * ref, -1, keepdims=True) + eps)
    target = scale * ref
    noise = est - target
    return 10.0 * jnp.log10((jnp.sum(target * target, -1) + eps) / (jnp.sum(noise * noise, -1) + eps))
