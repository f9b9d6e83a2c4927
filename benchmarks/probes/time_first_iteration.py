#!/usr/bin/env python
"""A GRPO run's first iteration and its 20 iterations with and without `TrainerConfig.compile_ahead`, alternating.

Runs the `trl_grpo` benchmark's ntl-jax worker (`benchmarks.trl_grpo.ntl_jax_grpo`: the real trainer, tiny model,
32 prompts x 8 samples, <= 8 tokens) in fresh processes, the knob off and on in turn, `--pairs` times. `--cache cold`
gives every process an empty compilation cache (a first run); `--cache warm` fills one cache with an unmeasured
process first and lets every measured process load from it. Prints one JSON line per process: the knob, the first
iteration's seconds, the sum over all iterations, and the process's wall time (imports and start-up included).
`--compiles` adds each XLA compilation over 0.2 s: [function, thread, start and length in seconds, the start counted
from the start of training] ("compile-ahead_0" is the background thread), which shows the compilations that overlap.

    python benchmarks/probes/time_first_iteration.py --cache cold --pairs 3
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold", help="empty or pre-filled compilation cache")
    parser.add_argument("--pairs", type=int, default=3, help="(off, on) process pairs")
    parser.add_argument("--scale", choices=("full", "smoke"), default="full", help="the benchmark's shape or its toy size")
    parser.add_argument("--compiles", action="store_true", help="list each compilation over 0.2 s per process")
    args = parser.parse_args()

    sys.path.insert(0, REPO_ROOT)  # the benchmarks package
    from benchmarks.common import run_worker
    from benchmarks.trl_grpo import SIZES, make_checkpoint

    size = SIZES[args.scale]
    work = tempfile.mkdtemp(prefix="time_first_iteration_")
    common = {"path": make_checkpoint(os.path.join(work, "policy"), size["model"]),
              **{k: v for k, v in size.items() if k != "model"}}

    def run(name: str, compile_ahead: bool, cache: str) -> dict:
        return run_worker("trl_grpo", "ntl_jax_grpo", {**common, "compilation_cache_dir": cache,
                                                       "output_dir": os.path.join(work, name),
                                                       "compile_ahead": compile_ahead,
                                                       "log_compiles": args.compiles})

    shared = os.path.join(work, "xla_shared")
    if args.cache == "warm":
        run("fill", True, shared)
    for pair in range(args.pairs):
        for compile_ahead in (False, True):
            name = f"{pair}_{'on' if compile_ahead else 'off'}"
            out = run(name, compile_ahead, shared if args.cache == "warm" else os.path.join(work, f"xla_{name}"))
            print(json.dumps({"cache": args.cache, "compile_ahead": compile_ahead,
                              "first_iteration_s": round(out["iteration_s"][0], 3),
                              "iterations_s": round(sum(out["iteration_s"]), 3),
                              "process_wall_s": round(out["process_wall_s"], 3),
                              **({"compiles": [[c["function"], c["thread"], round(c["start_s"], 2), round(c["seconds"], 2)]
                                               for c in out["compiles"] if c["seconds"] > 0.2]} if args.compiles else {})}),
                  flush=True)


if __name__ == "__main__":
    main()
