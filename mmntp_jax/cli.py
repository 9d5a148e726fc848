"""The `mmntp` command. Thin: it parses arguments and calls the library.

Each command group lives beside the code it drives, in a module exposing
`add_parser(subparsers)`; each parser sets `func(args) -> int`. Only the group
that is asked for is imported, so `mmntp --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# group name → (module with add_parser, one-line help)
COMMAND_GROUPS = {
    "train": ("mmntp_jax.train.commands", "train a model from an experiment config"),
    "eval": ("mmntp_jax.train.commands", "evaluate a checkpoint's held-out loss"),
    "sample": ("mmntp_jax.generation.commands", "generate text, images or captions from a trained workdir"),
    "tokenizer": ("mmntp_jax.tokenizers.commands", "train, evaluate and run modality tokenizers"),
    "data": ("mmntp_jax.data.commands", "prepare and inspect tokenized shards"),
    "export": ("mmntp_jax.export.commands", "export to Hugging Face safetensors or StableHLO"),
    "import": ("mmntp_jax.export.commands", "import a Hugging Face checkpoint"),
    "checkpoint": ("mmntp_jax.export.commands", "inspect and consolidate checkpoints"),
    "scaling": ("mmntp_jax.scaling.commands", "scaling-law sweeps and fits"),
    "plan": ("mmntp_jax.plan.commands", "compile the train step for N devices ahead of time: memory, FLOPs, collectives"),
}


class CommandError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


def quiet_library_logs() -> None:
    """orbax and grain log routine events as absl warnings; show errors only."""
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.ERROR)


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """Every group is listed; only `selected` gets its full parser (imported lazily)."""
    parser = argparse.ArgumentParser(prog="mmntp", description="Multimodal next-token prediction in JAX.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMAND_GROUPS.items():
        if name == selected:
            importlib.import_module(module_name).add_parser(sub, name, help_text)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMAND_GROUPS else None
    quiet_library_logs()
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    from mmntp_jax.config import ConfigError
    from mmntp_jax.data.schema import ManifestError
    from mmntp_jax.errors import RunError
    from mmntp_jax.paths import resolve_path_args
    from mmntp_jax.tokenizers.media import MediaError

    resolve_path_args(args)
    try:
        return int(args.func(args) or 0)
    except (CommandError, ConfigError, RunError, ManifestError, MediaError, FileNotFoundError, FileExistsError) as err:
        print(f"mmntp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmntp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m mmntp_jax.cli`: run the importable module, so its
    from mmntp_jax.cli import main as module_main  # CommandError is the class commands raise

    sys.exit(module_main())
