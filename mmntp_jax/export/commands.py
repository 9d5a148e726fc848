"""`mmntp export hf|stablehlo`, `mmntp import hf`, `mmntp checkpoint inspect|consolidate`.

One module serves the three groups; `add_parser` is called with the group name.
"""

from __future__ import annotations

import json
import sys

from mmntp_jax.cli import CommandError


def _common(parser, *, out: bool = True, step: bool = True) -> None:
    parser.add_argument("--workdir", required=True, help="training workdir (config.json, vocab.json, checkpoints/)")
    if out:
        parser.add_argument("--out", required=True, help="output folder (must be empty or absent unless --force)")
        parser.add_argument("--force", action="store_true", help="replace a non-empty output folder (only once the new one is complete)")
    if step:
        parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def add_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=help_text)
    group = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    if name == "export":
        hf = group.add_parser("hf", help="LlamaForCausalLM / Qwen3ForCausalLM safetensors folder")
        _common(hf)
        hf.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
        hf.add_argument("--shard-size", default="5GB", help="largest safetensors file, e.g. 5GB, 500MB, 2GiB; 0 = one file (default 5GB)")
        hf.set_defaults(func=run_export_hf)
        shlo = group.add_parser("stablehlo", help="forward pass and KV-cache decode step via jax.export")
        _common(shlo)
        shlo.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="parameter dtype")
        shlo.add_argument("--platforms", default="cpu,cuda,tpu", help="comma-separated lowering platforms (default cpu,cuda,tpu)")
        shlo.set_defaults(func=run_export_stablehlo)
    elif name == "import":
        hf = group.add_parser("hf", help="a Llama/Mistral/Qwen3 safetensors folder as a workdir's initial parameters")
        hf.add_argument("--model", required=True, help="Hugging Face model folder (config.json + *.safetensors)")
        hf.add_argument("--out", required=True, help="new workdir")
        hf.add_argument("--force", action="store_true", help="replace a non-empty --out")
        hf.add_argument("--config", default=None, help="experiment (.py or .json) giving the training setup (default: experiments/text_stdlib.py)")
        hf.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
        for modality in ("image", "audio", "video"):
            hf.add_argument(f"--{modality}", type=int, default=0, metavar="N", help=f"add a range of N {modality} codes to the vocabulary")
        hf.add_argument("--n-specials", type=int, default=16, help="special ids before the text range (default 16)")
        hf.add_argument("--json", action="store_true", help="print one JSON object")
        hf.set_defaults(func=run_import_hf)
    elif name == "checkpoint":
        inspect = group.add_parser("inspect", help="steps, arrays (shape, dtype, size, sharding) and the mesh that wrote them")
        _common(inspect, out=False)
        inspect.set_defaults(func=run_inspect)
        consolidate = group.add_parser("consolidate", help="parameters only (no optimizer state), one device, any dtype")
        _common(consolidate)
        consolidate.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="cast parameters (default: as saved)")
        consolidate.set_defaults(func=run_consolidate)


def _call(fn, *args, **kwargs):
    """Runs a library call, turning its ValueErrors and KeyErrors into one-line CommandErrors."""
    try:
        return fn(*args, **kwargs)
    except (FileNotFoundError, FileExistsError):
        raise
    except (ValueError, KeyError) as err:
        raise CommandError(err.args[0] if err.args else str(err)) from err


def _report(args, summary: dict, text: str) -> int:
    print(json.dumps(summary) if args.json else text)
    return 0


def run_export_hf(args) -> int:
    from mmntp_jax.export.hf import export_hf
    from mmntp_jax.export.safetensors_io import parse_size

    shard = None if args.shard_size.strip() in ("0", "") else _call(parse_size, args.shard_size)
    summary = _call(export_hf, args.workdir, args.out, step=args.step, dtype=args.dtype, shard_size=shard, force=args.force, progress=sys.stderr.isatty())
    return _report(args, summary, f"{summary['architecture']} (step {summary['step']}, {summary['dtype']}) written to {summary['out']}: {', '.join(summary['files'])}")


def run_export_stablehlo(args) -> int:
    from mmntp_jax.export.stablehlo import export_stablehlo

    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    summary = _call(export_stablehlo, args.workdir, args.out, step=args.step, dtype=args.dtype, platforms=platforms, force=args.force)
    return _report(args, summary, f"StableHLO forward and decode_step (step {summary['step']}, {summary['dtype']}, {','.join(platforms)}) written to {summary['out']}")


def run_import_hf(args) -> int:
    from mmntp_jax.config import load_config, repo_experiment
    from mmntp_jax.export.hf_import import import_hf

    config = load_config(args.config or repo_experiment("text_stdlib"), args.overrides)
    modalities = {"image": args.image, "audio": args.audio, "video": args.video}
    summary = _call(import_hf, args.model, args.out, config=config, modalities=modalities, n_specials=args.n_specials, force=args.force)
    if summary["warning"]:
        print(f"mmntp import: warning: {summary['warning']}", file=sys.stderr)
    text = (
        f"{summary['architecture']} imported into {summary['out']} (vocab {summary['vocab_size']} ids: "
        + ", ".join(f"{m} {n}" for m, n in summary["ranges"])
        + f"); continue training with: mmntp train --config {summary['out']}/config.json --workdir {summary['out']}"
    )
    return _report(args, summary, text)


def run_inspect(args) -> int:
    from mmntp_jax.export.checkpoint_tools import format_inspect, inspect

    report = _call(inspect, args.workdir, args.step)
    return _report(args, report, format_inspect(report))


def run_consolidate(args) -> int:
    from mmntp_jax.export.checkpoint_tools import consolidate

    summary = _call(consolidate, args.workdir, args.out, step=args.step, dtype=args.dtype, force=args.force)
    return _report(args, summary, f"step {summary['step']} parameters ({summary['arrays']} arrays, {summary['dtype']}) written to {summary['out']}")
