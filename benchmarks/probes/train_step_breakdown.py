#!/usr/bin/env python
"""Where the train-step benchmark's time goes against the machine's matmul rate (issue 14's 90% target).

Builds `benchmarks/train_step_efficiency.py`'s ntl-jax step (mid model, batch 8 x 256: forward, backward, AdamW)
twice, as shipped and with attention replaced by the identity on q (`decoder.grouped_attention` patched while
tracing; same shapes everywhere else), and times `--reps` steps of each, one after the other (alternating them
slowed the shipped step in a trial: two sets of weights and optimizer state, ~1 GB, in use by turns). Then
times, alone and jitted, every weight GEMM the step runs (forward x @ W, input gradient dy @ W^T, weight gradient
x^T @ dy for each `projection_shapes` entry, M = batch x tokens rows) and the 2048^3 matmul the benchmark uses as
the machine's rate. Prints one JSON line:

- `step_s`, `no_attention_s`: median seconds of each step; `attention_share` = 1 - no_attention_s / step_s.
- `gemm_gflop_per_s`: GFLOP/s of each GEMM alone; `weight_gemms_alone_s`: the step's weight GEMMs (one layer's
  times L, the LM head with its rematerialised forward) at those rates, the time a step cannot beat without
  fewer FLOPs.
- `model_gflop_per_s` / `matmul_gflop_per_s`: the benchmark's efficiency figure for the shipped step.

`--profile DIR` also traces two shipped steps with `jax.profiler` and prints seconds by XLA op kind and the seconds
during which two or more ops ran at once (XLA:CPU runs independent ops concurrently on its thread pool).

    python benchmarks/probes/train_step_breakdown.py --reps 6
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import time
from typing import Any, Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gemm_rates(rows: int, shapes: dict[str, tuple[int, int]], reps: int) -> dict[str, float]:
    """GFLOP/s of x @ W, dy @ W^T and x^T @ dy for each named [K, N] weight at M = ``rows`` (jitted, alone)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks.machine_limit import median_seconds

    rng = np.random.default_rng(0)
    forms = {"forward": lambda x, w, dy: x @ w, "input_grad": lambda x, w, dy: dy @ w.T,
             "weight_grad": lambda x, w, dy: x.T @ dy}
    rates = {}
    for name, (k, n) in shapes.items():
        x, w, dy = (jnp.asarray(rng.random(shape, dtype=np.float32)) for shape in ((rows, k), (k, n), (rows, n)))
        for form, fn in forms.items():
            jitted = jax.jit(fn)
            rates[f"{name}/{form}"] = 2.0 * rows * k * n / median_seconds(
                lambda: jitted(x, w, dy).block_until_ready(), reps) / 1e9
    return rates


def projection_shapes(spec: Any) -> dict[str, tuple[int, int]]:
    """[K, N] of each weight kind of a `benchmarks.common.ModelSpec` decoder (k and v share one shape, gate and up
    another; head dim = hidden / heads)."""
    head_dim = spec.hidden // spec.heads
    return {"q": (spec.hidden, spec.heads * head_dim), "kv": (spec.hidden, spec.kv_heads * head_dim),
            "o": (spec.heads * head_dim, spec.hidden), "gate_up": (spec.hidden, spec.intermediate),
            "down": (spec.intermediate, spec.hidden), "lm_head": (spec.hidden, spec.vocab)}


def weight_gemm_seconds(spec: Any, rows: int, rates: dict[str, float], shapes: dict[str, tuple[int, int]]) -> float:
    """Seconds of the step's weight GEMMs at ``rates``: per layer q, k, v, o, gate, up, down (forward, input and
    weight gradients), times L; the LM head's forward twice (rematerialised in the chunked log-probs)."""
    per_shape = {name: {form: 2.0 * rows * k * n / (rates[f"{name}/{form}"] * 1e9)
                        for form in ("forward", "input_grad", "weight_grad")} for name, (k, n) in shapes.items()}
    layer_counts = {"q": 1, "kv": 2, "o": 1, "gate_up": 2, "down": 1}
    layer = sum(count * sum(per_shape[name].values()) for name, count in layer_counts.items())
    head = 2 * per_shape["lm_head"]["forward"] + per_shape["lm_head"]["input_grad"] + per_shape["lm_head"]["weight_grad"]
    return spec.layers * layer + head


def _stepper(step: Callable, state: tuple[Any, Any]) -> Callable[[], None]:
    """A blocking zero-argument call of one donated step that keeps the new state for the next call."""
    import jax

    holder = [state]

    def run() -> None:
        params, opt_state, loss = step(*holder[0])
        holder[0] = (params, opt_state)
        jax.block_until_ready(loss)

    return run


def profile_summary(step: Callable[[], Any], directory: str) -> dict[str, Any]:
    """Seconds per XLA op kind over two steps (/2) and seconds with >= 2 ops running at once (/2)."""
    import jax

    with jax.profiler.trace(directory):
        for _ in range(2):
            step()
    events = json.load(gzip.open(glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)[0]))["traceEvents"]
    ops = [e for e in events if e.get("ph") == "X" and "dur" in e and " " not in e["name"]
           and not e["name"].startswith(("ThunkExecutor", "$", "Slinky", "Pjit", "Parse", "Common"))]
    by_kind: collections.Counter = collections.Counter()
    for e in ops:
        by_kind[re.sub(r"\.\d+$", "", e["name"])] += e["dur"] / 2e6
    edges = sorted([(e["ts"], 1) for e in ops] + [(e["ts"] + e["dur"], -1) for e in ops])
    running, last, concurrent = 0, edges[0][0], 0.0
    for ts, change in edges:
        concurrent += (ts - last) if running >= 2 else 0
        running, last = running + change, ts
    return {"seconds_by_op_kind": {k: round(v, 4) for k, v in by_kind.most_common(12)},
            "seconds_two_or_more_ops_running": round(concurrent / 2e6, 3),
            "note": "asynchronous Eigen dots (the weight gradients XLA keeps off YNNPACK) show only their launch"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=6, help="timed steps per variant")
    parser.add_argument("--scale", choices=("full", "smoke"), default="full", help="the benchmark's shape or toy size")
    parser.add_argument("--profile", default="", help="directory for a jax.profiler trace of two shipped steps")
    args = parser.parse_args()

    sys.path.insert(0, REPO_ROOT)  # the benchmarks package
    from benchmarks.common import median, random_model
    from benchmarks.machine_limit import matmul_gflops
    from benchmarks.train_step_efficiency import SIZES, make_jax_step, step_flops
    from ntl_jax.models import decoder

    size = SIZES[args.scale]
    spec, batch, seq = size["spec"], size["batch"], size["seq"]
    shipped = decoder.grouped_attention
    times: dict[str, list[float]] = {}
    for variant, attention in (("shipped", shipped), ("no_attention", lambda q, *a, **kw: q)):
        decoder.grouped_attention = attention  # read when the step is traced (first call)
        try:
            step, state = make_jax_step(random_model(spec), "chunked", batch, seq)
            run = _stepper(step, state)
            for _ in range(2):  # compile, then the first run on fresh buffers (about twice as slow)
                run()
        finally:
            decoder.grouped_attention = shipped
        times[variant] = []
        for _ in range(args.reps):
            start = time.perf_counter()
            run()
            times[variant].append(time.perf_counter() - start)
        if variant == "shipped" and args.profile:
            profile = profile_summary(run, args.profile)
        del step, state, run
    step_s, no_attention_s = (median(times[v]) for v in ("shipped", "no_attention"))
    matmul_rate = matmul_gflops(size["matmul_n"])
    shapes = projection_shapes(spec)
    rows = batch * seq
    rates = gemm_rates(rows, shapes, reps=5)
    flops = step_flops(spec, batch, seq)
    summary = {"model": spec.describe(), "batch": batch, "seq": seq, "reps": args.reps, "step_s": step_s,
               "no_attention_s": no_attention_s, "attention_share": 1 - no_attention_s / step_s,
               "model_gflop_per_s": flops / step_s / 1e9, "matmul_gflop_per_s": matmul_rate,
               "efficiency": flops / step_s / 1e9 / matmul_rate,
               "weight_gemms_alone_s": weight_gemm_seconds(spec, rows, rates, shapes),
               "gemm_gflop_per_s": {k: round(v) for k, v in rates.items()}}
    if args.profile:
        summary["profile"] = profile
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
