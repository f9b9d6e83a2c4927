"""Checkpoints (orbax) that survive corruption and preemption.

Layout: `<directory>/<step>/state` holds the array pytree (orbax StandardSave: jax/numpy arrays, python scalars, nnx
State, optax states, typed or raw PRNG keys) and `<directory>/<step>/meta` a JSON dict (data position, step counters).

Restoring the newest checkpoint (`restore(None, abstract)`) tries steps newest first. A step whose files cannot be read
(truncated, overwritten, missing) is logged as a warning and renamed to `<step>.corrupt` (kept for inspection,
invisible to orbax) so that later saves of that step number work; the previous step is tried next. A checkpoint whose
tree or array shapes differ from the abstract target is a configuration error, found from the orbax metadata before
reading any array, and raises ValueError instead of falling back.

Preemption: `PreemptionGuard` turns SIGTERM (and optionally SIGINT) into a flag the training loop polls between steps:
    with PreemptionGuard() as guard:
        for step in ...:
            train_step()
            if guard.stop_agreed():       # all processes agree
                store.save(step, state, meta, force=True); store.wait(); break
"""

from __future__ import annotations

import contextlib
import gc
import logging
import numbers
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import FrameType
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ntl_jax.distributed import multihost

logger = logging.getLogger(__name__)

CORRUPT_SUFFIX = ".corrupt"
_STATE, _META = "state", "meta"
_SETTLE_S = 0.25
MAX_AGREED_STEPS = 64  # candidates process 0 shares when resuming (max_to_keep is far below it in practice)
SignalHandler = Callable[[int, FrameType | None], Any] | int | None


# ----------------------------------------------------------------------------------------------------------- pytrees
def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaves_by_path(tree: Any, is_leaf: Callable[[Any], bool] | None = None) -> dict[tuple[str, ...], Any]:
    """Leaves keyed by their path as strings, so dict keys, list indices and NamedTuple fields compare equal to the
    nested dicts/lists orbax stores them as ('opt', '0', 'mu', ...)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
    return {tuple(_key_name(e) for e in path): leaf for path, leaf in flat}


def _stored_shape(abstract_leaf: Any) -> tuple[int, ...] | None:
    """Shape the leaf has on disk: typed PRNG keys are stored as their raw key data (extra trailing dim)."""
    if isinstance(abstract_leaf, numbers.Number):
        return ()
    if not hasattr(abstract_leaf, "shape") or not hasattr(abstract_leaf, "dtype"):
        return None
    if jax.dtypes.issubdtype(abstract_leaf.dtype, jax.dtypes.prng_key):
        return tuple(jax.eval_shape(jax.random.key_data, abstract_leaf).shape)
    return tuple(abstract_leaf.shape)


def check_against_metadata(abstract_pytree: Any, stored_tree: Any, step_dir: str | os.PathLike) -> None:
    """ValueError (one line) when the saved tree's paths or leaf shapes differ from the abstract target."""
    expected = _leaves_by_path(abstract_pytree)
    found = _leaves_by_path(stored_tree, is_leaf=lambda x: hasattr(x, "shape") and not isinstance(x, (dict, list)))
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra:
        show = lambda paths: ", ".join("/".join(p) for p in paths[:5]) + (" ..." if len(paths) > 5 else "")
        raise ValueError(f"checkpoint {step_dir} does not match the model/optimizer tree: missing in checkpoint "
                         f"[{show(missing)}], not in target [{show(extra)}]; check the model config")
    for path, leaf in expected.items():
        want = _stored_shape(leaf)
        got = tuple(found[path].shape) if found[path].shape is not None else None
        if want is not None and got is not None and want != got:
            raise ValueError(f"checkpoint {step_dir} leaf {'/'.join(path)} has shape {got} but the target expects "
                             f"{want}; the checkpoint was saved with a different model config")


def abstract_like(pytree: Any) -> Any:
    """Restore target for `pytree`: arrays become ShapeDtypeStruct with the same sharding, python scalars stay."""
    def to_abstract(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
        if isinstance(leaf, np.ndarray):
            return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype)
        return leaf
    return jax.tree.map(to_abstract, pytree)


def _json_ready(value: Any, where: str = "meta") -> Any:
    """`value` with numpy/jax scalars turned into python ones; ValueError for anything JSON cannot hold."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} key {key!r} must be a string (checkpoint meta is JSON)")
            out[key] = _json_ready(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_ready(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) == 0:
        return _json_ready(np.asarray(value).item(), where)
    raise ValueError(f"{where} has type {type(value).__name__}; checkpoint meta allows JSON values "
                     "(dict, list, str, int, float, bool, None, scalar arrays)")


class _DropUnretrievedTaskErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "exception was never retrieved" not in str(record.msg)


@contextlib.contextmanager
def _quiet_failed_async_reads() -> Iterator[None]:
    """Silence the echo of a failed read: orbax's sibling read tasks of the failing array end with the same error and
    asyncio would print each one ('Task exception was never retrieved', 'Event loop is closed' from reads finishing
    after orbax closed its loop); the first error is reported by `restore`."""
    asyncio_logger = logging.getLogger("asyncio")
    log_filter = _DropUnretrievedTaskErrors()
    previous_hook = sys.unraisablehook
    asyncio_logger.addFilter(log_filter)
    sys.unraisablehook = lambda unraisable: None
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            time.sleep(_SETTLE_S)  # in-flight sibling reads finish (and fail) while we are still filtering
        gc.collect()  # abandoned tasks report their errors when collected: do it while filtered
        sys.unraisablehook = previous_hook
        asyncio_logger.removeFilter(log_filter)


# ------------------------------------------------------------------------------------------------------------ store
def checkpoint_path(directory: str | os.PathLike) -> epath.Path:
    """A local path made absolute, or a URL (``gs://bucket/run``) kept as it is: orbax writes to both, from every
    process of a multi-host run when they share it."""
    text = os.fspath(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


class UnreadableElsewhere(RuntimeError):
    """This process reads the step, another one cannot: skip it everywhere, but it is not corrupted here."""


class CheckpointStore:
    """orbax CheckpointManager with items state=StandardSave(pytree), meta=JsonSave(dict); see the module docstring."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int | None = 3, save_interval_steps: int = 1) -> None:
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(f"max_to_keep={max_to_keep!r} must be a positive integer or None (keep all)")
        if not isinstance(save_interval_steps, int) or save_interval_steps < 1:
            raise ValueError(f"save_interval_steps={save_interval_steps!r} must be a positive integer")
        self.directory = checkpoint_path(directory)
        # Save exactly on multiples of the interval (and at orbax-detected preemption), not orbax's default extra
        # "first step of a fresh directory" save.
        policies = ocp.checkpoint_managers
        save_policy = policies.AnySavePolicy([policies.FixedIntervalPolicy(save_interval_steps),
                                              policies.PreemptionCheckpointingPolicy()])
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, save_decision_policy=save_policy, create=True)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={_STATE: ocp.StandardCheckpointHandler(), _META: ocp.JsonCheckpointHandler()})

    def step_dir(self, step: int) -> epath.Path:
        return self.directory / str(step)

    def save(self, step: int, pytree: Any, meta: Mapping[str, Any] | None = None, force: bool = False) -> bool:
        """Start saving `pytree` and `meta` as `step` (async: call `wait()` before relying on the files).

        Returns False when skipped: not a multiple of save_interval_steps (unless force) or `step` already saved.
        """
        if isinstance(step, bool) or not isinstance(step, (numbers.Integral, np.integer)) or step < 0:
            raise ValueError(f"step={step!r} must be a non-negative integer")
        step = int(step)
        meta_json = _json_ready(dict(meta or {}))
        # Decided once, by process 0: a process that skipped orbax's (collective) save while another ran it would
        # leave the other waiting.
        if bool(multihost.broadcast_from_main(np.asarray(step in self._manager.all_steps()))):
            logger.debug("checkpoint step %d already exists in %s; not saving it again", step, self.directory)
            return False
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(pytree), _META: ocp.args.JsonSave(meta_json)})
        return bool(self._manager.save(step, args=args, force=force))

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self._manager.wait_until_finished()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def latest_good_step(self) -> int | None:
        """Newest step whose metadata (tree + each array's header) reads back; damage inside array chunks is only
        found by `restore`, which then falls back."""
        self.wait()
        self._manager.reload()
        for step in reversed(self.all_steps()):
            try:
                with _quiet_failed_async_reads():
                    self._read_state_metadata(step)
                return step
            except Exception:  # noqa: BLE001 - any read failure means "not good"
                continue
        return None

    def _read_state_metadata(self, step: int) -> Any:
        stored = self._manager.item_metadata(step)[_STATE]
        if stored is None:
            raise ValueError(f"no state metadata in {self.step_dir(step)}")
        return getattr(stored, "tree", stored)

    def _restore_step(self, step: int, abstract_pytree: Any) -> tuple[Any, dict[str, Any]]:
        state_args = ocp.args.StandardRestore(abstract_pytree)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_STATE: state_args, _META: ocp.args.JsonRestore()}))
        return restored[_STATE], dict(restored[_META] or {})

    def agreed_steps(self) -> list[int]:
        """Process 0's step list (its newest ``MAX_AGREED_STEPS``), the same on every process: processes whose disks
        differ (a local checkpoint_dir, a lagging NFS) try the same candidates and make the same collective calls."""
        steps = self.all_steps()
        if multihost.process_count() == 1:
            return steps
        newest = np.full(MAX_AGREED_STEPS, -1, np.int64)
        newest[: len(steps[-MAX_AGREED_STEPS:])] = steps[-MAX_AGREED_STEPS:]
        return [int(s) for s in multihost.broadcast_from_main(newest) if s >= 0]

    def _try_step(self, step: int, abstract_pytree: Any) -> tuple[Any, dict[str, Any]] | Exception:
        """The restored step, or the read error; tree/shape mismatches raise ValueError (config error, not data).

        Every process first reads the step's metadata on its own; orbax's restore (collective across processes) runs
        only when all of them could, so one process without the step cannot leave the others waiting in it."""
        try:
            with _quiet_failed_async_reads():
                stored_tree = self._read_state_metadata(step)
            local_error = None
        except Exception as error:  # noqa: BLE001 - unreadable metadata = corrupted step
            local_error = error
        if multihost.any_process(local_error is not None):
            return local_error or UnreadableElsewhere(f"another process cannot read checkpoint step {step}")
        if abstract_pytree is not None:
            check_against_metadata(abstract_pytree, stored_tree, self.step_dir(step))
        try:
            with _quiet_failed_async_reads():
                return self._restore_step(step, abstract_pytree)
        except Exception as error:  # noqa: BLE001 - truncated/overwritten files raise many error types
            return error

    def restore(self, step: int | None = None, abstract_pytree: Any = None) -> tuple[Any, dict[str, Any], int] | None:
        """(pytree, meta, step) of `step`, or of the newest readable step when `step` is None (None if there is none).

        `abstract_pytree` (e.g. from `abstract_like` / `nnx.eval_shape`, leaves may be ShapeDtypeStruct with a
        sharding) fixes the structure (optax NamedTuples, nnx State) and where each array lands. Without it arrays come
        back as saved, containers as dicts/lists.
        """
        self.wait()
        self._manager.reload()
        steps = self.agreed_steps()
        if step is not None:
            if step not in steps:
                raise ValueError(f"checkpoint step {step} is not in {self.directory}; available steps: {steps}")
            result = self._try_step(step, abstract_pytree)
            if isinstance(result, Exception):
                raise RuntimeError(f"checkpoint step {step} in {self.step_dir(step)} cannot be read: "
                                   f"{type(result).__name__}: {str(result)[:300]}") from result
            return (*result, step)
        bad_steps = []
        for candidate in reversed(steps):
            result = self._try_step(candidate, abstract_pytree)
            # All processes must agree, or they would continue from different steps.
            if not multihost.any_process(isinstance(result, Exception)):
                self._quarantine(bad_steps)
                return (*result, candidate)
            reason = (f"{type(result).__name__}: {str(result)[:300]}" if isinstance(result, Exception)
                      else "another process could not read it")
            logger.warning("checkpoint step %d in %s is corrupted or unreadable (%s); falling back to the previous "
                           "step", candidate, self.step_dir(candidate), reason)
            if isinstance(result, Exception) and not isinstance(result, UnreadableElsewhere):
                bad_steps.append(candidate)  # only what this process itself cannot read is renamed .corrupt
        if bad_steps:
            logger.error("no readable checkpoint in %s (tried steps %s); starting fresh", self.directory, bad_steps)
            self._quarantine(bad_steps)
        return None

    def restore_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of ``step`` (no array is read)."""
        self._manager.reload()
        restored = self._manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
        return dict(restored[_META] or {})

    def restore_subtree(self, step: int, key: str, abstract_pytree: Any) -> Any:
        """Only ``state[key]`` of ``step`` (e.g. the actor without its optimiser state), shaped like
        ``abstract_pytree`` (leaves with shardings). The state is saved as an orbax PyTree, so a partial restore
        reads just that subtree's arrays."""
        check_against_metadata(abstract_pytree, self._read_state_metadata(step)[key], self.step_dir(step))
        target = {key: abstract_pytree}
        args = ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                      partial_restore=True)
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
            return checkpointer.restore(self.step_dir(step) / _STATE, args=args)[key]

    def _quarantine(self, steps: Iterable[int]) -> None:
        """Rename unreadable step dirs to '<step>.corrupt[.n]' so they are kept but no longer block saving that step."""
        steps = list(steps)
        if not multihost.any_process(bool(steps)):  # collective: every process returns here, or none does
            return
        if multihost.is_main_process():
            for step in steps:
                target = self.directory / f"{step}{CORRUPT_SUFFIX}"
                n = 0
                while target.exists():
                    n += 1
                    target = self.directory / f"{step}{CORRUPT_SUFFIX}.{n}"
                self.step_dir(step).rename(target)
                logger.warning("moved unreadable checkpoint %s to %s", self.step_dir(step), target)
        multihost.sync("ntl_jax_checkpoint_quarantine")
        self._manager.reload()

    def close(self) -> None:
        """Wait for pending saves and release orbax resources."""
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------------------- preemption
def _install_handlers(signums: Iterable[int],
                      handler: Callable[[int, FrameType | None], None]) -> dict[int, SignalHandler]:
    if threading.current_thread() is not threading.main_thread():
        raise ValueError("signal handlers can only be installed from the main thread; create the guard there")
    return {signum: signal.signal(signum, handler) for signum in signums}


def _restore_handlers(previous: Mapping[int, SignalHandler]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def install_sigterm_handler(callback: Callable[[int], None]) -> Callable[[], None]:
    """Call `callback(signum)` on SIGTERM instead of dying; returns a function that puts the previous handler back."""
    previous = _install_handlers([signal.SIGTERM], lambda signum, frame: callback(signum))
    return lambda: _restore_handlers(previous)


class PreemptionGuard:
    """Context manager: SIGTERM (and SIGINT when `handle_sigint`) set `should_stop` instead of killing the process.

    A second SIGINT raises KeyboardInterrupt, so an impatient Ctrl-C still stops at once. Previous handlers come back
    on exit.
    """

    def __init__(self, *, handle_sigint: bool = False) -> None:
        self._signums = [signal.SIGTERM] + ([signal.SIGINT] if handle_sigint else [])
        self._previous: dict[int, SignalHandler] | None = None
        self._stop_event = threading.Event()
        self.signal_name: str | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self._stop_event.is_set():
            raise KeyboardInterrupt
        if not self._stop_event.is_set():
            self.signal_name = signal.Signals(signum).name
            logger.warning("received %s: will save a checkpoint and stop after the current step", self.signal_name)
        self._stop_event.set()

    @property
    def should_stop(self) -> bool:
        """True once a handled signal arrived (or `request_stop` was called) in this process."""
        return self._stop_event.is_set()

    def request_stop(self, reason: str = "requested") -> None:
        """Ask the loop to checkpoint and stop, as a signal would."""
        self.signal_name = self.signal_name or reason
        self._stop_event.set()

    def stop_agreed(self) -> bool:
        """`should_stop` OR-ed over all processes; every process must call it at the same step."""
        return multihost.any_process(self.should_stop)

    def __enter__(self) -> PreemptionGuard:
        if self._previous is not None:
            raise ValueError("PreemptionGuard is already active; it cannot be entered twice")
        self._previous = _install_handlers(self._signums, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            _restore_handlers(self._previous)
            self._previous = None
