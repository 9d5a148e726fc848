"""Path resolution: every user-given path becomes absolute once, where it enters the program.

orbax and tensorstore refuse relative paths, and a relative path means something
else once a process changes directory, so the CLI resolves every path argument
(`resolve_path_args`), `load_config` resolves the path-valued config keys
(`resolve_config_paths`) and the Python API resolves the workdirs it is given.
A workdir's own config.json is the one place a relative path is stored: the
keys that name files inside the workdir (its shards, its image tokenizer) are
written relative to it and resolved against the folder the file is read from,
so a moved or copied workdir still finds them (`relative_config_paths`).
A path with a URL scheme (`gs://…`, `s3://…`, any `scheme://`) is left as it is;
a local one is made absolute against the current directory, with `~` expanded.

A config field is path-valued when its dataclass field carries
`metadata={"path": True}` (a plain path; "" means unset) or
`metadata={"path": "entries"}` (a tuple of tuples whose third element, when
present, is a path: `data.mixture`).

Reading a folder someone else wrote (a Hugging Face model, a shard folder, a
tokenizer folder) stays inside it: every file such a folder names — an index
entry, a file that may be a symbolic link — is opened through `inside`, which
resolves it and refuses (`PathOutsideFolder`, naming the entry) anything that
lands outside the folder: an absolute name, a `..` that climbs out, a link to
elsewhere. Links between files of the same folder are fine.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from mmntp_jax.errors import PathOutsideFolder

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")

# argparse destinations that hold paths, in every command group
PATH_ARGS = frozenset(("workdir", "config", "out", "manifest", "model", "runs", "input", "tokenizer", "images", "image", "audio", "dir", "files", "text_tokenizer"))
# values of those arguments that are names, not paths
NOT_PATHS = {"text_tokenizer": ("bytes",)}


def has_scheme(path: str) -> bool:
    return bool(_SCHEME.match(str(path)))


def resolve_path(path, base=None):
    """`path` made absolute (str) against `base` (default: the current directory), `~` expanded;
    URLs and empty values unchanged."""
    if path is None:
        return None
    text = os.fspath(path)
    if not text or has_scheme(text):
        return text
    text = os.path.expanduser(text)
    if base is not None and has_scheme(os.fspath(base)) and not os.path.isabs(text):
        return os.fspath(base).rstrip("/") + "/" + text
    return os.path.abspath(os.path.join(os.fspath(base), text) if base is not None else text)


def resolve_path_args(args) -> None:
    """Resolves, in place, every path-valued attribute of a parsed argparse namespace."""
    for name in PATH_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            setattr(args, name, [resolve_path(v) for v in value])
        elif isinstance(value, str) and value not in NOT_PATHS.get(name, ()):  # not e.g. `import hf --image 16384`
            setattr(args, name, resolve_path(value))


def map_config_paths(node, fn):
    """A copy of the config dataclass tree with `fn` applied to every path-valued key's value."""
    changes = {}
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            mapped = map_config_paths(value, fn)
        elif isinstance(value, tuple) and any(dataclasses.is_dataclass(v) or isinstance(v, tuple) for v in value) and not f.metadata.get("path"):
            mapped = tuple(_map_nested(v, fn) for v in value)  # e.g. a sweep's ((label, DataConfig), …)
        elif f.metadata.get("path") is True:
            mapped = fn(value)
        elif f.metadata.get("path") == "entries":
            mapped = tuple(_map_entry(e, fn) for e in value)
        else:
            continue
        if mapped != value:
            changes[f.name] = mapped
    return dataclasses.replace(node, **changes) if changes else node


def _map_nested(value, fn):
    if dataclasses.is_dataclass(value):
        return map_config_paths(value, fn)
    if isinstance(value, tuple):
        return tuple(_map_nested(v, fn) for v in value)
    return value


def _map_entry(entry, fn):
    if isinstance(entry, (tuple, list)) and len(entry) >= 3 and isinstance(entry[2], str):
        return tuple(entry[:2]) + (fn(entry[2]),) + tuple(entry[3:])
    return entry


def resolve_config_paths(node, base=None):
    """A copy of the config dataclass tree with every path-valued key made absolute against
    `base` (default: the current directory)."""
    return map_config_paths(node, lambda value: resolve_path(value, base))


def relative_config_paths(node, folder):
    """A copy of the config dataclass tree with every absolute path-valued key that lies inside
    `folder` made relative to it; others unchanged. A workdir's config.json is written this way
    (`config_load.save_json`) and read back against the folder it then lies in
    (`config_load.load_json`), so a workdir can be moved or copied whole."""
    if has_scheme(os.fspath(folder)):
        return node
    root = os.path.abspath(os.fspath(folder))

    def relative(value):
        if not value or has_scheme(value) or not os.path.isabs(value):
            return value
        path = os.path.abspath(value)
        return os.path.relpath(path, root) if path == root or path.startswith(root.rstrip(os.sep) + os.sep) else value

    return map_config_paths(node, relative)


def inside(folder, name, *, root=None, what: str | None = None) -> Path:
    """`folder/name`, checked to lie inside `root` (default `folder`) once every symbolic link is resolved.

    Raises `PathOutsideFolder` naming `what` (default: the name) when it does not.
    The path is returned as joined (messages show the names the user knows); a
    file that does not exist is returned all the same (its reader reports it).
    `root` is a folder that holds `folder` and counts as inside too (the
    Hugging Face cache: a snapshot's files link to its repository's blobs/).
    """
    base = Path(os.path.realpath(os.fspath(root if root is not None else folder)))
    target = Path(os.path.realpath(os.path.join(os.fspath(folder), os.fspath(name))))
    if target == base or base in target.parents:
        return Path(folder) / name
    label, shown = what or repr(os.fspath(name)), os.fspath(root if root is not None else folder)
    if os.path.isabs(os.fspath(name)) or ".." in Path(os.fspath(name)).parts:
        raise PathOutsideFolder(f"{label} names a file outside {shown} ({target}); refusing to read it")
    raise PathOutsideFolder(f"{label} in {shown} leads through a symbolic link to {target}, outside the folder; refusing to read it")
