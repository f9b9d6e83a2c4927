"""Benchmark 6 (learning_speed): PPO iterations to reach a held-out accuracy on the embedded default, NTL vs standard.

Runs the real command-line path (`ntl_jax.train.parse_gin` + `build_experiment` + `run_experiment`) with
`configs/standard.gin` and `configs/ntl_final.gin`, for `SEEDS` seeds, each run in its own process. Per seed both
modes start from the same supervised warm start: the standard run trains it (`WarmStartConfig.seed = seed`) and
its cached folder is copied into the NTL run's output directory, where `prepare_embedded_default` reuses it (same
cache key). Held-out greedy accuracy (`val-core/arithmetic/acc/mean@1`) is evaluated before PPO and every
`test_freq` iterations.

Threshold: `NTL_BENCH_ACC_THRESHOLD` (absolute accuracy) when set, else the seed's warm-start accuracy +
`THRESHOLD_DELTA`. Iterations to threshold = first evaluated step with accuracy >= threshold; a run that never
gets there counts as `max_steps + test_freq` (censored, flagged). Ratio = mean NTL iterations / mean standard
iterations over seeds (target <= 0.7), with the per-seed values as the spread.

Long (tens of minutes on 2 CPU cores): only run with `--only learning_speed`. `--quick` uses a tiny task
(`common.TOY_TASK_BINDINGS`: a 40-step warm start), 4 PPO iterations and one seed, to check the plumbing; smoke
scale the same with 2 iterations.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np

from benchmarks.common import TOY_TASK_BINDINGS, Result, check_scale, run_worker, worker_main

SEEDS = (0, 1, 2)
MAX_STEPS, TEST_FREQ = 200, 5
THRESHOLD_DELTA = 0.05
TARGET = 0.7
ACC_KEY = "val-core/arithmetic/acc/mean@1"
MODES = {"standard": "standard.gin", "ntl_final": "ntl_final.gin"}
# scale -> seeds, PPO iterations per run, iterations between held-out evaluations
SIZES = {"full": (SEEDS, MAX_STEPS, TEST_FREQ), "quick": ((0,), 4, 2), "smoke": ((0,), 2, 2)}


def train_run(args: dict[str, Any]) -> dict[str, Any]:
    """One embedded-default run through ntl_jax.train; returns the held-out accuracy curve."""
    from ntl_jax.ppo.metrics import read_metrics_jsonl
    from ntl_jax.train import CONFIG_DIR, build_experiment, parse_gin, run_experiment

    bindings = [f"ntl_jax.TrainerConfig.seed = {args['seed']}", f"ntl_jax.WarmStartConfig.seed = {args['seed']}",
                f"ntl_jax.TrainerConfig.total_training_steps = {args['max_steps']}",
                f"ntl_jax.TrainerConfig.test_freq = {args['test_freq']}",
                f"ntl_jax.TrainerConfig.save_freq = {10**9}", "ntl_jax.TrainerConfig.val_before_train = True",
                "ntl_jax.TrainerConfig.resume_mode = 'disable'", "ntl_jax.TrainerConfig.progress_bar = False",
                "ntl_jax.TrainerConfig.use_tensorboard = False", *args["extra_bindings"]]
    parse_gin([os.path.join(CONFIG_DIR, MODES[args["mode"]])], bindings)
    result = run_experiment(build_experiment(args["output_dir"]))
    records = read_metrics_jsonl(os.path.join(args["output_dir"], "metrics.jsonl"))
    curve = [(int(r["step"]), float(r[ACC_KEY])) for r in records if ACC_KEY in r]
    steps = [r.get("timing_s/step") for r in records if r.get("timing_s/step") is not None]
    return {"curve": curve, "warm_start": result.get("warm_start"),
            "median_iteration_s": float(np.median(steps)) if steps else None}


def iterations_to(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """First evaluated PPO step (0 = before PPO) whose accuracy reaches `threshold`, or None."""
    for step, acc in curve:
        if acc >= threshold:
            return step
    return None


def _threshold(warm_accuracy: float) -> float:
    fixed = os.environ.get("NTL_BENCH_ACC_THRESHOLD")
    return float(fixed) if fixed else warm_accuracy + THRESHOLD_DELTA


def run(scale: str) -> list[Result]:
    seeds, max_steps, test_freq = SIZES[check_scale(scale)]
    extra = [] if scale == "full" else list(TOY_TASK_BINDINGS)
    censored_value = max_steps + test_freq
    per_seed: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_learning_") as workdir:
        for seed in seeds:
            runs = {}
            for mode in MODES:
                output_dir = os.path.join(workdir, f"{mode}_seed{seed}")
                if mode != "standard":  # reuse the standard run's warm start (same cache key)
                    shutil.copytree(os.path.join(workdir, f"standard_seed{seed}", "warm_start"),
                                    os.path.join(output_dir, "warm_start"))
                runs[mode] = run_worker("learning_speed", "train_run", {
                    "mode": mode, "seed": seed, "output_dir": output_dir, "max_steps": max_steps,
                    "test_freq": test_freq, "extra_bindings": extra}, timeout_s=6 * 3600)
            warm_acc = runs["standard"]["curve"][0][1]
            threshold = _threshold(warm_acc)
            iters = {mode: iterations_to(out["curve"], threshold) for mode, out in runs.items()}
            per_seed[seed] = {"threshold": threshold, "warm_start_accuracy": warm_acc, "iterations": iters,
                              "curves": {m: out["curve"] for m, out in runs.items()},
                              "median_iteration_s": {m: out["median_iteration_s"] for m, out in runs.items()},
                              "warm_start_shared": runs["standard"]["warm_start"] == runs["ntl_final"]["warm_start"]}
    counted = {mode: [v["iterations"][mode] if v["iterations"][mode] is not None else censored_value
                      for v in per_seed.values()] for mode in MODES}
    mean_std, mean_ntl = float(np.mean(counted["standard"])), float(np.mean(counted["ntl_final"]))
    censored = {m: sum(v["iterations"][m] is None for v in per_seed.values()) for m in MODES}
    return [Result(
        benchmark="learning_speed", case=f"{len(seeds)} seed(s), <= {max_steps} iters",
        ours=f"NTL {mean_ntl:.0f} it ({counted['ntl_final']})", baseline=f"std {mean_std:.0f} it ({counted['standard']})",
        ratio=mean_ntl / mean_std if mean_std > 0 else float("nan"),
        ratio_desc="mean iterations to threshold NTL / standard", target_op="<=", target=TARGET,
        details={"per_seed": per_seed, "censored_runs": censored, "censored_counted_as": censored_value,
                 "spread_std": float(np.std(counted["standard"])), "spread_ntl": float(np.std(counted["ntl_final"])),
                 "threshold_rule": "NTL_BENCH_ACC_THRESHOLD or warm-start accuracy + "
                                   f"{THRESHOLD_DELTA}", "scale": scale})]


if __name__ == "__main__":
    worker_main({"train_run": train_run})
