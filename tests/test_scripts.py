"""Launch / training scripts (dry runs, shellcheck), the GSM8K Qwen configs, and scripts/compare_modes.py."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest
from trainer_fixtures import load_module_from

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO_ROOT, "scripts")
# Tools the scripts call for real; under --dry_run none of them may run.
STUBBED_TOOLS = ("gcloud", "ray", "ssh", "scp", "python", "python3", "tar", "curl", "uv", "git", "huggingface-cli",
                 "mkdir", "cp")
SHELL_SCRIPTS = sorted(name for name in os.listdir(SCRIPTS) if name.endswith(".sh"))
RUNNABLE = {  # script -> minimal arguments of a dry run
    "train_gsm8k_qwen_ppo.sh": ["--mode", "standard"],
    "train_gsm8k_qwen_ppo_standard.sh": [],
    "train_gsm8k_qwen_ppo_ntl_final_answer.sh": [],
    "train_gsm8k_qwen_ppo_ntl_all.sh": [],
    "quick_test_ntl.sh": [],
    "launch_tpu_pod.sh": ["--tpu_name", "ntl-pod", "--zone", "us-central2-b", "--checkpoint_dir", "gs://b/run"],
    "launch_gpu.sh": [],
    "start_ray_cluster.sh": ["--head"],
}


def _load_module(name: str):
    return load_module_from(os.path.join(SCRIPTS, f"{name}.py"))


@pytest.fixture
def stub_env(tmp_path):
    """PATH with every tool the scripts call replaced by a stub that logs the call and fails."""
    bin_dir = tmp_path / "stub_bin"
    bin_dir.mkdir()
    log = tmp_path / "invoked.log"
    for tool in STUBBED_TOOLS:
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/bash\necho "{tool} $*" >> "{log}"\nexit 97\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    for name in ("MODEL_PATH", "DATA_DIR", "GSM8K_RAW_DIR", "OUTPUT_DIR", "PPO_MICRO_BATCH_SIZE_PER_DEVICE", "PYTHON", "RAY",
                 "TPU_NAME", "ZONE", "PROJECT", "NTL_JAX_GIT_URL", "RAY_AUTH_MODE"):
        env.pop(name, None)
    return env, log


def run_script(name: str, args: list[str], env: dict, cwd: str | None = None) -> tuple[int, list[list[str]], str]:
    """(exit code, printed commands as argv lists, stderr) of ``bash scripts/<name> args``."""
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, name), *args], env=env, cwd=cwd or REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    commands = []
    for line in proc.stdout.splitlines():
        if line.startswith("+ "):
            words = shlex.split(line[2:])
            commands.append(words[:-1] if words and words[-1] == "&" else words)
    return proc.returncode, commands, proc.stderr


def flag(words: list[str], name: str) -> list[str]:
    """Values of ``--name=value`` words."""
    return [w.split("=", 1)[1] for w in words if w.startswith(f"--{name}=")]


# ------------------------------------------------------------------------------------------------ every script
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_dry_run_prints_commands_and_runs_nothing(name, stub_env):
    env, log = stub_env
    rc, commands, err = run_script(name, [*RUNNABLE[name], "--dry_run"], env)
    assert rc == 0, err
    assert commands, f"{name} --dry_run printed no commands"
    assert not log.exists(), f"{name} --dry_run ran: {log.read_text()}"


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_help_and_bad_arguments(name, stub_env):
    env, _ = stub_env
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, name), "--help"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0 and "usage:" in proc.stdout and "--dry_run" in proc.stdout
    rc, _, err = run_script(name, [*RUNNABLE[name], "--no_such_flag", "--dry_run"], env)
    assert rc == 2 and "unknown argument --no_such_flag" in err


def test_all_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    assert set(RUNNABLE) | {"common.sh"} == set(SHELL_SCRIPTS), "new script: add it to RUNNABLE"
    proc = subprocess.run([shellcheck, "-x", *SHELL_SCRIPTS], cwd=SCRIPTS, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------------ GSM8K training
@pytest.mark.parametrize("script, mode", [("train_gsm8k_qwen_ppo_standard.sh", "standard"),
                                          ("train_gsm8k_qwen_ppo_ntl_final_answer.sh", "ntl_final"),
                                          ("train_gsm8k_qwen_ppo_ntl_all.sh", "ntl_all")])
def test_gsm8k_training_prepares_missing_data_then_trains(script, mode, stub_env, tmp_path):
    env, _ = stub_env
    raw = tmp_path / "raw"
    rc, commands, err = run_script(script, ["--dry_run", "--model_path", "models/qwen", "--data_dir",
                                            str(tmp_path / "data"), "--raw_gsm8k_dir", str(raw),
                                            "--micro_batch_size", "8", "--output_dir", str(tmp_path / "run"),
                                            "--", "--gin_bindings=ntl_jax.TrainerConfig.use_wandb=True"], env,
                                   cwd=str(tmp_path))
    assert rc == 0, err
    prepare, train = commands
    assert prepare == ["python", "scripts/prepare_gsm8k.py", "--input_dir", str(raw), "--output_dir",
                       str(tmp_path / "data")]
    assert train[:3] == ["python", "-m", "ntl_jax.train"]
    assert flag(train, "gin_file") == [os.path.join(REPO_ROOT, "configs", f"gsm8k_qwen2_5_0_5b_{mode}.gin")]
    assert flag(train, "gin_bindings") == [
        f"MODEL_PATH='{tmp_path}/models/qwen'",  # relative to the caller's directory
        f"TRAIN_FILES=('{tmp_path}/data/train.parquet',)", f"VAL_FILES=('{tmp_path}/data/test.parquet',)",
        "PPO_MICRO_BATCH_SIZE_PER_DEVICE=8", "ntl_jax.TrainerConfig.use_wandb=True"]
    assert flag(train, "output_dir") == [str(tmp_path / "run")]


def test_gsm8k_training_skips_prepared_data_and_checks_the_model(stub_env, tmp_path):
    env, log = stub_env
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"")
    (data / "test.parquet").write_bytes(b"")
    rc, commands, _ = run_script("train_gsm8k_qwen_ppo_standard.sh", ["--dry_run", "--data_dir", str(data)], env)
    assert rc == 0 and len(commands) == 1 and commands[0][1:3] == ["-m", "ntl_jax.train"]
    # A real run stops before training when the model folder is missing.
    rc, _, err = run_script("train_gsm8k_qwen_ppo_standard.sh", ["--data_dir", str(data), "--model_path",
                                                                  str(tmp_path / "nope")], env)
    assert rc == 2 and "no config.json" in err and "hf download" in err
    assert not log.exists()
    rc, _, err = run_script("train_gsm8k_qwen_ppo.sh", ["--mode", "ntl_some", "--dry_run"], env)
    assert rc == 2 and "--mode=ntl_some is invalid" in err
    rc, _, err = run_script("train_gsm8k_qwen_ppo_ntl_all.sh", ["--model_path", "/a'b", "--dry_run"], env)
    assert rc == 2 and "quote" in err


def test_quick_test_runs_both_ntl_modes_sharing_the_warm_start(stub_env, tmp_path):
    env, _ = stub_env
    out = tmp_path / "quick"
    rc, commands, err = run_script("quick_test_ntl.sh", ["--dry_run", "--output_dir", str(out), "--steps", "3"], env)
    assert rc == 0, err
    final, mkdir, copy, all_tokens = commands
    for train, mode in ((final, "ntl_final"), (all_tokens, "ntl_all")):
        assert flag(train, "gin_file") == [f"configs/{mode}.gin"]
        assert flag(train, "output_dir") == [str(out / mode)]
        bindings = flag(train, "gin_bindings")
        assert "ntl_jax.TrainerConfig.total_training_steps=3" in bindings
        assert any(b.startswith("ntl_jax.WarmStartConfig.max_steps=") for b in bindings)
    assert mkdir == ["mkdir", "-p", str(out / "ntl_all")]
    assert copy == ["cp", "-r", str(out / "ntl_final" / "warm_start"), str(out / "ntl_all" / "warm_start")]
    rc, _, err = run_script("quick_test_ntl.sh", ["--dry_run", "--steps", "0"], env)
    assert rc == 2 and "--steps=0 is invalid" in err


# ------------------------------------------------------------------------------------------------ TPU / GPU / Ray
def test_tpu_pod_creates_installs_and_trains_on_all_workers(stub_env):
    env, _ = stub_env
    rc, commands, err = run_script("launch_tpu_pod.sh", [
        "--dry_run", "--tpu_name", "ntl-pod", "--zone", "us-central2-b", "--project", "proj", "--spot",
        "--accelerator_type", "v4-32", "--gin_bindings", "ntl_jax.TrainerConfig.use_wandb=True", "--background",
        "--checkpoint_dir", "gs://bucket/run1"], env)
    assert rc == 0, err
    describe, create, tar, scp, install, train = commands
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    scope = ["--zone=us-central2-b", "--project=proj"]
    assert describe == tpu + ["describe", "ntl-pod"] + scope
    assert create == tpu + ["create", "ntl-pod"] + scope + ["--accelerator-type=v4-32",
                                                             "--version=tpu-ubuntu2204-base", "--spot"]
    assert tar[0] == "tar" and tar[-1] == "."
    assert scp[:5] == tpu + ["scp"] and "--worker=all" in scp
    for ssh in (install, train):
        assert ssh[:6] == tpu + ["ssh", "ntl-pod"] and "--worker=all" in ssh
    install_script = flag(install, "command")[0]
    for step in ("uv venv", "jax[tpu]", "prepare_gsm8k.py --hf_dataset openai/gsm8k", "snapshot_download", "gcsfs"):
        assert step in install_script
    remote = shlex.split(flag(train, "command")[0])
    assert remote[:4] == ["cd", "$HOME/ntl-jax", "&&", "nohup"]
    assert remote[4:7] == ["../ntl-jax-venv/bin/python", "-m", "ntl_jax.train"]
    assert flag(remote, "gin_file") == ["configs/gsm8k_qwen2_5_0_5b_ntl_final.gin"]
    assert flag(remote, "gin_bindings") == [
        "MODEL_PATH='models/Qwen2.5-0.5B-Instruct'", "TRAIN_FILES=('data/gsm8k/train.parquet',)",
        "VAL_FILES=('data/gsm8k/test.parquet',)", "ntl_jax.TrainerConfig.checkpoint_dir='gs://bucket/run1'",
        "ntl_jax.TrainerConfig.use_wandb=True"]
    assert remote[-4:] == [">", "../ntl-jax-train.log", "2>&1", "&"]


def test_tpu_pod_options(stub_env):
    env, _ = stub_env
    base = ["--dry_run", "--tpu_name", "p", "--zone", "z", "--checkpoint_dir", "/mnt/nfs/run"]
    rc, commands, _ = run_script("launch_tpu_pod.sh", base + ["--skip_create", "--skip_install"], env)
    assert rc == 0 and len(commands) == 1 and "ntl_jax.train" in flag(commands[0], "command")[0]
    assert "ntl_jax.TrainerConfig.checkpoint_dir='/mnt/nfs/run'" in shlex.split(flag(commands[0], "command")[0])[-1]
    # Each worker's own disk only when asked, never with --spot (a recreated slice has empty disks).
    local = ["--dry_run", "--tpu_name", "p", "--zone", "z", "--skip_create", "--skip_install"]
    rc, _, err = run_script("launch_tpu_pod.sh", local, env)
    assert rc == 2 and "--checkpoint_dir is required: a pod's workers have separate disks" in err
    rc, commands, _ = run_script("launch_tpu_pod.sh", local + ["--allow_local_checkpoints"], env)
    assert rc == 0 and "allow_unshared_checkpoint_dir=True" in flag(commands[0], "command")[0]
    rc, _, err = run_script("launch_tpu_pod.sh", local + ["--allow_local_checkpoints", "--spot"], env)
    assert rc == 2 and "--spot with --allow_local_checkpoints cannot resume" in err
    rc, commands, _ = run_script("launch_tpu_pod.sh", base + ["--skip_create", "--source", "git", "--git_url",
                                                              "https://example.com/ntl-jax.git"], env)
    assert rc == 0 and "git clone --depth 1 https://example.com/ntl-jax.git" in flag(commands[0], "command")[0]
    for args, message in ((["--source", "git"], "needs --git_url"), (["--config", "configs/nope.gin"], "not found"),
                          (["--source", "svn"], "--source=svn is invalid")):
        rc, _, err = run_script("launch_tpu_pod.sh", base + args, env)
        assert rc == 2 and message in err
    rc, _, err = run_script("launch_tpu_pod.sh", ["--dry_run", "--tpu_name", "p"], env)
    assert rc == 2 and "--zone is required" in err


def test_gpu_single_node_and_multi_node(stub_env, tmp_path):
    env, _ = stub_env
    rc, commands, _ = run_script("launch_gpu.sh", ["--dry_run", "--model_path", "/m/qwen"], env)
    assert rc == 0 and commands == [["python", "-m", "ntl_jax.train",
                                     "--gin_file=configs/gsm8k_qwen2_5_0_5b_ntl_final.gin",
                                     "--gin_bindings=MODEL_PATH='/m/qwen'"]]
    # One node of several, settings as environment variables or as flags.
    common = ["--dry_run", "--num_nodes", "2", "--node_rank", "1", "--coordinator_address", "node0:1234"]
    rc, commands, _ = run_script("launch_gpu.sh", common, env)
    assert rc == 0 and commands[0][:4] == ["env", "NTL_JAX_COORDINATOR_ADDRESS=node0:1234",
                                           "NTL_JAX_NUM_PROCESSES=2", "NTL_JAX_PROCESS_ID=1"]
    rc, commands, _ = run_script("launch_gpu.sh", common + ["--use_flags"], env)
    assert rc == 0 and commands[0][-3:] == ["--coordinator_address=node0:1234", "--num_processes=2", "--process_id=1"]
    # Every node by ssh, rank i on host i.
    rc, commands, _ = run_script("launch_gpu.sh", ["--dry_run", "--nodes", "h0,h1,h2", "--output_dir",
                                                   str(tmp_path / "shared")], env)
    assert rc == 0 and [c[:2] for c in commands] == [["ssh", "h0"], ["ssh", "h1"], ["ssh", "h2"]]
    for rank, command in enumerate(commands):
        remote = shlex.split(command[2])
        assert remote[:3] == ["cd", REPO_ROOT, "&&"]
        assert remote[3:7] == ["env", "NTL_JAX_COORDINATOR_ADDRESS=h0:12355", "NTL_JAX_NUM_PROCESSES=3",
                               f"NTL_JAX_PROCESS_ID={rank}"]
        assert flag(remote, "output_dir") == [str(tmp_path / "shared")]
    for args, message in ((["--num_nodes", "2"], "needs --coordinator_address"),
                          (["--num_nodes", "2", "--node_rank", "2", "--coordinator_address", "a:1"], "0..1"),
                          (["--num_nodes", "x"], "--num_nodes=x is invalid")):
        rc, _, err = run_script("launch_gpu.sh", ["--dry_run", *args], env)
        assert rc == 2 and message in err


def test_ray_cluster_head_workers_and_stop(stub_env):
    env, _ = stub_env
    ray_env = ["env", "RAY_USAGE_STATS_ENABLED=0", "RAY_AUTH_MODE=disabled", "ray"]
    rc, commands, err = run_script("start_ray_cluster.sh", ["--dry_run", "--head", "--num_cpus", "8"], env)
    assert rc == 0 and commands == [ray_env + ["start", "--head", "--port=6379", "--num-cpus=8",
                                               "--disable-usage-stats"]]
    assert "RAY_ADDRESS=" in err and "reward_runner='ray'" in err
    rc, commands, _ = run_script("start_ray_cluster.sh", ["--dry_run", "--address", "head:6379"], env)
    assert rc == 0 and commands == [ray_env + ["start", "--address=head:6379", "--disable-usage-stats"]]
    rc, commands, _ = run_script("start_ray_cluster.sh", ["--dry_run", "--hosts", "h0,h1,h2", "--port", "7000"], env)
    assert rc == 0 and [c[:2] for c in commands] == [["ssh", "h0"], ["ssh", "h1"], ["ssh", "h2"]]
    assert shlex.split(commands[0][2])[4:7] == ["start", "--head", "--port=7000"]
    assert all(shlex.split(c[2])[4:6] == ["start", "--address=h0:7000"] for c in commands[1:])
    rc, commands, _ = run_script("start_ray_cluster.sh", ["--dry_run", "--stop", "--hosts", "h0,h1"], env)
    assert rc == 0 and all(shlex.split(c[2])[-1] == "stop" for c in commands)
    for args, message in ((["--head", "--address", "h:1"], "exclude each other"), ([], "is required"),
                          (["--address", "nohost"], "host:port")):
        rc, _, err = run_script("start_ray_cluster.sh", ["--dry_run", *args], env)
        assert rc == 2 and message in err


# ------------------------------------------------------------------------------------------------ GSM8K configs
@pytest.fixture
def parse_config():
    import gin

    from ntl_jax.train import build_experiment, parse_gin

    def parse(name: str, bindings: list[str]):
        gin.clear_config()
        parse_gin([os.path.join(REPO_ROOT, "configs", f"gsm8k_qwen2_5_0_5b_{name}.gin")], bindings)
        return build_experiment()

    yield parse
    gin.clear_config()


@pytest.mark.parametrize("name, reward_fn, reward_mode", [("standard", None, None),
                                                          ("ntl_final", None, "final_answer"),
                                                          ("ntl_all", None, "all_tokens")])
def test_gsm8k_configs_mirror_the_verl_ntl_recipe(parse_config, name, reward_fn, reward_mode):
    config = parse_config(name, ["ntl_jax.TrainerConfig.model_path = '/models/qwen'"])
    ppo, run, ntl = config.ppo, config.trainer, config.ntl
    assert (ppo.train_batch_size, ppo.rollout_n, ppo.ppo_mini_batch_size, ppo.ppo_micro_batch_size_per_device) == (
        256, 1, 64, 4)
    # verl's per-device micro-batch: the same config is valid on 1, 8 and 16 devices.
    assert [ppo.micro_batches(devices) for devices in (1, 8, 16)] == [16, 2, 1]
    assert (ppo.adv_estimator, ppo.gamma, ppo.lam, ppo.ppo_epochs) == ("gae", 1.0, 1.0, 1)
    assert (ppo.entropy_coeff, ppo.use_kl_loss, ppo.use_kl_in_reward, ppo.kl_ctrl_type, ppo.kl_coef) == (
        0.001, False, True, "fixed", 0.001)
    assert (ppo.actor_lr, ppo.critic_lr, ppo.max_prompt_length, ppo.max_response_length) == (1e-6, 1e-5, 512, 512)
    assert (run.total_epochs, run.total_training_steps, run.test_freq, run.dtype, run.remat) == (
        15, 0, 10, "bfloat16", True)
    assert run.model_path == "/models/qwen"
    assert run.train_files == ("data/gsm8k/train.parquet",) and run.val_files == ("data/gsm8k/test.parquet",)
    assert run.reward_fn_name == reward_fn and run.output_dir == f"outputs/gsm8k_qwen2_5_0_5b_{name}"
    assert run.platform == "accelerator"  # a broken CUDA install stops with one line, never trains on the CPU
    assert config.use_ntl == (reward_mode is not None) == ntl.enabled
    if reward_mode:
        assert (ntl.reward_mode, ntl.tau, ntl.method, ntl.answer_extraction) == (
            reward_mode, 0.1, "wasserstein", "strict")


def test_gsm8k_config_macros_override(parse_config):
    config = parse_config("ntl_final", ["MODEL_PATH = '/ckpt/q'", "PPO_MICRO_BATCH_SIZE_PER_DEVICE = 8",
                                        "MAX_RESPONSE_LENGTH = 256", "TRAIN_FILES = ('/d/train.parquet',)"])
    assert config.trainer.model_path == "/ckpt/q" and config.trainer.train_files == ("/d/train.parquet",)
    assert (config.ppo.ppo_micro_batch_size_per_device, config.ppo.micro_batches(4),
            config.ppo.max_response_length) == (8, 2, 256)
    with pytest.raises(ValueError, match="ppo_micro_batch_size_per_device=8 is invalid"):
        config.ppo.micro_batches(16)  # 8 x 16 devices = 128 responses do not divide the mini-batch of 64


# ------------------------------------------------------------------------------------------------ compare_modes
compare = _load_module("compare_modes")


def test_a_preempted_run_is_not_finished(tmp_path):
    assert not compare.finished(str(tmp_path))
    (tmp_path / "result.json").write_text('{"preempted": true, "end_step": 86}')
    assert not compare.finished(str(tmp_path))  # rerunning the grid resumes it
    (tmp_path / "result.json").write_text('{"preempted": false, "end_step": 150}')
    assert compare.finished(str(tmp_path))


def test_modes_are_the_shipped_configs_and_bindings_select_the_seed():
    assert set(compare.MODES) == {"standard", "ntl_final", "ntl_all", "ntl_hybrid", "ntl_credit"}
    for config in compare.MODES.values():
        assert os.path.isfile(os.path.join(compare.CONFIG_DIR, config))
    assert compare.run_bindings(3, steps=5) == ["ntl_jax.TrainerConfig.seed = 3",
                                                "ntl_jax.TrainerConfig.total_training_steps = 5"]
    assert compare.run_bindings(0, None) == ["ntl_jax.TrainerConfig.seed = 0"]


def test_a_variant_is_a_mode_with_bindings_run_as_its_own_arm(tmp_path, capsys):
    args = compare.parse_args([
        "--output_dir", "x", "--modes", "standard,credit_1", "--warm_starts", "ce",
        "--variant", "credit_1=ntl_credit:ntl_jax.NTLConfig.digit_credit = 1.0; ntl_jax.NTLConfig.weight = 0.0"])
    assert args.arms == ["standard@ce", "credit_1@ce"]
    assert compare.baselines(args.arms) == [("credit_1@ce", "standard@ce")]
    config, bindings = compare.mode_config("credit_1", args.variants)
    assert config == os.path.join(compare.CONFIG_DIR, "ntl_credit.gin")
    assert bindings == ["ntl_jax.NTLConfig.digit_credit = 1.0", "ntl_jax.NTLConfig.weight = 0.0"]
    assert compare.mode_config("standard", args.variants) == (os.path.join(compare.CONFIG_DIR, "standard.gin"), [])
    for spec in ("credit_1=ppo:ntl_jax.NTLConfig.weight = 0.0",  # unknown mode
                 "standard=ntl_credit:ntl_jax.NTLConfig.weight = 0.0",  # shadows a mode
                 "credit/1=ntl_credit:ntl_jax.NTLConfig.weight = 0.0",  # not a folder name
                 "credit_1=ntl_credit:"):  # no binding
        with pytest.raises(SystemExit):
            compare.parse_args(["--output_dir", str(tmp_path), "--variant", spec])
        assert f"--variant={spec!r} is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a variant must be declared to be used
        compare.parse_args(["--output_dir", str(tmp_path), "--modes", "standard,credit_1"])
    assert "--modes=standard,credit_1 is invalid" in capsys.readouterr().err


def test_spread_gives_a_95_percent_t_interval():
    stats = compare.spread([0.40, 0.50, 0.45, 0.55, 0.35])
    assert stats["mean"] == pytest.approx(0.45) and stats["n"] == 5
    assert stats["ci95"] == pytest.approx(2.776 * stats["std"] / math.sqrt(5))
    assert compare.spread([0.3])["ci95"] == 0.0


def _write_run(output_dir, mode: str, seed: int, accs: list[float], mae: float, digit: float) -> None:
    from ntl_jax.ppo.metrics import MetricsLogger

    with MetricsLogger(os.path.join(output_dir, mode, f"seed_{seed}"), use_tensorboard=False) as logger:
        for step, acc in enumerate(accs):
            record = {"val-core/arithmetic/acc/mean@1": acc, "val-aux/arithmetic/abs_error/mean@1": mae + step,
                      "val-aux/arithmetic/abs_error/median@1": mae / 2, "val-aux/arithmetic/digit_acc/mean@1": digit}
            if step:
                record["reward_extra/acc/mean"] = acc / 2
                record["reward_extra/acc/same_frac"] = 1 - acc
            logger.log(step, record)


def test_arms_cross_modes_with_warm_starts_and_pair_with_the_standard_arm():
    args = compare.parse_args(["--output_dir", "x", "--modes", "standard,ntl_final", "--warm_starts", "ce,ce_ntl"])
    assert args.arms == ["standard@ce", "ntl_final@ce", "standard", "ntl_final"]
    assert compare.arm_parts("ntl_final@ce") == ("ntl_final", "ce") and compare.arm_parts("standard") == (
        "standard", "ce_ntl")
    # Each arm against the standard arm of its warm start; the NTL-warm-started arms also against no NTL anywhere.
    assert compare.baselines(args.arms) == [("ntl_final@ce", "standard@ce"), ("standard", "standard@ce"),
                                            ("ntl_final", "standard"), ("ntl_final", "standard@ce")]
    assert compare.WARM_STARTS["ce"] == ["ntl_jax.WarmStartConfig.ntl_weight = 0.0"]
    assert compare.steps_to_accuracy([(0, 0.1), (25, 0.29), (50, 0.31), (75, 0.2)], 0.3) == 50.0
    assert math.isnan(compare.steps_to_accuracy([(0, 0.1)], 0.3))


def test_report_aggregates_seeds_into_markdown_csv_and_plot(tmp_path):
    out = str(tmp_path)
    _write_run(out, "standard", 0, [0.1, 0.3], 5.0, 0.5)
    _write_run(out, "standard", 1, [0.1, 0.5], 7.0, 0.7)
    _write_run(out, "ntl_final", 0, [0.1, 0.6], 1.0, 0.9)
    paths = compare.report(out, ["standard", "ntl_final", "ntl_all"], [0, 1],
                           plot=importlib.util.find_spec("matplotlib") is not None, target_acc=0.5)
    with open(paths["csv"]) as f:
        rows = {row["mode"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"standard", "ntl_final"}  # no ntl_all runs
    standard = rows["standard"]
    assert int(standard["seeds"]) == 2
    assert float(standard["acc_mean"]) == pytest.approx(0.4) and float(standard["acc_std"]) == pytest.approx(
        math.sqrt(0.02))
    assert float(standard["acc_ci95"]) == pytest.approx(12.706 * math.sqrt(0.02 / 2))
    assert float(standard["abs_error_mean"]) == pytest.approx(7.0)  # last validation: 6 and 8
    assert float(standard["digit_acc_min"]) == pytest.approx(0.5) and float(standard["acc_before_mean"]) == 0.1
    assert float(rows["ntl_final"]["acc_std"]) == 0.0
    markdown = open(paths["markdown"]).read()
    assert "| standard | 2 | 0.1 ± 0 (0.1–0.1) | 0.4 ± 1.3 (0.3–0.5) |" in markdown
    # Paired by seed: ntl_final ran seed 0 only -> 0.6 - 0.3, MAE (1 + 1) - (5 + 1), digit 0.9 - 0.5.
    assert "| ntl_final - standard | 1 | +0.3 ± 0 (0) | -4 ± 0 (1) | +0.4 ± 0 (0) | -2 ± 0 (1) | n/a |" in markdown
    # Steps to accuracy 0.5: standard seed 1 reaches it at step 1, seed 0 never; ntl_final seed 0 at step 1; the
    # paired difference needs a seed where both reach it: none.
    assert float(standard["steps_to_target_mean"]) == 1.0 and int(standard["steps_to_target_reached"]) == 1
    assert "| 0.6 ± 1.3 (0.5–0.7) | 1 (1) |" in markdown  # no-signal fraction (1 - acc at step 1), steps

    with open(paths["runs"]) as f:
        assert len(list(csv.DictReader(f))) == 3
    if "plot" in paths:
        assert open(paths["plot"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_compare_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.parse_args(["--output_dir", str(tmp_path), "--modes", "standard,ppo"])
    assert "--modes=standard,ppo is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--output_dir", str(tmp_path), "--warm_starts", "ce,ntl"])
    assert "--warm_starts=ce,ntl is invalid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--output_dir", str(tmp_path), "--target_acc", "1.5"])
    assert "--target_acc=1.5 is invalid" in capsys.readouterr().err
    assert compare.main(["--output_dir", str(tmp_path), "--report_only", "--no_plot"]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.slow  # three short trainings on the embedded default: ~2 min on 2 CPU cores
def test_compare_modes_smoke_two_steps_one_seed(tmp_path):
    pytest.importorskip("matplotlib", reason="compare_modes.py draws its learning curves with matplotlib")
    tiny = ["ntl_jax.EmbeddedTaskConfig.num_train = 500", "ntl_jax.EmbeddedTaskConfig.num_val = 32",
            "ntl_jax.WarmStartConfig.max_steps = 40", "ntl_jax.WarmStartConfig.eval_every = 40",
            "ntl_jax.WarmStartConfig.eval_samples = 32", "ntl_jax.PPOConfig.train_batch_size = 8",
            "ntl_jax.PPOConfig.rollout_n = 4", "ntl_jax.PPOConfig.ppo_mini_batch_size = 8",
            "ntl_jax.PPOConfig.ppo_micro_batch_size = 32", "ntl_jax.TrainerConfig.test_freq = 1",
            "ntl_jax.TrainerConfig.use_tensorboard = False", "ntl_jax.TrainerConfig.progress_bar = False"]
    args = ["--output_dir", str(tmp_path), "--seeds", "1", "--steps", "2", "--modes", ",".join(compare.MODES)
            + ",credit_1", "--variant", "credit_1=ntl_credit:ntl_jax.NTLConfig.digit_credit = 1.0"]
    for binding in tiny:
        args += ["--gin_bindings", binding]
    assert compare.main(args) == 0
    with open(tmp_path / "summary.csv") as f:
        rows = {row["mode"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(compare.MODES) | {"credit_1"}
    # The variant ran its mode's config with its binding on top; the shipped mode kept its own value.
    assert "digit_credit = 1.0" in (tmp_path / "credit_1" / "seed_0" / "operative_config.gin").read_text()
    assert "digit_credit = 0.5" in (tmp_path / "ntl_credit" / "seed_0" / "operative_config.gin").read_text()
    for mode, row in rows.items():
        for key in ("acc_mean", "abs_error_mean", "digit_acc_mean"):
            assert math.isfinite(float(row[key])), (mode, key)
        records = [json.loads(line) for line in open(tmp_path / mode / "seed_0" / "metrics.jsonl")]
        assert max(r["step"] for r in records) == 2
        assert ("ntl/loss" in records[-1]) == (mode != "standard")
    # Every mode of the seed started from the same warm start (trained once).
    stats = [json.load(open(tmp_path / m / "seed_0" / "warm_start" / "warm_start.json")) for m in compare.MODES]
    assert all(s == stats[0] for s in stats)
    assert (tmp_path / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "| ntl_hybrid | 1 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow  # the real quick test: both NTL modes on the embedded default, ~2 min on 2 CPU cores
def test_quick_test_ntl_script_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "quick_test_ntl.sh"), "--output_dir", str(tmp_path),
                           "--steps", "2"], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "both NTL modes ran" in proc.stderr
    assert "reusing the cached warm start" in proc.stderr  # ntl_all reused ntl_final's warm start
    for mode in ("ntl_final", "ntl_all"):
        assert (tmp_path / mode / "result.json").is_file()


# ------------------------------------------------------------------------------------------------ real-scale path
def _script(name: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


@pytest.mark.slow  # AOT compilation of every step at Qwen2.5-0.5B shapes: ~2 min on 2 CPU cores
def test_memory_plan_of_the_shipped_0_5b_recipe_fits_one_80_gb_device():
    proc = _script("plan_memory.py", "--gin_file=configs/gsm8k_qwen2_5_0_5b_ntl_final.gin", "--devices=1",
                   "--model_config=configs/models/qwen2.5-0.5b-instruct.json", "--limit_gib=80")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "494.0M parameters" in proc.stdout and "total: 12.88 GiB" in proc.stdout  # float32 actor/critic/Adam/ref
    phases = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "GiB |" in line]
    assert [p.split(" | ")[0][2:] for p in phases] == [
        "generation: prefill", "generation: decode loop", "old log-probs (+ NTL digit slice)", "reference log-probs",
        "critic values", "actor update (16 micro-batches)", "critic update (16 micro-batches)"]
    peak = float(proc.stdout.split("peak: ")[1].split(" GiB")[0])
    assert 12.88 < peak <= 80


@pytest.mark.slow  # the same for a 7B-class config sharded (fsdp) over 8 simulated devices
def test_memory_plan_of_the_7b_config_with_fsdp_fits_8_devices_of_80_gb():
    """The plan the 7B config's comment quotes: it fits 8 x 80 GB cards (A100/H100 80GB) with room to spare."""
    proc = _script("plan_memory.py", "--gin_file=configs/gsm8k_qwen2_5_7b_ntl_final.gin", "--devices=8",
                   "--model_config=configs/models/qwen2.5-7b-instruct.json", "--limit_gib=70")
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    assert "'fsdp': 8" in proc.stdout
    resident = float(proc.stdout.split("total: ")[1].split(" GiB")[0])
    assert 20 < resident < 35  # ~193 GiB of float32 state over 8 devices
    phases = {line.split(" | ")[0][2:]: float(line.rsplit("| ", 2)[1].split()[0])
              for line in proc.stdout.splitlines() if line.startswith("| ") and "GiB |" in line}
    assert phases["generation: prefill"] < 40  # rows stay on their devices (once 65 GiB: the batch was gathered)
    # scan_layers: one layer's gathered weights at a time in the backward (unrolled: 92 GiB, ~2.3 GiB per layer)
    assert phases["actor update (4 micro-batches)"] < 45 and phases["critic update (4 micro-batches)"] < 45


def test_memory_plan_refuses_a_missing_model_shape():
    proc = _script("plan_memory.py", "--gin_file=configs/gsm8k_qwen2_5_0_5b_standard.gin", "--devices=1",
                   timeout=300)
    assert proc.returncode == 2
    assert "error: model shape 'models/Qwen2.5-0.5B-Instruct/config.json' not found" in proc.stderr


SHARED_GSM8K = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "gsm8k")


@pytest.mark.slow  # two PPO iterations of the GSM8K recipe on real prompts, shrunk to run on 2 CPU cores (~1 min)
@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_GSM8K, "train.jsonl")),
                    reason=f"no GSM8K copy at {SHARED_GSM8K} (the script's default --gsm8k_dir)")
def test_real_shape_smoke_run_at_reduced_size():
    proc = _script("smoke_real_shapes.py", "--layers", "2", "--hidden", "64", "--vocab", "4096", "--prompts", "8",
                   "--prompt_length", "256", "--response_length", "32", "--platform", "any")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iteration ")]
    assert len(lines) == 2
    for line in lines:
        assert "gen " in line and "update_actor " in line and "update_critic " in line and "tokens/s" in line
    compiles = [int(line.split(" compilations")[0].rsplit(" ", 1)[1]) for line in lines]
    assert compiles[1] == compiles[0] > 0  # the second iteration compiles nothing new


@pytest.mark.slow  # every step of the first accelerator hour at toy size on 2 CPU cores (~4 min)
@pytest.mark.skipif(not os.path.isfile(os.path.join(SHARED_GSM8K, "train.jsonl")),
                    reason=f"no GSM8K copy at {SHARED_GSM8K} (the smoke step's prompts)")
def test_accelerator_check_runs_every_step_at_toy_size(tmp_path):
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "accelerator_check.sh"), "--toy", "--out", str(out)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert list(steps) == ["backend", "smoke", "plan", "suite"]  # --toy installs nothing
    assert {name: step["status"] for name, step in steps.items()} == dict.fromkeys(steps, "ok"), proc.stderr[-3000:]
    assert steps["backend"]["figures"]["backend"] == "cpu"
    smoke = steps["smoke"]["figures"]["iterations"]
    assert len(smoke) == 2 and all(i["timing_s/gen"] > 0 and i["perf/throughput"] > 0 for i in smoke)
    assert steps["plan"]["figures"]["peak_gib"] > 0 and steps["plan"]["figures"]["limit_gib"] is None
    assert steps["suite"]["figures"]["results"] and not steps["suite"]["figures"]["errors"]
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(["bash", os.path.join(SCRIPTS, "accelerator_check.sh"), "--extra", "rocm"], check=True,
                       capture_output=True, env=env)


def test_the_compilation_cache_makes_a_second_process_load_instead_of_compile(tmp_path):
    """enable_compilation_cache (on by default in run_experiment): the first process writes the compiled step,
    a second process with the same program finds it and writes nothing new."""
    cache = tmp_path / "xla"
    program = textwrap.dedent(f"""
        import jax, jax.numpy as jnp
        from ntl_jax.train import enable_compilation_cache
        assert enable_compilation_cache({str(cache)!r}) == {str(cache)!r}
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        step = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
        print(float(step(jnp.ones((64, 64)))))
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first process wrote no cache entry"
    second = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0 and second.stdout == first.stdout, second.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == entries  # a hit: nothing compiled, nothing written
