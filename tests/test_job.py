"""The staged captioned-images job: stages, resume, evaluation output, one-line errors.

References: the files each stage must leave, the evaluation's own JSON, and the
manifest lines that are malformed on purpose.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmntp_jax import cli
from mmntp_jax.config import ConfigError, load_config
from mmntp_jax.data.sources import eval_mask
from mmntp_jax.evaluation.pairs import heldout_pairs, training_pairs
from mmntp_jax.job.stages import Stage, run_stages

TINY_JOB = [
    "--set", "job.tokenizer_steps=2", "--set", "job.tokenizer_items=32", "--set", "job.items=24", "--set", "job.eval_items=6",
    "--set", "job.classifier_steps=10", "--set", "job.sheet_items=3", "--set", "train.steps=4", "--set", "train.eval_every=4",
    "--set", "train.eval_batches=1", "--set", "train.batch_size=2", "--set", "train.seq_len=256", "--set", "model.d_model=32",
    "--set", "model.n_layers=1", "--set", "model.d_ff=64", "--set", "train.progress=false", "--set", "train.compilation_cache=",
]


def mmntp(*args):
    """The CLI as a user runs it: its own process, one CPU device."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-m", "mmntp_jax.cli", *map(str, args)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("job") / "run"
    mmntp("train", "--workdir", workdir, *TINY_JOB)
    return workdir


def test_every_stage_leaves_its_output(job):
    record = json.loads((job / "job.json").read_text())
    assert list(record) == ["tokenizer", "data", "backbone", "evaluation", "sheet"]
    assert all(r["status"] == "done" for r in record.values())
    assert (job / "tokenizers/image/tokenizer.json").is_file() and (job / "data/tokens/dataset.json").is_file()
    assert (job / "checkpoints/4").is_dir() and (job / "eval/4.json").is_file()
    from PIL import Image

    sheet = np.asarray(Image.open(job / "samples/sheet.png"))
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.shape[0] > 3 * 32
    captions = [json.loads(x) for x in (job / "eval/4/captions.jsonl").read_text().splitlines()]
    assert len(captions) == 6 and all(set(c) == {"reference", "generated"} for c in captions)
    drawn = np.load(job / "eval/4/drawn.npz")
    assert drawn["drawn"].shape == drawn["real"].shape == (6, 32, 32, 3)


def test_eval_json_reports_multimodal_figures(job):
    printed = json.loads(mmntp("eval", "--workdir", job, "--json").stdout.strip().splitlines()[-1])
    saved = json.loads((job / "eval/4.json").read_text())
    for key in ("caption_accuracy", "image_agreement", "classifier_accuracy", "loss", "loss/text", "loss/image",
                "bits_per_token/image", "accuracy/text", "samples"):
        assert key in printed, key
    assert printed["caption_accuracy"] == saved["caption_accuracy"] and printed["samples"].endswith("samples/sheet.png")
    assert 0.0 <= printed["image_agreement"] <= 1.0 and 0.0 <= printed["caption_accuracy"] <= 1.0


def test_a_finished_job_reports_complete(job):
    before = (job / "job.json").read_text()
    err = mmntp("train", "--workdir", job, *TINY_JOB).stderr
    assert all(f"stage {s}: complete" in err for s in ("tokenizer", "data", "backbone", "evaluation", "sheet")), err
    assert (job / "job.json").read_text() == before


def test_a_finished_job_takes_other_sampling_settings_without_a_conflict(job, tmp_path):
    """job.guidance and job.temperature only steer drawings: a finished workdir made with other
    values reports every stage complete and keeps its own settings and evaluation."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(job, copy)
    before = {name: (copy / name).read_text() for name in ("config.json", "job.json", "eval/4.json")}
    err = mmntp("train", "--workdir", copy, *TINY_JOB, "--set", "job.guidance=1.5", "--set", "job.temperature=0.5").stderr
    assert all(f"stage {s}: complete" in err for s in ("tokenizer", "data", "backbone", "evaluation", "sheet")), err
    assert {name: (copy / name).read_text() for name in before} == before


def test_a_copied_workdir_finds_its_own_files(job, tmp_path):
    """config.json names the workdir's shards and tokenizer relative to it: a copy evaluates,
    samples and resumes from its own files, never the original's."""
    import shutil

    copy = tmp_path / "elsewhere" / "run"
    shutil.copytree(job, copy)
    saved = (copy / "config.json").read_text()
    assert str(job) not in saved and json.loads(saved)["data"]["path"] == "data/tokens"
    assert load_config(str(copy / "config.json")).data.path == str(copy / "data/tokens")
    printed = json.loads(mmntp("eval", "--workdir", copy, "--json").stdout.strip().splitlines()[-1])
    assert np.isfinite(printed["loss"]) and printed["samples"] == str(copy / "samples/sheet.png")
    assert mmntp("sample", "--workdir", copy, "--image", copy / "data/heldout/images/000000.png").stdout.strip()
    err = mmntp("train", "--workdir", copy, *TINY_JOB).stderr
    assert all(f"stage {s}: complete" in err for s in ("tokenizer", "data", "backbone", "evaluation", "sheet")), err


@pytest.mark.slow
def test_a_finished_job_trains_on_with_a_new_schedule_when_asked(tmp_path):
    workdir = tmp_path / "run"  # a job of its own: a workdir's config names its absolute paths
    mmntp("train", "--workdir", workdir, *TINY_JOB)
    longer = [*TINY_JOB, "--set", "train.steps=6", "--set", "train.eval_every=6"]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    refused = subprocess.run([sys.executable, "-m", "mmntp_jax.cli", "train", "--workdir", str(workdir), *longer], env=env, capture_output=True, text=True)
    assert refused.returncode == 2 and "train.steps: 4 → 6" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    command = ["train", "--workdir", workdir, *longer, "--set", "train.on_schedule_change=restart_schedule"]
    err = mmntp(*command).stderr
    assert "a new learning-rate schedule starts at step 4" in err
    assert (workdir / "checkpoints/6").is_dir() and (workdir / "eval/6.json").is_file()
    again = mmntp(*command).stderr  # the same command again: complete
    assert all(f"stage {s}: complete" in again for s in ("tokenizer", "data", "backbone", "evaluation", "sheet")), again


def stages_from(job, workdir):
    """`workdir` holding `job`'s tokenizer and data stages (their absolute paths rewritten), so a job
    with other model settings runs only its backbone, evaluation and sheet."""
    import shutil

    for name in ("tokenizer_run", "tokenizers", "data"):
        shutil.copytree(job / name, workdir / name)
    for rel in ("data/tokens/prepare.json", "data/tokens/dataset.json"):
        path = workdir / rel
        path.write_text(path.read_text().replace(str(job), str(workdir)))
    return workdir


def test_a_continuous_input_and_regression_output_job_reads_its_tokenizers_latents(job, tmp_path, capsys):
    workdir = stages_from(job, tmp_path / "run")
    mmntp("train", "--workdir", workdir, *TINY_JOB, "--set", "model.image_input=continuous", "--set", "model.image_output=regression")
    import mmntp_jax as mm
    from mmntp_jax.data.vocab import Vocab
    from mmntp_jax.model.continuous_input import code_latent_table
    from mmntp_jax.tokenizers.io import load_tokenizer

    config = load_config(str(workdir / "config.json")).model
    assert (config.image_input, config.image_tokenizer, config.image_feature_dim) == ("continuous", str(workdir / "tokenizers/image"), 4)
    table = code_latent_table(load_tokenizer(workdir / "tokenizers/image"), Vocab.load(workdir / "vocab.json"), config.vocab_size)
    params = mm.load(workdir).params
    np.testing.assert_array_equal(np.asarray(params["multi_modal_projector"]["latents"]), table)
    np.testing.assert_array_equal(np.asarray(params["image_head"]["latents"]), table)
    figures = json.loads((workdir / "eval/4.json").read_text())
    assert 0.0 <= figures["caption_accuracy"] <= 1.0 and 0.0 <= figures["image_agreement"] <= 1.0
    last = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if '"eval/continuous_loss/image"' in x]
    assert last and np.isfinite(last[-1]["eval/continuous_loss/image"])
    assert cli.main(["export", "hf", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.image_input='continuous' cannot be exported" in lines[0], lines


@pytest.mark.parametrize("form", ["token", "block"])
def test_a_diffusion_output_job_draws_images_from_its_denoiser(job, tmp_path, capsys, form):
    workdir = stages_from(job, tmp_path / "run")
    err = mmntp("train", "--workdir", workdir, *TINY_JOB, "--set", "model.image_output=diffusion", "--set", f"model.diffusion_form={form}",
                "--set", "model.diffusion_steps=4").stderr
    assert "stage tokenizer: complete" in err and "stage data: complete" in err, err
    figures = json.loads((workdir / "eval/4.json").read_text())
    assert 0.0 <= figures["image_agreement"] <= 1.0 and figures["samples"].endswith("sheet.png")
    drawn = np.load(workdir / "eval/4/drawn.npz")["drawn"]  # the evaluation's drawings, through the sampler and the decoder
    assert drawn.shape == (6, 32, 32, 3) and np.isfinite(drawn).all() and drawn.std() > 0
    if form == "block":
        return  # the export refusal below is the same for both forms
    assert cli.main(["export", "stablehlo", "--workdir", str(workdir), "--out", str(tmp_path / "hlo")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "model.image_output='diffusion' cannot be exported" in lines[0], lines
    assert not (tmp_path / "hlo").exists()


MODES = [("discrete", "discrete", "token"), ("discrete", "regression", "token"), ("discrete", "diffusion", "token"), ("discrete", "diffusion", "block"),
         ("continuous", "discrete", "token"), ("continuous", "regression", "token"), ("continuous", "diffusion", "token"),
         ("continuous", "diffusion", "block")]


@pytest.mark.slow
@pytest.mark.parametrize("image_input,image_output,form", MODES)
def test_every_combination_of_image_input_and_output_runs_the_job(job, tmp_path, capsys, image_input, image_output, form):
    workdir = stages_from(job, tmp_path / "run")
    mmntp("train", "--workdir", workdir, *TINY_JOB, "--set", f"model.image_input={image_input}", "--set", f"model.image_output={image_output}",
          "--set", f"model.diffusion_form={form}", "--set", "model.diffusion_steps=4")
    figures = json.loads((workdir / "eval/4.json").read_text())
    assert all(0.0 <= figures[k] <= 1.0 for k in ("caption_accuracy", "image_agreement", "classifier_accuracy"))
    assert cli.main(["sample", "--workdir", str(workdir), "--image", str(job / "data/heldout/images/000000.png"), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_sample_draws_and_captions(job, capsys):
    assert cli.main(["sample", "--workdir", str(job), "--prompt", "a small red circle at the centre on a blue and light blue plain background",
                     "--generate", "image", "--out", str(job / "s")]) == 0
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    from PIL import Image

    assert path.suffix == ".png" and np.asarray(Image.open(path)).shape == (32, 32, 3)
    drawn = json.loads((job / "s" / "samples.jsonl").read_text().splitlines()[-1])
    job_config = load_config(str(job / "config.json")).job
    assert (drawn["temperature"], drawn["guidance"]) == (job_config.temperature, job_config.guidance) == (1.0, 2.0)  # as the evaluation draws
    assert cli.main(["sample", "--workdir", str(job), "--image", str(job / "data/heldout/images/000000.png"), "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip() != ""


def test_sample_settings_default_to_the_jobs_for_media_only():
    from argparse import Namespace

    from mmntp_jax.generation.commands import sampling_defaults

    config = load_config(None)  # the default experiment: the captioned job
    given = lambda **kw: Namespace(**{"generate": "image", "temperature": None, "guidance": None, **kw})  # noqa: E731
    assert sampling_defaults(given(), config) == (config.job.temperature, config.job.guidance)
    assert sampling_defaults(given(generate="text"), config) == (0.0, 1.0)
    assert sampling_defaults(given(temperature=0.0, guidance=1.0), config) == (0.0, 1.0)
    plain = load_config(str(Path(__file__).parents[1] / "experiments" / "text_stdlib.py"))
    assert sampling_defaults(given(), plain) == (0.0, 1.0)


def test_stages_skip_done_and_stop_when_interrupted(tmp_path):
    ran = []
    stages = [Stage("a", lambda: True, lambda: ran.append("a") or True),
              Stage("b", lambda: False, lambda: ran.append("b") or False),
              Stage("c", lambda: False, lambda: ran.append("c") or True)]
    result = run_stages(stages, tmp_path, log=lambda m: None)
    assert ran == ["b"] and not result["complete"] and result["stages"]["b"]["status"] == "interrupted"


def test_heldout_manifest_errors_name_the_line(tmp_path):
    good = {"segments": [{"type": "text", "text": " a cat "}, {"type": "image", "path": "x.png"}]}
    bad = {"segments": [{"type": "image", "path": "x.png"}, {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: field 'segments': a held-out line holds one image and one text segment"):
        heldout_pairs(path)
    path.write_text(json.dumps(good) + "\n")
    images, captions = heldout_pairs(path)
    assert images == [tmp_path / "x.png"] and captions == ["a cat"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no"):
        heldout_pairs(empty)
    only_text = tmp_path / "train.jsonl"
    only_text.write_text(json.dumps({"segments": [{"type": "text", "text": "x"}]}) + "\n")
    with pytest.raises(ValueError, match="no image/caption pair documents"):
        training_pairs(only_text)


def test_user_manifests_come_in_pairs():
    with pytest.raises(ConfigError, match="give both"):
        load_config(None, ["data.manifest=train.jsonl"])
    with pytest.raises(ConfigError, match="'job.kind': 'bogus' is not one of"):
        load_config(None, ["job.kind=bogus"])


def test_small_sets_keep_a_held_out_document():
    for n in (2, 5, 30):
        mask = eval_mask(n, 0.02)
        assert mask.sum() >= 1 and (~mask).sum() >= 1
    assert not eval_mask(30, 0.0).any()
    big = eval_mask(10_000, 0.02)
    assert 150 < big.sum() < 250


def test_the_drawing_sweep_reproduces_the_evaluation_and_scores_other_settings(job):
    """tools/probes/drawing_sweep.py with the job's own sampling gives the saved image_agreement
    and classifier_accuracy exactly; another setting is scored by the same judge."""
    saved = json.loads((job / "eval/4.json").read_text())
    settings = json.loads((job / "config.json").read_text())["job"]
    own = f"temperature={settings['temperature']},guidance={settings['guidance']}"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    tool = Path(__file__).parents[1] / "tools/probes/drawing_sweep.py"
    done = subprocess.run([sys.executable, tool, "--workdir", job, "--sampling", own, "--sampling", "temperature=1,top_k=5"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    ceiling, first, other = [json.loads(line) for line in done.stdout.strip().splitlines()[-3:]]
    assert ceiling["classifier_accuracy"] == saved["classifier_accuracy"] and ceiling["eval_items"] == saved["eval_items"]
    assert first["image_agreement"] == saved["image_agreement"] and first["image_agreement_colour"] == saved["image_agreement_colour"]
    assert other["top_k"] == 5 and 0.0 <= other["image_agreement"] <= 1.0
    bad = subprocess.run([sys.executable, tool, "--workdir", job, "--sampling", "temprature=1"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "'temprature=1' is not KEY=VALUE with KEY one of temperature, top_k, top_p, guidance" in bad.stderr
