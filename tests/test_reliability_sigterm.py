"""A real SIGTERM to a real training process (``python -m ntl_jax.train``) during an actor update.

Three processes on the same tiny NTL config (tiny policy saved in HF format, verl parquet, user reward file):
an uninterrupted 4-step run; a run that gets SIGTERM while step 2's actor update is running (must write a
checkpoint at step 2 and exit cleanly); and a rerun of that command, which must resume at step 2 (resume_mode auto)
and log steps 3-4 with exactly the uninterrupted run's metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ntl_jax.data.verl_parquet import write_verl_parquet
from ntl_jax.ppo.metrics import read_metrics_jsonl
from test_reliability_support import compile_cache_dir, env_for_subprocess
from trainer_fixtures import make_tiny_policy, tiny_rows

SAMPLES_PER_STEP = 8  # 4 prompts x rollout_n 2
NOT_COMPARED = ("timing_s/", "perf/")

# Step 2's last reward call writes the marker (with its time). The advantages take a few ms, then the actor update
# (128 PPO epochs x 4 mini-batches: 0.2-0.5 s) runs; the test aims SIGTERM near its start using the uninterrupted
# run's timings, far from its end whatever the load.
REWARD = textwrap.dedent('''
    import os, time
    from ntl_jax.rewards.ntl_rewards import custom_ntl_final

    _calls = 0

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
        global _calls
        _calls += 1
        marker = os.environ.get("SIGTERM_MARKER")
        if marker and _calls == 2 * {per_step}:
            with open(marker + ".tmp", "w") as f:
                f.write(repr(time.time()))
            os.replace(marker + ".tmp", marker)
        return custom_ntl_final(data_source, solution_str, ground_truth, extra_info, **kwargs)
''').format(per_step=SAMPLES_PER_STEP)

GIN = textwrap.dedent('''
    use_ntl_trainer = True
    ntl_jax.NTLConfig.enabled = %use_ntl_trainer
    ntl_jax.NTLConfig.weight = 0.3
    ntl_jax.TrainerConfig.model_path = '{policy}'
    ntl_jax.TrainerConfig.train_files = ('{train}',)
    ntl_jax.TrainerConfig.reward_fn_path = '{reward}'
    ntl_jax.TrainerConfig.seed = 0
    ntl_jax.TrainerConfig.total_training_steps = 4
    ntl_jax.TrainerConfig.save_freq = 100
    ntl_jax.TrainerConfig.test_freq = 100
    ntl_jax.TrainerConfig.val_before_train = False
    ntl_jax.TrainerConfig.use_tensorboard = False
    ntl_jax.TrainerConfig.progress_bar = False
    ntl_jax.PPOConfig.train_batch_size = 4
    ntl_jax.PPOConfig.rollout_n = 2
    ntl_jax.PPOConfig.ppo_mini_batch_size = 1
    ntl_jax.PPOConfig.ppo_micro_batch_size = 2
    ntl_jax.PPOConfig.ppo_epochs = 128
    ntl_jax.PPOConfig.max_prompt_length = 16
    ntl_jax.PPOConfig.max_response_length = 12
    ntl_jax.PPOConfig.adv_estimator = 'grpo'
    ntl_jax.PPOConfig.actor_lr = 1e-3
    ntl_jax.PPOConfig.use_kl_loss = True
''')


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sigterm")
    policy = make_tiny_policy(str(root / "policy"))
    train = root / "train.parquet"
    write_verl_parquet(tiny_rows(32), train)
    reward = root / "reward.py"
    reward.write_text(REWARD)
    gin_file = root / "tiny.gin"
    gin_file.write_text(GIN.format(policy=policy, train=train, reward=reward))
    return root, gin_file, env_for_subprocess(compile_cache_dir(tmp_path_factory))


def command(gin_file: Path, output_dir: Path) -> list[str]:
    return [sys.executable, "-m", "ntl_jax.train", f"--gin_file={gin_file}", f"--output_dir={output_dir}"]


def summary(stdout: str) -> dict:
    """The CLI's last stdout line: {"start_step", "end_step", "resumed"}."""
    return json.loads(stdout.strip().splitlines()[-1])


def run_to_end(gin_file: Path, output_dir: Path, env: dict) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(command(gin_file, output_dir), env=env, capture_output=True, text=True, timeout=240)
    print(f"\n{output_dir.name}: {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return summary(proc.stdout)


def comparable(rows: list[dict]) -> dict[int, dict]:
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith(NOT_COMPARED)} for r in rows}


def test_sigterm_during_actor_update_checkpoints_and_resumes_identically(setup):
    root, gin_file, env = setup
    full_dir, cut_dir, marker = root / "full", root / "cut", root / "step2_rewards_done"
    assert run_to_end(gin_file, full_dir, env) == {"start_step": 0, "end_step": 4, "resumed": False}
    full_step2 = read_metrics_jsonl(full_dir / "metrics.jsonl")[1]
    aim_s = 2 * full_step2["timing_s/adv"] + 0.1 * full_step2["timing_s/update_actor"]

    start = time.perf_counter()
    proc = subprocess.Popen(command(gin_file, cut_dir), env=dict(env, SIGTERM_MARKER=str(marker)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        assert marker.exists(), "step 2's rewards never finished"
        time.sleep(max(0.0, float(marker.read_text()) + aim_s - time.time()))
        os.kill(proc.pid, signal.SIGTERM)
        sent_at = time.time()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"{cut_dir.name} (SIGTERM): {time.perf_counter() - start:.1f} s")
    assert proc.returncode == 0, err[-3000:]
    assert "received SIGTERM" in err and "checkpoint written at step 2" in err
    assert summary(out) == {"start_step": 0, "end_step": 2, "resumed": False}
    # The only checkpoint is the one written because of the signal (save_freq=100).
    assert sorted(p.name for p in (cut_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
    cut_rows = read_metrics_jsonl(cut_dir / "metrics.jsonl")
    assert [r["step"] for r in cut_rows] == [1, 2]
    step2 = cut_rows[1]
    # Where the signal landed: after step 2's rewards, before its actor update had finished.
    delay = sent_at - float(marker.read_text())
    update_end = step2["timing_s/adv"] + step2["timing_s/update_actor"]
    phase = "actor update" if step2["timing_s/adv"] <= delay < update_end else "advantages"
    print(f"SIGTERM sent {delay * 1e3:.0f} ms after step 2's rewards, during the {phase}; advantages took "
          f"{step2['timing_s/adv'] * 1e3:.0f} ms, the actor update {step2['timing_s/update_actor'] * 1e3:.0f} ms")
    assert 0 <= delay < update_end  # inside step 2, aimed at (and almost always inside) its actor update

    assert run_to_end(gin_file, cut_dir, env) == {"start_step": 2, "end_step": 4, "resumed": True}
    full = comparable(read_metrics_jsonl(full_dir / "metrics.jsonl"))
    resumed = comparable(read_metrics_jsonl(cut_dir / "metrics.jsonl"))
    assert sorted(resumed) == sorted(full) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        assert resumed[step].keys() == full[step].keys(), step
        for key, value in full[step].items():
            assert resumed[step][key] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, key)
    largest = max(abs(resumed[s][k] - v) for s in (3, 4) for k, v in full[s].items())
    print(f"steps 3-4 after the resume vs uninterrupted: {len(full[3]) + len(full[4])} metrics, "
          f"largest difference {largest:.3g}")
