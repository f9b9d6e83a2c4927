"""Start-up checks run before any warm start or model load: each bad setting is one line, and nothing is trained."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CASES = [
    ("ntl_jax.TrainerConfig.reward_fn_path = 'no_such_reward.py'",
     "reward function file not found: 'no_such_reward.py'"),
    ("ntl_jax.TrainerConfig.reward_fn_name = 'no_such_builtin'", "built-in reward function 'no_such_builtin'"),
    ("ntl_jax.TrainerConfig.reward_fn_kwargs = (('correct_weight', 0.0),)",
     "correct_weight=0.0 is not allowed; allowed: a finite number > 0"),
    ("ntl_jax.TrainerConfig.reward_fn_kwargs = (('ntl_wieght', 0.2),)", "reward_fn_kwargs names ['ntl_wieght']"),
    ("ntl_jax.TrainerConfig.reward_fn_kwargs = (('tau', 0.5),)",
     "reward_fn_kwargs binds tau=0.5, which NTL's own tau would override at every call; allowed: set "
     "ntl_jax.NTLConfig.tau"),
    ("ntl_jax.TrainerConfig.use_wandb = True", "TrainerConfig.use_wandb=True needs the wandb package"),
    ("ntl_jax.TrainerConfig.val_files = ('missing/val.parquet',)",
     "TrainerConfig.val_files names 'missing/val.parquet', which does not exist"),
]


@pytest.mark.parametrize("binding, message", CASES)
def test_a_bad_setting_fails_before_the_warm_start(tmp_path, binding, message):
    if "wandb" in binding and __import__("importlib").util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ntl_jax.train", "--gin_file=configs/ntl_final.gin",
                           f"--output_dir={out}", "--nomalloc_huge_pages", f"--gin_bindings={binding}"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert not (out / "warm_start").exists() and not (out / "checkpoints").exists()


def test_a_model_path_that_is_neither_folder_nor_hub_id(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ntl_jax.train",
                           "--gin_file=configs/gsm8k_qwen2_5_0_5b_standard.gin",
                           f"--output_dir={tmp_path}", "--nomalloc_huge_pages",
                           "--gin_bindings=ntl_jax.TrainerConfig.model_path = './not/a/model/dir'",
                           "--gin_bindings=ntl_jax.TrainerConfig.train_files = ()",
                           "--gin_bindings=ntl_jax.TrainerConfig.val_files = ()",
                           "--gin_bindings=ntl_jax.TrainerConfig.platform = 'any'"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)
    assert proc.returncode == 2
    assert "TrainerConfig.model_path='./not/a/model/dir' is not a folder or a Hub id" in proc.stderr.splitlines()[-1]


def test_the_example_reward_file_loads_and_keeps_a_right_answer_first():
    from ntl_jax.rewards.registry import RewardFnSpec, check_reward_spec, load_reward_function

    spec = RewardFnSpec(path=os.path.join(REPO_ROOT, "examples", "my_reward.py"), kwargs={"max_chars": 10})
    check_reward_spec(spec, tau=0.1)
    fn = load_reward_function(spec)
    long_right = fn("arithmetic", "x" * 600 + "#### 42", "42", ntl_info={"digit_accuracy": 1.0})
    short_wrong = fn("arithmetic", "#### 41", "42")
    assert long_right["score"] == 0.5 and long_right["ntl_digit_accuracy"] == 1.0
    assert short_wrong["score"] == 0.0 and long_right["score"] > short_wrong["score"]
