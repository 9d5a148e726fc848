"""orbax checkpoints of the train state together with the data iterator state.

Layout: `<workdir>/checkpoints/<step>/{state, data}`. `state` is the TrainState
pytree (restorable onto any mesh: restore takes the target shardings); `data`
holds one JSON file per process with that process's grain iterator state
(grain's file layout; `data/global_batches.py` restores it with any process
count). Saves are asynchronous for the arrays; the iterator state is captured
at the moment `save` is called.

A save that fails in the background (disk full, permissions, an unreachable
path) is reported by `check()`, which the loop calls after every step, as a
`CheckpointSaveError` naming the checkpoint path, the cause and the step that is
still intact; `save`, `wait` and `close` report it the same way. orbax's own
log record of the failure (a traceback from its writer thread), and asyncio's
report of the save's other writes that failed alike, are dropped by
`quiet_save_failures`, so the failure reads as that one line.

Recovery (docs/reliability.md, "Checkpoints"): a checkpoint is complete when
orbax's own records say so (a commit in `_CHECKPOINT_METADATA` or
`commit_success.txt`, and a parseable `state/_METADATA`) and readable when its
restore succeeds. `resume`, at the start of a training run, removes the
`*.orbax-checkpoint-tmp-*` folders of a killed save and restores the newest
complete, readable train state; the newer ones that failed are moved aside to
`<step>.corrupt` with one warning line each. When none is readable the run
starts fresh if none was ever committed, and otherwise stops with a
`CheckpointRestoreError` that names each failure (nothing is moved then).
`restore_params` (mm.load, eval, sample, export) falls back the same way but
only warns: it never moves anything.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import traceback
import warnings

import jax
import orbax.checkpoint as ocp
from etils import epath

from mmntp_jax.data.global_batches import DataStateRestore, DataStateSave, ProcessStatesHandler
from mmntp_jax.errors import CheckpointRestoreError, CheckpointSaveError
from mmntp_jax.paths import resolve_path

TMP_MARKER = ".orbax-checkpoint-tmp"  # orbax's suffix for a save not yet committed
UNREADABLE = (KeyError, ValueError, FileNotFoundError, OSError)  # tensorstore's NOT_FOUND / DATA_LOSS are ValueErrors


def unreadable_cause(err: BaseException) -> BaseException | None:
    """The error in `err`'s chain that says a checkpoint cannot be read, or None.

    orbax re-raises tensorstore's error on an array read as a bare `Exception`
    (`from` the ValueError), so the chain is searched, not the outer type alone.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, UNREADABLE):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def one_line(err: BaseException, limit: int = 240) -> str:
    text = " ".join(f"{type(err).__name__}: {err}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_json(path: epath.Path) -> tuple[dict | None, str | None]:
    """(the JSON object in `path`, None) or (None, why it is missing or unreadable)."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, ValueError) as err:  # ValueError: bad JSON or bad UTF-8
        return None, f"{path.name} is not valid JSON ({one_line(err, 80)})"
    return (value, None) if isinstance(value, dict) else (None, f"{path.name} is not a JSON object")


def sync_processes(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class IteratorSnapshot:
    """The state of a grain iterator frozen at construction (for async saves), or a
    restore target that forwards the saved state to `iterator.set_state`."""

    def __init__(self, iterator=None, state: dict | None = None):
        self._iterator = iterator
        self._state = state if state is not None else (iterator.get_state() if iterator is not None else None)

    def get_state(self) -> bytes:
        return json.dumps(self._state).encode()

    def set_state(self, state: bytes) -> None:
        self._state = json.loads(state)
        if self._iterator is not None:
            self._iterator.set_state(self._state)

    def start_prefetch(self) -> None:
        pass


class Checkpointer:
    """CheckpointManager for `<workdir>/checkpoints`, keeping the last `keep`."""

    def __init__(self, workdir, *, keep: int = 3, async_save: bool = True):
        self.directory = epath.Path(resolve_path(workdir)) / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ProcessStatesHandler()},  # multi-host: any process count restores
        )
        self._pending: int | None = None  # step of the save that may still be running
        quiet_save_failures()

    def latest_step(self) -> int | None:
        """The newest step that is complete by orbax's records (`problem` is None)."""
        return next((step for step in self._newest_first() if self.problem(step) is None), None)

    def all_steps(self) -> list[int]:
        """Every step folder orbax lists, complete or not."""
        return list(self.manager.all_steps())

    def step_path(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def _newest_first(self, minimum: int = 0) -> list[int]:
        return sorted((step for step in self.all_steps() if step >= minimum), reverse=True)

    def problem(self, step: int) -> str | None:
        """Why checkpoint `step` is not complete by orbax's own records, or None (reads two small files)."""
        path = self.step_path(step)
        if not any(path.iterdir()):
            return "empty folder"
        _, why = read_json(path / "_CHECKPOINT_METADATA")
        if why and (path / "_CHECKPOINT_METADATA").exists():  # a missing one is judged by commit_success.txt
            return why
        if not self.committed(step):
            return "never committed (no commit time in _CHECKPOINT_METADATA, no commit_success.txt)"
        _, why = read_json(path / "state" / "_METADATA")
        return f"state/{why}" if why else None

    def committed(self, step: int) -> bool:
        """Whether orbax recorded the save of `step` as finished (the data may still have been damaged since)."""
        path = self.step_path(step)
        record, _ = read_json(path / "_CHECKPOINT_METADATA")
        return bool(record and record.get("commit_timestamp_nsecs")) or (path / "commit_success.txt").exists()

    def _attempt(self, step: int, action):
        """(action(), None), or (None, why) when `step` is incomplete or `action` fails reading it."""
        why = self.problem(step)
        if why is not None:
            return None, why
        try:
            return action(), None
        except Exception as err:
            cause = unreadable_cause(err)
            if cause is None:
                raise
            return None, one_line(cause)

    def _existing(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} under {self.directory}; saved steps: {self.all_steps()}")
        return step

    def _unreadable(self, step: int, why: str) -> CheckpointRestoreError:
        return CheckpointRestoreError(f"checkpoint {self.step_path(step)} cannot be read ({why})")

    def _none_readable(self, failed: list[tuple[int, str]]) -> CheckpointRestoreError:
        details = "; ".join(f"step {step}: {why}" for step, why in failed)
        return CheckpointRestoreError(f"no readable checkpoint in {self.directory} ({details}); "
                                      "move the folder aside to start over")

    def ensure_writable(self) -> None:
        """Raises CheckpointSaveError at once when the checkpoint folder cannot be
        written (read-only, full, no permission), before any step is trained."""
        probe = self.directory / f".write-probe-{jax.process_index()}-{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"probe")
            probe.unlink()
        except OSError as err:
            cause = " ".join(f"{type(err).__name__}: {err}".split())
            raise CheckpointSaveError(f"checkpoint folder {self.directory} cannot be written ({cause}); nothing in it was changed") from None

    def save(self, step: int, state, iterator, *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=DataStateSave(IteratorSnapshot(iterator)),
        )
        self.check(block=True)  # the previous save must have landed before the next starts
        with self._reporting(step):
            saved = self.manager.save(step, args=args, force=force)
        self._pending = step if saved else self._pending
        return saved

    def check(self, *, block: bool = False) -> None:
        """Raises CheckpointSaveError if the last save failed; without `block`,
        returns at once while it is still running."""
        if self._pending is None or (not block and self.manager.is_saving_in_progress()):
            return
        step, self._pending = self._pending, None
        with self._reporting(step):
            self.manager.wait_until_finished()

    @contextlib.contextmanager
    def _reporting(self, step: int):
        try:
            yield
        except CheckpointSaveError:
            raise
        except Exception as err:  # orbax/tensorstore/OS errors of the writer threads
            raise self._save_error(step, err) from None

    def _save_error(self, step: int, err: BaseException) -> CheckpointSaveError:
        cause = " ".join(f"{type(err).__name__}: {err}".split())
        intact = [s for s in self.manager.all_steps() if s < step]
        kept = f"checkpoint {max(intact)} is intact" if intact else "no earlier checkpoint exists"
        return CheckpointSaveError(f"checkpoint {self.directory / str(step)} could not be saved ({cause}); {kept}")

    def resume(self, abstract_state, iterator=None, *, optional_fields: tuple[str, ...] = (), log=print):
        """Start-up of a training run: (train state, step) of the newest complete and
        readable checkpoint after step 0, or (None, 0) to start fresh.

        Removes unfinished saves first. Newer checkpoints that fail are moved to
        `<step>.corrupt` with a warning line each, so the run saves those steps
        again. With none readable: fresh if none was ever committed, else a
        `CheckpointRestoreError` naming each failure (and nothing is moved).
        """
        self.remove_unfinished_saves(log)
        failed = []
        for step in self._newest_first(minimum=1):
            restored, why = self._attempt(step, lambda: self._restore(step, abstract_state, iterator, optional_fields))
            if why is None:
                self._set_aside(failed, log)
                return restored[0], step
            failed.append((step, why))
        if any(self.committed(step) for step, _ in failed):
            raise self._none_readable(failed)
        self._set_aside(failed, log)
        return None, 0

    def remove_unfinished_saves(self, log=print) -> None:
        """Deletes orbax's `*.orbax-checkpoint-tmp-*` folders (a save killed before its commit); process 0 only."""
        if jax.process_index() != 0 or not self.directory.exists():
            return
        leftovers = sorted((path for path in self.directory.iterdir() if TMP_MARKER in path.name), key=lambda p: p.name)
        for path in leftovers:
            path.rmtree()
        if leftovers:
            names = ", ".join(path.name for path in leftovers)
            log(f"removed {len(leftovers)} unfinished checkpoint save(s) of an interrupted run from {self.directory}: {names}")

    def _set_aside(self, failed: list[tuple[int, str]], log) -> None:
        if not failed:
            return
        if jax.process_index() == 0:
            for step, why in failed:
                destination = self._aside_path(step)
                self.step_path(step).rename(destination)
                log(f"warning: checkpoint {self.step_path(step)} is unreadable ({why}); moved to {destination}")
        sync_processes("mmntp_checkpoints_set_aside")
        self.manager.reload()

    def _aside_path(self, step: int) -> epath.Path:
        names = itertools.chain([f"{step}.corrupt"], (f"{step}.corrupt.{i}" for i in itertools.count(1)))
        return next(path for path in (self.directory / name for name in names) if not path.exists())

    def restore(self, step: int | None, abstract_state, iterator=None, *, optional_fields: tuple[str, ...] = ()):
        """Restores (state, iterator state dict) at `step` (latest complete when None), or
        raises CheckpointRestoreError when that checkpoint cannot be read.

        `optional_fields`: fields of the state dataclass that checkpoints written
        before the field existed lack; they are restored as None.
        """
        step = self._existing(step)
        restored, why = self._attempt(step, lambda: self._restore(step, abstract_state, iterator, optional_fields))
        if why is not None:
            raise self._unreadable(step, why)
        return restored

    def _restore(self, step: int, abstract_state, iterator, optional_fields):
        absent = []
        if optional_fields:
            on_disk = self.manager.item_metadata(step)["state"]
            absent = [name for name in optional_fields if name not in on_disk]
        target = {k: v for k, v in vars(abstract_state).items() if k not in absent} if absent else abstract_state
        items = {"state": ocp.args.StandardRestore(target)}
        snapshot = IteratorSnapshot(iterator, state={})
        if iterator is not None:
            items["data"] = DataStateRestore(snapshot)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        if absent:
            restored = abstract_state.replace(**restored, **{name: None for name in absent})
        return restored, snapshot._state

    def restore_params(self, step: int | None, abstract_params):
        """Only the parameters (for evaluation, sampling and export), read-only: (params, step).

        `abstract_params` holds ShapeDtypeStructs; those without a sharding are
        placed on the first device. With `step` None, the newest readable
        checkpoint: each newer one that fails is skipped with a warning and left
        where it is. A named `step` that cannot be read is a CheckpointRestoreError.
        """
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding or default), abstract_params)}
        if step is not None:
            params, why = self._attempt(self._existing(step), lambda: self._read_params(step, target))
            if why is not None:
                raise self._unreadable(step, why)
            return params, step
        failed = []
        for candidate in self._newest_first():
            params, why = self._attempt(candidate, lambda: self._read_params(candidate, target))
            if why is None:
                return params, candidate
            warnings.warn(f"checkpoint {self.step_path(candidate)} is unreadable ({why}); skipped, left in place", RuntimeWarning, stacklevel=2)
            failed.append((candidate, why))
        raise self._none_readable(failed) if failed else FileNotFoundError(f"no checkpoint under {self.directory}")

    def _read_params(self, step: int, target):
        reader = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers={"state": ocp.PyTreeCheckpointHandler()}
        )
        try:
            args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)
            return reader.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]
        finally:
            reader.close()

    def wait(self) -> None:
        self.check(block=True)

    def close(self) -> None:
        try:
            self.check(block=True)
        finally:
            self.manager.close()


def _raised_in_orbax(exc_info) -> bool:
    return bool(exc_info and exc_info[2]) and any("orbax" in frame.filename for frame in traceback.extract_tb(exc_info[2]))


class _DropSaveTracebacks(logging.Filter):
    """Drops error records that carry the traceback of an orbax writer: orbax's own (through absl), and
    asyncio's "Task exception was never retrieved" for the sibling writes of a save that failed."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and ("orbax" in record.pathname or _raised_in_orbax(record.exc_info)))


def quiet_save_failures() -> None:
    """Installs the filter once on the absl logger that orbax logs through and on asyncio's."""
    for name in ("absl", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropSaveTracebacks) for f in logger.filters):
            logger.addFilter(_DropSaveTracebacks())
