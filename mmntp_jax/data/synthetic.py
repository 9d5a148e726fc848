"""The embedded data sets: generated, deterministic, no downloads.

    shapes_images   coloured shapes on textured backgrounds, with captions (objects named largest first)
    digit_audio     spoken-digit-like clips (harmonic stacks, chirps, noise onsets) with descriptions
    shapes_videos   1 + n·F frames of shapes moving (and bouncing) over a textured background

Item `i` of split `s` with seed `k` is drawn from `numpy.random.default_rng([k, s, i])`,
so any item is reproducible on its own and the train and eval splits never overlap.
Dimension legend: N items, H height, W width, C channels (RGB), T frames, L samples.
Images and videos are float32 in [0, 1]; audio is float32 in [-1, 1].
"""

from __future__ import annotations

import numpy as np

SPLITS = {"train": 0, "eval": 1}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (0.85, 0.12, 0.12), "green": (0.15, 0.7, 0.2), "blue": (0.15, 0.3, 0.9), "yellow": (0.95, 0.85, 0.1),
    "cyan": (0.1, 0.8, 0.85), "magenta": (0.85, 0.15, 0.75), "orange": (0.95, 0.55, 0.1), "purple": (0.5, 0.2, 0.7),
    "white": (0.95, 0.95, 0.95), "black": (0.08, 0.08, 0.08),
}
BACKGROUNDS = ("plain", "gradient", "striped", "checkered", "mottled")
SIZE_WORDS = ((0.22, "small"), (0.32, "medium"), (1.0, "large"))


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}")
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


# ----------------------------------------------------------------------------
# Images


def _sdf(shape: str, x_HW, y_HW, radius: float, angle: float):
    """Signed distance (pixels, < 0 inside) of a shape centred at the origin."""
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x_HW + s * y_HW, -s * x_HW + c * y_HW
    if shape == "circle":
        return np.hypot(u, v) - radius
    if shape == "ring":
        return np.abs(np.hypot(u, v) - 0.75 * radius) - 0.28 * radius
    if shape == "square":
        half = 0.8 * radius
        dx, dy = np.abs(u) - half, np.abs(v) - half
        return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)
    if shape == "diamond":
        return (np.abs(u) + np.abs(v) - radius) / np.sqrt(2.0)
    if shape == "cross":
        arm, half = radius, 0.33 * radius
        a = np.maximum(np.abs(u) - arm, np.abs(v) - half)
        b = np.maximum(np.abs(u) - half, np.abs(v) - arm)
        return np.minimum(a, b)
    if shape == "triangle":  # equilateral, half side 0.85·radius, apex up before rotation
        k, r = np.sqrt(3.0), 0.85 * radius
        px, py = np.abs(u) - r, -v + r / k
        fold = px + k * py > 0
        px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * r, 0)
        return -np.hypot(px, py) * np.sign(py)
    raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _background(rng, H: int, W: int):
    kind = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    names = list(COLOURS)
    name = names[rng.integers(len(names))]
    base = 0.35 + 0.45 * np.asarray(COLOURS[name])  # muted version of a named colour
    shade = ("light", "dark")[int(rng.integers(2))]  # the pattern mixes it with a lighter or darker shade of itself
    other = np.clip(base * (1.25 if shade == "light" else 0.75), 0, 1)
    y_HW, x_HW = np.mgrid[0:H, 0:W].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    along_HW = (x_HW * np.cos(theta) + y_HW * np.sin(theta)) / max(H, W)
    if kind == "plain":
        t_HW = np.zeros((H, W), np.float32)
    elif kind == "gradient":
        t_HW = along_HW - along_HW.min()
        t_HW = t_HW / max(t_HW.max(), 1e-6)
    elif kind == "striped":
        period = rng.uniform(6, 14)
        t_HW = 0.5 + 0.5 * np.sin(2 * np.pi * along_HW * max(H, W) / period + rng.uniform(0, 2 * np.pi))
    elif kind == "checkered":
        period = rng.uniform(8, 16)
        t_HW = 0.5 + 0.5 * np.tanh(2.0 * np.sin(2 * np.pi * x_HW / period) * np.sin(2 * np.pi * y_HW / period))
    else:  # mottled: a few low-frequency waves
        t_HW = np.zeros((H, W), np.float32)
        for _ in range(3):
            fx, fy = rng.uniform(-3, 3, 2) / max(H, W)
            t_HW += np.sin(2 * np.pi * (fx * x_HW + fy * y_HW) + rng.uniform(0, 2 * np.pi))
        t_HW = (t_HW - t_HW.min()) / max(np.ptp(t_HW), 1e-6)
    image_HWC = base + (other - base) * t_HW[..., None]
    return image_HWC.astype(np.float32), f"{name} and {shade} {name} {kind}" if kind != "plain" else f"plain {name}"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(cx: float, cy: float, size: int) -> str:
    col = ("left", "centre", "right")[min(int(3 * cx / size), 2)]
    row = ("top", "middle", "bottom")[min(int(3 * cy / size), 2)]
    return "the centre" if (row, col) == ("middle", "centre") else f"the {row} {col}"


def _paint_shapes(rng, canvas_HWC, n_shapes: int, positions=None):
    """Paints `n_shapes` anti-aliased shapes; returns their descriptions and parameters."""
    H, W, _ = canvas_HWC.shape
    y_HW, x_HW = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    names, phrases, params = list(COLOURS), [], []
    for k in range(n_shapes):
        shape = SHAPES[rng.integers(len(SHAPES))]
        colour = names[rng.integers(len(names))]
        radius = rng.uniform(0.14, 0.34) * min(H, W)
        angle = rng.uniform(0, 2 * np.pi) if shape not in ("circle", "ring") else 0.0
        if positions is None:
            cx, cy = rng.uniform(radius * 0.6, W - radius * 0.6), rng.uniform(radius * 0.6, H - radius * 0.6)
        else:
            cx, cy = positions[k]
        alpha_HW = np.clip(0.5 - _sdf(shape, x_HW - cx, y_HW - cy, radius, angle), 0.0, 1.0)
        canvas_HWC[:] = canvas_HWC * (1 - alpha_HW[..., None]) + np.asarray(COLOURS[colour]) * alpha_HW[..., None]
        size_word = next(word for limit, word in SIZE_WORDS if radius / min(H, W) <= limit)
        phrases.append(f"a {size_word} {colour} {shape} at {_where(cx, cy, W)}")
        params.append({"shape": shape, "colour": colour, "radius": float(radius), "angle": float(angle), "centre": (float(cx), float(cy))})
    return phrases, params


def shape_image(index: int, *, size: int = 32, seed: int = 0, split: str = "train"):
    """One image `[size, size, 3]`, its caption and the shapes' parameters, largest first."""
    rng = _rng(seed, split, index)
    canvas_HWC, background = _background(rng, size, size)
    phrases, params = _paint_shapes(rng, canvas_HWC, int(rng.integers(1, 4)))
    # named largest first (painting order is random and not visible), so the first-named
    # object is the one an image shows most of; each shape's `layer` is its painting order
    order = sorted(range(len(params)), key=lambda k: -params[k]["radius"])
    phrases, params = [phrases[k] for k in order], [dict(params[k], layer=k) for k in order]
    caption = " and ".join(phrases) + f" on {_article(background)} {background} background"
    return np.clip(canvas_HWC, 0, 1), caption, params


def shapes_images(n: int, *, size: int = 32, seed: int = 0, split: str = "train", start: int = 0):
    """Items start … start+n-1: images float32 `[N, H, W, 3]` in [0, 1] and their captions."""
    items = [shape_image(start + i, size=size, seed=seed, split=split) for i in range(n)]
    return np.stack([im for im, _, _ in items]).astype(np.float32), [cap for _, cap, _ in items]


# ----------------------------------------------------------------------------
# Audio

# Per digit: syllable count, pitch contour (start→end ratio), two formants (Hz), noise onset.
DIGITS = (
    (2, 1.00, (300, 2300), True),   # zero
    (1, 0.80, (700, 1200), False),  # one
    (1, 1.00, (350, 900), True),    # two
    (1, 1.25, (400, 2200), True),   # three
    (1, 0.90, (500, 900), True),    # four
    (1, 1.10, (650, 1800), True),   # five
    (1, 1.00, (350, 2100), True),   # six
    (2, 0.85, (550, 1900), True),   # seven
    (1, 1.20, (500, 2000), False),  # eight
    (1, 0.75, (700, 1400), False),  # nine
)
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_clip(index: int, *, sample_rate: int = 16000, duration: float = 0.5, seed: int = 0, split: str = "train"):
    """One clip float32 `[L]`, its description and its digit."""
    rng = _rng(seed, split, index)
    digit = int(rng.integers(10))
    syllables, contour, formants, noisy = DIGITS[digit]
    L = int(round(sample_rate * duration))
    t_L = np.arange(L) / sample_rate
    f0 = rng.uniform(90, 260)
    onset, length = rng.uniform(0.0, 0.15) * duration, rng.uniform(0.55, 0.8) * duration
    clip_L = np.zeros(L, np.float64)
    if noisy:  # fricative-like onset: band-passed noise burst
        burst = (t_L >= onset) & (t_L < onset + 0.12 * duration)
        noise_L = np.diff(rng.standard_normal(L + 1))  # high-passed white noise
        clip_L += 0.15 * noise_L * burst
        onset += 0.1 * duration
    seg = length / syllables
    for s in range(syllables):
        start = onset + s * seg
        u_L = np.clip((t_L - start) / (0.9 * seg), 0, 1)
        inside_L = (t_L >= start) & (t_L < start + 0.9 * seg)
        pitch_L = f0 * (1 + (contour - 1) * u_L) * (1.0 if s == 0 else 0.9)
        phase_L = 2 * np.pi * np.cumsum(pitch_L) / sample_rate
        env_L = np.sin(np.pi * u_L) ** 1.5 * inside_L
        harmonics_H = np.arange(1, 24)
        harmonics_H = harmonics_H[harmonics_H * f0 <= 0.45 * sample_rate]
        gains_H = sum(np.exp(-0.5 * ((harmonics_H * f0 - f) / (0.15 * f + 80)) ** 2) for f in formants) / harmonics_H ** 0.3
        clip_L += env_L * np.einsum("h,hl->l", gains_H, np.sin(harmonics_H[:, None] * phase_L[None, :]))
    clip_L += 0.003 * rng.standard_normal(L)
    clip_L *= rng.uniform(0.3, 0.8) / max(np.abs(clip_L).max(), 1e-6)
    pitch_word = "rising" if contour > 1.05 else "falling" if contour < 0.95 else "level"
    desc = (f"the digit {DIGIT_WORDS[digit]}: {syllables} syllable{'s' if syllables > 1 else ''}, "
            f"{pitch_word} pitch from {f0:.0f} Hz" + (", noisy onset" if noisy else ""))
    return clip_L.astype(np.float32), desc, digit


def digit_audio(n: int, *, sample_rate: int = 16000, duration: float = 0.5, seed: int = 0, split: str = "train", start: int = 0):
    """Items start … start+n-1: clips float32 `[N, L]` in [-1, 1], descriptions and digits."""
    items = [digit_clip(start + i, sample_rate=sample_rate, duration=duration, seed=seed, split=split) for i in range(n)]
    return np.stack([c for c, _, _ in items]), [d for _, d, _ in items], np.array([g for _, _, g in items], np.int32)


# ----------------------------------------------------------------------------
# Video


def shapes_video(index: int, *, frames: int = 9, size: int = 32, seed: int = 0, split: str = "train"):
    """One video float32 `[T, H, W, 3]` of 1–2 shapes moving over a static background, and its caption."""
    rng = _rng(seed, split, index)
    background_HWC, background = _background(rng, size, size)
    n_shapes = int(rng.integers(1, 3))
    start_XY = rng.uniform(0.3 * size, 0.7 * size, (n_shapes, 2))
    speed = rng.uniform(0.8, 2.5, n_shapes) * size / 32
    heading = rng.uniform(0, 2 * np.pi, n_shapes)
    velocity_XY = np.stack([np.cos(heading), np.sin(heading)], -1) * speed[:, None]
    state = rng.bit_generator.state  # every frame repaints the same shapes
    video_THWC, phrases = [], []
    for t in range(frames):
        pos_XY = start_XY + t * velocity_XY
        pos_XY = np.abs(np.mod(pos_XY + size, 2 * size) - size)  # bounce off the borders
        canvas_HWC = background_HWC.copy()
        rng.bit_generator.state = state
        phrases, params = _paint_shapes(rng, canvas_HWC, n_shapes, positions=pos_XY)
        video_THWC.append(np.clip(canvas_HWC, 0, 1))
    moves = []
    for k, p in enumerate(params):
        vx, vy = velocity_XY[k]
        moves.append(f"{_article(p['colour'])} {p['colour']} {p['shape']} moving {'right' if vx > 0 else 'left'} and {'down' if vy > 0 else 'up'}")
    caption = " and ".join(moves) + f" over {_article(background)} {background} background"
    return np.stack(video_THWC).astype(np.float32), caption


def shapes_videos(n: int, *, frames: int = 9, size: int = 32, seed: int = 0, split: str = "train", start: int = 0):
    """Items start … start+n-1: videos float32 `[N, T, H, W, 3]` and their captions."""
    items = [shapes_video(start + i, frames=frames, size=size, seed=seed, split=split) for i in range(n)]
    return np.stack([v for v, _ in items]), [c for _, c in items]
