"""Running an experiment file: import it, call its `get_config()`, and turn any failure into one line.

An experiment is a Python file defining `get_config()`; what it must return
depends on the command (a `Config` for `mmntp train`, a `TokenizerExperiment`,
a `SweepConfig`). Everything that can go wrong while running someone's file
becomes one `ConfigError` naming the file, the line and what was expected:

- a syntax error: the file, line and the offending source text;
- any exception while importing the file or inside `get_config()` (NameError,
  ImportError, a TypeError from a misspelt keyword …): the line of the
  experiment file the traceback passes through last, and the error;
- no `get_config`, or one that is not a function: what the file must define;
- a `get_config()` that returns something else: the type it returned and the
  one expected.

The original exception stays chained (`raise … from err`), so `MMNTP_DEBUG=1`
shows its traceback.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from mmntp_jax.config import ConfigError
from mmntp_jax.errors import describe


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line_in(path: Path, err: BaseException) -> str:
    """', line N, in FUNCTION' for the last frame of `err`'s traceback inside `path`, else ''."""
    target = os.path.abspath(path)
    found = ""
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if os.path.abspath(code.co_filename) == target:
            found = f", line {tb.tb_lineno}, in {code.co_name}"
        tb = tb.tb_next
    return found


def _syntax_error(path: Path, err: SyntaxError) -> ConfigError:
    source = f": {(err.text or '').strip()!r}" if (err.text or "").strip() else ""
    message = f"{type(err).__name__}: {err.msg}{source}"
    if err.filename and os.path.abspath(err.filename) == os.path.abspath(path):
        return ConfigError(f"config file {path}, line {err.lineno}: {message} (expected Python source defining get_config())")
    return ConfigError(f"config file {path}: a module it imports does not parse: {err.filename}, line {err.lineno}: {message}")


def _failure(path: Path, err: Exception, during: str) -> ConfigError:
    if isinstance(err, SyntaxError):
        return _syntax_error(path, err)
    return ConfigError(f"config file {path}{_line_in(path, err)}: {describe(err)} (raised {during})")


def _describe_type(expected) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def load_module(path):
    """The Python experiment file `path`, imported; a failure is one ConfigError naming the file and line."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"mmntp_experiment_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {path}: expected a Python experiment file (.py) or a resolved config (.json)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise _failure(path, err, "while importing it") from err
    return module


def call_in(path, function, name: str):
    """`function()`, a function of the experiment file `path`; a failure is one ConfigError naming the file and line."""
    try:
        return function()
    except Exception as err:
        raise _failure(Path(path), err, f"by {name}()") from err


def run_experiment_file(path, expected: type | tuple[type, ...] | None = None):
    """`get_config()` of the Python file `path`, checked to be an instance of `expected` when given."""
    path = Path(path)
    module = load_module(path)
    get_config = getattr(module, "get_config", None)
    wanted = f"get_config() returning a {_describe_type(expected)}" if expected is not None else "get_config()"
    if get_config is None:
        raise ConfigError(f"config file {path}: defines no get_config(); an experiment file defines {wanted}")
    if not callable(get_config):
        raise ConfigError(f"config file {path}: get_config is a {type(get_config).__name__}, not a function; an experiment file defines {wanted}")
    config = call_in(path, get_config, "get_config")
    if expected is not None and not isinstance(config, expected):
        raise ConfigError(f"config file {path}: get_config() returned {type(config).__name__} {_short(config)}, expected a {_describe_type(expected)}")
    return config
