"""orbax checkpoints of the train state together with the data iterator state.

Layout: `<workdir>/checkpoints/<step>/{state, data}`. `state` is the TrainState
pytree (restorable onto any mesh: restore takes the target shardings); `data`
holds one JSON file per process with that process's grain iterator state
(grain's orbax handler). Saves are asynchronous for the arrays; the iterator
state is captured at the moment `save` is called.
"""

from __future__ import annotations

import json

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath


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
        self.directory = epath.Path(workdir) / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()},
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, iterator, *, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(IteratorSnapshot(iterator)),
        )
        return self.manager.save(step, args=args, force=force)

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
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
