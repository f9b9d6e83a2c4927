"""The measurement probes under benchmarks/probes/ run at a toy size and report what they claim to measure.

Reported durations are never judged here: a probe's figures belong to its page, and a busy machine must not fail
the suite.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from trainer_fixtures import load_module_from

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBES = os.path.join(REPO_ROOT, "benchmarks", "probes")


def _load_module(name: str):
    return load_module_from(os.path.join(PROBES, f"{name}.py"))


def _script(name: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, os.path.join(PROBES, name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


def test_profile_decode_lists_the_decode_loops_kernels():
    """Probe `profile_decode` (the table behind the decode-loop layout): per-step kernel times of a real tiny
    generate, with the JAX operation of each; the LM head's [32, 8192] matmul is among them."""
    proc = _script("profile_decode.py", "--model", "tiny", "--top", "40", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = proc.stdout.splitlines()[0]
    assert header.startswith("tiny: 32 rows x 64 tokens, 63 model steps;") and "us per step" in header
    rows = [line.split() for line in proc.stdout.splitlines()[2:]]
    assert 10 <= len(rows) <= 40 and all(float(row[0]) > 0 for row in rows)
    assert any(row[3].startswith("f32[32,8192]") and row[-1].endswith("dot_general") for row in rows)


def test_ab_decode_attention_times_both_attention_forms_on_the_same_tokens():
    """Probe `ab_decode_attention` (the A/B behind the CPU decode attention): both samplers generate the same
    tokens, and each variant's tokens/s is reported with their ratio."""
    proc = _script("ab_decode_attention.py", "--cases", "micro", "--reps", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["case"] == "micro" and row["groups"] == 2 and row["reps"] == 2 and row["same_tokens"] is True
    assert row["one_contraction_tok_s"] > 0 and row["per_group_member_tok_s"] > 0
    assert row["ratio"] == pytest.approx(row["per_group_member_tok_s"] / row["one_contraction_tok_s"], rel=0.01)


def test_time_first_iteration_alternates_compile_ahead_off_and_on():
    """Probe `time_first_iteration` at the benchmark's smoke size, warm cache: one process per setting."""
    proc = _script("time_first_iteration.py", "--cache", "warm", "--pairs", "1", "--scale", "smoke", "--compiles",
                   timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [row["compile_ahead"] for row in rows] == [False, True] and {row["cache"] for row in rows} == {"warm"}
    for row in rows:
        assert 0 < row["first_iteration_s"] <= row["iterations_s"] < row["process_wall_s"]
        assert isinstance(row["compiles"], list)  # reported, never judged: a compile's duration depends on the load


def test_train_step_breakdown_counts_the_benchmarks_matmul_flops_and_reports_each_part(tmp_path):
    """Probe `train_step_breakdown` (the figures behind the train step's 90% miss): its weight-GEMM time at one
    uniform rate is the benchmark's 6 N_matmul B T (plus the rematerialised LM-head forward) over that rate, and a
    smoke-size run reports both steps, every GEMM's rate and a profile by op kind."""
    breakdown = _load_module("train_step_breakdown")
    from benchmarks.common import MID, param_count

    rows, shapes = 2048, breakdown.projection_shapes(MID)
    rates = {f"{name}/{form}": 250.0 for name in shapes for form in ("forward", "input_grad", "weight_grad")}
    expected_flops = 6 * param_count(MID)["matmul"] * rows + 2 * rows * MID.hidden * MID.vocab
    assert breakdown.weight_gemm_seconds(MID, rows, rates, shapes) == pytest.approx(expected_flops / 250e9, rel=1e-9)

    proc = _script("train_step_breakdown.py", "--scale", "smoke", "--reps", "2", "--profile", str(tmp_path / "trace"),
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["step_s"] > 0 and row["no_attention_s"] > 0 and row["matmul_gflop_per_s"] > 0
    assert row["efficiency"] == pytest.approx(row["model_gflop_per_s"] / row["matmul_gflop_per_s"])
    assert len(row["gemm_gflop_per_s"]) == 18 and row["weight_gemms_alone_s"] > 0
    assert row["profile"]["seconds_by_op_kind"] and row["profile"]["seconds_two_or_more_ops_running"] >= 0


def test_gemm_vs_torch_times_the_same_gemms_and_decode_floors_in_both_libraries():
    """Probe `gemm_vs_torch` (behind the README's account of the Intel Xeon figures): every train-step GEMM and
    decode floor is timed in XLA and in PyTorch at each of the suite's PyTorch settings, the baseline is PyTorch's
    best per entry, and the ratios and the step's GEMM seconds are computed from the rates it prints."""
    from benchmarks.common import TORCH_THREAD_SETTINGS

    gemms = _load_module("gemm_vs_torch")
    proc = _script("gemm_vs_torch.py", "--scale", "smoke", "--reps", "2", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert set(row["torch"]) == set(TORCH_THREAD_SETTINGS) and row["scale"] == "smoke"
    for case in ("train", "matmul", "decode"):
        assert row["xla"][case].keys() == row["torch_best"][case].keys()
    assert len(row["xla"]["train"]) == 18 and set(row["xla"]["decode"]) == {"micro"}
    for case, rates in row["torch_best"].items():
        for key, best in rates.items():
            assert best == max(row["torch"][t][case][key] for t in row["torch"])
            assert row["torch"][row["torch_best_setting"][case][key]][case][key] == best
            assert row["torch_over_xla"][case][key] == pytest.approx(best / row["xla"][case][key], rel=0.02, abs=1e-3)
    assert row["train_weight_gemms_s"]["xla"] > 0 and row["train_weight_gemms_s"]["torch_best"] > 0
    assert gemms.torch_decode_floor(gemms.decode_models("smoke")["micro"], batch=2, steps=3, reps=1) > 0
    bad = _script("gemm_vs_torch.py", "--reps", "0")
    assert bad.returncode == 2 and "--reps must be >= 1, got 0" in bad.stderr


def test_parallel_compile_times_a_pair_of_compilations_three_ways():
    """Probe `parallel_compile` (behind the README's "the two compilations share the cores"): the same pair of
    fresh programs compiled one after the other, in two threads and in two processes, each compilation timed."""
    proc = _script("parallel_compile.py", "--depth", "3", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["depth"] == 3
    for mode in ("sequential", "two_threads", "two_processes"):
        assert len(row[mode]["compile_s"]) == 2 and all(x > 0 for x in row[mode]["compile_s"])
    assert row["sequential"]["wall_s"] >= max(row["sequential"]["compile_s"])
    assert row["two_threads"]["wall_s"] >= max(row["two_threads"]["compile_s"])
