"""`mmntp export stablehlo`: the forward pass and a KV-cache decode step via `jax.export`.

Dimensions: B batch, T tokens, S cache length, V vocab, L layers, K kv heads,
E head dim. B, T and S are symbolic (S ≥ T), so one artefact serves every
batch size and length; parameters are inputs, not constants, so the
serialised programs stay small and the weights sit in `params.safetensors`.

Folder written:
    forward.jax_export, decode_step.jax_export   `Exported.serialize()` bytes
    forward.mlir, decode_step.mlir               the StableHLO modules as text
    params.safetensors                           parameters, names joined by "."
    manifest.json                                signatures, cache layout, dtypes
    mmntp_vocab.json                             the unified vocabulary
    run_stablehlo.py                             a loader needing only jax and numpy
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp

from mmntp_jax.export import safetensors_io
from mmntp_jax.export.hf import VOCAB_FILE, export_dtype
from mmntp_jax.export.reader import open_for_output, unflatten
from mmntp_jax.export.staging import staged_output

PLATFORMS = ("cpu", "cuda", "tpu")
RUNNER = Path(__file__).with_name("stablehlo_runner.py")


def model_functions(cfg):
    """(forward, decode_step) as pure functions of (params, …) for the backbone of `cfg`."""
    from mmntp_jax.model.heads import logits as head_logits
    from mmntp_jax.model.init import bind, graphdef

    graph = graphdef(cfg)

    def forward(params, ids_BT):
        model = bind(graph, params)
        return head_logits(model(ids_BT), model.head_kernel())

    def decode_step(params, ids_BT, positions_BT, segment_ids_BT, cache, index):
        model = bind(graph, params)
        hidden_BTD, cache = model.decode(ids_BT, positions_BT, segment_ids_BT, cache, index)
        return head_logits(hidden_BTD, model.head_kernel()), cache

    return forward, decode_step


def export_functions(cfg, params_spec, platforms=PLATFORMS):
    """(forward, decode_step) as `jax.export.Exported` with symbolic B, T, S."""
    from mmntp_jax.model.transformer import DTYPES

    forward, decode_step = model_functions(cfg)
    b, t = jax.export.symbolic_shape("B, T")
    exported_forward = jax.export.export(jax.jit(forward), platforms=platforms)(params_spec, jax.ShapeDtypeStruct((b, t), jnp.int32))
    b, t, s = jax.export.symbolic_shape("B, T, S", constraints=("S >= T",))
    cache_dtype = DTYPES[cfg.dtype]
    kv = jax.ShapeDtypeStruct((cfg.n_layers, b, s, cfg.n_kv_heads, cfg.resolved_head_dim), cache_dtype)
    ids_LBS = jax.ShapeDtypeStruct((cfg.n_layers, b, s), jnp.int32)
    cache = {"k": kv, "v": kv, "segment_ids": ids_LBS, "groups": ids_LBS}
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
    exported_decode = jax.export.export(jax.jit(decode_step), platforms=platforms)(
        params_spec, tokens, tokens, tokens, cache, jax.ShapeDtypeStruct((), jnp.int32)
    )
    return exported_forward, exported_decode


def manifest(cfg, vocab, step: int, dtype: str, platforms) -> dict:
    from mmntp_jax.model.transformer import DTYPES

    return {
        "format": "jax.export serialization (StableHLO), one file per function",
        "step": step,
        "param_dtype": dtype,
        "platforms": list(platforms),
        "vocab_size": cfg.vocab_size,
        "special_ids": {"pad": vocab.pad_id, "bos": vocab.bos_id, "eos": vocab.eos_id},
        "functions": {
            "forward": {"args": ["params", "ids int32 [B, T]"], "returns": "logits float32 [B, T, V]"},
            "decode_step": {
                "args": ["params", "ids int32 [B, T]", "positions int32 [B, T]", "segment_ids int32 [B, T] (0 = padding)", "cache", "index int32 []"],
                "returns": ["logits float32 [B, T, V]", "cache"],
                "note": "writes the T tokens at cache slots index … index+T-1; S ≥ T",
            },
        },
        "cache": {
            "layers": cfg.n_layers, "kv_heads": cfg.n_kv_heads, "head_dim": cfg.resolved_head_dim, "dtype": jnp.dtype(DTYPES[cfg.dtype]).name,
            "init": {"k": "zeros [L, B, S, K, E]", "v": "zeros [L, B, S, K, E]", "segment_ids": "-1 [L, B, S] int32",
                     "groups": "zeros [L, B, S] int32 (bidirectional group ids; the exported step decodes causally)"},
        },
    }


def export_stablehlo(workdir, out, *, step: int | None = None, dtype: str = "float32", platforms=PLATFORMS, force: bool = False) -> dict:
    """Writes the StableHLO folder for checkpoint `step` (latest if None) of `workdir`."""
    np_dtype = export_dtype(dtype)
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise ValueError(f"--platforms {','.join(platforms)}: expected a subset of {','.join(PLATFORMS)}")
    reader = open_for_output(workdir, step, out, force)
    cfg = reader.config.model
    if cfg.image_output != "discrete":
        raise ValueError(f"{workdir}: model.image_output={cfg.image_output!r} cannot be exported to StableHLO: the exported functions "
                         "return logits, and this model's image tokens come from its image_head's latents (export a discrete-output run)")
    if cfg.image_reader != "none":
        raise ValueError(f"{workdir}: model.image_reader={cfg.image_reader!r} cannot be exported to StableHLO: the exported functions take "
                         "token ids alone, without the loss mask that says which image blocks are context, so the reader would not run "
                         "(export a run trained with model.image_reader='none')")
    info = reader.checked_params_info()
    params_spec = unflatten({name: jax.ShapeDtypeStruct(a.shape, np_dtype) for name, a in info.items()})
    exported_forward, exported_decode = export_functions(cfg, params_spec, tuple(platforms))
    plans = [
        safetensors_io.TensorPlan(name, a.shape, np_dtype, (lambda name=name: reader.read(name).astype(np_dtype)))
        for name, a in info.items()
    ]
    with staged_output(out, force) as stage:
        safetensors_io.write_file(stage / "params.safetensors", plans, {"format": "mmntp_jax", "step": str(reader.step)})
        for name, exported in (("forward", exported_forward), ("decode_step", exported_decode)):
            (stage / f"{name}.jax_export").write_bytes(exported.serialize())
            (stage / f"{name}.mlir").write_text(exported.mlir_module())
        (stage / "manifest.json").write_text(json.dumps(manifest(cfg, reader.vocab, reader.step, dtype, platforms), indent=2))
        (stage / VOCAB_FILE).write_text(reader.vocab.to_json())
        shutil.copyfile(RUNNER, stage / "run_stablehlo.py")
    return {"out": str(out), "step": reader.step, "dtype": dtype, "platforms": list(platforms), "bytes": int(sum(p.nbytes for p in plans))}

