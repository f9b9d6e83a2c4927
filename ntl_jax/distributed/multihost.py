"""Multi-process (multi-host) JAX set-up and small cross-process helpers.

One Python process runs per host (TPU VM worker, GPU node, or CPU process in tests). Before any JAX computation each
process calls `initialize()`, which connects it to the coordinator (process 0) through `jax.distributed.initialize`.
After that `jax.devices()` lists the devices of every process and a `Mesh` over them spans hosts.

Settings are resolved, first match wins, from:
  1. the function arguments;
  2. `NTL_JAX_COORDINATOR_ADDRESS`, `NTL_JAX_NUM_PROCESSES`, `NTL_JAX_PROCESS_ID`, `NTL_JAX_LOCAL_DEVICE_IDS`;
  3. JAX's own `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`, `JAX_LOCAL_DEVICE_IDS`;
  4. cluster auto-detection by JAX (Cloud TPU pods, Slurm, Open MPI), used when nothing explicit is given and such a
     cluster is visible in the environment, or when `NTL_JAX_DISTRIBUTED=auto`.
With none of these (or `NTL_JAX_DISTRIBUTED=off`) it is a no-op: one process, `process_index() == 0`.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import logging
import os
import pickle
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

logger = logging.getLogger(__name__)

_ENV_PREFIXES = ("NTL_JAX_", "JAX_")
_MODE_ENV = "NTL_JAX_DISTRIBUTED"
_MODES = ("", "auto", "off")


@dataclasses.dataclass(frozen=True)
class DistributedInfo:
    """What `initialize` did; `mode`: 'single' (no-op), 'explicit', 'auto:<cluster>', 'already' (initialised before)."""

    process_index: int
    process_count: int
    mode: str


def _env_value(name: str) -> str | None:
    """First non-empty value of NTL_JAX_<name> or JAX_<name>."""
    for prefix in _ENV_PREFIXES:
        value = os.environ.get(prefix + name, "").strip()
        if value:
            return value
    return None


def _parse_int(value: str | int | None, what: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{what}={value!r} is not an integer; set it to a whole number") from None


def _parse_device_ids(value: str | int | Sequence[int] | None) -> list[int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        try:
            return [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"local_device_ids={value!r} must be a comma-separated list of integers") from None
    return [int(v) for v in value]


def _validate_coordinator(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator_address={address!r} must look like 'host:port' with a port in 1..65535")


def detect_cluster() -> str | None:
    """Name of a multi-process cluster JAX can auto-configure ('tpu', 'slurm', 'ompi'), or None.

    Only environment variables and local device files are inspected (no network), so this is safe anywhere.
    """
    tpu_env = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")
    has_tpu_chips = bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))
    if any(os.environ.get(v) for v in tpu_env) or (has_tpu_chips and importlib.util.find_spec("libtpu")):
        return "tpu"
    slurm_vars = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    if all(v in os.environ for v in slurm_vars) and _parse_int(os.environ["SLURM_NTASKS"], "SLURM_NTASKS") > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in os.environ and int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return "ompi"
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | int | None = None,
) -> DistributedInfo:
    """Connect this process to the others (see module docstring for where settings come from); idempotent.

    Must run before anything initialises a JAX backend (computations, `jax.devices()`, ...) when more than one process
    is involved; JAX raises a RuntimeError otherwise.
    """
    if jax.distributed.is_initialized():
        return DistributedInfo(jax.process_index(), jax.process_count(), "already")
    mode = os.environ.get(_MODE_ENV, "").strip().lower()
    if mode not in _MODES:
        raise ValueError(f"{_MODE_ENV}={mode!r} is not allowed; use 'auto', 'off' or leave it unset")
    if mode == "off":
        return DistributedInfo(0, 1, "single")

    coordinator_address = coordinator_address or _env_value("COORDINATOR_ADDRESS")
    num_processes = _parse_int(_env_value("NUM_PROCESSES") if num_processes is None else num_processes,
                               "num_processes")
    process_id = _parse_int(_env_value("PROCESS_ID") if process_id is None else process_id, "process_id")
    device_ids = _parse_device_ids(local_device_ids if local_device_ids is not None else _env_value("LOCAL_DEVICE_IDS"))

    explicit = coordinator_address is not None or (num_processes or 1) > 1
    if explicit:
        if coordinator_address is None or num_processes is None or process_id is None:
            missing = [n for n, v in (("coordinator_address", coordinator_address), ("num_processes", num_processes),
                                      ("process_id", process_id)) if v is None]
            raise ValueError(f"multi-process set-up is missing {', '.join(missing)}; pass them or set NTL_JAX_<NAME>")
        _validate_coordinator(coordinator_address)
        if num_processes < 1:
            raise ValueError(f"num_processes={num_processes} must be >= 1")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id={process_id} must be in [0, {num_processes})")
        if num_processes == 1:
            return DistributedInfo(0, 1, "single")
        jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                   process_id=process_id, local_device_ids=device_ids)
        info = DistributedInfo(jax.process_index(), jax.process_count(), "explicit")
    else:
        cluster = detect_cluster()
        if cluster is None and mode != "auto":
            return DistributedInfo(0, 1, "single")
        # JAX fills coordinator, process count and id from the cluster (TPU metadata server, Slurm, Open MPI).
        jax.distributed.initialize(local_device_ids=device_ids)
        info = DistributedInfo(jax.process_index(), jax.process_count(), f"auto:{cluster or 'forced'}")
    logger.info("jax.distributed initialised: process %d of %d (%s), %d local / %d global devices",
                info.process_index, info.process_count, info.mode, jax.local_device_count(), jax.device_count())
    return info


def process_index() -> int:
    """Index of this process, 0 .. process_count() - 1."""
    return jax.process_index()


def process_count() -> int:
    """Number of processes taking part in the run."""
    return jax.process_count()


def is_main_process() -> bool:
    """True on process 0, the one that writes logs and files shared by all processes."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier: every process blocks here until all processes reach `sync(name)` with the same name."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Logical OR of `flag` over all processes (all must call it at the same point), e.g. 'someone got SIGTERM'."""
    if jax.process_count() == 1:
        return bool(flag)
    flags = multihost_utils.process_allgather(np.asarray(bool(flag), dtype=np.int32))
    return bool(np.any(flags))


def to_host(x: Any) -> np.ndarray:
    """The whole value of ``x`` as a numpy array on this host, also when ``x`` spans devices of other processes.

    A ``jax.Array`` sharded over several processes cannot be fetched directly (only its local shards can); it is
    gathered from every process (``process_allgather``), which all processes must call at the same point.
    """
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def put_global(host: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """``host`` (the same whole value on every process) placed with ``sharding``: each process transfers only the
    slices its own devices hold (``jax.make_array_from_callback``), so this works on meshes spanning processes."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def tree_to_host(tree: Any) -> Any:
    """:func:`to_host` on every array leaf of ``tree`` (other leaves are kept)."""
    return jax.tree.map(lambda x: to_host(x) if isinstance(x, (jax.Array, np.ndarray)) else x, tree)


def broadcast_from_main(tree: Any) -> Any:
    """Every process gets process 0's value of `tree` (numpy leaves), e.g. to agree on a seed or a data position."""
    if jax.process_count() == 1:
        return tree
    return multihost_utils.broadcast_one_to_all(tree)


def all_gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in process order, on every process (all must call it at the same point).

    Pickled to bytes, padded to the longest, gathered with ``process_allgather``: two collectives (lengths, bytes).
    The bytes come from this job's own processes only."""
    if jax.process_count() == 1:
        return [obj]
    data = np.frombuffer(pickle.dumps(obj), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray(data.size, np.int64))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [pickle.loads(row[:size].tobytes()) for row, size in zip(gathered, lengths)]


def check_shared_folder(path: str, what: str) -> None:
    """Raise one line on every process unless all processes see the same folder ``path`` (local, NFS or ``gs://``):
    process 0 writes a marker with a token it broadcasts, every process looks for it. Single process: no check."""
    if jax.process_count() == 1:
        return
    from etils import epath

    folder = epath.Path(path if "://" in path else os.path.abspath(path))
    token = int(broadcast_from_main(np.asarray(np.random.default_rng().integers(1, 2**62), np.int64)))
    marker = folder / f".ntl_jax_shared_{token}"
    if is_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(token))
    sync("ntl_jax_shared_folder_written")
    unseen = any_process(not marker.exists())
    sync("ntl_jax_shared_folder_checked")
    if is_main_process():
        marker.unlink()
    if unseen:
        raise ValueError(f"{what}={path!r} is not one folder shared by all {jax.process_count()} processes (a process "
                         "does not see process 0's files there), so a resumed run would find other steps on each "
                         "host; allowed: a folder every process sees (NFS, gs:// with the 'gcs' extra), or bind "
                         "TrainerConfig.allow_unshared_checkpoint_dir = True")
