"""Multimodal evaluation: the caption grammar, caption accuracy, and the image judge against stand-ins
whose scores are known (perfect: the references themselves; constant: one answer for every item)."""

import json
from collections import Counter

import numpy as np
import pytest

from mmntp_jax.data import synthetic as S
from mmntp_jax.data.captioned import captioned_documents, heldout_pair
from mmntp_jax.data.class_captioned import CAPTIONS, CLASSES, class_images, write_class_captioned
from mmntp_jax.data.schema import validate_document
from mmntp_jax.evaluation import (
    ClassifierConfig,
    caption_accuracy,
    caption_scheme,
    compose_shapes_caption,
    evaluate_images,
    exact_match,
    parse_shapes_caption,
    prepare_images,
    token_f1,
    train_judge,
)
from mmntp_jax.evaluation.captions import constant_caption_chance
from mmntp_jax.tokenizers.media import load_image

N_TRAIN, N_HELDOUT = 1000, 300


# ----------------------------------------------------------------------------
# An independent reading of captions (plain string splitting, not the parser)


def simple_attributes(caption: str) -> dict:
    words = caption.split()
    background = caption.rsplit(" on ", 1)[1].split()
    return {"colour": words[2], "shape": words[3], "background": background[2] if background[1] == "plain" else background[1]}


def read_pairs(path):
    """Images and stripped captions of a manifest's [image, text] lines."""
    images, captions = [], []
    for line in path.read_text().splitlines():
        segments = json.loads(line)["segments"]
        if [seg["type"] for seg in segments] == ["image", "text"]:
            images.append(load_image(path.parent / segments[0]["path"]))
            captions.append(segments[1]["text"].strip())
    return np.stack(images), captions


def simple_objects(caption: str) -> list[tuple[str, str]]:
    body = caption.rsplit(" on ", 1)[0]
    return [tuple(part.split(" at the ")[0].split()[-2:]) for part in body.split(" and a ")]


# ----------------------------------------------------------------------------
# The grammar


def test_grammar_round_trips_every_generated_caption():
    for split in ("train", "eval"):
        for index in range(200):
            _, caption, params = S.shape_image(index, split=split)
            parsed = parse_shapes_caption(caption)
            assert parsed is not None, caption
            assert compose_shapes_caption(parsed) == caption
            assert parse_shapes_caption(compose_shapes_caption(parsed)) == parsed
            assert [(o.colour, o.shape) for o in parsed.objects] == [(p["colour"], p["shape"]) for p in params]
            for o, p in zip(parsed.objects, params):
                ratio = p["radius"] / 32
                assert o.size == ("small" if ratio <= 0.22 else "medium" if ratio <= 0.32 else "large")
                cx, cy = p["centre"]
                row, col = ("top", "middle", "bottom")[min(int(3 * cy / 32), 2)], ("left", "centre", "right")[min(int(3 * cx / 32), 2)]
                assert o.place == ("centre" if (row, col) == ("middle", "centre") else f"{row} {col}")
            assert parsed.attributes() == simple_attributes(caption)
    assert parse_shapes_caption("  a small red ring at the top left on a plain blue background\n").background.colour == "blue"


@pytest.mark.parametrize("text", [
    "", "   ", None, "a red circle",
    "a small red circle at the centre",                                                   # no background
    "a small red circle at the centre on a plain red background.",                        # trailing full stop
    "a small red circle at the middle centre on a plain red background",                  # the generator says "the centre"
    "a small red circle at the centre on an plain red background",                        # wrong article
    "a small orange circle at the centre on a orange and dark orange striped background",  # wrong article
    "a small red circle at the centre on a red and dark blue striped background",          # two background colours
    "a small pink circle at the centre on a plain red background",                        # unknown colour
    "a small red oval at the centre on a plain red background",                           # unknown shape
    "a tiny red circle at the centre on a plain red background",                          # unknown size
    "a small red circle at the centre, a small blue ring at the centre on a plain red background",
    "a small red circle at the centre and on a plain red background",
    "a small red circle at the centre on a plain red background background",
    "a small red circle at the centre on a red and light red wavy background",
    "A small red circle at the centre on a plain red background",
])
def test_grammar_rejects_malformed_text(text):
    assert parse_shapes_caption(text) is None


# ----------------------------------------------------------------------------
# Caption accuracy


@pytest.fixture(scope="module")
def shapes_data():
    train_x, train_c = S.shapes_images(N_TRAIN, seed=0)
    held_x, held_c = S.shapes_images(N_HELDOUT, seed=0, split="eval")
    return train_x, train_c, held_x, held_c


def test_shapes_captions_perfect_and_constant_stand_ins(shapes_data):
    _, _, _, refs = shapes_data
    assert caption_scheme(refs) == "shapes"
    perfect = caption_accuracy([" " + r + "\n" for r in refs], refs)
    assert perfect["caption_scheme"] == "shapes" and perfect["caption_accuracy"] == 1.0 and perfect["caption_parsed"] == 1.0
    assert all(perfect[f"caption_accuracy_{a}"] == 1.0 for a in ("colour", "shape", "background"))

    fixed = refs[0]
    constant = caption_accuracy([fixed] * len(refs), refs)
    want = {a: np.mean([simple_attributes(r)[a] == simple_attributes(fixed)[a] for r in refs]) for a in ("colour", "shape", "background")}
    for a, value in want.items():
        assert constant[f"caption_accuracy_{a}"] == pytest.approx(value)
    assert constant["caption_accuracy"] == pytest.approx(np.mean(list(want.values())))
    chance = np.mean([1 / len(S.COLOURS), 1 / len(S.SHAPES), 1 / len(S.COLOURS)])
    assert abs(constant["caption_accuracy"] - chance) < 0.06
    assert constant["caption_accuracy"] <= constant_caption_chance(refs) + 1e-9

    garbled = caption_accuracy(["a red circle"] * len(refs), refs)
    assert garbled["caption_accuracy"] == 0.0 and garbled["caption_parsed"] == 0.0


def test_exact_match_scheme_by_hand():
    refs = ["a cat", "a dog", "a cat", "a bird"]
    generated = ["a cat ", "a cat", "\na cat\n", "bird"]
    assert caption_scheme(refs) == "exact"
    assert [exact_match(g, r) for g, r in zip(generated, refs)] == [1.0, 0.0, 1.0, 0.0]
    assert caption_accuracy(generated, refs) == {"caption_accuracy": 0.5, "caption_scheme": "exact"}
    assert caption_accuracy(["A cat"] * 4, refs)["caption_accuracy"] == 0.0  # case counts


def test_token_f1_scheme_by_hand():
    assert token_f1("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # overlap counts each token at most min(count) times
    assert token_f1("on  the mat\n", "the mat") == pytest.approx(2 * (2 / 3) * 1.0 / (2 / 3 + 1.0))
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("x y", "z") == 0.0
    refs = [f"item {k} is a thing" for k in range(60)]
    assert caption_scheme(refs) == "f1"
    assert caption_scheme(refs[:4], train_references=refs) == "f1"  # a small held-out set of free text stays free text
    generated = refs[:30] + ["item"] * 30  # 30 perfect; 30 with precision 1, recall 1/5
    out = caption_accuracy(generated, refs)
    assert out["caption_scheme"] == "f1"
    assert out["caption_accuracy"] == pytest.approx((30 * 1.0 + 30 * (2 * 0.2 / 1.2)) / 60)


def test_caption_accuracy_checks_its_inputs():
    with pytest.raises(ValueError, match="3 generated captions for 2 references"):
        caption_accuracy(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="scheme 'bleu'"):
        caption_accuracy(["a"], ["a"], scheme="bleu")


# ----------------------------------------------------------------------------
# The class-like set


def test_class_captioned_set_writes_the_manifest_schema(tmp_path):
    train_path, heldout_path = write_class_captioned(tmp_path, 40, seed=1, heldout=20)
    train = [json.loads(line) for line in train_path.read_text().splitlines()]
    heldout = [json.loads(line) for line in heldout_path.read_text().splitlines()]
    assert len(train) == 80 and len(heldout) == 20
    for line, entry in enumerate(train + heldout, start=1):
        validate_document(entry, "m.jsonl", line)
    for i in range(40):
        rel = f"images/train/{i:06d}.png"
        assert train[2 * i : 2 * i + 2] == [dict(d, **{"class": i % 10}) for d in captioned_documents(i, rel, CAPTIONS[i % 10])]
    for i in range(20):
        assert heldout[i] == dict(heldout_pair(f"images/heldout/{i:06d}.png", CAPTIONS[i % 10]), item=i, **{"class": i % 10})
    assert [(s["type"], s.get("loss", True)) for s in train[0]["segments"]] == [("image", False), ("text", True)]
    assert [(s["type"], s.get("loss", True)) for s in train[1]["segments"]] == [("text", False), ("image", True)]
    images, captions = read_pairs(train_path)
    assert images.shape == (40, 32, 32, 3) and captions == [CAPTIONS[i % 10] for i in range(40)]
    direct, direct_captions, classes = class_images(40, seed=1)
    np.testing.assert_allclose(images, direct, atol=1 / 255)  # PNGs hold 8 bits
    assert direct_captions == captions and classes.tolist() == [i % 10 for i in range(40)]
    for image, k in zip(direct, classes):  # the class's colour covers a good part of the image
        colour = np.asarray(S.COLOURS[CLASSES[k][0]], np.float32)
        assert (np.abs(image - colour).max(-1) < 0.02).mean() > 0.04
    assert read_pairs(heldout_path)[1] == [CAPTIONS[i % 10] for i in range(20)]


# ----------------------------------------------------------------------------
# The image judge


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classes")
    train_path, heldout_path = write_class_captioned(folder, 900, seed=0, heldout=100)
    return read_pairs(train_path) + read_pairs(heldout_path)


@pytest.mark.slow  # keeps the default suite under 15 minutes on 2 cores
def test_judge_on_class_captions(class_data):
    train_x, train_c, held_x, held_c = class_data
    assert caption_accuracy([" " + c for c in held_c], held_c, train_references=train_c) == {"caption_accuracy": 1.0, "caption_scheme": "exact"}
    assert caption_accuracy([CAPTIONS[3]] * 100, held_c)["caption_accuracy"] == pytest.approx(0.1)  # 10 of each class

    judge = train_judge(train_x, train_c, config=ClassifierConfig(steps=300))  # ten easy classes need fewer steps
    perfect = evaluate_images(train_x, train_c, held_x, held_c, held_x, judge=judge)
    assert perfect["image_scheme"] == "class"
    assert perfect["classifier_accuracy"] >= 0.95
    assert perfect["image_agreement"] == perfect["classifier_accuracy"]
    assert perfect["image_chance"] == pytest.approx(0.1)

    constant = evaluate_images(train_x, train_c, held_x, held_c, np.repeat(held_x[:1], 100, 0), judge=judge)
    assert constant["image_agreement"] == pytest.approx(0.1)  # one class recognised in every image: 10 of 100 prompts

    grey = prepare_images(np.full((2, 64, 48), 128, np.uint8), 32)
    assert grey.shape == (2, 32, 32, 3) and np.allclose(grey, 128 / 255, atol=1e-6)
    rgba = np.concatenate([held_x[:3], np.zeros_like(held_x[:3, ..., :1])], -1)
    np.testing.assert_array_equal(prepare_images(rgba, 32), held_x[:3])
    big = np.repeat(np.repeat((held_x * 255).round().astype(np.uint8), 2, 1), 2, 2)  # uint8, 64×64
    assert evaluate_images(train_x, train_c, held_x, held_c, big, judge=judge)["image_agreement"] >= 0.9


def test_judge_on_shapes_captions(shapes_data):
    train_x, train_c, held_x, held_c = shapes_data
    judge = train_judge(train_x, train_c)
    perfect = evaluate_images(train_x, train_c, held_x, held_c, held_x, judge=judge)
    assert perfect["image_scheme"] == "shapes"
    for key in ("", "_colour", "_shape", "_background"):
        assert perfect[f"image_agreement{key}"] == perfect[f"classifier_accuracy{key}"]

    # chance, from the label distribution: the prompted value is among the `named` values ranked first
    named = {
        "colour": [len({c for c, _ in simple_objects(c)}) / 10 for c in held_c],
        "shape": [len({"square" if s == "diamond" else s for _, s in simple_objects(c)}) / 5 for c in held_c],
        "background": [1 / 10] * len(held_c),
    }
    chance = {head: float(np.mean(v)) for head, v in named.items()}
    assert perfect["image_chance"] == pytest.approx(np.mean(list(chance.values())))
    assert perfect["classifier_accuracy_colour"] >= 0.85
    assert perfect["classifier_accuracy_background"] >= 0.95
    assert perfect["classifier_accuracy_shape"] >= chance["shape"] + 0.1
    assert perfect["classifier_accuracy"] >= 0.75

    constant = evaluate_images(train_x, train_c, held_x, held_c, np.repeat(held_x[:1], N_HELDOUT, 0), judge=judge)
    for head in chance:
        assert abs(constant[f"image_agreement_{head}"] - chance[head]) < 0.12, head
    assert abs(constant["image_agreement"] - perfect["image_chance"]) < 0.08


def test_evaluation_is_deterministic_and_free_text_has_no_judge(shapes_data):
    train_x, train_c, held_x, held_c = shapes_data
    small = ClassifierConfig(steps=30)
    generated = held_x[::-1][:100]
    runs = [evaluate_images(train_x[:200], train_c[:200], held_x[:100], held_c[:100], generated, config=small) for _ in range(2)]
    for run in runs:
        run.pop("classifier_train_seconds")
    assert runs[0] == runs[1]
    assert caption_accuracy(train_c[:100], held_c[:100]) == caption_accuracy(train_c[:100], held_c[:100])

    free = [f"picture {k}: {c}" for k, c in enumerate(train_c[:80])]
    out = evaluate_images(train_x[:80], free, held_x[:20], free[:20], held_x[:20])
    assert out == {"image_agreement": None, "classifier_accuracy": None, "image_chance": None, "image_scheme": None}
    assert Counter(caption_scheme(free[:20], train_references=free) for _ in range(2)) == Counter({"f1": 2})
