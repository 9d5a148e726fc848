"""Vocab: layout of ranges, multi-level code layouts, JSON round trip, model check."""

import numpy as np
import pytest

from mmntp_jax.data.vocab import MODALITY_ID, SPECIAL_ID, Vocab


class _Tok:
    def __init__(self, codebook_size, num_quantizers=1):
        self.codebook_size, self.num_quantizers = codebook_size, num_quantizers


def test_ranges_follow_specials_in_order():
    v = Vocab.build(text=300, image=1024, audio=512, n_specials=16)
    assert (v.offset("text"), v.offset("image"), v.offset("audio")) == (16, 316, 1340)
    assert v.size == 16 + 300 + 1024 + 512
    assert v.markers("image") == (3, 4) and v.markers("audio") == (5, 6) and v.markers("video") == (7, 8)


def test_to_global_to_local_round_trip_single_level():
    v = Vocab.build(text=256, image=64)
    codes = np.arange(64).reshape(8, 8)
    ids = v.to_global("image", codes)
    assert ids.shape == (8, 8) and ids.min() == 16 + 256 and ids.max() == 16 + 256 + 63
    modality, local = v.to_local(ids)
    assert (modality == MODALITY_ID["image"]).all() and (local == codes).all()
    modality, local = v.to_local([0, 1, 2, 20])
    assert modality.tolist() == [SPECIAL_ID] * 3 + [MODALITY_ID["text"]] and local.tolist() == [0, 1, 2, 4]
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 64\)"):
        v.to_global("image", [64])
    with pytest.raises(KeyError, match="no 'audio' range"):
        v.to_global("audio", [0])


def test_per_level_layout_gives_each_level_its_own_sub_range():
    v = Vocab.for_tokenizers(256, {"audio": _Tok(10, num_quantizers=3)}, layout="per_level")
    assert v.range_size("audio") == 30 and v.codebook_size("audio") == 10 and v.num_levels("audio") == 3
    codes = np.array([[1, 2, 3], [9, 0, 5]])  # [N=2 positions, L=3 levels]
    ids = v.to_global("audio", codes)
    start = v.offset("audio")
    # reference: level l of code c → start + l·K + c
    expect = start + np.array([[1, 12, 23], [9, 10, 25]])
    assert (ids == expect).all()
    assert (v.to_codes("audio", ids.reshape(-1)) == codes).all()
    with pytest.raises(ValueError, match="last axis of 3 levels"):
        v.to_global("audio", np.zeros((4, 2), int))
    with pytest.raises(ValueError, match="per-level order"):  # level-1 id placed in level-0 position
        v.to_codes("audio", ids[:, [1, 0, 2]].reshape(-1))


def test_interleaved_layout_shares_one_range():
    v = Vocab.build(text=256, audio=10, levels={"audio": (3, "interleaved")})
    assert v.range_size("audio") == 10 and v.size == 16 + 256 + 10
    codes = np.array([[1, 2, 3], [9, 0, 5]])
    ids = v.to_global("audio", codes)
    assert (ids == v.offset("audio") + codes).all()
    assert (v.to_codes("audio", ids.reshape(-1)) == codes).all()


def test_json_round_trip_keeps_levels(tmp_path):
    v = Vocab.build(text=500, image=1024, audio=16, levels={"audio": (4, "per_level")})
    v.save(tmp_path / "vocab.json")
    back = Vocab.load(tmp_path / "vocab.json")
    assert back == v and back.num_levels("audio") == 4 and back.codebook_size("audio") == 16


def test_model_vocab_check_and_extension():
    v = Vocab.build(text=256, image=64)
    v.check_model_vocab(v.size)
    with pytest.raises(ValueError, match=f"model.vocab_size=100 does not cover the vocabulary of {v.size} ids"):
        v.check_model_vocab(100)
    assert v.extends(Vocab.build(text=256)) and not Vocab.build(text=256).extends(v)
    assert not v.extends(Vocab.build(text=300))


def test_bad_layouts_are_rejected():
    with pytest.raises(ValueError, match="layout 'zigzag'"):
        Vocab((("text", 256), ("audio", 30)), 16, (("audio", 3, "zigzag"),))
    with pytest.raises(ValueError, match="does not divide"):
        Vocab((("text", 256), ("audio", 31)), 16, (("audio", 3, "per_level"),))
    with pytest.raises(ValueError, match="no positive `codebook_size`"):
        Vocab.for_tokenizers(256, {"image": object()})
