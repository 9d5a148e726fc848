"""experiments/shapes_mm.py takes a trained image tokenizer from $MMNTP_IMAGE_TOKENIZER."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from mmntp_jax.tokenizers.bottleneck import QuantizerConfig
from mmntp_jax.tokenizers.image import ImageTokenizerConfig
from mmntp_jax.tokenizers.io import save_tokenizer
from mmntp_jax.tokenizers.registry import Tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _experiment():
    spec = importlib.util.spec_from_file_location("shapes_mm", ROOT / "experiments" / "shapes_mm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_image_tokenizer(levels=(8, 5, 5, 5), seed=3):
    config = ImageTokenizerConfig(image_size=32, factor=4, patch=2, channels=8, channel_mult=(1, 1), attention=False,
                                  z_channels=8, norm_groups=4, quantizer=QuantizerConfig(kind="fsq", levels=levels))
    return Tokenizer.create("image", config, seed=seed)


def test_trained_tokenizer_is_loaded_from_the_environment(tmp_path, monkeypatch):
    saved = _tiny_image_tokenizer()
    save_tokenizer(saved, tmp_path / "tok")
    exp = _experiment()
    monkeypatch.setenv(exp.TOKENIZER_ENV, str(tmp_path / "tok"))
    module = exp.image_tokenizer()
    got = jax.tree.leaves(nnx.state(module, nnx.Param))
    want = jax.tree.leaves(nnx.state(saved.module(), nnx.Param))
    assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
    monkeypatch.delenv(exp.TOKENIZER_ENV)
    assert exp.image_tokenizer().config.channels == 32  # the untrained default


def test_wrong_tokenizer_is_refused(tmp_path, monkeypatch):
    save_tokenizer(_tiny_image_tokenizer(levels=(4, 4)), tmp_path / "small")
    exp = _experiment()
    monkeypatch.setenv(exp.TOKENIZER_ENV, str(tmp_path / "small"))
    with pytest.raises(ValueError, match="1000 codes"):
        exp.image_tokenizer()
