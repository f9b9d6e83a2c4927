#!/usr/bin/env python
"""The benchmarks' weight GEMMs timed alone in XLA:CPU and in PyTorch: why ratios against PyTorch move between CPUs.

The train-step and rollout rows of `benchmarks/` compare whole programs; their bulk is the weight GEMMs, which
XLA:CPU hands to its own kernels (YNNPACK, Eigen, its dot emitter) and PyTorch to its BLAS (oneDNN / MKL on x86).
This script times each of those GEMMs alone in both libraries, at the benchmarks' shapes, so a ratio that differs
between two machines can be traced to the libraries' kernels rather than to ntl-jax's program:

- ``train``: `benchmarks/train_step_efficiency.py`'s model at M = batch x seq rows, for each projection shape
  (`train_step_breakdown.projection_shapes`) the forward x @ W, input gradient dy @ W^T and weight gradient
  x^T @ dy; ``train_weight_gemms_s`` is the step's weight GEMMs at each library's rates
  (`train_step_breakdown.weight_gemm_seconds`): the part of a step no program can beat in that library.
- ``decode``: the rollout benchmark's machine limit, its decode loop's weight matmuls alone (M = 32 rows, 64
  steps; `machine_limit.decode_matmul_floor`, one compiled loop, XLA's faster dot path) for the mid and tiny
  models, in tokens/s, against the same matmuls in the same order run eagerly by PyTorch (`torch_decode_floor`),
  as transformers' `generate` runs them.
- ``matmul``: the 2048^3 matmul the benchmarks use as the machine's rate.

Each side runs in a fresh process with the suite's worker environment (`benchmarks.common.worker_env`): XLA
jitted (`train_step_breakdown.gemm_rates`) with the huge-page tunable `python -m ntl_jax.train` runs with, and
PyTorch once per `TORCH_THREAD_SETTINGS` setting (threads, wait policy, huge pages), its best per GEMM kept as the
baseline, as the suite does per row. ``torch_over_xla`` > 1 where PyTorch is faster. Prints one JSON line
(``units``: GFLOP/s for the GEMMs, tokens/s for the decode floors).

    python benchmarks/probes/gemm_vs_torch.py --reps 20
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DECODE_ROWS, DECODE_STEPS = 32, 64  # benchmarks/rollout.py's BATCH and NEW_TOKENS


def cases(scale: str) -> dict[str, tuple[int, dict[str, tuple[int, int]], tuple[str, ...]]]:
    """GEMM case -> (rows M, {name: [K, N]}, forms) at ``scale`` ('full': the benchmarks' shapes; 'smoke': toy)."""
    from benchmarks.train_step_efficiency import SIZES
    from train_step_breakdown import projection_shapes

    train = SIZES[scale]
    n = train["matmul_n"]
    return {"train": (train["batch"] * train["seq"], projection_shapes(train["spec"]),
                      ("forward", "input_grad", "weight_grad")),
            "matmul": (n, {"square": (n, n)}, ("forward",))}


def decode_models(scale: str) -> dict[str, Any]:
    """name -> the `ModelConfig` of each rollout model whose decode floor is compared."""
    from benchmarks.common import MICRO, MID, TINY, model_config

    specs = {"mid": MID, "tiny": TINY} if scale == "full" else {"micro": MICRO}
    return {name: model_config(spec) for name, spec in specs.items()}


def torch_decode_floor(config: Any, batch: int, steps: int, reps: int) -> float:
    """Tokens/s of `machine_limit.decode_matmul_floor`'s loop (the same matmuls in the same order, each step
    depending on the last) run eagerly in PyTorch."""
    import torch

    from benchmarks.machine_limit import decode_weight_shapes, median_seconds

    d, v = config.hidden_size, config.vocab_size
    shapes = decode_weight_shapes(config)
    generator = torch.Generator().manual_seed(0)
    layers = [{name: 0.02 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}
              for _ in range(config.num_hidden_layers)]
    head = 0.02 * torch.randn((d, v), generator=generator)
    x0 = torch.randn((batch, d), generator=generator)

    @torch.inference_mode()
    def loop() -> None:
        x, kv_sum = x0, torch.zeros(())
        for _ in range(steps):
            for w in layers:
                kv_sum = kv_sum + torch.sum(x @ w["k"]) + torch.sum(x @ w["v"])
                x = x + (x @ w["q"]) @ w["o"]
                x = x + ((x @ w["gate"]) * (x @ w["up"])) @ w["down"]
                x = x * 0.5
            x = x + 1e-3 * (x @ head)[:, :d]
        float(kv_sum)

    # The loop's activations shrink towards zero; XLA flushes denormals (`xla_cpu_ftz`), PyTorch by default does
    # not, and denormal arithmetic would time the CPU's microcode instead of the GEMMs (~5x slower here).
    torch.set_flush_denormal(True)
    try:
        return batch * steps / median_seconds(loop, reps)
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default, for whatever runs in this process next


def xla_side(scale: str, reps: int) -> dict[str, dict[str, float]]:
    """GFLOP/s of every case's GEMMs in XLA (jitted, alone); ``decode``: tokens/s of each model's decode floor."""
    from benchmarks.machine_limit import decode_matmul_floor
    from train_step_breakdown import gemm_rates

    rates = {}
    for case, (rows, shapes, forms) in cases(scale).items():
        every = gemm_rates(rows, shapes, reps)
        rates[case] = {key: rate for key, rate in every.items() if key.split("/")[1] in forms}
    floor_reps = max(1, reps // 4)  # each is a 64-step loop, not one GEMM
    rates["decode"] = {name: decode_matmul_floor(config, DECODE_ROWS, DECODE_STEPS, reps=floor_reps)["tokens_per_s"]
                       for name, config in decode_models(scale).items()}
    return rates


def torch_side(scale: str, reps: int, threads: int) -> dict[str, dict[str, float]]:
    """`xla_side`'s figures in PyTorch at ``threads`` threads: {case: {name/form or model: rate}}."""
    import numpy as np
    import torch

    from benchmarks.machine_limit import median_seconds

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for case, (rows, shapes, forms) in cases(scale).items():
        out[case] = {}
        for name, (k, n) in shapes.items():
            x, w, dy = (torch.from_numpy(rng.random(shape, dtype=np.float32))
                        for shape in ((rows, k), (k, n), (rows, n)))
            calls = {"forward": lambda: x @ w, "input_grad": lambda: dy @ w.T, "weight_grad": lambda: x.T @ dy}
            for form in forms:
                out[case][f"{name}/{form}"] = 2.0 * rows * k * n / median_seconds(calls[form], reps) / 1e9
    out["decode"] = {name: torch_decode_floor(config, DECODE_ROWS, DECODE_STEPS, max(1, reps // 4))
                     for name, config in decode_models(scale).items()}
    return out


def _run_side(scale: str, reps: int, side: str, threads: int = 0, env: dict[str, str] | None = None) -> Any:
    """One side's JSON from a fresh process of this script in the suite's worker environment plus ``env``."""
    from benchmarks.common import worker_env

    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--side", side, "--threads", str(threads),
                           "--scale", scale, "--reps", str(reps)], capture_output=True, text=True,
                          env=worker_env(env), cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"the {side} side failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def summarize(xla: dict[str, dict[str, float]], torch: dict[str, dict[str, dict[str, float]]],
              scale: str) -> dict[str, Any]:
    """Both libraries' rates, PyTorch's best setting per GEMM, the ratios and the train step's GEMM seconds."""
    from benchmarks.train_step_efficiency import SIZES
    from train_step_breakdown import weight_gemm_seconds

    best = {case: {key: max(torch[t][case][key] for t in torch) for key in rates} for case, rates in xla.items()}
    best_setting = {case: {key: max(torch, key=lambda t: torch[t][case][key]) for key in rates}
                    for case, rates in xla.items()}
    rows, shapes, _ = cases(scale)["train"]
    spec = SIZES[scale]["spec"]
    return {
        "units": "train, matmul: GFLOP/s; decode: tokens/s",
        "xla": {case: {k: round(v, 3) for k, v in rates.items()} for case, rates in xla.items()},
        "torch_best": {case: {k: round(v, 3) for k, v in rates.items()} for case, rates in best.items()},
        "torch_best_setting": best_setting,
        "torch": {t: {case: {k: round(v, 3) for k, v in rates.items()} for case, rates in per.items()}
                  for t, per in torch.items()},
        "torch_over_xla": {case: {k: round(best[case][k] / v, 3) for k, v in rates.items()}
                           for case, rates in xla.items()},
        "train_weight_gemms_s": {"xla": weight_gemm_seconds(spec, rows, xla["train"], shapes),
                                 "torch_best": weight_gemm_seconds(spec, rows, best["train"], shapes)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed calls per GEMM (median)")
    parser.add_argument("--scale", choices=("full", "smoke"), default="full", help="the benchmarks' shapes or toy")
    parser.add_argument("--side", choices=("xla", "torch"), default="", help=argparse.SUPPRESS)  # worker process
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)  # the torch side's threads
    args = parser.parse_args()
    if args.reps < 1:
        parser.error(f"--reps must be >= 1, got {args.reps}")

    sys.path.insert(0, REPO_ROOT)  # the benchmarks package
    if args.side:
        rates = xla_side(args.scale, args.reps) if args.side == "xla" else torch_side(args.scale, args.reps,
                                                                                      args.threads)
        print(json.dumps(rates), flush=True)
        return
    from benchmarks.common import TORCH_THREAD_SETTINGS, machine_info

    start = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load = os.getloadavg()
    xla = _run_side(args.scale, args.reps, "xla")
    torch = {setting: _run_side(args.scale, args.reps, "torch", threads, env)
             for setting, (threads, env) in TORCH_THREAD_SETTINGS.items()}

    print(json.dumps({"scale": args.scale, "reps": args.reps, "start": start, "load_before": load,
                      "load_after": os.getloadavg(), "machine": machine_info(),
                      **summarize(xla, torch, args.scale)}), flush=True)


if __name__ == "__main__":
    main()
