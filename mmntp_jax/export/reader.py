"""Reading a workdir's checkpoint one parameter (or one layer of it) at a time.

A workdir holds `config.json`, `vocab.json` and `checkpoints/<step>/state`, an
orbax PyTree checkpoint whose `params` subtree is the model (see
model/init.py). Arrays are read straight from their tensorstore (zarr over
OCDBT, as orbax writes them), so a slice such as layer `i` of a stacked
[L, …] kernel is read without loading the rest, on the host, whatever mesh
wrote the checkpoint. Shapes, dtypes and the writing mesh come from orbax's
metadata (`_sharding` records each array's mesh and partition spec).

Parameter names are the params tree's keys joined by ".", e.g.
`layers.self_attn.q_proj`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from etils import epath

from mmntp_jax.config import Config, load_json
from mmntp_jax.data.vocab import Vocab


class CheckpointError(FileNotFoundError):
    """A workdir, step or array that is missing or unreadable; the message says which."""


@dataclass(frozen=True)
class ArrayInfo:
    shape: tuple[int, ...]
    dtype: np.dtype
    mesh: dict[str, int] | None  # axis name → size of the writing mesh; {} one device; None unrecorded
    partition_spec: tuple | None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


from mmntp_jax.export.stablehlo_runner import unflatten  # noqa: E402  (the runner is dependency-free)


def checkpoint_steps(workdir) -> list[int]:
    """Steps with a finished checkpoint under `workdir/checkpoints` (orbax's temporary folders excluded)."""
    directory = epath.Path(workdir) / "checkpoints"
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / "state").exists())


def _array_info(meta) -> ArrayInfo:
    sharding = getattr(meta, "sharding", None)
    mesh = spec = None
    if sharding is not None and type(sharding).__name__ == "SingleDeviceShardingMetadata":
        mesh = {}  # written from one device
    elif sharding is not None and hasattr(sharding, "axis_names"):
        mesh = {str(a): int(s) for a, s in zip(sharding.axis_names, np.asarray(sharding.shape).tolist())}
        spec = tuple(sharding.partition_spec)
    return ArrayInfo(tuple(int(d) for d in meta.shape), np.dtype(meta.dtype), mesh, spec)


class CheckpointReader:
    """The config, vocab and lazily read arrays of one step of a workdir."""

    def __init__(self, workdir, step: int | None = None):
        self.workdir = epath.Path(workdir)
        if not self.workdir.exists():
            raise CheckpointError(f"workdir {self.workdir} does not exist")
        if not (self.workdir / "config.json").exists():
            raise CheckpointError(f"{self.workdir} is not a workdir: config.json is missing")
        self.steps = checkpoint_steps(self.workdir)
        if not self.steps:
            raise CheckpointError(f"workdir {self.workdir} has no checkpoints (expected {self.workdir / 'checkpoints'}/<step>/state); train it first")
        if step is not None and step not in self.steps:
            raise CheckpointError(f"workdir {self.workdir} has no checkpoint for step {step}; saved steps: {', '.join(map(str, self.steps))}")
        self.step = self.steps[-1] if step is None else int(step)
        self.state_dir = self.workdir / "checkpoints" / str(self.step) / "state"
        self.config: Config = load_json(self.workdir / "config.json")
        vocab_path = self.workdir / "vocab.json"
        try:
            self.vocab = Vocab.load(vocab_path) if vocab_path.exists() else None
        except (ValueError, KeyError, TypeError) as err:  # bad JSON, or JSON that is no vocabulary
            raise CheckpointError(f"{vocab_path}: not a readable vocabulary ({type(err).__name__}: {err})") from None
        self._tree = None
        self._stores: dict = {}
        self._block = None  # (key, first index, array): the storage chunk row last read

    # -- metadata -----------------------------------------------------------
    @property
    def tree(self) -> dict:
        """The whole saved state as a nested dict of ArrayInfo (params, opt_state, step, …)."""
        if self._tree is None:
            import jax
            import orbax.checkpoint as ocp

            from mmntp_jax.errors import describe, library_failure

            try:
                item = ocp.PyTreeCheckpointer().metadata(self.state_dir).item_metadata
            except Exception as err:
                if library_failure(err) is None:
                    raise
                raise CheckpointError(f"cannot read checkpoint metadata in {self.state_dir}: {describe(library_failure(err)[1])}") from err
            if item is None:  # orbax logs why and returns nothing when state/_METADATA is missing or damaged
                raise CheckpointError(f"cannot read checkpoint metadata in {self.state_dir}: orbax finds no readable metadata (state/_METADATA or the array index missing or damaged)")
            meta = item.tree
            is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
            self._tree = jax.tree.map(_array_info, meta, is_leaf=is_leaf)
        return self._tree

    def params_info(self) -> dict[str, ArrayInfo]:
        if "params" not in self.tree:
            raise CheckpointError(f"checkpoint {self.state_dir} holds no 'params' (keys: {', '.join(self.tree)})")
        return flatten(self.tree["params"])

    def checked_params_info(self) -> dict[str, ArrayInfo]:
        """params_info, after checking every array against the shapes config.json implies."""
        import jax

        from mmntp_jax.model.init import init_params

        info = self.params_info()
        abstract = flatten(jax.eval_shape(lambda: init_params(self.config.model, jax.random.key(0))))
        for name in sorted(set(abstract) | set(info)):
            want = tuple(abstract[name].shape) if name in abstract else "nothing"
            got = info[name].shape if name in info else "nothing"
            if want != got:
                raise CheckpointError(f"{self.state_dir}: parameter {name} has shape {got}, config.json implies {want}")
        return info

    def mesh(self) -> dict[str, int] | None:
        """Axis sizes of the mesh the parameters were written from ({} one device, None unrecorded)."""
        meshes = [info.mesh for info in self.params_info().values() if info.mesh is not None]
        return max(meshes, key=len) if meshes else None

    # -- data ---------------------------------------------------------------
    def _store(self, name: str, key: str):
        import tensorstore as ts

        if key in self._stores:
            return self._stores[key]
        base = str(self.state_dir)
        base = base if "://" in base else "file://" + base
        if (self.state_dir / "manifest.ocdbt").exists():
            kvstore = {"driver": "ocdbt", "base": base.rstrip("/") + "/", "path": key}
        else:
            kvstore = base.rstrip("/") + "/" + key
        errors = []
        for driver in ("zarr", "zarr3"):
            try:
                store = ts.open({"driver": driver, "kvstore": kvstore}, open=True, read=True).result()
                break
            except Exception as err:  # wrong driver or missing array
                errors.append(f"{driver}: {err}")
        else:
            raise CheckpointError(f"cannot open array {name} in {self.state_dir}: {'; '.join(errors)}")
        self._stores[key] = store
        return store

    def read(self, name: str, index: int | None = None, *, prefix: str = "params") -> np.ndarray:
        """Parameter `name` (e.g. 'layers.mlp.up_proj'), or only `[index]` of its leading axis.

        A storage chunk is decompressed whole, so when a chunk spans several
        indices the chunk row holding `index` is read once and kept until a
        read falls outside it: reading index after index costs one pass and
        holds at most one chunk row.
        """
        key = f"{prefix}.{name}" if prefix else name
        store = self._store(name, key)
        if index is None:
            return np.asarray(store.read().result())
        rows = int(store.chunk_layout.read_chunk.shape[0] or 1)
        if rows <= 1:
            return np.asarray(store[index].read().result())
        start = index // rows * rows
        if self._block is None or self._block[:2] != (key, start):
            self._block = None
            self._block = (key, start, np.asarray(store[start : start + rows].read().result()))
        return self._block[2][index - start]

    def read_params(self, dtype=None) -> dict:
        """All parameters as a nested dict of numpy arrays (optionally cast)."""
        flat = {name: self.read(name) for name in self.params_info()}
        if dtype is not None:
            flat = {k: v.astype(dtype) for k, v in flat.items()}
        return unflatten(flat)

    def provenance(self) -> dict:
        path = self.workdir / "provenance.json"
        return json.loads(path.read_text()) if path.exists() else {}


def open_for_output(workdir, step: int | None, out, force: bool) -> CheckpointReader:
    """The reader of `workdir` at `step` for a tool writing `out`: the output folder is checked
    first (nothing is read or written when it is not empty), and vocab.json must be present."""
    from mmntp_jax.export.staging import check_output

    check_output(out, force)
    reader = CheckpointReader(workdir, step)
    if reader.vocab is None:
        raise CheckpointError(f"{reader.workdir} has no vocab.json; the output needs the vocabulary layout")
    reader.vocab.check_model_vocab(reader.config.model.vocab_size)
    return reader
