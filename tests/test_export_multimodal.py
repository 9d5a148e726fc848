"""Images generated from a Hugging Face export in transformers, checked against our JAX sampler and decoder.

The workdir is laid out as the captioned job leaves it (byte text, the job's
image tokenizer architecture: 32×32 → 64 FSQ codes of 1000) with random
weights. References: `generation.sample.generate` (greedy ids under the block
grammar), `BlockRules.allowed` / `advance` (the grammar), the tokenizer's own
`decode` (pixels). The lines under "Generating images from transformers" in
docs/export.md are read from the file and run as they stand.
"""

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

torch = pytest.importorskip("torch")  # the [hf] extra
import transformers  # noqa: E402
from export_workdirs import TINY, random_params, random_workdir  # noqa: E402

from mmntp_jax import cli  # noqa: E402
from mmntp_jax.api import load  # noqa: E402
from mmntp_jax.config import Config, ModelConfig, repo_experiment  # noqa: E402
from mmntp_jax.data.vocab import Vocab  # noqa: E402
from mmntp_jax.export import bundle, hf_generation, hf_image_decoder  # noqa: E402
from mmntp_jax.export.checkpoint_tools import write_params_workdir  # noqa: E402
from mmntp_jax.export.hf import export_hf  # noqa: E402
from mmntp_jax.generation.sample import generate  # noqa: E402
from mmntp_jax.job.captioned import DEFAULT_TOKENIZER_EXPERIMENT  # noqa: E402
from mmntp_jax.model.block_rules import BlockRules  # noqa: E402
from mmntp_jax.tokenizers import experiment  # noqa: E402
from mmntp_jax.tokenizers.bottleneck import QuantizerConfig  # noqa: E402
from mmntp_jax.tokenizers.image import ImageTokenizerConfig  # noqa: E402
from mmntp_jax.tokenizers.io import load_tokenizer, save_tokenizer  # noqa: E402
from mmntp_jax.tokenizers.registry import Tokenizer, build_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a big blue square", "a small red circle at the centre on a green and light green striped background", "a star"]


def bundled(folder, name):
    """A bundled file of an export folder, imported from there under a name of its own."""
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(str(folder)))}", Path(folder) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_image_tokenizer(folder, config, seed=0):
    """An image tokenizer of random weights (every norm and bias off its init), saved to `folder`;
    returned with those weights. Shapes come from `nnx.eval_shape`, so nothing is initialised."""
    tokenizer = Tokenizer("image", config, nnx.eval_shape(lambda: build_module("image", config, seed)))
    rng = np.random.default_rng(seed)
    draw = lambda s: rng.standard_normal(s.shape) / np.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1.0 + 0.1 * rng.standard_normal(s.shape)  # noqa: E731
    tokenizer.params = jax.tree.map(lambda s: draw(s).astype(s.dtype), tokenizer.params)
    save_tokenizer(tokenizer, folder, tokenizer.params)
    return tokenizer


def multimodal_workdir(path, tokenizer_config):
    """Byte text + the tokenizer's image codes, a tiny random backbone with decisive logits."""
    tokenizer = save_image_tokenizer(path / "tokenizers" / "image", tokenizer_config, seed=1)
    vocab = Vocab.for_tokenizers(256, {"image": tokenizer})
    cfg = ModelConfig(**{**TINY, "vocab_size": vocab.size, "max_seq_len": 256})
    params = random_params(cfg, seed=3)
    params["lm_head"] = params["lm_head"] * 8.0
    write_params_workdir(path, Config(model=cfg), vocab, params, 0)
    return path


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    root = tmp_path_factory.mktemp("captioned")
    job_tokenizer = experiment.load(repo_experiment(DEFAULT_TOKENIZER_EXPERIMENT)).model
    workdir = multimodal_workdir(root / "wd", job_tokenizer)
    export_hf(workdir, root / "hf")
    model = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    return load(workdir), root / "hf", model, transformers.AutoTokenizer.from_pretrained(root / "hf")


def jax_drawings(run, captions):
    return generate(run, [[{"type": "text", "text": c}, {"type": "image"}] for c in captions])


def documented_lines() -> str:
    text = (ROOT / "docs" / "export.md").read_text()
    section = text.split("## Generating images from transformers", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_lines_draw_what_our_sampler_draws(captioned, tmp_path, monkeypatch):
    run, folder, _, _ = captioned
    code = documented_lines()
    assert 'folder = "exports/captioned"' in code
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    scope = {}
    try:
        exec(code.replace('folder = "exports/captioned"', f"folder = {str(folder)!r}"), scope)
    finally:
        for name in ("mmntp_generation", "mmntp_image_decoder"):
            sys.modules.pop(name, None)
    captions, codes, images, ids, out = (scope[k] for k in ("captions", "codes", "images", "ids", "out"))
    assert len(captions) >= 2 and len({len(c) for c in captions}) == len(captions) and (ids[:, 0] == 0).any()  # left padded
    start, eoi, n = run.vocab.offset("image"), run.vocab.markers("image")[1], run.media.block_length("image")
    new = out[:, ids.shape[1]:].numpy()
    assert new.shape == (len(captions), n + 1) and (new[:, -1] == eoi).all()
    assert ((new[:, :-1] >= start) & (new[:, :-1] < start + run.vocab.range_size("image"))).all()
    for i, result in enumerate(jax_drawings(run, captions)):
        np.testing.assert_array_equal(new[i], result["ids"])
        np.testing.assert_array_equal(codes[i], result["ids"][:-1] - start)
        np.testing.assert_allclose(images[i], result["image"], atol=1e-4, rtol=0)
        assert np.asarray(Image.open(tmp_path / f"drawn_{i}.png")).tolist() == np.round(images[i] * 255).astype(np.uint8).tolist()


def test_generate_image_on_a_batch_matches_our_sampler(captioned):
    run, folder, model, tokenizer = captioned
    mg = bundled(folder, "mmntp_generation")
    codes, images = mg.generate_image(model, tokenizer, CAPTIONS)
    n, k = run.media.block_length("image"), run.vocab.range_size("image")
    assert codes.shape == (len(CAPTIONS), n) and codes.min() >= 0 and codes.max() < k
    ours = jax_drawings(run, CAPTIONS)
    np.testing.assert_array_equal(codes, np.stack([r["ids"][:-1] for r in ours]) - run.vocab.offset("image"))
    np.testing.assert_allclose(images, np.stack([r["image"] for r in ours]), atol=1e-4, rtol=0)
    size = run.media.image_size()
    assert images.shape == (len(CAPTIONS), size, size, 3) and images.dtype == np.float32


DECODER_CONFIGS = {
    "vq_attention_patch1": ImageTokenizerConfig(image_size=16, factor=4, patch=1, channels=16, channel_mult=(1, 2, 2), attention=True, z_channels=8,
                                                norm_groups=4, quantizer=QuantizerConfig(kind="vq", codebook_size=64, dim=6)),
    "bsq": ImageTokenizerConfig(image_size=16, factor=4, patch=2, channels=8, channel_mult=(1, 2), attention=False, z_channels=8, norm_groups=4,
                                quantizer=QuantizerConfig(kind="bsq", codebook_size=32)),
    "lfq_grey": ImageTokenizerConfig(image_size=8, in_channels=1, factor=2, patch=2, channels=8, channel_mult=(1,), num_res_blocks=2, z_channels=4,
                                     norm_groups=2, quantizer=QuantizerConfig(kind="lfq", codebook_size=16)),
}


@pytest.mark.parametrize("name", ["captioned_fsq", *DECODER_CONFIGS])
def test_torch_decoder_equals_ours(name, captioned, tmp_path):
    export = folder = captioned[1]
    if name == "captioned_fsq":
        ours = load_tokenizer(folder / "tokenizers" / "image")
    else:
        ours = save_image_tokenizer(tmp_path / "tokenizers" / "image", DECODER_CONFIGS[name], seed=2)
        folder = tmp_path
    theirs = bundled(export, "mmntp_image_decoder").load_image_decoder(folder)
    codes = np.random.default_rng(0).integers(0, ours.vocab_size, (3, ours.tokens_per_item()))
    expected = np.asarray(ours.decode(ours.params, jnp.asarray(codes, jnp.int32)))
    np.testing.assert_allclose(theirs(codes), expected, atol=1e-4, rtol=0)
    assert theirs(codes[0]).shape == (1, *expected.shape[1:])


def pick(allowed_V, rules, rng):
    """A random allowed id; block openers (and now and then <eos>) more often than their share."""
    ids = np.flatnonzero(allowed_V)
    openers, eos = np.intersect1d(ids, rules.begin_ids), np.intersect1d(ids, [rules.eos_id])
    draw = rng.random()
    if openers.size and draw < 0.3:
        return rng.choice(openers)
    return rng.choice(eos) if eos.size and draw > 0.97 else rng.choice(ids)


def walk_and_compare(processor, rules, vocab_size, rng, rows=5, steps=40):
    """Random walks under BlockRules from left-padded prompts of different lengths: at every
    step the processor's support equals BlockRules.allowed of the state `advance` reached
    (after <eos>: <pad> only, as the sampler does)."""
    seqs = [[1, *rng.integers(16, 16 + 256, rng.integers(0, 6)).tolist()] for _ in range(rows)]
    block, filled = (jnp.asarray(x) for x in rules.state_after([np.asarray(s) for s in seqs]))
    ended = np.zeros(rows, bool)
    for _ in range(steps):
        width = max(map(len, seqs))
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
        expected = np.asarray(rules.allowed(block, filled, vocab_size))
        expected = np.where(ended[:, None], np.arange(vocab_size) == 0, expected)
        np.testing.assert_array_equal(processor.allowed(ids, vocab_size).numpy(), expected)
        assert torch.equal(torch.isfinite(processor(ids, torch.zeros(rows, vocab_size))), torch.as_tensor(expected))
        token = np.array([pick(row, rules, rng) for row in expected], np.int32)
        block, filled = rules.advance(block, filled, jnp.asarray(token))
        ended |= token == rules.eos_id
        seqs = [s + [int(t)] for s, t in zip(seqs, token)]


LEVELED = Vocab.build(text=256, image=16, audio=8, video=4, levels={"image": (3, "per_level"), "audio": (2, "interleaved")})


@pytest.mark.parametrize("vocab, lengths, extra_rows", [
    (Vocab.build(text=256, image=1000), {"image": 64}, 0),
    (LEVELED, {"image": 6, "audio": 4}, 7),  # video has a range but no tokenizer: it is never opened
    (Vocab.build(text=256), {}, 0),
])
def test_processor_equals_block_rules_on_random_walks(vocab, lengths, extra_rows):
    processor = hf_generation.BlockRulesProcessor(json.loads(vocab.to_json()), lengths)
    rules = BlockRules.from_vocab(vocab, lengths)
    walk_and_compare(processor, rules, vocab.size + extra_rows, np.random.default_rng(len(lengths)), steps=140 if lengths.get("image") == 64 else 40)


def test_the_export_reads_block_lengths_as_our_run_does(captioned):
    run, folder, _, _ = captioned
    mg = bundled(folder, "mmntp_generation")
    assert mg.block_lengths(folder, mg.read_layout(folder)) == run.media.block_lengths()
    readme = (folder / "README.md").read_text()
    assert "mmntp_generation.py" in readme and "decoded in torch by `mmntp_image_decoder" in readme


def test_bundled_files_need_neither_jax_nor_mmntp_jax(captioned):
    allowed = {"__future__", "importlib", "json", "math", "pathlib", "struct", "zlib", "numpy", "torch", "transformers", "safetensors"}
    for name in bundle.GENERATION_FILES.values():
        tree = ast.parse((captioned[1] / name).read_text())
        roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        roots |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert roots <= allowed, (name, roots - allowed)


def test_bad_input_is_one_clear_line(captioned, tmp_path):
    run, folder, model, tokenizer = captioned
    mg, mdec = bundled(folder, "mmntp_generation"), bundled(folder, "mmntp_image_decoder")
    checks = [
        (lambda: mg.BlockRulesProcessor.from_folder(tmp_path), FileNotFoundError, "mmntp_vocab.json is missing"),
        (lambda: mdec.load_image_decoder(folder, "audio"), ValueError, "decoding audio codes is not bundled"),
        (lambda: mdec.load_image_decoder(tmp_path), FileNotFoundError, "carries no image tokenizer"),
        (lambda: mg.BlockRulesProcessor.from_folder(folder).block_length("audio"), ValueError, "cannot generate audio"),
        (lambda: mg.media_prompts(tokenizer, "x", mg.read_layout(folder), "audio"), ValueError, "no audio range"),
        (lambda: mg.block_codes(torch.tensor([[300, 301]]), mg.read_layout(folder)), ValueError, "closed by <eoi>"),
    ]
    lonely = tmp_path / "copied_alone"
    lonely.mkdir()
    (lonely / "mmntp_generation.py").write_text((folder / "mmntp_generation.py").read_text())
    checks.append((lambda: bundled(lonely, "mmntp_generation").generate_image(model, tokenizer, "x", folder), FileNotFoundError, "mmntp_image_decoder.py is missing"))
    for call, kind, words in checks:
        with pytest.raises(kind, match=re.escape(words)) as err:
            call()
        assert "\n" not in str(err.value)


def test_undecodable_tokenizers_are_named_in_readme_and_at_load(tmp_path):
    msvq = ImageTokenizerConfig(image_size=16, factor=4, patch=2, channels=8, channel_mult=(1, 2), attention=False, z_channels=8, norm_groups=4,
                                quantizer=QuantizerConfig(kind="msvq", codebook_size=32, dim=4))
    workdir = multimodal_workdir(tmp_path / "wd", msvq)
    export_hf(workdir, tmp_path / "hf")
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert "`tokenizers/image/` (image, msvq): decoding is not bundled for this tokenizer kind" in readme
    with pytest.raises(ValueError, match=r"decoding is not bundled for this tokenizer \(kind image, quantizer msvq") as err:
        bundled(tmp_path / "hf", "mmntp_image_decoder").load_image_decoder(tmp_path / "hf")
    assert "\n" not in str(err.value)
    assert hf_image_decoder.DECODABLE == bundle.DECODABLE


@pytest.mark.parametrize("mask", ["prefix", "block"])
def test_bidirectional_masks_are_refused_with_the_reason(mask, tmp_path, capsys):
    workdir, _ = random_workdir(tmp_path / "wd", ModelConfig(**{**TINY, "attention_mask": mask}))
    assert cli.main(["export", "hf", "--workdir", str(workdir), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"model.attention_mask='{mask}' cannot be exported" in err
    assert "attends causally" in err and "different logits" in err and not (tmp_path / "hf").exists()
