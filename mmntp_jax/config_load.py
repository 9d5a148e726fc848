"""Loading configs: experiment files, `section.key=value` overrides, and the resolved config as JSON.

Overrides are parsed against the field's declared type; every failure is one
`ConfigError` line naming the file or key and what is valid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from pathlib import Path
from typing import Any, Sequence

from mmntp_jax.config import Config, ConfigError, LossWeights
from mmntp_jax.config_checks import validate


DEFAULT_EXPERIMENT = "captioned"


def repo_experiment(name: str) -> Path:
    """experiments/<name>.py of this checkout (the files the defaults refer to)."""
    path = Path(__file__).resolve().parent.parent / "experiments" / f"{name}.py"
    if not path.is_file():
        raise ConfigError(f"experiment {path} is missing; pass --config experiments/<name>.py")
    return path


def default_experiment_path() -> Path:
    """The no-config job: experiments/<DEFAULT_EXPERIMENT>.py of this checkout."""
    return repo_experiment(DEFAULT_EXPERIMENT)


def load_experiment(path: str | Path, expected: type | tuple[type, ...] | None = None):
    """Imports `path` and returns its `get_config()` (a .json file is a resolved config, e.g. a workdir's);
    with `expected`, anything else is a ConfigError. Every failure is one ConfigError line naming the file
    (mmntp_jax/experiment_file.py)."""
    from mmntp_jax.experiment_file import run_experiment_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path}: {'is a directory' if path.is_dir() else 'not found'}")
    if path.suffix != ".json":
        return run_experiment_file(path, expected)
    config = load_json(path)
    if expected is not None and not isinstance(config, expected):
        raise ConfigError(f"config file {path}: a resolved training config (.json), expected the .py experiment of a {getattr(expected, '__name__', expected)}")
    return config


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *, device_count: int | None = None):
    """Experiment file (or the default job) + `key=value` overrides, validated;
    path-valued keys are made absolute against the current directory."""
    from mmntp_jax.paths import resolve_config_paths

    if path is None:
        path = default_experiment_path()
    config = resolve_config_paths(apply_overrides(load_experiment(path, Config), overrides))
    validate(config, device_count=device_count)
    return config


def apply_overrides(config, overrides: Sequence[str]):
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. model.n_layers=4")
        key, raw = item.split("=", 1)
        config = _set_path(config, key.strip().split("."), raw.strip(), key.strip())
    return config


def _set_path(node, parts: list[str], raw: str, full_key: str):
    names = [f.name for f in dataclasses.fields(node)]
    if parts[0] not in names:
        raise ConfigError(f"unknown config key {full_key!r}; valid keys here: {', '.join(names)}")
    hints = typing.get_type_hints(type(node))
    current = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"unknown config key {full_key!r}: {parts[0]} has no sub-keys")
        return dataclasses.replace(node, **{parts[0]: _set_path(current, parts[1:], raw, full_key)})
    if dataclasses.is_dataclass(current):
        raise ConfigError(f"config key {full_key!r} is a section; set one of its keys, e.g. {full_key}.{dataclasses.fields(current)[0].name}=…")
    return dataclasses.replace(node, **{parts[0]: parse_value(raw, hints[parts[0]], full_key)})


def parse_value(raw: str, annotation, key: str):
    """Parses `raw` as `annotation` (int, float, bool, str, tuple)."""
    origin = typing.get_origin(annotation) or annotation
    if annotation == LossWeights:
        return parse_loss_weights(raw, key)
    try:
        if annotation is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise ValueError
            return lowered in ("true", "1")
        if annotation is int:
            return int(raw)
        if annotation is float:
            return float(raw)
        if annotation is str:
            return raw
        if origin in (tuple, list):
            value = json.loads(raw)
            if not isinstance(value, list):
                raise ValueError
            return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    except (ValueError, json.JSONDecodeError):
        name = getattr(annotation, "__name__", str(annotation))
        hint = " (a JSON list, e.g. [1, 2])" if origin in (tuple, list) else ""
        raise ConfigError(f"config key {key!r}: cannot parse {raw!r} as {name}{hint}") from None
    raise ConfigError(f"config key {key!r}: unsupported type {annotation}")


def parse_loss_weights(raw: str, key: str) -> LossWeights:
    """`text:1,image:0.5`, a JSON object or list of pairs, or empty → ((modality, weight), …)."""
    try:
        if raw.lstrip().startswith(("{", "[")):
            value = json.loads(raw)
            pairs = value.items() if isinstance(value, dict) else value
        else:
            pairs = [item.split(":") for item in raw.split(",") if item.strip()]
        return tuple((str(name).strip(), float(weight)) for name, weight in pairs)
    except (ValueError, TypeError, AttributeError, json.JSONDecodeError):
        raise ConfigError(f"config key {key!r}: cannot parse {raw!r} as modality:weight pairs, e.g. text:1,image:0.5") from None



def to_dict(config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def to_json(config) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=False)


def from_dict(cls, data: dict[str, Any]):
    """Rebuilds a dataclass tree from `to_dict` output (unknown keys are errors)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value)
        elif isinstance(value, list):
            kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def save_json(path, config: Config) -> None:
    """Writes `config` to `path` (a workdir's config.json), the path-valued keys that lie in
    the file's folder relative to it: `load_json` resolves them against wherever the folder is then."""
    from mmntp_jax.paths import relative_config_paths

    target = path if hasattr(path, "write_text") else Path(path)  # a pathlib or etils path
    target.write_text(to_json(relative_config_paths(config, os.path.dirname(os.fspath(path)))))


def load_json(path: str | Path) -> Config:
    """The resolved config saved as JSON (a workdir's config.json), its relative path-valued keys
    made absolute against the file's folder; a damaged file is one ConfigError naming it."""
    from mmntp_jax.paths import has_scheme, resolve_config_paths

    try:
        data = json.loads(Path(path).read_text())
    except ValueError as err:  # bad JSON or bad UTF-8
        raise ConfigError(f"config file {path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a JSON object of config sections, got {type(data).__name__}")
    try:
        config = from_dict(Config, data)
    except ConfigError as err:
        raise ConfigError(f"config file {path}: {err}") from None
    except (TypeError, AttributeError) as err:  # a section that is not an object, a value of the wrong shape
        raise ConfigError(f"config file {path}: not a resolved config ({err})") from None
    where = os.fspath(path)
    return resolve_config_paths(config, os.path.dirname(where if has_scheme(where) else os.path.abspath(where)))
