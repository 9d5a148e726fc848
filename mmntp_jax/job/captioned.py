"""The captioned-images job: image tokenizer → shards → backbone → evaluation → sheet, in one workdir.

`run_captioned_job(config, workdir)` runs what is not yet complete of

    tokenizer  WORKDIR/tokenizers/image/ — `job.tokenizer` copied in, or an image
               tokenizer trained in WORKDIR/tokenizer_run/ from `job.tokenizer_config`
    data       the documents (the embedded captioned shapes written under
               WORKDIR/data/train/, held-out pairs under WORKDIR/data/heldout/; or
               `data.manifest` / `data.eval_manifest`), tokenized into WORKDIR/data/tokens/
               with that tokenizer (images of any size, grey or colour, are fitted to it)
    backbone   the unified model trained on the shards (`train.backbone.train`), whose
               checkpoints, config.json and metrics live in WORKDIR itself, so `mmntp eval`,
               `mmntp sample` and `mm.load` take WORKDIR as for any run
    evaluation, sheet   `job/report.py`: captions and drawings of the held-out set, judged
               independently (`evaluation/`), and samples/sheet.png

Every stage's output is written atomically or resumably, so Ctrl-C and the same
command continue where it stopped.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from mmntp_jax.config import Config, ConfigError, repo_experiment
from mmntp_jax.job.stages import Stage, run_stages

TOKENIZER_DIR = "tokenizers/image"
DEFAULT_TOKENIZER_EXPERIMENT = "tokenizers/image_job"


def tokens_dir(workdir) -> Path:
    return Path(workdir) / "data" / "tokens"


def backbone_config(config: Config, workdir) -> Config:
    """The config the backbone trains with: the job's, reading the job's shards; with
    `model.image_input=continuous` or `model.image_output=regression|diffusion`, the
    job's image tokenizer supplies the code latents (and with `model.image_reader=pixels` its
    decoder); with `model.image_reader=conv`, the width of its code grid."""
    data = dataclasses.replace(config.data, source="shards", path=str(tokens_dir(workdir)))
    model = config.model
    if (model.image_input != "discrete" or model.image_output != "discrete" or model.image_reader == "pixels") and not model.image_tokenizer:
        folder = Path(workdir) / TOKENIZER_DIR
        model = dataclasses.replace(model, image_tokenizer=str(folder), image_feature_dim=latent_width(config))
    if model.image_reader != "none":
        model = dataclasses.replace(model, image_grid_width=grid_width(config))
    return dataclasses.replace(config, data=data, model=model)


def grid_width(config: Config) -> int:
    """Codes per row of the job's image tokenizer's grid (the image reader's `model.image_grid_width`)."""
    if config.job.tokenizer:
        from mmntp_jax.tokenizers.io import load_tokenizer

        return load_tokenizer(config.job.tokenizer).module().latent_shape()[-1]
    model = tokenizer_experiment(config).model
    return model.image_size // model.factor


def latent_width(config: Config) -> int:
    """The width of the job's image tokenizer's code latents, known before that tokenizer exists."""
    if config.job.tokenizer:
        from mmntp_jax.tokenizers.io import load_tokenizer

        return load_tokenizer(config.job.tokenizer).config.quantizer.code_dim
    return tokenizer_experiment(config).model.quantizer.code_dim


def heldout_manifest(config: Config, workdir) -> Path:
    return Path(config.data.eval_manifest) if config.data.eval_manifest else Path(workdir) / "data" / "heldout" / "heldout.jsonl"


def train_manifest(config: Config, workdir) -> Path:
    return Path(config.data.manifest) if config.data.manifest else Path(workdir) / "data" / "train" / "manifest.jsonl"


# ----------------------------------------------------------------------------
# tokenizer


def tokenizer_experiment(config: Config):
    """The image tokenizer experiment, with the job's step and item overrides applied; the
    default experiment learns the images of `data.manifest` when one is given (source "manifest")."""
    from mmntp_jax.tokenizers import experiment

    path = config.job.tokenizer_config or repo_experiment(DEFAULT_TOKENIZER_EXPERIMENT)
    own_images = config.data.manifest and not config.job.tokenizer_config
    overrides = ["data.source=manifest", f"data.path={config.data.manifest}"] if own_images else []
    overrides += [f"train.steps={config.job.tokenizer_steps}"] if config.job.tokenizer_steps else []
    overrides += [f"data.train_items={config.job.tokenizer_items}"] if config.job.tokenizer_items else []
    overrides += [] if config.train.progress else ["train.progress=false"]
    exp = experiment.load(path, overrides)
    if exp.kind != "image":
        raise ConfigError(f"config key 'job.tokenizer_config': {path} trains a {exp.kind} tokenizer; the captioned job needs an image tokenizer")
    if exp.train.eval_every > exp.train.steps:
        exp = dataclasses.replace(exp, train=dataclasses.replace(exp.train, eval_every=exp.train.steps))
    return exp


def _tokenizer_complete(folder: Path) -> bool:
    from mmntp_jax.tokenizers.io import CONFIG, WEIGHTS

    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def _install_tokenizer(source: Path, target: Path) -> None:
    """Copies a tokenizer folder into place atomically, after checking it loads as an image tokenizer."""
    from mmntp_jax.tokenizers.io import load_tokenizer

    tokenizer = load_tokenizer(source)
    if tokenizer.kind != "image" or not tokenizer.discrete:
        raise ConfigError(f"config key 'job.tokenizer': {source} holds a {'discrete' if tokenizer.discrete else 'continuous'} {tokenizer.kind} tokenizer; the captioned job needs a discrete image tokenizer")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    tmp.replace(target)


def tokenizer_stage(config: Config, workdir: Path, log) -> Stage:
    target = workdir / TOKENIZER_DIR

    def run() -> bool:
        target.parent.mkdir(parents=True, exist_ok=True)
        if config.job.tokenizer:
            _install_tokenizer(Path(config.job.tokenizer), target)
            return True
        from mmntp_jax.train.tokenizer import train as train_tokenizer

        run_dir = workdir / "tokenizer_run"
        summary = train_tokenizer(tokenizer_experiment(config), run_dir, log=log)
        if summary.get("interrupted"):
            return False
        _install_tokenizer(run_dir / "tokenizer", target)
        return True

    return Stage("tokenizer", lambda: _tokenizer_complete(target), run)


# ----------------------------------------------------------------------------
# data


def _write_embedded(config: Config, workdir: Path, image_size: int) -> None:
    from mmntp_jax.data.captioned import write_captioned_shapes

    progress = config.train.progress
    if not train_manifest(config, workdir).is_file():
        write_captioned_shapes(workdir / "data" / "train", config.job.items, size=image_size, split="train", progress=progress)
    if not heldout_manifest(config, workdir).is_file():
        write_captioned_shapes(workdir / "data" / "heldout", config.job.eval_items, size=image_size, split="eval", pairs=True, progress=progress)


def image_encoder(workdir: Path):
    """The job's image tokenizer as a data-prepare encoder that fits any image to its size."""
    import functools

    from mmntp_jax.data.tokenize import module_encoder
    from mmntp_jax.tokenizers.io import load_tokenizer
    from mmntp_jax.tokenizers.media import fit_image

    tokenizer = load_tokenizer(workdir / TOKENIZER_DIR)
    return module_encoder(tokenizer.module(), preprocess=functools.partial(fit_image, size=tokenizer.config.image_size), batch_size=32)


def text_tokenizer(config: Config, manifest: Path, log):
    """`job.text_tokenizer`: the byte tokenizer, or a BPE trained on the manifest's text segments."""
    from mmntp_jax.data.prepare import manifest_texts
    from mmntp_jax.tokenizers.text import BPETokenizer, ByteTokenizer

    if config.job.text_tokenizer == "bytes":
        return ByteTokenizer()
    text = BPETokenizer.train(manifest_texts(manifest), config.job.text_vocab)
    log(f"data: text BPE of {text.size} ids (job.text_vocab={config.job.text_vocab}) trained on {manifest}")
    return text


def data_stage(config: Config, workdir: Path, log) -> Stage:
    out = tokens_dir(workdir)

    def run() -> bool:
        from mmntp_jax.data.prepare import PrepareOptions, Preparer

        encoder = image_encoder(workdir)
        if not config.data.manifest:
            _write_embedded(config, workdir, encoder.preprocess.keywords["size"])
        for path, key in ((train_manifest(config, workdir), "data.manifest"), (heldout_manifest(config, workdir), "data.eval_manifest")):
            if not path.is_file():
                raise FileNotFoundError(f"config key '{key}': {path} not found")
        options = PrepareOptions(seq_len=config.train.seq_len, progress=config.train.progress)
        text = text_tokenizer(config, train_manifest(config, workdir), log)
        preparer = Preparer(train_manifest(config, workdir), out, options, {"image": encoder}, text_tokenizer=text)
        if config.model.vocab_size < preparer.vocab.size:
            raise ConfigError(f"config key 'model.vocab_size': {config.model.vocab_size} does not cover the job's vocabulary of "
                              f"{preparer.vocab.size} ids ({preparer.vocab.n_specials} specials, {preparer.text.size} text, the rest image codes); "
                              f"set it ≥ {preparer.vocab.size} or lower job.text_vocab")
        summary = preparer.run()
        log(f"data: {summary['docs']} documents, {summary['tokens']} tokens in {summary['shards']} shards")
        return True

    return Stage("data", lambda: (out / "dataset.json").is_file(), run)


# ----------------------------------------------------------------------------
# backbone


def backbone_stage(config: Config, workdir: Path, log, profile_steps=None) -> Stage:
    def run() -> bool:
        from mmntp_jax.train.backbone import train

        summary = train(backbone_config(config, workdir), workdir, profile_steps=profile_steps, log=log)
        return not summary.get("interrupted")

    def complete() -> bool:
        from etils import epath

        from mmntp_jax.train.backbone import newest_checkpoint_step

        return newest_checkpoint_step(epath.Path(workdir)) >= config.train.steps

    return Stage("backbone", complete, run)


def run_captioned_job(config: Config, workdir, *, log=print, profile_steps=None) -> dict:
    """Runs the stages not yet complete; returns {"complete", "stages"}."""
    from mmntp_jax.config import save_json
    from mmntp_jax.train.backbone import check_workdir_config

    workdir = Path(workdir)
    check_workdir_config(workdir, backbone_config(config, workdir))  # the same job, or a RunConflict before any work
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "config.json").is_file():
        save_json(workdir / "config.json", backbone_config(config, workdir))
    from mmntp_jax.job.report import evaluation_stage, sheet_stage

    steps = config.train.steps
    stages = [tokenizer_stage(config, workdir, log), data_stage(config, workdir, log), backbone_stage(config, workdir, log, profile_steps),
              evaluation_stage(workdir, steps, log), sheet_stage(workdir, steps, config.job.sheet_items, log)]
    return run_stages(stages, workdir, log)
