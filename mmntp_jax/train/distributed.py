"""Multi-host start-up and cross-host agreement: `jax.distributed` from flags, variables or the cluster; one stop step for all hosts.

`mmntp train --distributed` starts JAX's multi-controller runtime in one of two ways:

  explicit   `--coordinator HOST:PORT --num-processes N --process-id I`, each
             setting from its flag or else from `MMNTP_COORDINATOR`,
             `MMNTP_NUM_PROCESSES`, `MMNTP_PROCESS_ID` (a flag wins over its
             variable). All three or none: a partial set is a `ConfigError`.
             Cluster detection is off then, so every local device stays
             visible (unless `JAX_LOCAL_DEVICE_IDS` says otherwise).
  cluster    none of the three set: `jax.distributed.initialize()` with no
             arguments, i.e. JAX's own detection of SLURM, Open MPI, Cloud TPU
             (GCE and GKE) and Kubernetes indexed Jobs (`jax/_src/clusters/`).

Failures the user can act on are one line (`DistributedError`, a `RunError`):
nothing detected, a coordinator port already taken (checked before JAX binds
it), a coordinator not reachable within `--init-timeout` seconds (checked
before JAX connects, since JAX aborts the process on a connect timeout).

`AgreedStop` replaces a per-process stop flag in the training loop: SIGTERM or
SIGINT on any host stops every host after the same step, so all of them take
part in the same final checkpoint and none waits forever in a collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import signal
import socket
import time

from mmntp_jax.config import ConfigError
from mmntp_jax.errors import RunError

ENV_VARS = {"coordinator": "MMNTP_COORDINATOR", "num_processes": "MMNTP_NUM_PROCESSES", "process_id": "MMNTP_PROCESS_ID"}
FLAGS = {"coordinator": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}
DEFAULT_INIT_TIMEOUT_S = 300
DETECTED = "SLURM, Open MPI, Cloud TPU (GCE, GKE) or a Kubernetes indexed Job"


class DistributedError(RunError):
    """The multi-host runtime could not start (nothing detected, coordinator unreachable or its port taken)."""


@dataclasses.dataclass(frozen=True)
class Launch:
    """How to start `jax.distributed`: all three settings (explicit) or none (cluster detection)."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S

    @property
    def explicit(self) -> bool:
        return self.coordinator is not None


def add_arguments(parser) -> None:
    """`--distributed` and its explicit settings, for any command that trains."""
    group = parser.add_argument_group("multi-host (docs/multihost.md)")
    group.add_argument("--distributed", action="store_true",
                       help="start jax.distributed first: from the flags below (or MMNTP_* variables), else from the cluster (SLURM, Cloud TPU, Kubernetes …)")
    group.add_argument("--coordinator", metavar="HOST:PORT", help=f"address of process 0's coordinator (or {ENV_VARS['coordinator']})")
    group.add_argument("--num-processes", type=int, metavar="N", help=f"number of processes (or {ENV_VARS['num_processes']})")
    group.add_argument("--process-id", type=int, metavar="I", help=f"this process's index, 0 … N-1 (or {ENV_VARS['process_id']})")
    group.add_argument("--init-timeout", type=int, default=DEFAULT_INIT_TIMEOUT_S, metavar="SECONDS",
                       help=f"how long to wait for the coordinator and the other processes (default {DEFAULT_INIT_TIMEOUT_S})")


def launch_from_args(args, environ=None) -> Launch | None:
    """The `Launch` the parsed flags ask for, or None for a single-process run.

    Explicit flags imply `--distributed`; the `MMNTP_*` variables are read only
    with `--distributed` (or an explicit flag), so a stray variable never turns
    a plain run into a multi-host one.
    """
    flags = {key: getattr(args, key, None) for key in FLAGS}
    if not getattr(args, "distributed", False) and all(v is None for v in flags.values()):
        return None
    return resolve_launch(**flags, init_timeout_s=getattr(args, "init_timeout", DEFAULT_INIT_TIMEOUT_S), environ=environ)


def resolve_launch(coordinator=None, num_processes=None, process_id=None, *, init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S,
                   environ=None) -> Launch:
    """Merges flags (which win) with `MMNTP_*` variables and checks the result; ConfigError on a partial or invalid set."""
    environ = os.environ if environ is None else environ
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    source = {}
    for key, value in given.items():
        if value is not None:
            source[key] = FLAGS[key]
        elif environ.get(ENV_VARS[key], "").strip():
            given[key], source[key] = environ[ENV_VARS[key]].strip(), ENV_VARS[key]
    if init_timeout_s < 1:
        raise ConfigError(f"--init-timeout: expected seconds ≥ 1, got {init_timeout_s}")
    if not source:
        return Launch(init_timeout_s=init_timeout_s)
    missing = [key for key in FLAGS if key not in source]
    if missing:
        have = ", ".join(f"{source[k]}" for k in FLAGS if k in source)
        need = ", ".join(f"{FLAGS[k]} (or {ENV_VARS[k]})" for k in missing)
        raise ConfigError(f"--distributed: {have} given but not {need}; give all three, or none to detect the cluster")
    count = _integer(given["num_processes"], source["num_processes"], minimum=1)
    index = _integer(given["process_id"], source["process_id"], minimum=0)
    if index >= count:
        raise ConfigError(f"--distributed: process id {index} ({source['process_id']}) is not in 0 … {count - 1} "
                          f"for {count} processes ({source['num_processes']})")
    return Launch(_address(str(given["coordinator"]), source["coordinator"]), count, index, init_timeout_s)


def _integer(value, where: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{where}: expected an integer ≥ {minimum}, got {number}")
    return number


def _address(text: str, where: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT (e.g. host0:1234), got {text!r}")
    return text


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def initialize(launch: Launch) -> None:
    """Starts `jax.distributed` as `launch` says; must run before anything touches a JAX device."""
    import jax

    if jax.distributed.is_initialized():
        return
    if launch.explicit:
        _check_coordinator(launch)
        kwargs = dict(coordinator_address=launch.coordinator, num_processes=launch.num_processes, process_id=launch.process_id,
                      cluster_detection_method="deactivate")
        what = f"process {launch.process_id} of {launch.num_processes} with coordinator {launch.coordinator}"
    else:
        kwargs, what = {}, "from the cluster environment"
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=launch.init_timeout_s)
    except (ValueError, TypeError, RuntimeError) as err:
        raise DistributedError(_explain(err, launch, what)) from None


def _explain(err: BaseException, launch: Launch, what: str) -> str:
    text = " ".join(str(err).split())
    if not launch.explicit and ("should be defined" in text or "must be defined" in text):
        return (f"--distributed found no cluster environment ({DETECTED}; JAX says: {text}); "
                "give --coordinator HOST:PORT --num-processes N --process-id I or the MMNTP_COORDINATOR, "
                "MMNTP_NUM_PROCESSES, MMNTP_PROCESS_ID variables (docs/multihost.md)")
    if "before any JAX calls" in text:
        return "--distributed: JAX had already started before jax.distributed could (a bug: report it)"
    return f"--distributed: could not start {what}: {type(err).__name__}: {text}"


def _check_coordinator(launch: Launch) -> None:
    """Process 0: the port is free to bind. Others: the coordinator accepts connections within the timeout."""
    host, port = _host_port(launch.coordinator)
    if launch.process_id == 0:
        if not _port_free(port):
            raise DistributedError(f"--distributed: the coordinator port {port} ({launch.coordinator}) is already in use on this host; "
                                   "pick another port for every process")
        return
    deadline = time.monotonic() + launch.init_timeout_s
    while True:  # a host name may resolve only once process 0's machine is up (e.g. a Kubernetes pod's DNS record)
        try:
            with socket.create_connection((host, port), timeout=min(5.0, launch.init_timeout_s)):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                why = f"cannot resolve {host!r}" if isinstance(err, socket.gaierror) else (err.strerror or str(err))
                raise DistributedError(f"--distributed: process {launch.process_id} could not reach the coordinator {launch.coordinator} "
                                       f"within {launch.init_timeout_s} s ({why}); is process 0 running there, "
                                       "and is the port open between hosts?") from None
            time.sleep(0.5)


def _port_free(port: int) -> bool:
    for family, address in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as err:
                if err.errno == errno.EADDRINUSE:
                    return False
                continue
            return True
    return True


class AgreedStop:
    """SIGTERM/SIGINT → a flag that every process reads as set after the same step.

    With one process `received` follows the signal at once. With several, each
    `agree()` call reads the all-reduce (max over processes of the signal
    number) dispatched by the previous call, then dispatches the next one with
    this process's flag: every process sees the same value at the same step, one
    step after the first signal on any host. The host waits only for a reduce
    issued one step earlier, so it still runs a step ahead of the devices.
    `received` is that agreed signal's name (e.g. "SIGTERM") on every host.
    """

    def __init__(self):
        self.received: str | None = None
        self._local = 0
        self._pending = None
        self._reduce = None

    @contextlib.contextmanager
    def installed(self):
        def handler(signum, _frame):
            self._local = self._local or int(signum)

        previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread
                pass
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def agree(self) -> str | None:
        """Call once per step on every process, at the same point of the loop; returns `received`."""
        import jax
        import numpy as np

        if self.received:
            return self.received
        if jax.process_count() == 1:
            code = self._local
        else:
            code = int(np.asarray(self._pending.addressable_data(0))) if self._pending is not None else 0
            self._pending = None if code else self._dispatch(self._local)
        self.received = signal.Signals(code).name if code else None
        return self.received

    def _dispatch(self, code: int):
        if self._reduce is None:
            self._reduce = _ProcessMax()
        return self._reduce(code)


class _ProcessMax:
    """max over processes of one int32 per process, on one device of each (a jitted all-reduce)."""

    def __init__(self):
        import jax
        import numpy as np

        firsts = {}
        for device in sorted(jax.devices(), key=lambda d: (d.process_index, d.id)):
            firsts.setdefault(device.process_index, device)
        mesh = jax.sharding.Mesh(np.array([firsts[p] for p in sorted(firsts)]), ("process",))
        self._sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("process"))
        self._shape = (len(firsts),)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._max = jax.jit(lambda x: x.max(), out_shardings=replicated)

    def __call__(self, code: int):
        import jax
        import numpy as np

        local = np.full((1,), code, np.int32)
        return self._max(jax.make_array_from_process_local_data(self._sharding, local, self._shape))
