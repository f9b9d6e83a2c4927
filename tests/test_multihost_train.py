"""The main command on several real processes (jax.distributed over gloo on localhost): warm start, validation,
PPO steps with NTL, a checkpoint in one shared folder, and a resume; every process logs the same metrics.

Each process runs ``python -m ntl_jax.train --gin_file=configs/ntl_final.gin`` (the CLI's own code path, joined
through ``NTL_JAX_*`` environment variables) on a shrunken embedded default; the worker only records the metrics
each process logs (``PPOTrainer.log_metrics``), so non-main processes, which write no files, can be compared too.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest
from multiprocess_harness import run_workers
from trainer_fixtures import TINY_EMBEDDED_BINDINGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_EMBEDDED_BINDINGS

WORKER = textwrap.dedent(
    """
    import json, math, sys
    import ntl_jax.ppo.trainer as trainer_module
    from ntl_jax import train

    records = []
    log_metrics = trainer_module.PPOTrainer.log_metrics

    sigterm_at = int(sys.argv[3]) if len(sys.argv) > 3 else -1

    def recording(self, metrics):
        records.append({"step": self.global_step, **{k: float(v) for k, v in metrics.items()
                        if not k.startswith(("timing_s/", "perf/")) and math.isfinite(float(v))}})
        log_metrics(self, metrics)
        if self.global_step == sigterm_at:  # a preemption notice, on every process, after this step
            import os, signal
            os.kill(os.getpid(), signal.SIGTERM)

    trainer_module.PPOTrainer.log_metrics = recording

    import ntl_jax.rewards.workers as workers_module
    scored = []  # responses this process scored, per reward call
    local_score = workers_module.LocalRewardRunner.score

    def counting(self, items):
        scored.append(len(items))
        return local_score(self, items)

    workers_module.LocalRewardRunner.score = counting
    sys.argv = ["ntl_jax.train", "--gin_file=configs/ntl_final.gin", f"--output_dir={sys.argv[1]}",
                *[f"--gin_bindings={b}" for b in json.loads(sys.argv[2])]]
    try:
        train.run()
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    import jax
    print("RESULT " + json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                  "devices": jax.device_count(), "code": code, "records": records,
                                  "scored": scored}), flush=True)
    """
)


def _run(tmp_path, out_dir, devices_per_process: int, steps: int, sigterm_at: int = -1) -> list[dict]:
    bindings = TINY + [f"ntl_jax.TrainerConfig.total_training_steps = {steps}"]
    cwd = os.getcwd()
    os.chdir(REPO)  # configs/ntl_final.gin is found relative to the repository, as in the README
    try:
        return run_workers(WORKER, tmp_path, num_processes=2, devices_per_process=devices_per_process,
                           timeout_s=300, args=(str(out_dir), json.dumps(bindings), str(sigterm_at)))
    finally:
        os.chdir(cwd)


def _assert_processes_agree(results: list[dict]) -> None:
    first, second = results
    assert [r["step"] for r in first["records"]] == [r["step"] for r in second["records"]]
    for a, b in zip(first["records"], second["records"]):
        assert set(a) == set(b)
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("devices_per_process", [1, 4])
def test_main_command_on_two_processes_runs_checkpoints_resumes_and_agrees(tmp_path, devices_per_process):
    out_dir = tmp_path / "run"  # one folder shared by both processes, as on a pod with a shared filesystem
    results = _run(tmp_path, out_dir, devices_per_process, steps=2)
    assert [r["code"] for r in results] == [0, 0]
    assert {r["devices"] for r in results} == {2 * devices_per_process}
    _assert_processes_agree(results)
    # Every response is scored once, by one process: 16 per call here (4 prompts x 4 samples; 16 held out), 8 each.
    assert results[0]["scored"] and results[0]["scored"] == results[1]["scored"]
    assert set(results[0]["scored"]) == {8}
    records = results[0]["records"]
    assert any("val-core/arithmetic/acc/mean@1" in r for r in records)  # validation before and during training
    assert any("ntl/loss" in r and "actor/pg_loss" in r for r in records)
    assert sorted(os.listdir(out_dir / "checkpoints")) == ["2"]
    logged = [json.loads(line) for line in open(out_dir / "metrics.jsonl")]
    assert [r["step"] for r in logged] == [0, 1, 2]  # written once, by process 0

    resumed = _run(tmp_path, out_dir, devices_per_process, steps=3)
    assert [r["code"] for r in resumed] == [0, 0]
    _assert_processes_agree(resumed)
    assert [r["step"] for r in resumed[0]["records"]] == [3]  # went on from the checkpoint
    assert "3" in os.listdir(out_dir / "checkpoints")


def test_a_sigterm_on_every_process_checkpoints_and_the_resumed_run_matches_an_unbroken_one(tmp_path):
    """Both processes get SIGTERM after step 2: they agree, finish step 3, checkpoint it in the shared folder and
    exit 0; rerun, they resume to step 4. Every logged metric of steps 1-4 equals an unbroken 4-step run's."""
    unbroken = _run(tmp_path, tmp_path / "unbroken", 1, steps=4)
    interrupted = _run(tmp_path, tmp_path / "run", 1, steps=4, sigterm_at=2)
    assert [r["code"] for r in interrupted] == [0, 0]
    assert [r["step"] for r in interrupted[0]["records"]] == [0, 1, 2, 3]
    assert "3" in os.listdir(tmp_path / "run" / "checkpoints")
    resumed = _run(tmp_path, tmp_path / "run", 1, steps=4)
    assert [r["step"] for r in resumed[0]["records"]] == [4]
    for process in (0, 1):
        joined = interrupted[process]["records"] + resumed[process]["records"]
        assert [r["step"] for r in joined] == [r["step"] for r in unbroken[process]["records"]]
        for got, want in zip(joined, unbroken[process]["records"]):
            assert set(got) == set(want), got["step"]
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), (got["step"], key)
