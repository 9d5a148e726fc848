"""The generated data sets: determinism, disjoint splits, and that captions describe the pixels and samples."""

import numpy as np
import pytest

from mmntp_jax.data import synthetic as S


def test_images_are_deterministic_per_item_and_splits_differ():
    a, caps_a = S.shapes_images(6, seed=3)
    b, caps_b = S.shapes_images(3, seed=3, start=3)
    np.testing.assert_array_equal(a[3:], b)
    assert caps_a[3:] == caps_b
    c, _ = S.shapes_images(6, seed=3, split="eval")
    d, _ = S.shapes_images(6, seed=4)
    assert not np.allclose(a, c) and not np.allclose(a, d)
    assert a.shape == (6, 32, 32, 3) and a.dtype == np.float32 and a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match="split 'test'"):
        S.shapes_images(1, split="test")


def test_caption_names_what_is_painted():
    for index in range(40):
        image, caption, shapes = S.shape_image(index, size=48)
        for p in shapes:
            assert f"{p['colour']} {p['shape']}" in caption
        assert [p["radius"] for p in shapes] == sorted((p["radius"] for p in shapes), reverse=True)  # named largest first
        assert caption.split(" at ")[0].endswith(f"{shapes[0]['colour']} {shapes[0]['shape']}")  # the first-named object
        top = max(shapes, key=lambda p: p["layer"])  # painted last, so nothing covers it
        if top["shape"] in ("circle", "square", "diamond", "cross") and top["radius"] > 6:
            cx, cy = top["centre"]
            pixel = image[int(cy), int(cx)]
            np.testing.assert_allclose(pixel, S.COLOURS[top["colour"]], atol=0.02)


def test_signed_distances_match_geometry():
    y, x = np.mgrid[-20:21, -20:21].astype(np.float32)
    np.testing.assert_allclose(S._sdf("circle", x, y, 10.0, 0.0), np.hypot(x, y) - 10.0, rtol=1e-5)
    square = S._sdf("square", x, y, 10.0, 0.0) < 0
    assert square[20, 20 + 7] and not square[20, 20 + 9]  # half side 0.8·10 = 8
    tri = S._sdf("triangle", x, y, 10.0, 0.0) < 0
    assert tri[20, 20] and tri.sum() == pytest.approx(np.sqrt(3) / 4 * (2 * 8.5) ** 2, rel=0.1)


def test_audio_clips_carry_the_described_pitch():
    clips, descriptions, digits = S.digit_audio(8, duration=0.5, seed=1)
    assert clips.shape == (8, 8000) and np.abs(clips).max() <= 1.0
    for clip, desc, digit in zip(clips, descriptions, digits):
        assert S.DIGIT_WORDS[digit] in desc
        f0 = float(desc.split("from ")[1].split(" Hz")[0])
        spectrum = np.abs(np.fft.rfft(clip * np.hanning(len(clip))))
        freqs = np.fft.rfftfreq(len(clip), 1 / 16000)
        peak = freqs[np.argmax(spectrum * (freqs > 60))]
        harmonic = peak / f0
        assert abs(harmonic - round(harmonic)) < 0.3 * max(round(harmonic), 1)  # the loudest line is near a harmonic of f0
    again, _, _ = S.digit_audio(8, duration=0.5, seed=1)
    np.testing.assert_array_equal(clips, again)


def test_video_motion_follows_the_caption():
    video, caption = S.shapes_video(5, frames=9, size=32)
    assert video.shape == (9, 32, 32, 3)
    one_shape = S.shapes_video(0, frames=2, size=32)
    assert one_shape[0].shape == (2, 32, 32, 3)
    # the background is static: pixels far from every shape never change
    changed = np.abs(np.diff(video, axis=0)).max(axis=(0, 3)) > 1e-6
    assert 0 < changed.mean() < 0.8
    np.testing.assert_array_equal(video, S.shapes_video(5, frames=9, size=32)[0])
    # a single moving shape: the centroid of changed pixels moves the way the caption says
    for index in range(30):
        video, caption = S.shapes_video(index, frames=9, size=64)
        if " and a " in caption.split(" over ")[0]:
            continue
        bg = np.median(video, axis=0)
        mask = np.abs(video - bg).sum(-1) > 0.2
        ys, xs = np.nonzero(mask[0]), np.nonzero(mask[2])
        if len(ys[0]) < 10 or len(xs[0]) < 10:
            continue
        dx = xs[1].mean() - ys[1].mean()
        if abs(dx) > 0.5:
            assert ("right" in caption) == (dx > 0), caption
            return
    pytest.fail("no single-shape video with horizontal motion found")
