"""The image tokenizer's `manifest` data source: items, split, errors, the job's choice of it, a training smoke."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from mmntp_jax.config import load_config, repo_experiment
from mmntp_jax.data.class_captioned import write_class_captioned
from mmntp_jax.job.captioned import tokenizer_experiment
from mmntp_jax.tokenizers import datasets, media
from mmntp_jax.tokenizers.experiment import TokenizerDataConfig, TokenizerExperiment, TokenizerTrainConfig, validate
from mmntp_jax.tokenizers.image import ImageTokenizerConfig

SIZE = 32


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """TRAIN.jsonl of 30 class images (two documents each), then a grey 48×40 and a colour 20×20 image."""
    root = tmp_path_factory.mktemp("manifest_source")
    train, heldout = write_class_captioned(root, 30, heldout=5)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.uniform(size=(48, 40)) * 255).astype(np.uint8)).save(root / "grey.png")
    media.save_image(root / "odd" / "small.png", rng.uniform(size=(20, 20, 3)))
    extra = [{"segments": [{"type": "image", "path": "grey.png"}, {"type": "text", "text": "grey noise"}]},
             {"segments": [{"type": "text", "text": "small", "loss": False}, {"type": "image", "path": str(root / "odd" / "small.png")}]},
             {"segments": [{"type": "image", "path": "grey.png"}, {"type": "text", "text": "again"}]}]
    with open(train, "a") as f:
        f.writelines(json.dumps(doc) + "\n" for doc in extra)
    return train, heldout


def experiment(path, **data) -> TokenizerExperiment:
    model = ImageTokenizerConfig(image_size=SIZE, factor=4, patch=2, channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=8,
                                 norm_groups=4, attention=False)
    return TokenizerExperiment(kind="image", model=model, data=TokenizerDataConfig(source="manifest", path=str(path), **data))


def reference(paths) -> np.ndarray:
    """The files loaded here with PIL and fitted with media.fit_image, as uint8."""
    images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0 for p in paths]
    return np.stack([np.clip(media.fit_image(im, SIZE) * 255 + 0.5, 0, 255).astype(np.uint8) for im in images])


def test_items_are_the_distinct_images_fitted_in_order(manifest):
    train, _ = manifest
    root = train.parent
    order = [root / f"images/train/{i:06d}.png" for i in range(30)] + [root / "grey.png", root / "odd" / "small.png"]
    assert list(datasets.manifest_image_files(train)) == order
    exp = experiment(train, eval_items=512)
    validate(exp)
    items_train, items_eval = datasets.load_split(exp, "train"), datasets.load_split(exp, "eval")
    assert items_train.dtype == np.uint8 and items_train.shape == (29, SIZE, SIZE, 3) and items_eval.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_array_equal(items_train, reference(order[:29]))
    np.testing.assert_array_equal(items_eval, reference(order[29:]))
    capped = experiment(train, eval_items=2, train_items=7)
    assert len(datasets.load_split(capped, "train")) == 7 and len(datasets.load_split(capped, "eval")) == 2


def test_held_out_share_is_at_most_a_tenth_and_at_least_one():
    assert datasets.manifest_heldout(900, 512) == 90
    assert datasets.manifest_heldout(900, 20) == 20
    assert datasets.manifest_heldout(5, 512) == 1
    assert datasets.manifest_heldout(5, 1) == 1
    assert 900 - datasets.manifest_heldout(900, 10_000) >= 810


def fails(path, split: str, pattern: str) -> None:
    with pytest.raises(media.MediaError, match=pattern) as info:
        datasets.load_split(experiment(path), split)
    assert "\n" not in str(info.value)


def test_errors_are_one_line_naming_the_manifest(tmp_path):
    image = lambda name: json.dumps({"segments": [{"type": "image", "path": name}]}) + "\n"
    media.save_image(tmp_path / "ok.png", np.zeros((8, 8, 3)))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    manifests = {"text": json.dumps({"segments": [{"type": "text", "text": "x"}]}) + "\n", "single": image("ok.png") * 2,
                 "missing": image("ok.png") + "\n" + image("gone.png"), "broken": image("bad.png") + image("ok.png"), "malformed": "{not json\n"}
    paths = {name: tmp_path / f"{name}.jsonl" for name in manifests}
    for name, text in manifests.items():
        paths[name].write_text(text)
    fails(paths["text"], "train", rf"^manifest {paths['text']}: holds no image segment")
    fails(paths["single"], "train", rf"^manifest {paths['single']}: holds 1 distinct image; data.source=manifest needs at least 2")
    fails(paths["missing"], "eval", rf"^manifest {paths['missing']}:3: image file {tmp_path / 'gone.png'}: not found")
    fails(paths["broken"], "train", rf"^manifest {paths['broken']}:1: image file {tmp_path / 'bad.png'}: cannot be decoded")
    fails(paths["malformed"], "train", rf"^{paths['malformed']}:1: malformed JSON")


def job_config(*overrides):
    return load_config(None, ["train.progress=false", *overrides])


def test_the_job_tokenizer_learns_the_manifest_images(manifest):
    train, heldout = manifest
    exp = tokenizer_experiment(job_config(f"data.manifest={train}", f"data.eval_manifest={heldout}", "job.tokenizer_steps=3", "job.tokenizer_items=16"))
    assert (exp.data.source, exp.data.path) == ("manifest", str(train))
    assert (exp.train.steps, exp.data.train_items, exp.train.eval_every) == (3, 16, 3)
    shapes = tokenizer_experiment(job_config("job.tokenizer_steps=3"))
    assert (shapes.data.source, shapes.data.path) == ("shapes", "")
    own = repo_experiment("tokenizers/image_fsq")
    kept = tokenizer_experiment(job_config(f"data.manifest={train}", f"data.eval_manifest={heldout}", f"job.tokenizer_config={own}"))
    assert kept.data.source == "shapes"


@pytest.mark.slow  # the default suite trains on a manifest source through README's ten-class job (test_readme_commands)
def test_training_smoke_on_the_manifest_source(manifest, tmp_path):
    from mmntp_jax.train.tokenizer import train as train_tokenizer

    train, _ = manifest
    exp = experiment(train, train_items=4, eval_items=2)
    exp = dataclasses.replace(exp, train=TokenizerTrainConfig(steps=2, batch_size=8, log_every=1, eval_every=2, samples=2, progress=False))
    validate(exp)
    lines = []
    summary = train_tokenizer(exp, tmp_path / "run", log=lines.append)
    assert summary["step"] == 2 and np.isfinite(summary["train/loss"])
    assert any("4 train and 2 eval image items from manifest" in line for line in lines)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.safetensors").is_file()
