"""orbax checkpoints of the train state together with the data iterator state.

Layout: `<workdir>/checkpoints/<step>/{state, data}`. `state` is the TrainState
pytree (restorable onto any mesh: restore takes the target shardings); `data`
holds one JSON file per process with that process's grain iterator state
(grain's orbax handler). Saves are asynchronous for the arrays; the iterator
state is captured at the moment `save` is called.

A save that fails in the background (disk full, permissions, an unreachable
path) is reported by `check()`, which the loop calls after every step, as a
`CheckpointSaveError` naming the checkpoint path, the cause and the step that is
still intact; `save`, `wait` and `close` report it the same way. orbax's own
log record of the failure (a traceback from its writer thread) is dropped by
`quiet_save_failures`, so the failure reads as that one line.
"""

from __future__ import annotations

import contextlib
import json
import logging

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from mmntp_jax.errors import CheckpointSaveError
from mmntp_jax.paths import resolve_path


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
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )
        self._pending: int | None = None  # step of the save that may still be running
        quiet_save_failures()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, iterator, *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(IteratorSnapshot(iterator)),
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

    def restore(self, step: int | None, abstract_state, iterator=None, *, optional_fields: tuple[str, ...] = ()):
        """Restores (state, iterator state dict) at `step` (latest when None).

        `optional_fields`: fields of the state dataclass that checkpoints written
        before the field existed lack; they are restored as None.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} under {self.directory}; saved steps: {self.all_steps()}")
        absent = []
        if optional_fields:
            on_disk = self.manager.item_metadata(step)["state"]
            absent = [name for name in optional_fields if name not in on_disk]
        target = {k: v for k, v in vars(abstract_state).items() if k not in absent} if absent else abstract_state
        items = {"state": ocp.args.StandardRestore(target)}
        snapshot = IteratorSnapshot(iterator, state={})
        if iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(snapshot)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        if absent:
            restored = abstract_state.replace(**restored, **{name: None for name in absent})
        return restored, snapshot._state

    def restore_params(self, step: int | None, abstract_params):
        """Only the parameters (for evaluation, sampling and export).

        `abstract_params` holds ShapeDtypeStructs; those without a sharding are
        placed on the first device.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} under {self.directory}; saved steps: {self.all_steps()}")
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {"params": jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding or default), abstract_params)}
        reader = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(read_only=True), item_handlers={"state": ocp.PyTreeCheckpointHandler()}
        )
        try:
            args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)
            restored = reader.restore(step, args=ocp.args.Composite(state=args))
        finally:
            reader.close()
        return restored["state"]["params"], step

    def wait(self) -> None:
        self.check(block=True)

    def close(self) -> None:
        try:
            self.check(block=True)
        finally:
            self.manager.close()


class _DropSaveTracebacks(logging.Filter):
    """Drops orbax's error records that carry a writer thread's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and "orbax" in record.pathname)


def quiet_save_failures() -> None:
    """Installs the filter once on the absl logger that orbax logs through."""
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropSaveTracebacks) for f in logger.filters):
        logger.addFilter(_DropSaveTracebacks())
