"""Benchmark 4 (logprob_memory): peak memory of the log-prob + entropy + digit-slice pass, chunked vs naive.

`token_logprobs` (chunked over the sequence with rematerialisation, the product path) vs `token_logprobs_naive`
(full [B, T, V] float32 logits) at vocabulary 151,936, sequence 512, batch 8, hidden 896 (Qwen2.5-0.5B's width),
each in its own process, for the default chunk size (`PPOConfig.logprob_chunk_size`, 32) and others; smoke scale
runs a toy shape (`SHAPES['smoke']`). Inputs (hidden states, LM-head
kernel, targets) are created and the program compiled (ahead of time) before the measured call. Memory is read from /proc/self/statm by a sampling thread (every 0.5 ms)
and from `resource.getrusage(RUSAGE_SELF).ru_maxrss`:

- `pass_peak` = highest RSS during the call - RSS just before it (what the pass itself needs; the ratio target
  is checked on this);
- `process_peak` = ru_maxrss of the whole process (inputs, XLA runtime and compiler included).

Kinds: `forward` (what the old-log-prob pass runs) and `value_and_grad` (what the actor update runs; gradient of a
loss of all three outputs with respect to hidden states and kernel). The naive value_and_grad side needs ~10 GB; it
is skipped when the machine has less memory available than `NAIVE_GRAD_MIN_FREE_GB`.
"""
from __future__ import annotations

import math
import os
import resource
import threading
import time
from typing import Any

from benchmarks.common import Result, check_scale, run_worker, worker_main

BATCH, SEQ, HIDDEN, VOCAB = 8, 512, 896, 151_936
SHAPES = {"full": (BATCH, SEQ, HIDDEN, VOCAB), "quick": (BATCH, SEQ, HIDDEN, VOCAB), "smoke": (4, 128, 64, 16384)}
DEFAULT_CHUNK = 32  # PPOConfig.logprob_chunk_size default (tests/test_benchmarks.py checks they agree)
# scale -> (kind, chunk sizes of the chunked side)
CASES: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "full": (("forward", (128, 64, 32)), ("value_and_grad", (128, 32))),
    "quick": (("forward", (DEFAULT_CHUNK,)),),
    "smoke": (("forward", (DEFAULT_CHUNK,)), ("value_and_grad", (DEFAULT_CHUNK,))),
}
TARGET = 0.2
NAIVE_GRAD_MIN_FREE_GB = 14.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class _PeakSampler(threading.Thread):
    """Polls this process's RSS until stopped; `peak` is the highest value seen."""

    def __init__(self, interval_s: float = 5e-4):
        super().__init__(daemon=True)
        self.interval_s, self.peak, self._stop_event = interval_s, _rss_bytes(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _rss_bytes())
        return self.peak


def measure_pass(args: dict[str, Any]) -> dict[str, Any]:
    import gc

    import jax
    import jax.numpy as jnp

    from ntl_jax.models.logprobs import token_logprobs, token_logprobs_naive

    fn = token_logprobs if args["impl"] == "chunked" else token_logprobs_naive
    batch, seq, width, vocab = args.get("shape", SHAPES["full"])
    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (batch, seq, width), jnp.float32)
    kernel = 0.02 * jax.random.normal(keys[1], (width, vocab), jnp.float32)
    targets = jax.random.randint(keys[2], (batch, seq), 0, vocab, jnp.int32)
    digit_ids = jnp.arange(15, 25, dtype=jnp.int32)

    def outputs(h, w):
        return fn(h, w, targets, digit_ids=digit_ids, chunk_size=args["chunk"], compute_entropy=True)

    def loss(h, w):
        out = outputs(h, w)
        return jnp.mean(out.logprobs) + 1e-3 * jnp.mean(out.entropy) + 1e-3 * jnp.mean(out.digit_logits ** 2)

    program = outputs if args["kind"] == "forward" else jax.value_and_grad(loss, argnums=(0, 1))
    compiled = jax.jit(program).lower(hidden, kernel).compile()
    jax.block_until_ready((hidden, kernel, targets))
    gc.collect()
    rss_before = _rss_bytes()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sampler = _PeakSampler()
    sampler.start()
    start = time.perf_counter()
    out = compiled(hidden, kernel)
    jax.block_until_ready(out)
    seconds = time.perf_counter() - start
    peak_sampled = sampler.stop()
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = max(peak_sampled, maxrss_after if maxrss_after > maxrss_before else 0)
    return {"rss_before_gb": rss_before / 2**30, "pass_peak_gb": (peak - rss_before) / 2**30,
            "process_peak_gb": max(maxrss_after, peak) / 2**30, "seconds": seconds,
            "input_gb": (hidden.nbytes + kernel.nbytes + targets.nbytes) / 2**30}


def _available_gb() -> float:
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: line.split()[1] for line in f}
    return int(info["MemAvailable"]) / 2**20


def run(scale: str) -> list[Result]:
    results = []
    shape = SHAPES[check_scale(scale)]
    for kind, chunks in CASES[scale]:
        if kind == "value_and_grad" and scale != "smoke" and _available_gb() < NAIVE_GRAD_MIN_FREE_GB:
            print(f"logprob_memory: skipping value_and_grad ({_available_gb():.1f} GB available, "
                  f"needs {NAIVE_GRAD_MIN_FREE_GB})", flush=True)
            continue
        naive = run_worker("logprob_memory", "measure_pass", {"impl": "naive", "kind": kind, "chunk": DEFAULT_CHUNK,
                                                               "shape": shape})
        for chunk in chunks:
            chunked = run_worker("logprob_memory", "measure_pass", {"impl": "chunked", "kind": kind, "chunk": chunk,
                                                                     "shape": shape})
            label = f"{kind}, chunk {chunk}" + (" (default)" if chunk == DEFAULT_CHUNK else "")
            results.append(Result(
                benchmark="logprob_memory", case=label,
                ours=f"{chunked['pass_peak_gb']:.2f} GB (process {chunked['process_peak_gb']:.2f})",
                baseline=f"{naive['pass_peak_gb']:.2f} GB (process {naive['process_peak_gb']:.2f})",
                # A toy shape's naive pass can fit in memory the process already holds (no RSS growth).
                ratio=chunked["pass_peak_gb"] / naive["pass_peak_gb"] if naive["pass_peak_gb"] > 0 else math.nan,
                ratio_desc="pass peak RSS chunked / naive",
                target_op="<=", target=TARGET,
                details={"shape": "batch {}, seq {}, hidden {}, vocab {}, float32".format(*shape),
                         "outputs": "log-prob of targets, entropy, digit logit slice [B,T,10]",
                         "process_peak_ratio": chunked["process_peak_gb"] / naive["process_peak_gb"],
                         "chunked": chunked, "naive": naive}))
    return results


if __name__ == "__main__":
    worker_main({"measure_pass": measure_pass})
