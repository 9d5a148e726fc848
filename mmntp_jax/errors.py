"""Failures a user acts on: ours by type, and the storage libraries' by where they come from.

Library code raises the classes below (or `ConfigError`, `FileNotFoundError`)
for anything the user can fix or must know; the CLI prints their message as
one line and exits 2 (README, "Errors and exit codes"). A traceback means a
bug.

orbax, grain, array_record and tensorstore report damaged or missing files
with their own exceptions, which carry no type of their own to catch:
tensorstore raises a plain `ValueError` whose message starts with a status
code (`NOT_FOUND: …`, `DATA_LOSS: …`), orbax raises `KeyError`, `ValueError`
or a bare `Exception` chained to tensorstore's, array_record a `RuntimeError`
(sometimes with no message). `library_failure` recognises exactly these: an
error of one of the types a corrupt or missing file produces, raised inside
one of those libraries (or carrying a tensorstore data status). Anything else
— a `TypeError` or `AttributeError` from a library, any error raised by
mmntp_jax's own code that is not one of the classes here — is not recognised,
so it keeps its traceback.
"""

from __future__ import annotations

import os
import re


class RunError(RuntimeError):
    """A run cannot go on; the message says what failed, where, and what is intact."""


class CheckpointSaveError(RunError):
    """A checkpoint could not be written (disk full, permissions, an unreachable path)."""


class CheckpointRestoreError(RunError):
    """No checkpoint under a folder can be read although one was complete (or a named step cannot be read)."""


class DivergenceError(RunError):
    """Training stopped: `train.max_bad_steps` steps in a row were not applied (mmntp_jax/train/guards.py)."""

    exit_code = 3  # the CLI's exit status for it (README, "Errors and exit codes")


class RunConflict(RunError, ValueError):
    """The workdir holds a run of a different configuration."""


class FileFormatError(ValueError):
    """A file that is there but is not what it should be (bad JSON, a damaged header or record); the message names it."""


class PathOutsideFolder(ValueError):
    """A file that a folder names (an index entry, a symlink) lies outside that folder; the message names the entry."""


# ----------------------------------------------------------------------------
# Errors of the storage libraries

LIBRARIES = ("orbax", "grain", "array_record", "tensorstore")
# types a missing, damaged or unreachable file produces in those libraries; `Exception`
# itself is orbax re-raising tensorstore's error
FILE_ERROR_TYPES = (ValueError, KeyError, OSError, EOFError, RuntimeError)
# tensorstore status codes that describe the data, not the caller (INVALID_ARGUMENT,
# UNIMPLEMENTED, INTERNAL … are left out: those are how a wrong spec, i.e. a bug, shows)
DATA_STATUS = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "PERMISSION_DENIED", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
_STATUS = re.compile(r"^(?:%s): " % "|".join(DATA_STATUS))
_TENSORSTORE_TAIL = re.compile(r"\s*\[(?:tensorstore_spec|source locations)=.*$", re.DOTALL)


def _raised_in(err: BaseException) -> str | None:
    """The top-level package of the innermost frame of `err`'s traceback that is ours or a library's
    (frames of other modules, e.g. json's or concurrent.futures', run on behalf of their caller)."""
    modules = []
    tb = err.__traceback__
    while tb is not None:
        modules.append(str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0])
        tb = tb.tb_next
    for module in reversed(modules):
        if module in LIBRARIES or module == "mmntp_jax":
            return module
    return None


def _chain(err: BaseException):
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def library_failure(err: BaseException) -> tuple[str, BaseException] | None:
    """(library name, the error that names the cause) when `err` is a storage library's report of a
    missing or damaged file (see the module docstring), else None."""
    for link in _chain(err):
        if not isinstance(link, FILE_ERROR_TYPES) and type(link) is not Exception:
            continue
        if _STATUS.match(str(link)):
            return "tensorstore", link
        owner = _raised_in(link)
        if owner in LIBRARIES:
            return owner, _innermost_cause(link)
    return None


def _innermost_cause(err: BaseException) -> BaseException:
    """orbax's bare `Exception` wrapping the error that says what is wrong: that error, else `err`."""
    for link in _chain(err):
        if link is not err and (isinstance(link, FILE_ERROR_TYPES) or type(link) is Exception):
            return link
    return err


def describe(err: BaseException, limit: int = 400) -> str:
    """`Type: message` on one line (whitespace collapsed, tensorstore's spec dump dropped, at most `limit` characters)."""
    message = _TENSORSTORE_TAIL.sub("", str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err))
    text = " ".join(f"{type(err).__name__}: {message}".split()).rstrip(": ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def one_line(text: str) -> str:
    """`text` with its lines joined by spaces (a message that must fit one line of stderr)."""
    return " ".join(str(text).split())


def debug_requested() -> bool:
    """MMNTP_DEBUG set to anything but '', '0' or 'false': handled errors show their traceback too."""
    return os.environ.get("MMNTP_DEBUG", "").strip().lower() not in ("", "0", "false", "no")
