"""Bad input is refused with one clear line naming the value and what is allowed.

Inputs go in the way a user gives them: gin files and bindings (``ntl_jax.train.parse_gin`` /
``build_experiment`` and the ``python -m ntl_jax.train`` command line), a tokenizer, a checkpoint folder, parquet
files, a reward file, and a device mesh. (Field-level checks of each config class are in their own test files.)
"""

from __future__ import annotations

import subprocess
import sys

import gin
import jax
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from flax import nnx
from tokenizers import Tokenizer, decoders, models
from transformers import PreTrainedTokenizerFast

from ntl_jax.data.verl_parquet import write_verl_parquet
from ntl_jax.embedded import EmbeddedTaskConfig, tiny_model_config
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.hf_io import save_pretrained
from ntl_jax.models.tokenizers import build_char_tokenizer
from ntl_jax.ntl.digits import DigitTokenError
from ntl_jax.ppo import factory
from ntl_jax.ppo.config import TrainerConfig
from ntl_jax.train import build_experiment, parse_gin, run_experiment
from test_reliability_support import (build_trainer, env_for_subprocess, one_line, policy_dir,  # noqa: F401
                                      single_device_mesh)
from trainer_fixtures import tiny_experiment, tiny_rows, with_trainer


def first_line(error: BaseException) -> str:
    """gin appends '  In call to configurable ...' lines to errors raised inside configurables; the CLI shows the
    first line (see ``test_cli_bad_value_is_one_error_line``)."""
    return str(error).strip().splitlines()[0]


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


# ------------------------------------------------------------------------------------------------------------ gin
GIN_CASES = [
    ("ntl_jax.PPOConfig.bogus = 1", "Configurable 'ntl_jax.PPOConfig' doesn't have a parameter named 'bogus'"),
    ("ntl_jax.Bogus.x = 1", "No configurable matching 'ntl_jax.Bogus'"),
    ("ntl_jax.PPOConfig.train_batch_size = 'big'",
     "PPOConfig.train_batch_size='big' is invalid; allowed: an integer >= 1"),
    ("ntl_jax.PPOConfig.train_batch_size = 4.5", "PPOConfig.train_batch_size=4.5 is invalid; allowed: an integer >= 1"),
    ("ntl_jax.PPOConfig.actor_lr = '1e-3'", "PPOConfig.actor_lr='1e-3' is invalid; allowed: a finite number > 0"),
    ("ntl_jax.NTLConfig.enabled = 'yes'", "NTLConfig.enabled='yes' is invalid; allowed: True, False"),
    ("ntl_jax.NTLConfig.weight = -0.5", "NTLConfig.weight=-0.5 is invalid; allowed: a finite number >= 0"),
    ("ntl_jax.NTLConfig.tau = 0.0", "NTLConfig.tau=0.0 is invalid; allowed: a finite number > 0"),
    ("ntl_jax.NTLConfig.tau = -2.0", "NTLConfig.tau=-2.0 is invalid; allowed: a finite number > 0"),
    ("ntl_jax.NTLConfig.method = 'l2'",
     "NTLConfig.method='l2' is invalid; allowed: 'mse', 'wasserstein', 'number'"),
    ("ntl_jax.NTLConfig.reward_mode = 'sometimes'",
     "NTLConfig.reward_mode='sometimes' is invalid; allowed: 'final_answer', 'all_tokens', 'hybrid'"),
    ("ntl_jax.PPOConfig.adv_estimator = 'ppo2'",
     "PPOConfig.adv_estimator='ppo2' is invalid; allowed: 'gae', 'grpo', 'rloo'"),
    ("ntl_jax.TrainerConfig.reward_runner = 'threads'",
     "TrainerConfig.reward_runner='threads' is invalid; allowed: 'local', 'ray'"),
    ("ntl_jax.TrainerConfig.reward_timeout_s = -1",
     "TrainerConfig.reward_timeout_s=-1 is invalid; allowed: a finite number > 0"),
    ("ntl_jax.TrainerConfig.train_files = (1, 2)",
     "TrainerConfig.train_files=(1, 2) is invalid; allowed: a parquet file path or a tuple of them"),
    ("ntl_jax.PPOConfig.train_batch_size = ", "Unable to parse value"),
]


@pytest.mark.parametrize("binding, message", GIN_CASES, ids=[case[0].split("=")[0].strip() for case in GIN_CASES])
def test_bad_gin_binding_names_the_value_and_what_is_allowed(clean_gin, binding, message):
    with pytest.raises(ValueError) as raised:
        parse_gin(["configs/standard.gin"], [binding])
        build_experiment()
    assert message in first_line(raised.value)


def test_bad_gin_file_names_the_parameter(clean_gin, tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'standard.gin'\nntl_jax.NTLConfig.wieght = 0.3\n")
    with pytest.raises(ValueError) as raised:
        parse_gin([str(bad)], [])
    assert "doesn't have a parameter named 'wieght'" in one_line(str(raised.value))
    with pytest.raises(ValueError, match="does not exist"):
        parse_gin([str(tmp_path / "missing.gin")], [])


def test_a_single_train_file_string_is_one_path_not_characters():
    assert TrainerConfig(train_files="data/train.parquet").train_files == ("data/train.parquet",)
    assert TrainerConfig(reward_fn_kwargs={"tau": 2.0}).reward_fn_kwargs == (("tau", 2.0),)


def run_cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = env_for_subprocess(str(tmp_path / "jax_cache"))
    return subprocess.run([sys.executable, "-m", "ntl_jax.train", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_cli_unknown_parameter_exits_2_with_one_error_line(tmp_path):
    proc = run_cli(tmp_path, "--gin_file=configs/standard.gin", "--gin_bindings=ntl_jax.PPOConfig.bogus = 1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [
        "error: bad gin config: Configurable 'ntl_jax.PPOConfig' doesn't have a parameter named 'bogus'."]
    assert "Traceback" not in proc.stderr


def test_cli_bad_value_is_one_error_line(tmp_path):
    proc = run_cli(tmp_path, "--gin_file=configs/standard.gin", "--gin_bindings=ntl_jax.NTLConfig.weight = -1.0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == ["error: NTLConfig.weight=-1.0 is invalid; allowed: a finite number >= 0"]
    after = proc.stderr.split(error_lines(proc.stderr)[0], 1)[1]
    assert after.strip() == "", after


def test_cli_refuses_a_silent_cpu_fallback_in_one_line(tmp_path):
    """A config that asks for an accelerator stops at start-up when JAX runs on the CPU (a CPU-only install)."""
    proc = run_cli(tmp_path, "--gin_file=configs/standard.gin", f"--output_dir={tmp_path / 'out'}",
                   "--gin_bindings=ntl_jax.TrainerConfig.platform = 'accelerator'")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [
        "error: TrainerConfig.platform='accelerator' but JAX runs on cpu; install the accelerator build of JAX "
        "(README: Install on GPU, TPU or Colab), or bind ntl_jax.TrainerConfig.platform='any'"]
    assert "Traceback" not in proc.stderr
    assert "backend cpu" in proc.stderr  # the backend, device kind and count are logged first


def test_unexpected_set_up_failures_are_one_line_too(tmp_path, policy_dir, monkeypatch):
    import ntl_jax.train as train_module

    def broken(config):
        raise OSError("disk quota exceeded\nmore detail")

    monkeypatch.setattr(train_module, "_load_data", broken)
    config = with_trainer(tiny_experiment(str(tmp_path)), model_path=policy_dir)
    with pytest.raises(train_module.SetupError) as raised:
        run_experiment(config)
    assert str(raised.value) == "OSError: disk quota exceeded"


def test_cli_bad_parquet_is_one_error_line(tmp_path, policy_dir):
    bad = tmp_path / "bad.parquet"
    row = {"data_source": "arithmetic", "prompt": [{"role": "user", "content": "1+1"}]}  # no reward_model
    pq.write_table(pa.Table.from_pylist([row]), bad)
    proc = run_cli(tmp_path, "--gin_file=configs/standard.gin", f"--output_dir={tmp_path / 'out'}",
                   f"--gin_bindings=ntl_jax.TrainerConfig.model_path = '{policy_dir}'",
                   f"--gin_bindings=ntl_jax.TrainerConfig.train_files = '{bad}'")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert error_lines(proc.stderr) == [f"error: {bad}: missing required column 'reward_model'; columns are "
                                        "['data_source', 'prompt']"]


# ---------------------------------------------------------------------------------------------------- data files
def parquet_config(tmp_path, policy_dir, train_file):
    config = tiny_experiment(str(tmp_path / "out"))
    return with_trainer(config, model_path=policy_dir, train_files=(str(train_file),))


def test_parquet_missing_column_or_malformed_row_is_refused_before_training(tmp_path, policy_dir):
    rows = tiny_rows(4)
    no_column = tmp_path / "no_column.parquet"
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "reward_model"} for r in rows]),
                   no_column)
    with pytest.raises(ValueError) as raised:
        run_experiment(parquet_config(tmp_path, policy_dir, no_column))
    assert f"{no_column}: missing required column 'reward_model'" in one_line(str(raised.value))

    malformed = tmp_path / "malformed.parquet"
    broken = [dict(r) for r in rows]
    broken[2]["prompt"] = []
    pq.write_table(pa.Table.from_pylist(broken), malformed)
    with pytest.raises(ValueError) as raised:
        run_experiment(parquet_config(tmp_path, policy_dir, malformed))
    assert f"{malformed}: row 2: prompt=[] must be a non-empty list" in one_line(str(raised.value))

    with pytest.raises(ValueError) as raised:
        run_experiment(parquet_config(tmp_path, policy_dir, tmp_path / "absent.parquet"))
    assert f"TrainerConfig.train_files names '{tmp_path / 'absent.parquet'}', which does not exist" in one_line(
        str(raised.value))  # found by the start-up checks, before the model is loaded


def test_missing_model_folder_is_named_by_the_trainer(tmp_path):
    missing = tmp_path / "no_model"
    with pytest.raises(ValueError) as raised:
        factory.create_ppo_trainer(tiny_experiment(str(tmp_path)), build_char_tokenizer(), policy_path=str(missing),
                                   train_rows=tiny_rows(), mesh=single_device_mesh())
    assert one_line(str(raised.value)) == f"no config.json in '{missing}'; allowed: a Hugging Face model directory"


def test_missing_model_folder_is_named_by_the_cli_set_up(tmp_path):
    good = tmp_path / "train.parquet"
    write_verl_parquet(tiny_rows(4), good)
    with pytest.raises(ValueError) as raised:
        run_experiment(parquet_config(tmp_path, str(tmp_path / "no_model"), good))
    assert "no_model" in one_line(str(raised.value))


# -------------------------------------------------------------------------------------------------- reward files
def test_reward_file_missing_or_without_the_function(tmp_path, policy_dir):
    missing = with_trainer(tiny_experiment(str(tmp_path)), reward_fn_path=str(tmp_path / "nope.py"))
    with pytest.raises(ValueError) as raised:
        build_trainer(missing, policy_dir)
    assert "reward function file not found: " in one_line(str(raised.value)) and "nope.py" in str(raised.value)

    reward = tmp_path / "reward.py"
    reward.write_text("def score(data_source, solution_str, ground_truth, extra_info=None):\n    return 0.0\n")
    without = with_trainer(tiny_experiment(str(tmp_path)), reward_fn_path=str(reward), reward_fn_name="compute_score")
    with pytest.raises(ValueError) as raised:
        build_trainer(without, policy_dir)
    assert f"reward function 'compute_score' not found in '{reward}'" in one_line(str(raised.value))

    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_module_anywhere\n")
    with pytest.raises(ValueError) as raised:
        build_trainer(with_trainer(tiny_experiment(str(tmp_path)), reward_fn_path=str(broken)), policy_dir)
    assert "failed to import: ModuleNotFoundError" in one_line(str(raised.value))


# ------------------------------------------------------------------------------------------------------ tokenizer
def merged_digit_tokenizer() -> PreTrainedTokenizerFast:
    """The character tokenizer with 'Z' replaced by a merged '12' token (same vocabulary size as the model)."""
    vocab = dict(build_char_tokenizer().get_vocab())
    vocab["12"] = vocab.pop("Z")
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("1", "2")]))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path="merged-digits", pad_token="<pad>",
                                   eos_token="<eos>")


def test_ntl_with_a_tokenizer_without_single_digit_tokens_is_refused(tmp_path, policy_dir):
    config = tiny_experiment(str(tmp_path), use_ntl=True)
    with pytest.raises(DigitTokenError) as raised:
        factory.create_ppo_trainer(config, merged_digit_tokenizer(), policy_path=policy_dir, train_rows=tiny_rows(),
                                   mesh=single_device_mesh())
    message = one_line(str(raised.value))
    assert "merged-digits" in message and "token '12'" in message


# ----------------------------------------------------------------------------------------------------- checkpoint
def test_checkpoint_of_another_model_shape_is_a_config_error(tmp_path, policy_dir):
    trainer = build_trainer(tiny_experiment(str(tmp_path / "run")), policy_dir)
    trainer.save_checkpoint()
    trainer.close()
    wider = tmp_path / "wider_policy"
    tokenizer = build_char_tokenizer()
    task = EmbeddedTaskConfig(hidden_size=48, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    save_pretrained(CausalLM(tiny_model_config(tokenizer, task), rngs=nnx.Rngs(0)), str(wider), tokenizer=tokenizer)
    other = build_trainer(tiny_experiment(str(tmp_path / "run")), str(wider))
    try:
        with pytest.raises(ValueError) as raised:
            other.maybe_resume()
    finally:
        other.close()
    message = one_line(str(raised.value))
    assert "has shape" in message and "48" in message and "32" in message
    assert "saved with a different model config" in message


# ---------------------------------------------------------------------------------------------------------- mesh
def test_batch_sizes_that_do_not_divide_the_devices_are_refused(tmp_path, policy_dir):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 simulated devices")
    config = with_trainer(tiny_experiment(str(tmp_path)), mesh_data=8)  # 8 responses, micro-batches of 2
    with pytest.raises(ValueError) as raised:
        build_trainer(config, policy_dir, mesh=None)
    assert one_line(str(raised.value)) == ("PPOConfig.ppo_micro_batch_size=2 is invalid; allowed: a multiple of the "
                                           "data-parallel device count data*fsdp=8 (or set "
                                           "ppo_micro_batch_size_per_device)")
    with pytest.raises(ValueError) as raised:
        build_trainer(with_trainer(tiny_experiment(str(tmp_path)), mesh_data=3), policy_dir, mesh=None)
    assert "(product 3) do not divide the 8 devices" in one_line(str(raised.value))
