"""Every benchmark module runs end to end at smoke scale (toy sizes), so the suite cannot rot.

The numbers of a smoke run mean nothing (toy shapes, one repetition, 1-thread PyTorch); what is checked is that
every module imports, starts its workers (ntl-jax, PyTorch, TRL), and returns well-formed rows through the same
entry points a user runs: `python -m benchmarks.run --scale smoke`, `python -m benchmarks.gpu_suite --smoke`
(its CPU fallback) and `python -m benchmarks.learning_parity --smoke`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import common, logprob_memory, machine_limit, run
from ntl_jax.cpu.decode_matmuls import decode_compiler_options
from ntl_jax.ppo.config import PPOConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROW_KEYS = {"benchmark", "case", "ours", "baseline", "ratio", "ratio_desc", "target_op", "target", "details", "met",
            "machine_limit"}
# Rows measured against PyTorch / TRL also report the machine's limit, measured in the same run (issue 14).
ROWS_WITH_A_MACHINE_LIMIT = {"rollout", "trl_grpo", "train_step_efficiency"}


def _check_rows(rows: list[dict], benchmark: str | None = None) -> None:
    assert rows, "a benchmark returned no rows"
    for row in rows:
        assert set(row) == ROW_KEYS, row.keys()
        if benchmark is not None:
            assert row["benchmark"] == benchmark
        assert row["target_op"] in ("<=", ">=") and row["target"] > 0
        assert math.isfinite(row["ratio"]) and row["ratio"] >= 0, (row["case"], row["ratio"])
        assert row["ours"] and row["baseline"] and row["details"]
        if row["benchmark"] in ROWS_WITH_A_MACHINE_LIMIT and not row["case"].startswith("end-to-end"):
            assert "ntl-jax at " in row["machine_limit"], (row["case"], row["machine_limit"])


def _run_module(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name", run.BENCHMARKS)
def test_each_benchmark_runs_at_smoke_scale(name, tmp_path):
    report_path = tmp_path / "report.json"
    assert run.main(["--scale", "smoke", "--only", name, "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["mode"] == "smoke" and report["errors"] == {}
    _check_rows(report["results"], name)
    assert report["table"].count("\n") == len(report["results"]) + 1  # header, rule, one line per row
    assert report["benchmarks"][name]["elapsed_s"] > 0


@pytest.mark.slow
def test_gpu_suite_runs_at_smoke_scale(tmp_path):
    report_path = tmp_path / "gpu.json"
    _run_module("benchmarks.gpu_suite", "--smoke", "--budget-s", "1200", "--json", str(report_path), timeout=1200)
    report = json.loads(report_path.read_text())
    assert report["smoke"] and report["errors"] == {} and report["skipped"] == []
    assert {row["benchmark"] for row in report["results"]} == {"rollout", "train_step_efficiency", "ntl_overhead"}
    # Without CUDA PyTorch the rollout row has no baseline (NaN ratio); the others are ntl-jax-only ratios.
    _check_rows([r for r in report["results"] if r["benchmark"] != "rollout" or report["torch_cuda"]])


@pytest.mark.slow
def test_learning_parity_runs_at_smoke_scale(tmp_path):
    _run_module("benchmarks.learning_parity", "--smoke", "--seeds", "0", "--output_dir", str(tmp_path), timeout=1200)
    report = json.loads((tmp_path / "learning_parity.json").read_text())
    assert report["iterations"] == 2 and report["eval_every"] == 1
    (seed_run,) = report["runs"]
    for side in ("ntl_jax", "trl"):
        steps = [step for step, _ in seed_run[side]["curve"]]
        assert steps == [0, 1, 2], (side, seed_run[side]["curve"])
        assert all(0.0 <= acc <= 1.0 for _, acc in seed_run[side]["curve"])
    assert (tmp_path / "learning_parity.md").read_text().count("\n") == 4  # header, rule, seed 0, mean
    assert (tmp_path / "learning_parity.png").stat().st_size > 0


def test_unknown_scale_is_one_clear_error():
    with pytest.raises(ValueError, match=r"benchmark scale 'huge' is unknown; allowed: full, quick, smoke"):
        common.check_scale("huge")
    with pytest.raises(SystemExit):
        run.main(["--quick", "--scale", "smoke"])
    with pytest.raises(SystemExit, match="--only nope is unknown"):
        run.main(["--only", "nope", "--scale", "smoke"])


def test_only_the_full_scale_measures_every_pytorch_setting():
    assert common.torch_thread_settings("full") == tuple(common.TORCH_THREAD_SETTINGS)
    assert common.torch_thread_settings("quick") == common.torch_thread_settings("smoke") == ("1thr",)


def test_logprob_memory_labels_the_shipped_default_chunk():
    assert logprob_memory.DEFAULT_CHUNK == PPOConfig().logprob_chunk_size


def test_iteration_flops_follow_the_documented_formula():
    flops = machine_limit.iteration_matmul_flops(1000, sequences=4, prompt_positions=5.0, completion_tokens=3.0)
    assert flops == {"rollout": 2 * 1000 * 4 * 8, "update": 6 * 1000 * 4 * 8, "total": 8 * 1000 * 4 * 8}
    shared = machine_limit.iteration_matmul_flops(1000, sequences=4, prompt_positions=5.0, completion_tokens=3.0,
                                                  samples_per_prompt=2)  # 2 prompts x 5 + 4 x 3 positions
    assert shared == {"rollout": 2 * 1000 * 22, "update": 6 * 1000 * 22, "total": 8 * 1000 * 22}


def test_decode_matmul_floor_times_each_distinct_dot_path():
    floor = machine_limit.decode_matmul_floor(common.model_config(common.MICRO), batch=2, steps=3, reps=1)
    eigen_differs = bool(decode_compiler_options("eigen", "cpu"))  # False on a jaxlib without YNNPACK
    assert set(floor["by_dot_path"]) == {"xla_default"} | ({"eigen"} if eigen_differs else set())
    assert floor["tokens_per_s"] == max(floor["by_dot_path"].values()) > 0
    assert machine_limit.matmul_gflops(64, reps=1) > 0


def test_response_bucket_savings_use_the_trainers_width(tmp_path):
    """benchmarks/response_bucket.py picks the width `trim_responses` picks, and its fractions follow."""
    import numpy as np

    from benchmarks import response_bucket
    from ntl_jax.models.sampler import GenerationOutput
    from ntl_jax.ppo.trainer import trim_responses

    for longest in (1, 7, 8, 9, 40, 47, 48):
        mask = np.zeros((3, 48), np.int32)
        mask[0, :longest] = 1
        gen = GenerationOutput(np.zeros((3, 4)), np.ones((3, 4)), np.zeros((3, 48)), mask, None, None)
        for bucket in (8, 16, 32):
            assert trim_responses(gen, bucket).response_ids.shape[1] == min(48, bucket * math.ceil(longest / bucket))
    row = response_bucket.savings([48, 20, 10], bucket=16, max_response_length=48, prompt_width=16)
    assert row["mean_trained_width"] == pytest.approx((48 + 32 + 16) / 3)
    assert row["response_positions_saved"] == pytest.approx(1 - 96 / 144)
    assert row["sequence_positions_saved"] == pytest.approx(1 - (64 + 48 + 32) / 192)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "response_length/max": m}) + "\n"
                                                   for i, m in enumerate([48, 20, 10])))
    out = tmp_path / "savings.json"
    assert response_bucket.main([str(run_dir), "--max_response_length", "48", "--prompt_width", "16",
                                 "--buckets", "16", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["response_positions_saved"] == pytest.approx(1 / 3)
