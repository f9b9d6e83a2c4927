"""Compile the updates' programs in a background thread while the iteration's rollout runs.

XLA compiles a jitted function the first time it meets new argument shapes. A first PPO iteration therefore
compiles the sampler's programs, generates, and only then, seconds later, compiles the critic and actor updates
(about half of a first iteration on a 2-core CPU: docs/experiments/cpu_speed.md). The updates' argument shapes are
known before the rollout exists:

    rows     = ppo_mini_batch_size * rollout_n          (one mini-batch)
    prompts  = the sampler's bucket for the batch's longest prompt
    response = max_response_length

so `CompileAhead.start` traces and lowers them on abstract arguments (`jax.ShapeDtypeStruct`s with the
arguments' shardings) in the calling thread, which the first update call would have done anyway, and compiles the
lowered programs in one background thread; `CompileAhead.wait` joins it before the first update. A jitted
function's ``lower(...).compile()`` fills the caches its calls use, so the call finds the program
(`tests/test_compile_ahead.py` checks that the first update compiles nothing). XLA's compiler releases the GIL, so
a compilation runs beside the rollout; tracing holds the GIL, which is why it stays in the calling thread (run in
the background it slowed a warm-cache start, where compiling is only a cache load). On a 2-core machine the
overlap with the sampler's own compilation gains little: two compilations at once each take about twice as long
(`benchmarks/probes/parallel_compile.py`; docs/experiments/cpu_design_choices.md). A shape seen before is not
compiled again.
"""
from __future__ import annotations

import concurrent.futures
import logging
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ppo.steps import RolloutBatch

log = logging.getLogger(__name__)


def abstract_like(tree: Any) -> Any:
    """``jax.ShapeDtypeStruct`` (shape, dtype, sharding) of every array leaf of ``tree``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def abstract_rollout(rows: int, prompt_len: int, response_len: int, sharding: jax.sharding.Sharding) -> RolloutBatch:
    """The `RolloutBatch` the trainer assembles for ``rows`` responses, as abstract arrays placed by ``sharding``.

    Dtypes as `PPOTrainer.train_step` builds them: prompt ids / mask and response ids int32, the response mask and
    every per-token float float32, the NTL targets those of `DigitTargets.empty` (the same as with targets).
    """
    def spec(shape: Sequence[int], dtype: Any) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)

    tokens = (rows, response_len)
    per_token = spec(tokens, jnp.float32)
    targets = DigitTargets.empty(tokens)
    like_host = lambda x: spec(np.shape(x), np.asarray(x).dtype)  # noqa: E731
    return RolloutBatch(spec((rows, prompt_len), jnp.int32), spec((rows, prompt_len), jnp.int32),
                        spec(tokens, jnp.int32), per_token, per_token, per_token, per_token, per_token, per_token,
                        jax.tree.map(like_host, targets))


class CompileAhead:
    """``jitted.lower(*abstract_args)`` now, ``.compile()`` in one background thread; each key once."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._pool = (concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile-ahead")
                      if enabled else None)
        self._started: set[Hashable] = set()
        self._pending: list[concurrent.futures.Future] = []

    def seen(self, key: Hashable) -> bool:
        """Whether ``start`` would do nothing for ``key`` (started before, or compiling ahead is off)."""
        return not self.enabled or key in self._started

    def start(self, key: Hashable, jobs: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> bool:
        """Lower ``jobs`` ((jitted function, abstract args) pairs) and queue their compilation, unless ``key`` was
        started before; True if queued."""
        if self.seen(key):
            return False
        lowered = [jitted.lower(*args) for jitted, args in jobs]  # a bad signature raises here, key not marked
        self._started.add(key)
        self._pending.extend(self._pool.submit(program.compile) for program in lowered)
        log.info("compiling %d update program(s) for %s in the background", len(jobs), key)
        return True

    def wait(self) -> None:
        """Block until every queued compilation is done; re-raises the first error (a bug, not a fallback)."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
