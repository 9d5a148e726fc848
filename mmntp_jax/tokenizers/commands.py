"""`mmntp tokenizer train|eval|encode`: train, evaluate and run modality tokenizers.

    mmntp tokenizer train  --config experiments/tokenizers/image_fsq.py --workdir DIR [--set train.steps=100]
    mmntp tokenizer eval   --workdir DIR [--step N] [--images FOLDER] [--json]
    mmntp tokenizer encode --workdir DIR (or --tokenizer DIR) --input FOLDER|MANIFEST.jsonl --out DIR

`eval --images FOLDER` evaluates on every PNG/JPEG under FOLDER, each resized so
its shorter side is the tokenizer's image size (Lanczos) and centre-cropped square.
`encode` writes `codes.jsonl` (one {"path", "codes"} object per item) and, when all
items have the same number of tokens, `codes.npy` `[N, tokens]` int32.
A manifest is JSONL whose lines hold file paths under the key of the
tokenizer's modality ("image", "audio" or "video"), at top level or inside a
"segments" list; relative paths are resolved from the manifest's folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SUFFIXES = {"image": (".png", ".jpg", ".jpeg"), "audio": (".wav",), "video": (".npy",)}


def add_parser(subparsers, name: str, help_text: str) -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)

    p = sub.add_parser("train", help="train a tokenizer from an experiment config (resumes a workdir)")
    p.add_argument("--config", required=True, help="experiments/tokenizers/<name>.py")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--workdir", help="run directory (default workdirs/tokenizers/<name>)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--cpu-devices", type=int, metavar="N", help="on a CPU-only machine, train data-parallel over N CPU devices (e.g. the core count)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="held-out figures of a trained tokenizer (psnr, codebook_usage, perplexity, …)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    p.add_argument("--images", help="evaluate on this folder of PNG/JPEG images instead (image tokenizers)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("encode", help="turn a folder or manifest of files into codes")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a trained tokenizer workdir (uses its exported tokenizer/)")
    src.add_argument("--tokenizer", help="a tokenizer directory (tokenizer.json + tokenizer.safetensors)")
    p.add_argument("--input", required=True, help="folder of files, or a JSONL manifest")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_encode)


def cmd_train(args) -> int:
    import jax

    from mmntp_jax.cli import CommandError
    from mmntp_jax.paths import resolve_path
    from mmntp_jax.sharding import use_cpu_devices
    from mmntp_jax.tokenizers import experiment
    from mmntp_jax.tokenizers.media import MediaError
    from mmntp_jax.train.tokenizer import train
    from mmntp_jax.train.loop import RunConflict

    use_cpu_devices(args.cpu_devices)
    exp = experiment.load(args.config, args.overrides, device_count=jax.device_count())
    if args.print_config:
        print(experiment.to_json(exp))
        return 0
    workdir = args.workdir or resolve_path(f"workdirs/tokenizers/{exp.name}")
    try:
        summary = train(exp, workdir)
    except (RunConflict, MediaError) as err:
        raise CommandError(str(err)) from None
    return 130 if summary.get("interrupted") else 0


def _restore(workdir, step):
    from mmntp_jax.sharding import make_mesh
    from mmntp_jax.tokenizers.experiment import load_workdir_config
    from mmntp_jax.train.tokenizer_step import TokenizerStepBuilder
    from mmntp_jax.train.checkpoint import Checkpointer

    exp = load_workdir_config(workdir)
    builder = TokenizerStepBuilder(exp, make_mesh(exp.mesh))
    checkpointer = Checkpointer(workdir, keep=exp.checkpoint.keep, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        state = builder.restore(checkpointer, step)
    finally:
        checkpointer.close()
    return exp, builder, state, step


def cmd_eval(args) -> int:
    from mmntp_jax.cli import CommandError
    from mmntp_jax.tokenizers import datasets, media
    from mmntp_jax.train.tokenizer import run_eval

    exp, builder, state, step = _restore(args.workdir, args.step)
    if args.images:
        if exp.kind != "image":
            raise CommandError(f"--images needs an image tokenizer; {args.workdir} holds a {exp.kind} tokenizer")
        try:
            items, _ = media.load_image_folder(args.images, exp.model.image_size)
        except media.MediaError as err:
            raise CommandError(str(err)) from None
        items = datasets._uint8(items)
    else:
        items = datasets.load_split(exp, "eval")
    figures = run_eval(builder, state, items, Path(args.workdir) if not args.images else None, step, exp.train.samples)
    figures = {"step": step, "kind": exp.kind, "source": args.images or exp.data.source, **figures}
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:28s} {value:.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    return 0


def _manifest_paths(path: Path, modality: str) -> list[Path]:
    from mmntp_jax.cli import CommandError

    paths = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CommandError(f"manifest {path}, line {number}: not JSON ({err.msg})") from None
        for entry in [record] + list(record.get("segments", [])):
            if isinstance(entry, dict) and isinstance(entry.get(modality), str):
                paths.append((path.parent / entry[modality]).resolve())
    if not paths:
        raise CommandError(f"manifest {path}: no {modality!r} entries")
    return paths


def _read(kind: str, path: Path, config):
    from mmntp_jax.tokenizers import media

    if kind == "image":
        return media.fit_image(media.load_image(path), config.image_size)
    if kind == "audio":
        clip = media.load_wav(path, config.sample_rate)
        usable = len(clip) // config.hop * config.hop
        if usable == 0:
            raise media.MediaError(f"WAV file {path}: {len(clip)} samples is shorter than one frame ({config.hop} samples)")
        return clip[:usable]
    return media.load_array(path)


def cmd_encode(args) -> int:
    from mmntp_jax.cli import CommandError
    from mmntp_jax.tokenizers.io import load_tokenizer
    from mmntp_jax.tokenizers.media import MediaError

    directory = Path(args.tokenizer) if args.tokenizer else Path(args.workdir) / "tokenizer"
    tok = load_tokenizer(directory)
    if not tok.discrete:
        raise CommandError(f"{directory} holds a continuous tokenizer; it has no codes")
    source = Path(args.input)
    if source.is_file():
        paths = _manifest_paths(source, tok.kind)
    elif source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in SUFFIXES[tok.kind])
        if not paths:
            raise CommandError(f"input folder {source}: holds no {'/'.join(SUFFIXES[tok.kind])} files")
    else:
        raise FileNotFoundError(f"input {source}: not found")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        items = [(p, _read(tok.kind, p, tok.config)) for p in paths]
    except MediaError as err:
        raise CommandError(str(err)) from None
    by_shape: dict = {}
    for p, x in items:
        by_shape.setdefault(x.shape, []).append((p, x))
    for shape, group in by_shape.items():
        for start in range(0, len(group), args.batch_size):
            chunk = group[start:start + args.batch_size]
            try:
                codes = np.asarray(tok.encode(tok.params, np.stack([x for _, x in chunk]).astype(np.float32)))
            except ValueError as err:
                raise CommandError(f"{chunk[0][0]}: {err}") from None
            rows += [(str(p), c) for (p, _), c in zip(chunk, codes)]
    order = {str(p): i for i, p in enumerate(paths)}
    rows.sort(key=lambda r: order[r[0]])
    with (out / "codes.jsonl").open("w") as f:
        for path, codes in rows:
            f.write(json.dumps({"path": path, "codes": codes.tolist()}) + "\n")
    if len({len(c) for _, c in rows}) == 1:
        np.save(out / "codes.npy", np.stack([c for _, c in rows]).astype(np.int32))
    print(f"encoded {len(rows)} {tok.kind} items into {out} ({tok.kind} vocabulary {tok.vocab_size})")
    return 0
