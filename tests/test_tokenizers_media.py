"""Media loading: images, WAVs, arrays, photo crops; bad files give errors naming the file."""

import numpy as np
import pytest

from mmntp_jax.tokenizers import media


def test_png_round_trip_and_fit(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.float32) / 255
    media.save_image(tmp_path / "a.png", image)
    loaded = media.load_image(tmp_path / "a.png")
    np.testing.assert_allclose(loaded, image, atol=1e-6)
    fitted = media.fit_image(loaded, 16)
    assert fitted.shape == (16, 16, 3)
    from PIL import Image

    Image.fromarray((image[:, :, 0] * 255).astype(np.uint8)).save(tmp_path / "grey.jpg")
    assert media.load_image(tmp_path / "grey.jpg").shape == (20, 30, 3)
    batch, files = media.load_image_folder(tmp_path, 8)
    assert batch.shape == (2, 8, 8, 3) and [f.name for f in files] == ["a.png", "grey.jpg"]


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(media.MediaError, match="broken.png"):
        media.load_image(bad)
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        media.load_image(tmp_path / "nothing.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(media.MediaError, match="holds no"):
        media.image_files(empty)


def test_wav_round_trip_and_sample_rate_check(tmp_path):
    t = np.arange(1600) / 16000
    clip = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    media.save_wav(tmp_path / "tone.wav", clip, 16000)
    np.testing.assert_allclose(media.load_wav(tmp_path / "tone.wav", 16000), clip, atol=0.5 / 32768 + 1e-7)
    with pytest.raises(media.MediaError, match=r"tone.wav: sample rate 16000 Hz, expected 8000"):
        media.load_wav(tmp_path / "tone.wav", 8000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(media.MediaError, match="junk.wav"):
        media.load_wav(tmp_path / "junk.wav", 16000)


def test_arrays(tmp_path):
    np.save(tmp_path / "v.npy", np.zeros((2, 3), np.float64))
    assert media.load_array(tmp_path / "v.npy").dtype == np.float32
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(media.MediaError, match="o.npy"):
        media.load_array(tmp_path / "o.npy")


def test_photo_crops_hold_out_the_right_quarter():
    train, train_pos = media.photo_crops(64, 32, seed=0, split="train", return_positions=True)
    evals, eval_pos = media.photo_crops(64, 32, seed=0, split="eval", return_positions=True)
    assert train.shape == evals.shape == (64, 32, 32, 3)
    np.testing.assert_array_equal(train, media.photo_crops(64, 32, seed=0, split="train"))
    photos = media._photographs()
    assert len({k for k, _, _ in train_pos}) > 4  # crops come from many photographs
    for crops, positions, held_out in ((train, train_pos, False), (evals, eval_pos, True)):
        for crop, (k, top, left) in zip(crops, positions):
            cut = (3 * photos[k].shape[1]) // 4
            assert (left >= cut) if held_out else (left + 32 <= cut)
            np.testing.assert_array_equal(crop, photos[k][top:top + 32, left:left + 32])
