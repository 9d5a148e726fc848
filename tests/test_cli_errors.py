"""Every `mmntp` failure is one stderr line naming the path, key or entry, with README's exit code.

References: README's "Errors and exit codes" table (0, 1 = a bug's traceback,
2 = one line, 130 = interrupted); the files each case plants or damages; a
record of every file Python opens while `mmntp import hf` reads a hostile
model folder.
"""

import builtins
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from mmntp_jax import cli
from mmntp_jax.config import ModelConfig, load_config, to_json
from mmntp_jax.errors import library_failure
from mmntp_jax.export import commands as export_commands
from mmntp_jax.export import hf_layout
from mmntp_jax.export.reader import flatten
from mmntp_jax.export.safetensors_io import INDEX_NAME, SINGLE_NAME, TensorPlan, write_model
from mmntp_jax.model.init import init_params
from mmntp_jax.paths import inside

EXPERIMENT = Path(__file__).with_name("cli_tiny_experiment.py")
TINY_MODEL = ModelConfig(vocab_size=272, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=64)


def run(capsys, *argv):
    """(exit code, non-empty stderr lines) of `mmntp ARGV` run in this process."""
    code = cli.main([str(a) for a in argv])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def one_line(capsys, argv, *names, code=2) -> str:
    got, lines = run(capsys, *argv)
    assert got == code and len(lines) == 1, (got, lines)
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------
# Experiment files and the workdir's config

BAD_EXPERIMENTS = {
    "syntax": ("def get_config(:\n    pass\n", ["line 1", "SyntaxError", "def get_config(:"]),
    "import": ("import not_a_module_anywhere\n", ["line 1", "ModuleNotFoundError", "not_a_module_anywhere"]),
    "name": ("def get_config():\n    return undefined_name\n", ["line 2", "in get_config", "NameError", "undefined_name"]),
    "keyword": ("from mmntp_jax.config import Config, TrainConfig\n\n\ndef get_config():\n    return Config(train=TrainConfig(stepz=3))\n",
                ["line 5", "TypeError", "stepz"]),
    "module_body": ("raise RuntimeError('half-written experiment')\n", ["line 1", "RuntimeError: half-written experiment"]),
    "no_get_config": ("CONFIG = None\n", ["defines no get_config()", "returning a Config"]),
    "not_callable": ("get_config = 3\n", ["not a function"]),
    "wrong_type": ("def get_config():\n    return {'model': 1}\n", ["returned dict", "expected a Config"]),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPERIMENTS))
def test_a_broken_experiment_file_is_one_line_naming_it(case, tmp_path, capsys):
    source, names = BAD_EXPERIMENTS[case]
    path = tmp_path / f"exp_{case}.py"
    path.write_text(source)
    line = one_line(capsys, ["train", "--config", path, "--workdir", tmp_path / "run"], path, *names)
    assert line.startswith("mmntp train: error: config file ")


def test_a_damaged_config_json_is_one_line(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    one_line(capsys, ["train", "--config", bad, "--workdir", tmp_path / "run"], bad, "not valid JSON")


def test_a_failing_get_tokenizers_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "exp_tokenizers.py"
    path.write_text(EXPERIMENT.read_text() + "\n\ndef get_tokenizers():\n    return {'image': missing_tokenizer}\n")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"segments": [{"modality": "text", "text": "hello"}]}\n')
    line = one_line(capsys, ["data", "prepare", "--config", path, "--manifest", manifest, "--out", tmp_path / "data"],
                    path, "by get_tokenizers()", "NameError", "missing_tokenizer")
    assert line.startswith("mmntp data: error: config file ")


def test_a_damaged_vocab_json_is_one_line(params_workdir, tmp_path, capsys):
    workdir = copy_of(params_workdir, tmp_path)
    (workdir / "vocab.json").write_text('{"ranges": 3}')
    one_line(capsys, ["eval", "--workdir", workdir], workdir / "vocab.json", "not a vocabulary file")


def test_run_conflict_is_one_line(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(to_json(load_config(EXPERIMENT, ["model.d_model=64"])))
    one_line(capsys, ["train", "--config", EXPERIMENT, "--workdir", workdir], workdir, "model.d_model", "64 → 32")


# ----------------------------------------------------------------------------
# Checkpoints, shards and the storage libraries' errors


@pytest.fixture(scope="module")
def params_workdir(tmp_path_factory):
    from export_workdirs import random_workdir

    return random_workdir(tmp_path_factory.mktemp("ckpt") / "run", TINY_MODEL)[0]


def copy_of(workdir, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(workdir, tmp_path / "run"))


def scramble_arrays(workdir: Path) -> None:
    for path in (workdir / "checkpoints" / "0" / "state").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(b"\x00garbage" * 4)


def test_checkpoint_inspect_on_garbage_metadata(params_workdir, tmp_path, capsys):
    workdir = copy_of(params_workdir, tmp_path)
    state = workdir / "checkpoints" / "0" / "state"
    (state / "_METADATA").write_text("garbage")
    one_line(capsys, ["checkpoint", "inspect", "--workdir", workdir], state)


def test_eval_of_a_damaged_checkpoint(params_workdir, tmp_path, capsys):
    workdir = copy_of(params_workdir, tmp_path)
    scramble_arrays(workdir)
    one_line(capsys, ["eval", "--workdir", workdir, "--step", "0"], workdir / "checkpoints" / "0")
    code, lines = run(capsys, "eval", "--workdir", workdir)  # the newest readable one: each skipped is a one-line warning
    assert code == 2 and all(line.startswith("mmntp eval: ") for line in lines), lines
    errors = [line for line in lines if line.startswith("mmntp eval: error: ")]
    assert len(errors) == 1 and str(workdir / "checkpoints") in errors[0] and lines[-1] == errors[0]


def test_a_shard_folder_grain_cannot_read(tmp_path, capsys):
    from mmntp_jax.data.shards import write_documents
    from mmntp_jax.data.vocab import Vocab

    vocab = Vocab.build(text=256)
    docs = [{"tokens": np.arange(20, 60, dtype=np.int32), "modality": np.zeros(40, np.uint8), "loss": np.ones(40, np.uint8)}] * 4
    folder = tmp_path / "shards"
    write_documents(folder, docs, vocab, docs_per_shard=2)
    (folder / "shard-00000.array_record").write_bytes(b"not an array record")
    one_line(capsys, ["data", "inspect", folder], folder)


def test_a_shard_index_naming_a_file_outside_its_folder_is_refused(tmp_path, capsys):
    from mmntp_jax.data.shards import write_documents
    from mmntp_jax.data.vocab import Vocab

    docs = [{"tokens": np.arange(20, 60, dtype=np.int32), "modality": np.zeros(40, np.uint8), "loss": np.ones(40, np.uint8)}] * 2
    folder = tmp_path / "shards"
    write_documents(folder, docs, Vocab.build(text=256), docs_per_shard=2)
    index = json.loads((folder / "dataset.json").read_text())
    index["shards"][0]["path"] = "../elsewhere/shard-00000.array_record"
    (folder / "dataset.json").write_text(json.dumps(index))
    one_line(capsys, ["data", "inspect", folder], folder / "dataset.json", "../elsewhere", "outside")
    (folder / "dataset.json").write_text('{"format": ')
    one_line(capsys, ["data", "inspect", folder], folder / "dataset.json", "not valid JSON")


def test_a_raw_array_record_error_is_one_line(monkeypatch, tmp_path, capsys):
    """What reaches the CLI when no reader names the shard: the library's own RuntimeError."""
    import grain

    garbage = tmp_path / "shard-00000.array_record"
    garbage.write_bytes(b"not an array record")
    monkeypatch.setattr(export_commands, "run_inspect", lambda args: grain.sources.ArrayRecordDataSource([str(garbage)]))
    line = one_line(capsys, ["checkpoint", "inspect", "--workdir", tmp_path], tmp_path, "array_record", "RuntimeError")
    assert "MMNTP_DEBUG=1" in line


def test_a_raw_tensorstore_error_is_one_line(monkeypatch, tmp_path, capsys):
    import tensorstore as ts

    def open_missing(args):
        ts.open({"driver": "zarr", "kvstore": f"file://{args.workdir}/missing/"}, open=True, read=True).result()

    monkeypatch.setattr(export_commands, "run_inspect", open_missing)
    line = one_line(capsys, ["checkpoint", "inspect", "--workdir", tmp_path], tmp_path, "tensorstore", "NOT_FOUND")
    assert "tensorstore_spec" not in line


def _raise_in(module: str, error: BaseException):
    """Raises `error` from a frame whose module is `module` (as if that library raised it)."""
    exec(compile("raise error", f"<{module}>", "exec"), {"__name__": module, "error": error})


def test_library_errors_are_recognised_narrowly():
    for error, module, expected in [
        (KeyError('Item "state" was not found'), "orbax.checkpoint._src.fake", "orbax"),
        (RuntimeError(), "array_record.python.fake", "array_record"),
        (ValueError("DATA_LOSS: Error reading local file"), "mmntp_jax.export.fake", "tensorstore"),
        (TypeError("missing argument"), "orbax.checkpoint._src.fake", None),  # a library's TypeError: our misuse
        (ValueError("INVALID_ARGUMENT: bad spec"), "mmntp_jax.export.fake", None),  # how a wrong spec shows
        (KeyError("x"), "mmntp_jax.export.fake", None),  # our own KeyError: a bug
    ]:
        try:
            _raise_in(module, error)
        except Exception as err:
            found = library_failure(err)
        assert (found[0] if found else None) == expected, (error, module)
    try:  # orbax re-raising tensorstore's error as a bare Exception: the line shows tensorstore's
        try:
            raise ValueError("NOT_FOUND: no such array")
        except ValueError:
            _raise_in("orbax.checkpoint._src.fake", Exception("restore failed"))
    except Exception as err:
        assert library_failure(err) == ("orbax", err.__context__)


# ----------------------------------------------------------------------------
# Bugs, debugging, interrupts, OS errors


def test_an_unknown_error_keeps_its_traceback(monkeypatch, tmp_path, capsys):
    def bug(args):
        raise TypeError("a bug")

    monkeypatch.setattr(export_commands, "run_inspect", bug)
    with pytest.raises(TypeError, match="a bug"):
        cli.main(["checkpoint", "inspect", "--workdir", str(tmp_path)])
    monkeypatch.setattr(export_commands, "run_inspect", lambda args: {}["plain KeyError in our code"])
    with pytest.raises(KeyError):
        cli.main(["checkpoint", "inspect", "--workdir", str(tmp_path)])


def test_mmntp_debug_shows_the_traceback_of_a_handled_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("MMNTP_DEBUG", "1")
    bad = tmp_path / "exp.py"
    bad.write_text("def get_config():\n    return undefined_name\n")
    code, lines = run(capsys, "train", "--config", bad, "--workdir", tmp_path / "run")
    assert code == 2 and lines[0].startswith("Traceback") and "NameError" in "\n".join(lines)
    assert lines[-1].startswith("mmntp train: error: config file ") and str(bad) in lines[-1]


def test_interrupt_and_os_errors(monkeypatch, tmp_path, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_commands, "run_inspect", interrupted)
    assert one_line(capsys, ["checkpoint", "inspect", "--workdir", tmp_path], "interrupted", code=130)

    def denied(args):
        raise PermissionError(13, "Permission denied", f"{args.workdir}/checkpoints")

    monkeypatch.setattr(export_commands, "run_inspect", denied)
    one_line(capsys, ["checkpoint", "inspect", "--workdir", tmp_path], f"{tmp_path}/checkpoints", "Permission denied")


def test_warnings_from_mmntp_jax_are_one_line(monkeypatch, tmp_path, capsys):
    def warn(args):
        warnings.warn_explicit("first line\nsecond line", RuntimeWarning, cli.__file__, 1)
        return 0

    monkeypatch.setattr(export_commands, "run_inspect", warn)
    assert run(capsys, "checkpoint", "inspect", "--workdir", tmp_path) == (0, ["mmntp checkpoint: warning: first line second line"])


def test_subprocess_damaged_checkpoint_prints_one_line(params_workdir, tmp_path):
    """The console entry point as a user runs it: no background-thread noise after the line."""
    workdir = copy_of(params_workdir, tmp_path)
    scramble_arrays(workdir)
    out = subprocess.run([sys.executable, "-m", "mmntp_jax.cli", "checkpoint", "inspect", "--workdir", str(workdir)], capture_output=True, text=True)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and str(workdir) in lines[0], out.stderr


# ----------------------------------------------------------------------------
# `mmntp import hf` reads nothing outside the model folder


def tiny_hf_folder(folder: Path) -> Path:
    """A Llama config.json and a model.safetensors of zeros, written with numpy."""
    shapes = flatten(jax.eval_shape(lambda: init_params(TINY_MODEL, jax.random.key(0))))
    plans = []
    for m in hf_layout.MAPPINGS:
        if m.ours not in shapes:
            continue
        shape = tuple(shapes[m.ours].shape)
        names = [m.hf.format(i=i) for i in range(TINY_MODEL.n_layers)] if m.per_layer else [m.hf]
        hf_shape = hf_layout.hf_shape(m.kind, shape[1:] if m.per_layer else shape)
        plans += [TensorPlan(name, hf_shape, np.float32, lambda s=hf_shape: np.zeros(s, np.float32)) for name in names]
    folder.mkdir(parents=True)
    write_model(folder, plans)
    (folder / "config.json").write_text(json.dumps(hf_layout.hf_config(TINY_MODEL, "float32", bos_id=1, eos_id=2, pad_id=0)))
    return folder


@pytest.fixture
def opened(monkeypatch):
    """Every path Python opens while the test runs, resolved."""
    seen, real_open = [], builtins.open

    def recording(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)):
            seen.append(Path(os.path.realpath(os.fsdecode(file))))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", recording)
    monkeypatch.setattr(io, "open", recording)
    return seen


def import_hf(capsys, opened, model, out, *names):
    opened.clear()  # the files the test itself wrote
    return one_line(capsys, ["import", "hf", "--model", model, "--out", out], *names)


@pytest.mark.parametrize("entry", ["../outside.safetensors", "ABSOLUTE"])
def test_an_index_entry_outside_the_folder_is_refused(entry, tmp_path, capsys, opened):
    model = tiny_hf_folder(tmp_path / "model")
    outside = tmp_path / "outside.safetensors"
    (model / SINGLE_NAME).rename(outside)  # a valid file: only the check keeps it from being read
    entry = str(outside) if entry == "ABSOLUTE" else entry
    (model / INDEX_NAME).write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": entry}}))
    line = import_hf(capsys, opened, model, tmp_path / "out", INDEX_NAME, "'model.embed_tokens.weight'", repr(entry))
    assert "outside" in line and not (tmp_path / "out").exists()
    assert opened and outside not in opened


@pytest.mark.parametrize("name", ["config.json", SINGLE_NAME, "tokenizer.json", "tokenizers/image/tokenizer.safetensors"])
def test_a_symlink_out_of_the_model_folder_is_refused(name, tmp_path, capsys, opened):
    model = tiny_hf_folder(tmp_path / "model")
    secret = tmp_path / "secret" / Path(name).name
    secret.parent.mkdir()
    if (model / name).exists():
        (model / name).rename(secret)
    else:
        secret.write_text("{}")
    if name.startswith("tokenizers/"):
        (model / name).parent.mkdir(parents=True)
        (model / name).with_name("tokenizer.json").write_text("{}")
    (model / name).symlink_to(secret)
    line = import_hf(capsys, opened, model, tmp_path / "out", repr(Path(name).name), "symbolic link", secret)
    assert line.startswith("mmntp import: error: ") and secret not in opened


def test_a_damaged_safetensors_header_is_one_line(tmp_path, capsys, opened):
    model = tiny_hf_folder(tmp_path / "model")
    data = (model / SINGLE_NAME).read_bytes()
    (model / SINGLE_NAME).write_bytes((1 << 40).to_bytes(8, "little") + data[8:])  # a header longer than the file
    import_hf(capsys, opened, model, tmp_path / "out", model / SINGLE_NAME, "not a safetensors file")


def test_a_hugging_face_cache_snapshot_imports(tmp_path, capsys):
    """Snapshot files are links to the repository's blobs/: inside the repository, so accepted."""
    files = tiny_hf_folder(tmp_path / "files")
    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(files.iterdir())):
        path.rename(repo / "blobs" / f"blob{i}")
        (snapshot / path.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    code, lines = run(capsys, "import", "hf", "--model", snapshot, "--out", tmp_path / "out")
    assert code == 0, lines
    assert (tmp_path / "out" / "checkpoints" / "0").is_dir()


def test_inside_keeps_links_within_the_folder(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link").symlink_to(Path("..", "a.txt"))
    assert inside(tmp_path, "sub/link") == tmp_path / "sub" / "link"
    assert inside(tmp_path, "sub/../a.txt") == tmp_path / "sub/../a.txt"


def test_asyncio_reports_of_a_failed_saves_writes_are_dropped():
    import logging

    from mmntp_jax.train.checkpoint import quiet_save_failures

    quiet_save_failures()
    namespace = {}
    exec(compile("def write():\n    raise ValueError('RESOURCE_EXHAUSTED: No space left on device')\n",
                 "/site-packages/orbax/checkpoint/_src/serialization/fake.py", "exec"), namespace)

    def exc_info_of(function):
        try:
            function()
        except ValueError:
            return sys.exc_info()

    def kept(exc_info) -> bool:
        logger = logging.getLogger("asyncio")
        record = logger.makeRecord("asyncio", logging.ERROR, "base_events.py", 1, "Task exception was never retrieved", None, exc_info)
        return all(f.filter(record) for f in logger.filters)

    assert not kept(exc_info_of(namespace["write"]))
    assert kept(exc_info_of(lambda: int("not a number")))  # anything else asyncio reports stays
