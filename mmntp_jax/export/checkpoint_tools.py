"""`mmntp checkpoint inspect` and `consolidate`, and params-only workdirs.

A params-only workdir has the layout of a training workdir (config.json,
vocab.json, provenance.json, checkpoints/<step>/state) but its state holds only
`{"params": …}`: no optimizer state, no data iterator. `mm.load`, `mmntp
sample`, `mmntp eval` and the exports read it like any workdir, and training
started in a workdir whose only checkpoint is step 0 takes those parameters as
its initial ones (that is how `mmntp import hf` seeds continued pretraining).

`consolidate` writes such a workdir from any checkpoint: parameters only, in
the dtype asked for, gathered onto one device whatever mesh wrote them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mmntp_jax.config import save_json
from mmntp_jax.export.reader import CheckpointReader, open_for_output, unflatten
from mmntp_jax.export.staging import staged_output

CONSOLIDATE_DTYPES = ("float32", "bfloat16")


def write_params_workdir(folder, config, vocab, params, step: int, provenance_extra: dict | None = None) -> None:
    """Writes a params-only workdir into `folder` (which must exist and be empty)."""
    import jax
    import orbax.checkpoint as ocp

    from mmntp_jax.train.metrics import provenance

    from mmntp_jax.paths import resolve_config_paths

    folder = Path(folder)
    save_json(folder / "config.json", resolve_config_paths(config))  # paths outside the folder stored absolute
    (folder / "vocab.json").write_text(vocab.to_json())
    (folder / "provenance.json").write_text(json.dumps(provenance(provenance_extra), indent=2))
    device = jax.devices()[0]
    arrays = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else jax.device_put(np.asarray(x), device), params)
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    manager = ocp.CheckpointManager(folder / "checkpoints", options=options, item_handlers={"state": ocp.StandardCheckpointHandler()})
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": arrays})), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()


def copy_workdir_tokenizers(workdir, folder) -> None:
    source = Path(str(workdir)) / "tokenizers"
    if source.is_dir():
        shutil.copytree(source, Path(folder) / "tokenizers")


def _tree_rows(tree) -> list[dict]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "nbytes") and hasattr(x, "shape"))[0]
    rows = []
    for path, info in leaves:
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        spec = None if info.partition_spec is None else [None if s is None else (list(s) if isinstance(s, tuple) else s) for s in info.partition_spec]
        rows.append({"name": name, "shape": list(info.shape), "dtype": str(info.dtype), "bytes": info.nbytes, "partition_spec": spec})
    return rows


def _disk_bytes(path) -> int:
    return sum(p.stat().st_size for p in Path(str(path)).rglob("*") if p.is_file())


def inspect(workdir, step: int | None = None) -> dict:
    """Steps, the chosen step's arrays (shape, dtype, bytes, partition spec) and the mesh that wrote them."""
    reader = CheckpointReader(workdir, step)
    rows = _tree_rows(reader.tree)
    params = [r for r in rows if r["name"].startswith("params.")]
    opt = [r for r in rows if r["name"].startswith("opt_state.")]
    other = [r for r in rows if r not in params and r not in opt]
    provenance = reader.provenance()
    steps_dir = reader.workdir / "checkpoints"
    return {
        "workdir": str(reader.workdir),
        "steps": [{"step": s, "disk_bytes": _disk_bytes(steps_dir / str(s))} for s in reader.steps],
        "step": reader.step,
        "mesh": reader.mesh(),
        "devices": provenance.get("devices"),
        "source": provenance.get("consolidated_from") or provenance.get("imported_from"),
        "params": {"count": int(sum(np.prod(r["shape"], dtype=np.int64) for r in params)), "bytes": sum(r["bytes"] for r in params), "arrays": params},
        "opt_state": {"arrays": len(opt), "bytes": sum(r["bytes"] for r in opt)},
        "other": other,
    }


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_inspect(report: dict) -> str:
    mesh = report["mesh"]
    mesh_text = "mesh " + " × ".join(f"{k}={v}" for k, v in mesh.items()) if mesh else ("one device" if mesh == {} else "an unrecorded mesh")
    lines = [
        f"workdir {report['workdir']}",
        "steps   " + ", ".join(f"{s['step']} ({_human(s['disk_bytes'])})" for s in report["steps"]),
        f"step    {report['step']}, written from {mesh_text}" + (f"; from {report['source']}" if report.get("source") else ""),
        f"params  {report['params']['count']:,} values, {_human(report['params']['bytes'])}; "
        f"optimizer state {report['opt_state']['arrays']} arrays, {_human(report['opt_state']['bytes'])}",
        "",
    ]
    rows = report["params"]["arrays"] + report["other"]
    width = max(len(r["name"]) for r in rows) if rows else 4
    lines.append(f"{'name':<{width}}  {'shape':<20} {'dtype':<9} {'size':>10}  sharding")
    for r in rows:
        shape = "[" + ", ".join(map(str, r["shape"])) + "]"
        spec = "-" if r["partition_spec"] is None else str(tuple(r["partition_spec"]))
        lines.append(f"{r['name']:<{width}}  {shape:<20} {r['dtype']:<9} {_human(r['bytes']):>10}  {spec}")
    return "\n".join(lines)


def consolidate(workdir, out, *, step: int | None = None, dtype: str | None = None, force: bool = False) -> dict:
    """Params of checkpoint `step` (latest if None), cast to `dtype` (None: as saved), as a params-only workdir."""
    import ml_dtypes

    if dtype is not None and dtype not in CONSOLIDATE_DTYPES:
        raise ValueError(f"--dtype {dtype!r}: expected one of {', '.join(CONSOLIDATE_DTYPES)}")
    reader = open_for_output(workdir, step, out, force)
    info = reader.checked_params_info()
    target = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}.get(dtype)
    flat = {}
    for name in info:
        array = reader.read(name)
        flat[name] = array.astype(target) if target is not None else array
    extra = {"consolidated_from": {"workdir": str(reader.workdir), "step": reader.step, "mesh": reader.mesh()}, "dtype": dtype or "as saved"}
    with staged_output(out, force) as stage:
        write_params_workdir(stage, reader.config, reader.vocab, unflatten(flat), reader.step, extra)
        copy_workdir_tokenizers(reader.workdir, stage)
    total = sum(a.nbytes for a in flat.values())
    return {"out": str(out), "step": reader.step, "dtype": dtype or "as saved", "arrays": len(flat), "bytes": int(total), "source_mesh": reader.mesh()}
