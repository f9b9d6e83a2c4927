"""Benchmarks 1, 2 and 5 on a GPU machine, in one short script: `python -m benchmarks.gpu_suite --json out.json`.

Same workers as the CPU suite, with the PyTorch side on CUDA when `torch.cuda.is_available()` (otherwise the
ntl-jax side only) and a larger reference matmul (8192^3; both frameworks use TF32 for float32 matmuls: JAX's
default precision, `torch.backends.cuda.matmul.allow_tf32 = True`). A deadline (`--budget-s`) skips the parts
that would not fit; the report is rewritten after every part so a killed run still leaves its figures. `--smoke`
runs every part at the CPU suite's smoke sizes (any machine; what tests/test_benchmarks.py runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

from benchmarks import ntl_overhead, rollout, train_step_efficiency
from benchmarks.common import (MICRO, MID, TINY, Result, machine_info, median, run_worker, save_random_checkpoint,
                               spread)
from benchmarks.run import markdown_table

GPU_MATMUL_N = 8192


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def gpu_ntl_overhead(workdir: str, with_torch: bool, smoke: bool) -> list[Result]:
    del workdir, with_torch
    if smoke:
        return ntl_overhead.run("smoke")
    rows = []
    for name in ("embedded", "qwen_vocab", "qwen05b_shape"):
        out = run_worker("ntl_overhead", "actor_updates", {"case": name, "reps": 12, "warmup": 2})
        rows.append(ntl_overhead.result_row(name, out))
    return rows


def gpu_rollout(workdir: str, with_torch: bool, smoke: bool) -> list[Result]:
    rows = []
    batch, new_tokens = (rollout.SMOKE_BATCH, rollout.SMOKE_NEW_TOKENS) if smoke else (rollout.BATCH,
                                                                                        rollout.NEW_TOKENS)
    tokens = batch * new_tokens
    for spec in (MICRO,) if smoke else (TINY, MID):
        path = save_random_checkpoint(spec, os.path.join(workdir, spec.name), eos_id=rollout.EOS_ID,
                                      pad_id=rollout.PAD_ID, silence_token=rollout.EOS_ID)
        prompts = rollout.make_prompts(spec.vocab, batch=batch)
        ours = run_worker("rollout", "jax_generate", {"path": path, "prompts": prompts, "new_tokens": new_tokens,
                                                      "reps": 1 if smoke else 5, "machine_limit": True})
        ours_tps = tokens / median(ours["times"])
        details = {"model": spec.describe(), "ntl_jax": {"tokens_per_s": ours_tps, "times_s": spread(ours["times"]),
                                                         "compile_s": ours["compile_s"], "device": ours["device"]}}
        base_tps, baseline = float("nan"), "torch CUDA not available"
        if with_torch:
            base = run_worker("rollout", "torch_generate", {"path": path, "prompts": prompts, "new_tokens": new_tokens,
                                                           "reps": 1 if smoke else 3, "threads": 1,
                                                           "cache": "dynamic", "device": "cuda"})
            base_tps = tokens / median(base["times"])
            baseline = f"{base_tps:,.0f} tok/s (CUDA, dynamic cache)"
            details["torch"] = {"tokens_per_s": base_tps, "times_s": spread(base["times"]),
                                "first_call_s": base["first_call_s"]}
        rows.append(Result(benchmark="rollout", case=f"{spec.name} ({spec.hidden}w/{spec.layers}L)",
                           ours=f"{ours_tps:,.0f} tok/s", baseline=baseline, ratio=ours_tps / base_tps,
                           ratio_desc="tokens/s ntl-jax / transformers generate", target_op=">=",
                           target=rollout.TARGETS[spec.name], details=details,
                           machine_limit=rollout.machine_limit_text(ours_tps, ours["decode_matmul_floor"])))
    return rows


def gpu_train_step(workdir: str, with_torch: bool, smoke: bool) -> list[Result]:
    size = dict(train_step_efficiency.SIZES["smoke"]) if smoke else {
        "spec": MID, "batch": train_step_efficiency.BATCH, "seq": train_step_efficiency.SEQ,
        "matmul_n": GPU_MATMUL_N, "reps": 10}
    spec = size.pop("spec")
    flops = train_step_efficiency.step_flops(spec, size["batch"], size["seq"])
    tokens = size["batch"] * size["seq"]
    path = save_random_checkpoint(spec, os.path.join(workdir, f"{spec.name}_train"))
    stats = {}
    for variant in ("chunked", "full_logits"):
        out = run_worker("train_step_efficiency", "jax_train_step", {"path": path, "variant": variant, **size})
        stats[variant] = {**train_step_efficiency.summarize(out, flops, tokens), "compile_s": out["compile_s"]}
    ours = stats["chunked"]
    limit_text = train_step_efficiency.machine_limit_text(flops, ours)
    rows = []
    if with_torch:
        out = run_worker("train_step_efficiency", "torch_train_step", {"path": path, "threads": 1, "device": "cuda",
                                                                       **size})
        base = train_step_efficiency.summarize(out, flops, tokens)
        rows.append(Result(benchmark="train_step_efficiency", case="tokens/s vs PyTorch",
                           ours=f"{ours['step_s']['median'] * 1e3:.1f} ms/step",
                           baseline=f"{base['step_s']['median'] * 1e3:.1f} ms/step (CUDA)",
                           ratio=ours["tokens_per_s"] / base["tokens_per_s"], ratio_desc="tokens/s ntl-jax / PyTorch",
                           target_op=">=", target=train_step_efficiency.TARGET_SPEED,
                           details={"ntl_jax": stats, "torch": base}, machine_limit=limit_text))
    rows.append(Result(benchmark="train_step_efficiency", case="FLOP/s vs matmul",
                       ours=f"{ours['gflops']:.0f} GFLOP/s", baseline=f"matmul {ours['matmul_gflops']:.0f} GFLOP/s",
                       ratio=ours["efficiency"], ratio_desc=f"model FLOP/s / {size['matmul_n']}^3 TF32 matmul FLOP/s",
                       target_op=">=", target=train_step_efficiency.TARGET_EFFICIENCY, details={"ntl_jax": stats},
                       machine_limit=limit_text))
    return rows


PARTS: tuple[tuple[str, Callable[[str, bool, bool], list[Result]], float], ...] = (
    # (name, function, seconds it needs at least to be started)
    ("rollout", gpu_rollout, 60.0), ("train_step_efficiency", gpu_train_step, 60.0),
    ("ntl_overhead", gpu_ntl_overhead, 60.0),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--budget-s", type=float, default=330.0)
    parser.add_argument("--smoke", action="store_true", help="toy sizes (checks the script runs; numbers mean nothing)")
    args = parser.parse_args(argv)
    import jax

    # This parent only writes the random checkpoints: keep it off the GPU so the workers get all of its memory.
    jax.config.update("jax_platforms", "cpu")
    start = time.perf_counter()
    with_torch = _torch_cuda()
    report: dict[str, Any] = {"machine": machine_info(), "torch_cuda": with_torch, "smoke": args.smoke,
                              "results": [], "errors": {},
                              "skipped": [], "elapsed_s": {}}
    rows: list[Result] = []

    def write() -> None:
        report["results"] = [r.to_dict() for r in rows]
        report["table"] = markdown_table(rows, report["errors"])
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as workdir:
        for name, fn, needs_s in PARTS:
            if time.perf_counter() - start + needs_s > args.budget_s:
                report["skipped"].append(name)
                continue
            part_start = time.perf_counter()
            try:
                rows.extend(fn(workdir, with_torch, args.smoke))
            except Exception:  # noqa: BLE001 - keep the other parts' figures
                report["errors"][name] = traceback.format_exc()
                print(report["errors"][name], file=sys.stderr, flush=True)
            report["elapsed_s"][name] = time.perf_counter() - part_start
            write()
            print(f"== {name} done in {report['elapsed_s'][name]:.0f} s\n{report['table']}", flush=True)
    write()
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
