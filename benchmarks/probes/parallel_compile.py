#!/usr/bin/env python
"""Do two XLA:CPU compilations overlap? The same pair of programs compiled one after the other, in two threads of
one process, and in two processes.

Why it matters: `TrainerConfig.compile_ahead` compiles the PPO updates in a background thread while the main
thread compiles the sampler's programs and generates. If compilations in one process do not run side by side,
compiling ahead can only overlap a compilation with the rollout's execution, never with another compilation.

Each program is a chain of `--depth` small matmul / tanh / sin blocks and its gradient (XLA's compile time grows
with the depth; the default takes a few seconds on a 2-core machine). Prints one JSON line: the wall seconds of
each mode and each compilation's own seconds. Every compilation is of a fresh program (no cache).

    python benchmarks/probes/parallel_compile.py --depth 40
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

_CHILD = "import sys; sys.path.insert(0, {root!r}); from parallel_compile import compile_seconds; " \
         "print(compile_seconds({seed}, {depth}))"


def compile_seconds(seed: int, depth: int) -> float:
    """Lower, then time the XLA compilation of, program ``seed`` (distinct seeds: distinct programs)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_compilation_cache", False)

    def chain(x):
        for i in range(depth):
            x = jnp.tanh(x @ x.T + i + seed) * 0.5 + jnp.sin(x) * 0.1
        return jnp.sum(x)

    lowered = jax.jit(jax.grad(chain)).lower(jnp.ones((64, 64), jnp.float32))
    start = time.perf_counter()
    lowered.compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=40, help="blocks per program (compile time grows with it)")
    args = parser.parse_args()
    depth = args.depth
    compile_seconds(-1, 2)  # import and initialise JAX before anything is timed

    start = time.perf_counter()
    sequential = [compile_seconds(seed, depth) for seed in (0, 1)]
    sequential_wall = time.perf_counter() - start

    threaded: dict[int, float] = {}
    threads = [threading.Thread(target=lambda s=seed: threaded.__setitem__(s, compile_seconds(s, depth)))
               for seed in (2, 3)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    threads_wall = time.perf_counter() - start

    root = sys.path[0]  # this script's directory
    children = [subprocess.Popen([sys.executable, "-c", _CHILD.format(root=root, seed=seed, depth=depth)],
                                 stdout=subprocess.PIPE, text=True) for seed in (4, 5)]
    start = time.perf_counter()  # the children's own compile seconds exclude their start-up; the wall includes it
    processes = [float(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    processes_wall = time.perf_counter() - start
    print(json.dumps({"depth": depth,
                      "sequential": {"wall_s": round(sequential_wall, 3), "compile_s": [round(x, 3) for x in sequential]},
                      "two_threads": {"wall_s": round(threads_wall, 3),
                                      "compile_s": [round(threaded[s], 3) for s in (2, 3)]},
                      "two_processes": {"compile_s": [round(x, 3) for x in processes],
                                        "wall_after_spawn_s": round(processes_wall, 3)}}), flush=True)


if __name__ == "__main__":
    main()
