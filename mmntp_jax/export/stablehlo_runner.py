"""Runs an mmntp_jax StableHLO export with nothing but jax and numpy.

Dimensions: B batch, T new tokens, S cache length, V vocab, L layers,
K kv heads, E head dim.

This file is copied into every `mmntp export stablehlo` folder as
`run_stablehlo.py` and imports nothing from mmntp_jax. The folder holds
`forward.jax_export` and `decode_step.jax_export` (`jax.export` serialisations,
StableHLO inside, batch and lengths symbolic), `params.safetensors` (the
parameters, names joined by "."), and `manifest.json`.

    forward(params, ids_BT) → logits_BTV float32
    decode_step(params, ids_BT, positions_BT, segment_ids_BT, cache, index)
        → (logits_BTV, cache): runs T tokens written at cache slot `index`
    cache = {"k", "v": [L, B, S, K, E] zeros, "segment_ids": [L, B, S] −1, "groups": [L, B, S] 0}

Command line: `python run_stablehlo.py FOLDER --prompt 1,16,100 --new 8`
prints the greedy continuation's ids.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64", "I32": "int32", "U8": "uint8", "BOOL": "bool"}


def read_safetensors(path) -> dict:
    """{name: array} from a safetensors file (bfloat16 through ml_dtypes, which jax installs)."""
    import ml_dtypes

    raw = Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        code = SAFETENSORS_DTYPES[info["dtype"]]
        dtype = np.dtype(ml_dtypes.bfloat16) if code == "bfloat16" else np.dtype(code)
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(raw, dtype, count=(end - begin) // dtype.itemsize, offset=8 + n + begin).reshape(info["shape"])
    return out


def unflatten(flat: dict) -> dict:
    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


class ExportedModel:
    """The two exported functions with their parameters bound."""

    def __init__(self, folder):
        import jax

        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        self._forward = jax.export.deserialize(bytearray((self.folder / "forward.jax_export").read_bytes()))
        self._decode = jax.export.deserialize(bytearray((self.folder / "decode_step.jax_export").read_bytes()))
        self.params = jax.tree.map(jax.numpy.asarray, unflatten(read_safetensors(self.folder / "params.safetensors")))

    def forward(self, ids_BT):
        return self._forward.call(self.params, np.asarray(ids_BT, np.int32))

    def init_cache(self, batch: int, length: int) -> dict:
        c = self.manifest["cache"]
        shape = (c["layers"], batch, length, c["kv_heads"], c["head_dim"])
        import jax.numpy as jnp

        dtype = jnp.dtype(c["dtype"])
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "segment_ids": jnp.full(shape[:3], -1, jnp.int32),
                "groups": jnp.zeros(shape[:3], jnp.int32)}

    def decode_step(self, ids_BT, positions_BT, segment_ids_BT, cache, index: int):
        as_i32 = lambda x: np.asarray(x, np.int32)
        return self._decode.call(self.params, as_i32(ids_BT), as_i32(positions_BT), as_i32(segment_ids_BT), cache, np.int32(index))

    def greedy(self, prompt, new_tokens: int) -> list[int]:
        """Greedy continuation of one prompt: prefill with decode_step, then one token per step."""
        ids = np.asarray(prompt, np.int32)[None]
        p = ids.shape[1]
        cache = self.init_cache(1, p + new_tokens)
        logits, cache = self.decode_step(ids, np.arange(p)[None], np.ones_like(ids), cache, 0)
        out = [int(np.argmax(logits[0, -1]))]
        for i in range(1, new_tokens):
            token = np.asarray([[out[-1]]], np.int32)
            logits, cache = self.decode_step(token, [[p + i - 1]], [[1]], cache, p + i - 1)
            out.append(int(np.argmax(logits[0, -1])))
        return out


def load(folder) -> ExportedModel:
    return ExportedModel(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Greedy decoding with an mmntp_jax StableHLO export (jax + numpy only).")
    parser.add_argument("folder", nargs="?", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--prompt", default="1", help="comma-separated token ids (default: <bos>)")
    parser.add_argument("--new", type=int, default=16, help="tokens to generate")
    args = parser.parse_args(argv)
    model = load(args.folder)
    print(json.dumps({"prompt": [int(x) for x in args.prompt.split(",")], "generated": model.greedy([int(x) for x in args.prompt.split(",")], args.new)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
