"""StableHLO export: reloaded in a separate process with only jax and numpy, it matches the live model."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from export_workdirs import TINY, random_workdir

from mmntp_jax.config import ModelConfig
from mmntp_jax.export.stablehlo import export_stablehlo, model_functions

# Run inside the export folder by a fresh interpreter that cannot import mmntp_jax
# (PYTHONPATH is dropped; the check below also covers an installed package).
RELOAD = """
import json, sys
import numpy as np
import run_stablehlo as r
m = r.load(".")
out = {}
for b in (1, 3):
    ids = np.random.default_rng(b).integers(0, 272, (b, 17)).astype(np.int32)
    out[f"ids{b}"], out[f"forward{b}"] = ids, np.asarray(m.forward(ids))
ids = out["ids3"]
cache = m.init_cache(3, 20)
logits, cache = m.decode_step(ids[:, :15], np.tile(np.arange(15), (3, 1)), np.ones((3, 15)), cache, 0)
steps = [np.asarray(logits)]
for i in (15, 16):
    logits, cache = m.decode_step(ids[:, i:i + 1], np.full((3, 1), i), np.ones((3, 1)), cache, i)
    steps.append(np.asarray(logits))
out["decode"] = np.concatenate(steps, axis=1)
out["cache_k"] = np.asarray(cache["k"])
assert not any(name.startswith("mmntp_jax") for name in sys.modules), "the runner imported mmntp_jax"
np.savez(sys.argv[1], **out)
print(json.dumps(m.greedy([1, 40, 50], 4)))
"""


def run_cli(argv) -> str:
    import contextlib
    import io

    from mmntp_jax.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("shlo")
    cfg = ModelConfig(**{**TINY, "qk_norm": True})
    workdir, params = random_workdir(root / "wd", cfg, seed=4)
    argv = ["export", "stablehlo", "--workdir", str(workdir), "--out", str(root / "out"), "--platforms", "cpu", "--json"]
    summary = json.loads(run_cli(argv))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", RELOAD, str(root / "reloaded.npz")], cwd=root / "out", env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return cfg, params, summary, dict(np.load(root / "reloaded.npz")), json.loads(result.stdout.strip().splitlines()[-1]), root


def test_folder_contents(exported):
    _, _, summary, _, _, root = exported
    names = {p.name for p in (root / "out").iterdir()}
    assert {"forward.jax_export", "decode_step.jax_export", "forward.mlir", "decode_step.mlir", "params.safetensors", "manifest.json", "run_stablehlo.py", "mmntp_vocab.json"} <= names
    assert "stablehlo." in (root / "out" / "forward.mlir").read_text()
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    assert manifest["cache"]["layers"] == 2 and manifest["platforms"] == ["cpu"] and summary["step"] == 0


def test_reloaded_forward_matches_live_for_two_batch_sizes(exported):
    cfg, params, _, got, _, _ = exported
    forward, _ = model_functions(cfg)
    for b in (1, 3):
        np.testing.assert_allclose(got[f"forward{b}"], np.asarray(jax.jit(forward)(params, got[f"ids{b}"])), atol=1e-5, rtol=0)


def test_reloaded_decode_steps_match_live_forward_and_cache(exported):
    cfg, params, _, got, _, _ = exported
    forward, decode_step = model_functions(cfg)
    ids = got["ids3"]
    reference = np.asarray(jax.jit(forward)(params, ids))
    np.testing.assert_allclose(got["decode"], reference, atol=1e-4, rtol=0)  # cached decode == full forward
    from mmntp_jax.model.init import bind, graphdef

    cache = bind(graphdef(cfg), params).init_cache(3, 20)
    step = jax.jit(decode_step)
    _, cache = step(params, ids[:, :15], jnp.tile(jnp.arange(15), (3, 1)), jnp.ones((3, 15), jnp.int32), cache, 0)
    for i in (15, 16):
        _, cache = step(params, ids[:, i : i + 1], jnp.full((3, 1), i), jnp.ones((3, 1), jnp.int32), cache, i)
    np.testing.assert_allclose(got["cache_k"], np.asarray(cache["k"]), atol=1e-5, rtol=0)


def test_runner_greedy_matches_generate(exported):
    cfg, params, _, _, greedy, _ = exported
    from mmntp_jax.model.generate import generate_ids
    from mmntp_jax.model.init import graphdef

    prompt = jnp.asarray([[1, 40, 50]], jnp.int32)
    ours = generate_ids(graphdef(cfg), params, prompt, jnp.ones_like(prompt), jnp.arange(3)[None], jax.random.key(0), max_new_tokens=4)
    assert greedy == np.asarray(ours)[0].tolist()


def test_bad_platform_is_rejected(tmp_path):
    workdir, _ = random_workdir(tmp_path / "wd")
    with pytest.raises(ValueError, match="--platforms"):
        export_stablehlo(workdir, tmp_path / "out", platforms=("metal",))
    assert not (tmp_path / "out").exists()
