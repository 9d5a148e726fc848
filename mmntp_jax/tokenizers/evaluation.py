"""Held-out evaluation of a tokenizer and the samples it writes.

Dimension legend: B batch, N items, Q codes per position, C codebook size.

Figures (one flat dict of floats; `evaluate` returns it, `mmntp tokenizer eval --json` prints it):
    psnr            image/video: mean over items of 10·log10(1 / MSE), pixels in [0, 1]
                    (MSE floored at 1e-6, so one perfect item counts as 60 dB, not infinity)
    mse             image/video: mean squared error
    si_snr          audio: mean scale-invariant SNR (dB)
    mel_distance    audio: mean |log-mel(x̂) − log-mel(x)| (64 bands, n_fft 1024, hop 256)
    codebook_usage  fraction of the C codes used at least once over the whole eval set
                    (residual/grouped codes: averaged over the Q codebooks)
    perplexity      exp(entropy) of the code frequencies over the eval set (averaged likewise)
    bits_per_item, tokens_per_item, items
Audio also reports every bitrate in {1, 2, 4, 8, …} ≤ Q quantizers as `q<n>/…` keys.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mmntp_jax.tokenizers import media
from mmntp_jax.tokenizers.datasets import to_float
from mmntp_jax.tokenizers.spectral import mel_distance, si_snr

MIN_MSE = 1e-6


def code_statistics(codes_NQ: np.ndarray, vocab_size: int) -> dict:
    """Usage and perplexity per codebook column, averaged; codes < 0 (dropped levels) are ignored."""
    usages, perplexities = [], []
    for column in codes_NQ.reshape(codes_NQ.shape[0], -1).T:
        counts = np.bincount(column[column >= 0], minlength=vocab_size).astype(np.float64)
        if counts.sum() == 0:
            continue
        p = counts / counts.sum()
        usages.append(float(np.mean(counts > 0)))
        perplexities.append(float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0])))))
    return {"codebook_usage": float(np.mean(usages)), "perplexity": float(np.mean(perplexities))}


def _item_metrics(kind: str, sample_rate: int):
    def fn(module, x, n_quantizers):
        z = module.encode_latent(x)
        out = module.quantize(z, n_quantizers=n_quantizers) if kind == "audio" else module.quantize(z)
        rec = module.decode_latent(out.z_q)
        if kind == "audio":
            rec = jnp.clip(rec, -1.0, 1.0)
            return {"si_snr": si_snr(rec, x), "mel_distance": mel_distance(rec, x, sample_rate)}, out.codes, rec
        rec = jnp.clip(rec, 0.0, 1.0)
        mse = jnp.mean(jnp.square(rec - x), axis=tuple(range(1, x.ndim)))
        return {"mse": mse, "psnr": 10.0 * jnp.log10(1.0 / jnp.maximum(mse, MIN_MSE))}, out.codes, rec

    return fn


def evaluate(module_fn, kind: str, config, items: np.ndarray, *, batch_size: int = 64, n_quantizers: int | None = None) -> tuple[dict, np.ndarray]:
    """Figures over `items` and the reconstructions; `module_fn()` gives the tokenizer module (graph, params)."""
    from flax import nnx

    graphdef, state = nnx.split(module_fn())
    metric_fn = _item_metrics(kind, getattr(config, "sample_rate", 0))
    run = jax.jit(lambda st, x, n: metric_fn(nnx.merge(graphdef, st), x, n), static_argnums=2)
    per_item, codes, recs = {}, [], []
    for start in range(0, len(items), batch_size):
        x = jnp.asarray(to_float(items[start:start + batch_size]))
        values, c, rec = jax.device_get(run(state, x, n_quantizers))
        for k, v in values.items():
            per_item.setdefault(k, []).append(np.asarray(v))
        codes.append(np.asarray(c).reshape(len(x), -1, config.quantizer.codes_per_position))
        recs.append(np.asarray(rec))
    figures = {k: float(np.mean(np.concatenate(v))) for k, v in per_item.items()}
    all_codes = np.concatenate(codes)
    if n_quantizers is not None:
        all_codes = all_codes[..., :n_quantizers]
    figures.update(code_statistics(all_codes.reshape(-1, all_codes.shape[-1]), config.quantizer.vocab_size))
    n_codes = all_codes.shape[1] * all_codes.shape[2]
    figures.update(items=float(len(items)), tokens_per_item=float(n_codes), bits_per_item=n_codes * math.log2(config.quantizer.vocab_size))
    return figures, np.concatenate(recs)


def bitrate_levels(num_quantizers: int) -> list[int]:
    levels = [n for n in (1, 2, 4, 8, 16, 32) if n < num_quantizers]
    return levels + [num_quantizers]


def evaluate_all(module_fn, kind: str, config, items: np.ndarray, *, batch_size: int = 64) -> tuple[dict, np.ndarray]:
    """`evaluate`, and for residual audio codecs the figures at every bitrate level (`q<n>/…`)."""
    figures, recs = evaluate(module_fn, kind, config, items, batch_size=batch_size)
    if kind == "audio":
        module = module_fn()
        figures["bitrate"] = module.bitrate()
        if config.quantizer.kind == "rvq":
            for n in bitrate_levels(config.quantizer.num_quantizers):
                f, _ = evaluate(module_fn, kind, config, items, batch_size=batch_size, n_quantizers=n)
                figures.update({f"q{n}/{k}": v for k, v in f.items() if k in ("si_snr", "mel_distance", "codebook_usage", "perplexity")})
                figures[f"q{n}/bitrate"] = module.bitrate(n)
    return figures, recs


def write_samples(directory, kind: str, config, originals: np.ndarray, reconstructions: np.ndarray, tag: str) -> list[str]:
    """Image/video: a PNG grid (originals above reconstructions); audio: WAV pairs. Returns the paths."""
    from pathlib import Path

    directory = Path(directory)
    originals = to_float(originals)
    if kind == "image":
        path = directory / f"{tag}.png"
        media.save_image(path, media.image_grid([originals, reconstructions]))
        return [str(path)]
    if kind == "video":
        rows = []
        for orig, rec in zip(originals, reconstructions):
            rows += [orig, rec]
        path = directory / f"{tag}.png"
        media.save_image(path, media.image_grid(rows))
        return [str(path)]
    paths = []
    for i, (orig, rec) in enumerate(zip(originals, reconstructions)):
        for name, clip in (("original", orig), ("reconstruction", rec)):
            path = directory / f"{tag}_{i}_{name}.wav"
            media.save_wav(path, clip, config.sample_rate)
            paths.append(str(path))
    return paths
