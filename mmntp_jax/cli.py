"""The `mmntp` command. Thin: it parses arguments, calls the library and turns failures into one line.

Each command group lives beside the code it drives, in a module exposing
`add_parser(subparsers)`; each parser sets `func(args) -> int`. Only the group
that is asked for is imported, so `mmntp --help` stays fast.

Exit codes (README, "Errors and exit codes"): 0 success; 2 a failure the user
can fix, printed as one line `mmntp GROUP: error: …` on stderr naming the path,
key or record; 3 a training run stopped after `train.max_bad_steps` non-finite
steps in a row (`DivergenceError`, one line too); 130 interrupted (Ctrl-C,
SIGTERM). A user-fixable failure is one of the classes in `user_error_types`
(mmntp_jax.errors and the few others the library raises), an `OSError` with an
errno (permissions, disk full, a missing file), or a storage library's report
of a missing or damaged file (`mmntp_jax.errors.library_failure`), whose line
names the command's path arguments, since those libraries do not always name
the file. Any other exception is a bug and keeps its traceback (exit 1). With
`MMNTP_DEBUG=1` a handled failure prints its traceback before its line.

Warnings that mmntp_jax issues are printed as one line each
(`mmntp GROUP: warning: …`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings

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


EXIT_USER_ERROR = 2  # a failure the user can fix: one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; a training run saved a checkpoint first


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


def user_error_types() -> tuple[type, ...]:
    """Exceptions whose message is the whole story for the user (imported on failure only)."""
    from mmntp_jax.config import ConfigError
    from mmntp_jax.data.schema import ManifestError
    from mmntp_jax.errors import FileFormatError, PathOutsideFolder, RunError
    from mmntp_jax.tokenizers.media import MediaError

    return (CommandError, ConfigError, RunError, ManifestError, MediaError, FileFormatError, PathOutsideFolder, FileNotFoundError, FileExistsError)


def _path_arguments(args) -> str:
    """The data paths the command was given (its experiment file aside), for a line that must name them."""
    from mmntp_jax.paths import PATH_ARGS

    given = []
    for name in sorted(PATH_ARGS - {"config"}):
        value = getattr(args, name, None)
        given += [str(v) for v in value] if isinstance(value, list) else [str(value)] if value else []
    return ", ".join(given)


def error_line(err: BaseException, args) -> str | None:
    """The one line that reports `err` to the user, or None when it is a bug (shown with its traceback)."""
    from mmntp_jax.errors import describe, library_failure, one_line

    if isinstance(err, user_error_types()):
        return one_line(str(err) or type(err).__name__)
    if isinstance(err, OSError) and err.errno is not None:
        return describe(err)
    found = library_failure(err)
    if found is None:
        return None
    library, cause = found
    paths = _path_arguments(args)
    return f"{library} failed on {paths or 'the files of this command'}: {describe(cause)} (MMNTP_DEBUG=1 shows the traceback)"


def _quiet_event_loop_noise(hook):
    """orbax closes its asyncio loop while tensorstore callbacks still post to it; Python reports each
    post as an unraisable `RuntimeError: Event loop is closed` traceback. Those (only) are dropped."""

    def filtered(unraisable):
        if unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed":
            return
        hook(unraisable)

    filtered.mmntp_filter = True
    return filtered


@contextlib.contextmanager
def one_line_warnings(command: str):
    """Warnings raised from mmntp_jax print as `mmntp COMMAND: warning: …`; others as Python prints them."""
    from mmntp_jax.errors import one_line

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    with warnings.catch_warnings():
        default = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if os.path.abspath(filename).startswith(package):
                print(f"mmntp {command}: warning: {one_line(message)}", file=file or sys.stderr)
            else:
                default(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = argv[0] if argv and argv[0] in COMMAND_GROUPS else None
    quiet_library_logs()
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else EXIT_USER_ERROR
    from mmntp_jax.errors import DivergenceError, debug_requested, one_line
    from mmntp_jax.paths import resolve_path_args

    if not getattr(sys.unraisablehook, "mmntp_filter", False):
        sys.unraisablehook = _quiet_event_loop_noise(sys.unraisablehook)
    resolve_path_args(args)
    try:
        with one_line_warnings(args.command):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"mmntp {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except DivergenceError as err:  # training stopped on non-finite steps: its own exit status (3)
        print(f"mmntp {args.command}: error: {one_line(str(err))}", file=sys.stderr)
        return DivergenceError.exit_code
    except Exception as err:
        line = error_line(err, args)
        if line is None:
            raise
        if debug_requested():
            traceback.print_exc()
        print(f"mmntp {args.command}: error: {one_line(line)}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # `python -m mmntp_jax.cli`: run the importable module, so its
    from mmntp_jax.cli import main as module_main  # CommandError is the class commands raise

    sys.exit(module_main())
