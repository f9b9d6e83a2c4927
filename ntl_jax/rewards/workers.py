"""Reward runners: score a batch with a user reward function so that no exception or hang can stop training.

Each item is a dict with ``data_source``, ``solution_str``, ``ground_truth``, optional ``extra_info`` and any further
keyword arguments (``ntl_info``, ``tau``); the function is called with keywords exactly as verl calls
``compute_score``. A call that raises, returns something ``normalize_reward_output`` rejects (wrong type, NaN/Inf),
or exceeds ``timeout_s`` gets ``fallback_score``, empty extras, a warning naming the sample index, and is counted in
``RewardResult.num_errors`` / ``num_timeouts`` (``RewardResult.to_metrics()``: ``reward/errors``,
``reward/timeouts``).

- ``LocalRewardRunner``: in-process, one sample after another. With a timeout the calls run in order on a daemon
  worker thread (one hand-off per batch); a call that overruns is abandoned (Python cannot kill a thread: it keeps running in the background, but
  as a daemon it never blocks interpreter exit) and a fresh thread takes the next sample.
- ``RayRewardRunner``: ``num_workers`` Ray actors, each loading the function itself from the ``RewardFnSpec``.
  Samples are handed out in order, round-robin over the actors, up to ``max_inflight_per_worker`` queued per actor
  (pipelining hides the round trip). Only the sample at the head of an actor's queue is running, so its clock starts
  when the previous one finished (or when the actor became ready: start-up never counts). A head sample past
  ``timeout_s`` -> that actor is killed (``ray.kill``) and replaced, the sample is a timeout, the samples queued
  behind it are handed out again. An actor that dies (``RayActorError``) is replaced and all its unfinished samples
  are recomputed; a sample whose call was running in ``max_sample_retries + 1`` actor deaths is an error. (A death
  is blamed on the oldest unfinished sample. With more than one sample in flight, a result the actor computed but
  had not delivered when it died is lost too; that sample is blamed and recomputed, so a healthy sample is only
  failed if that happens ``max_sample_retries + 1`` times. ``max_inflight_per_worker=1`` makes blame exact.)
  Results are stored by index and each index is recorded once, so no sample is lost or counted twice.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import queue
import threading
import time
from collections import Counter, deque
from typing import Any, Callable, NamedTuple

import numpy as np

from ntl_jax.rewards.registry import RewardFnSpec, load_reward_function, normalize_reward_output

logger = logging.getLogger(__name__)

REQUIRED_ITEM_KEYS = ("data_source", "solution_str", "ground_truth")
MAX_LOGGED_FAILURES = 10  # per batch; the rest are summarised in one line
_DEATH_GRACE_S = 10.0  # after an actor death, how long its remaining refs may take to resolve
# AF_UNIX paths are limited to 107 bytes; Ray appends "/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store".
_RAY_MAX_TEMP_DIR_CHARS = 107 - len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")


class RewardResult(NamedTuple):
    scores: np.ndarray  # float32 [N]
    extras: list[dict]  # per sample; {} for failed samples
    num_errors: int
    num_timeouts: int

    def to_metrics(self) -> dict[str, float]:
        return {"reward/errors": float(self.num_errors), "reward/timeouts": float(self.num_timeouts)}


def _check_items(items: list[dict]) -> list[dict]:
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"reward item {index} must be a dict, got {type(item).__name__}")
        missing = [key for key in REQUIRED_ITEM_KEYS if key not in item]
        if missing:
            raise ValueError(f"reward item {index} lacks keys {missing}; required: {list(REQUIRED_ITEM_KEYS)}")
    return list(items)


def call_reward(fn: Callable[..., Any], item: dict) -> tuple[float, dict]:
    """``normalize_reward_output(fn(data_source=..., solution_str=..., ground_truth=..., extra_info=..., **rest))``."""
    return normalize_reward_output(fn(**{"extra_info": None, **item}))


def _check_runner_args(timeout_s: float | None, fallback_score: float) -> None:
    if timeout_s is not None and not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s={timeout_s!r} must be None (no limit) or a finite number > 0")
    if not math.isfinite(fallback_score):
        raise ValueError(f"fallback_score={fallback_score!r} must be finite")


class _Outcomes:
    """Per-index results of one batch; every index is recorded exactly once."""

    def __init__(self, num_items: int, fallback_score: float):
        self.scores = np.full(num_items, fallback_score, dtype=np.float32)
        self.extras: list[dict] = [{} for _ in range(num_items)]
        self.recorded = np.zeros(num_items, dtype=bool)
        self.counts = Counter()

    def _claim(self, index: int) -> None:
        if self.recorded[index]:
            raise RuntimeError(f"reward sample {index} recorded twice (internal error)")
        self.recorded[index] = True

    def ok(self, index: int, score: float, extras: dict) -> None:
        self._claim(index)
        self.scores[index], self.extras[index] = score, extras

    def failed(self, index: int, kind: str, message: str) -> None:
        self._claim(index)
        self.counts[kind] += 1
        if sum(self.counts.values()) <= MAX_LOGGED_FAILURES:
            logger.warning("reward sample %d: %s (%s); using the fallback score", index, kind, message)

    def result(self) -> RewardResult:
        if not self.recorded.all():
            missing = np.flatnonzero(~self.recorded).tolist()
            raise RuntimeError(f"reward samples {missing} never scored (internal error)")
        failures = sum(self.counts.values())
        if failures > MAX_LOGGED_FAILURES:
            logger.warning("reward batch: %d errors, %d timeouts in total (first %d logged)",
                           self.counts["error"], self.counts["timeout"], MAX_LOGGED_FAILURES)
        return RewardResult(self.scores, self.extras, self.counts["error"], self.counts["timeout"])


class _GuardThread:
    """A daemon thread that scores a list of items in order, putting each ``(index, status, value)`` on ``results``
    as it finishes; abandoned on a timeout (it exits after its current call). One hand-off per batch, not per item:
    a thread switch per item cost more than the arithmetic rewards themselves."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._abandoned = False
        threading.Thread(target=self._loop, name="reward-call", daemon=True).start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            for index, item in job:
                if self._abandoned:
                    return
                try:
                    self.results.put((index, "ok", call_reward(self.fn, item)))
                except BaseException as exc:  # noqa: BLE001 - SystemExit from user code must not escape either
                    self.results.put((index, "error", exc))

    def submit(self, indexed_items: list[tuple[int, dict]]) -> None:
        self._jobs.put(indexed_items)

    def abandon(self) -> None:
        self._abandoned = True
        self._jobs.put(None)


class LocalRewardRunner:
    """Scores items in this process, one after another, each call limited to ``timeout_s`` (None: no limit)."""

    def __init__(self, spec: RewardFnSpec, timeout_s: float | None = 60.0, fallback_score: float = 0.0):
        _check_runner_args(timeout_s, fallback_score)
        self.fn = load_reward_function(spec)
        self.timeout_s, self.fallback_score = timeout_s, float(fallback_score)
        self._guard: _GuardThread | None = None

    @staticmethod
    def _record(outcomes: _Outcomes, index: int, status: str, value: Any) -> None:
        if status == "ok":
            outcomes.ok(index, *value)
        else:
            outcomes.failed(index, "error", f"{type(value).__name__}: {value}")

    def _score_inline(self, items: list[dict], outcomes: _Outcomes) -> None:
        for index, item in enumerate(items):
            try:
                self._record(outcomes, index, "ok", call_reward(self.fn, item))
            except (Exception, SystemExit) as exc:
                self._record(outcomes, index, "error", exc)

    def _score_guarded(self, items: list[dict], outcomes: _Outcomes) -> None:
        """Items run in order on the guard thread; each result must arrive within ``timeout_s`` of the previous
        one (the item's own run time, as items run back to back). On a timeout the thread is abandoned, the item
        gets the fallback and a fresh thread takes the items after it."""
        pending = list(enumerate(items))
        while pending:
            if self._guard is None:
                self._guard = _GuardThread(self.fn)
            self._guard.submit(pending)
            for position, (index, _) in enumerate(pending):
                try:
                    got, status, value = self._guard.results.get(timeout=self.timeout_s)
                except queue.Empty:
                    self._guard.abandon()
                    self._guard = None
                    outcomes.failed(index, "timeout", f"no result after {self.timeout_s} s; call abandoned")
                    pending = pending[position + 1:]
                    break
                if got != index:
                    raise RuntimeError(f"reward sample {got} arrived in place of {index} (internal error)")
                self._record(outcomes, index, status, value)
            else:
                pending = []

    def score(self, items: list[dict]) -> RewardResult:
        items = _check_items(items)
        outcomes = _Outcomes(len(items), self.fallback_score)
        if self.timeout_s is None:
            self._score_inline(items, outcomes)
        else:
            self._score_guarded(items, outcomes)
        return outcomes.result()

    def close(self) -> None:
        if self._guard is not None:
            self._guard.abandon()
            self._guard = None

    def __enter__(self) -> "LocalRewardRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def ray_temp_dir(output_dir: str) -> str:
    """``<output_dir>/ray`` when it is short enough for Ray's unix-socket paths, else a short folder under /tmp that
    ``<output_dir>/ray`` links to, so the files stay findable."""
    preferred = os.path.join(os.path.abspath(output_dir), "ray")
    if len(preferred) <= _RAY_MAX_TEMP_DIR_CHARS:
        return preferred
    short = tempfile.mkdtemp(prefix="ntl_ray_", dir="/tmp" if os.path.isdir("/tmp") else None)
    if len(short) > _RAY_MAX_TEMP_DIR_CHARS:
        raise ValueError(f"no Ray temp dir of at most {_RAY_MAX_TEMP_DIR_CHARS} characters: {preferred!r} and "
                         f"{short!r} are too long; allowed: a shorter TrainerConfig.output_dir")
    if not os.path.lexists(preferred):
        os.symlink(short, preferred)
    logger.info("Ray temp dir %s (linked from %s; the output path is too long for Ray's sockets)", short, preferred)
    return short


def ensure_ray(num_cpus: int | None = None, temp_dir: str | None = None) -> None:
    """Start Ray in this process if it is not running: dashboard off, usage stats off, no token auth, temp files in
    ``temp_dir`` (at most 43 characters: Ray's socket paths live under it). ``RAY_USAGE_STATS_ENABLED=0`` and
    ``RAY_AUTH_MODE=disabled`` are set unless already set in the environment."""
    init_kwargs: dict[str, Any] = dict(
        num_cpus=num_cpus, include_dashboard=False, ignore_reinit_error=True, configure_logging=False
    )
    if temp_dir is not None:
        temp_dir = os.path.abspath(temp_dir)
        if len(temp_dir) > _RAY_MAX_TEMP_DIR_CHARS:
            raise ValueError(f"temp_dir={temp_dir!r} is {len(temp_dir)} characters; Ray's socket paths under it "
                             f"allow at most {_RAY_MAX_TEMP_DIR_CHARS} (use a short path such as /tmp/ray_<run>)")
        init_kwargs["_temp_dir"] = temp_dir
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return
    if temp_dir is not None:
        os.makedirs(temp_dir, exist_ok=True)
    ray.init(**init_kwargs)


class _RewardActor:
    """Ray actor body: loads the reward function from the spec in the worker process, scores one item per call."""

    def __init__(self, spec: RewardFnSpec):
        self._fn = load_reward_function(spec)

    def ready(self) -> int:
        return os.getpid()

    def score(self, item: dict) -> tuple[str, float, dict, str]:
        try:
            score, extras = call_reward(self._fn, item)
        except (Exception, SystemExit) as exc:
            return "error", 0.0, {}, f"{type(exc).__name__}: {exc}"
        return "ok", score, extras, ""


_REMOTE_ACTOR_CLASS = None


def _remote_actor_class():
    global _REMOTE_ACTOR_CLASS
    if _REMOTE_ACTOR_CLASS is None:
        import ray

        _REMOTE_ACTOR_CLASS = ray.remote(_RewardActor)
    return _REMOTE_ACTOR_CLASS


@dataclasses.dataclass
class _Worker:
    actor: Any
    ready_ref: Any  # None once the actor has started
    started_at: float
    inflight: deque = dataclasses.field(default_factory=deque)  # (index, ref), head is running
    head_since: float = 0.0


class RayRewardRunner:
    """Scores items in ``num_workers`` Ray actors; see the module docstring for timeouts and actor failures.

    Ray must already be initialised (``ensure_ray``). ``num_cpus_per_worker`` is each actor's CPU reservation;
    ``startup_timeout_s`` bounds how long an actor may take to start (e.g. waiting for free CPUs).
    """

    def __init__(
        self,
        spec: RewardFnSpec,
        num_workers: int = 2,
        timeout_s: float | None = 60.0,
        fallback_score: float = 0.0,
        *,
        max_inflight_per_worker: int = 4,
        max_sample_retries: int = 2,
        num_cpus_per_worker: float = 1.0,
        startup_timeout_s: float = 120.0,
    ):
        import ray

        _check_runner_args(timeout_s, fallback_score)
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers={num_workers!r} must be an int >= 1")
        if max_inflight_per_worker < 1:
            raise ValueError(f"max_inflight_per_worker={max_inflight_per_worker!r} must be >= 1")
        if not ray.is_initialized():
            raise RuntimeError("RayRewardRunner needs Ray running: call ensure_ray() or ray.init() first")
        load_reward_function(spec)  # fail here, with the loader's message, rather than in every actor
        self.spec, self.timeout_s, self.fallback_score = spec, timeout_s, float(fallback_score)
        self.max_inflight_per_worker, self.max_sample_retries = max_inflight_per_worker, max_sample_retries
        self.num_cpus_per_worker, self.startup_timeout_s = num_cpus_per_worker, startup_timeout_s
        self.num_restarts = 0  # actors replaced after a death or a timeout, over the runner's life
        self.num_recomputed = 0  # samples handed out again after their actor went away
        self._workers = [self._start_worker() for _ in range(num_workers)]

    @property
    def actors(self) -> list[Any]:
        """The current actor handles (they change when an actor is replaced)."""
        return [worker.actor for worker in self._workers]

    def _start_worker(self) -> _Worker:
        actor = _remote_actor_class().options(num_cpus=self.num_cpus_per_worker, max_restarts=0).remote(self.spec)
        return _Worker(actor=actor, ready_ref=actor.ready.remote(), started_at=time.monotonic())

    def _replace(self, slot: int, pending: deque, crashed_index: int | None, retries: Counter) -> list[int]:
        """Kill worker ``slot``, start a new one, requeue its unfinished samples; return those given up on."""
        import ray

        worker = self._workers[slot]
        ray.kill(worker.actor, no_restart=True)
        unfinished = [index for index, _ in worker.inflight]
        given_up = []
        if crashed_index is not None:
            retries[crashed_index] += 1
            if retries[crashed_index] > self.max_sample_retries:
                given_up.append(crashed_index)
        requeue = [index for index in unfinished if index not in given_up]
        pending.extendleft(reversed(requeue))
        self.num_recomputed += len(requeue)
        self.num_restarts += 1
        self._workers[slot] = self._start_worker()
        return given_up

    def _fill(self, items: list[dict], pending: deque) -> None:
        while pending:
            free = [w for w in self._workers if len(w.inflight) < self.max_inflight_per_worker]
            if not free:
                return
            for worker in free:  # round-robin: one sample per free worker per pass
                if not pending:
                    return
                index = pending.popleft()
                if not worker.inflight:
                    worker.head_since = time.monotonic()
                worker.inflight.append((index, worker.actor.score.remote(items[index])))

    def _wait_timeout(self, now: float) -> float | None:
        deadlines = []
        for worker in self._workers:
            if worker.ready_ref is not None:
                deadlines.append(worker.started_at + self.startup_timeout_s)
            elif worker.inflight and self.timeout_s is not None:
                deadlines.append(worker.head_since + self.timeout_s)
        return None if not deadlines else max(0.0, min(deadlines) - now)

    def _check_started(self, worker: _Worker, ready: set, now: float) -> bool:
        """Confirm a starting actor is up; return True if it died (it may have died after starting)."""
        import ray

        if worker.ready_ref is None:
            return False
        if worker.ready_ref not in ready:
            if now - worker.started_at > self.startup_timeout_s:
                raise RuntimeError(f"reward actor did not start within {self.startup_timeout_s} s "
                                   f"(num_cpus_per_worker={self.num_cpus_per_worker}: are CPUs free in Ray?)")
            return False
        try:
            ray.get(worker.ready_ref)
        except ray.exceptions.RayActorError as exc:
            if exc.actor_init_failed:  # the function does not load in the worker: restarting cannot help
                raise RuntimeError(f"reward actor failed to start: {exc}") from exc
            return True
        worker.ready_ref, worker.head_since = None, now
        return False

    def _harvest(self, worker: _Worker, ready: set, outcomes: _Outcomes, died: bool) -> bool:
        """Record finished samples in queue order; return True if the actor died (its head is then unfinished).

        After a death every queued ref resolves promptly (a result sent before the death, or RayActorError),
        so they are all read, not only those in this round's ``ready``.
        """
        import ray

        while worker.inflight and (died or worker.inflight[0][1] in ready):
            index, ref = worker.inflight[0]
            try:
                status, score, extras, message = ray.get(ref, timeout=_DEATH_GRACE_S if died else None)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return True
            except ray.exceptions.RayError as exc:
                status, message = "error", f"{type(exc).__name__}: {exc}"
            worker.inflight.popleft()
            worker.ready_ref, worker.head_since = None, time.monotonic()
            if status == "ok":
                outcomes.ok(index, score, extras)
            else:
                outcomes.failed(index, status, message)
        return died

    def _advance(self, slot: int, ready: set, outcomes: _Outcomes, pending: deque, retries: Counter) -> None:
        """Consume finished work of worker ``slot``; replace it if it died or its head sample overran."""
        worker = self._workers[slot]
        now = time.monotonic()
        died = self._harvest(worker, ready, outcomes, self._check_started(worker, ready, now))
        if died:
            crashed = worker.inflight[0][0] if worker.inflight else None
            logger.warning("reward actor died (while scoring sample %s); restarting it", crashed)
            for given_up in self._replace(slot, pending, crashed, retries):
                outcomes.failed(given_up, "error", f"actor died {retries[given_up]} times while scoring it")
        elif (worker.ready_ref is None and worker.inflight and self.timeout_s is not None
              and now - worker.head_since > self.timeout_s):
            index, _ = worker.inflight.popleft()
            outcomes.failed(index, "timeout", f"no result after {self.timeout_s} s; actor killed and replaced")
            self._replace(slot, pending, None, retries)

    def score(self, items: list[dict]) -> RewardResult:
        import ray

        if not self._workers:
            raise RuntimeError("RayRewardRunner.score called after close()")
        items = _check_items(items)
        outcomes = _Outcomes(len(items), self.fallback_score)
        pending, retries = deque(range(len(items))), Counter()
        while pending or any(worker.inflight for worker in self._workers):
            self._fill(items, pending)
            refs = [w.ready_ref for w in self._workers if w.ready_ref is not None]
            refs += [ref for w in self._workers for _, ref in w.inflight]
            ready, _ = ray.wait(refs, num_returns=1, timeout=self._wait_timeout(time.monotonic()))
            if ready:  # collect everything else that is done too, without waiting
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ready_set = set(ready)
            for slot in range(len(self._workers)):
                self._advance(slot, ready_set, outcomes, pending, retries)
        return outcomes.result()

    def close(self) -> None:
        import ray

        for worker in self._workers:
            ray.kill(worker.actor, no_restart=True)
        self._workers = []

    def __enter__(self) -> "RayRewardRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
