"""Shared helpers for trainer tests: a tiny random Qwen2-layout policy saved in HF format, and configs."""

from __future__ import annotations

import dataclasses
import os

from flax import nnx

from ntl_jax.data.arithmetic import make_arithmetic_examples
from ntl_jax.embedded import EmbeddedTaskConfig, tiny_model_config
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.hf_io import save_pretrained
from ntl_jax.models.tokenizers import build_char_tokenizer, load_tokenizer
from ntl_jax.ntl.config import NTLConfig
from ntl_jax.ppo.config import ExperimentConfig, PPOConfig, TrainerConfig


def make_tiny_policy(directory: str, seed: int = 0) -> str:
    """A random 1-layer width-32 decoder + the character tokenizer, written as an HF folder."""
    tokenizer = build_char_tokenizer()
    task = EmbeddedTaskConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    model = CausalLM(tiny_model_config(tokenizer, task), rngs=nnx.Rngs(seed))
    os.makedirs(directory, exist_ok=True)
    save_pretrained(model, directory, tokenizer=tokenizer)
    return directory


def tiny_rows(n: int = 32, seed: int = 0, split: str = "train") -> list[dict]:
    return make_arithmetic_examples(n, seed, ops="+-", min_digits=1, max_digits=2, split=split)


def tiny_experiment(output_dir: str, *, use_ntl: bool = False, reward_mode: str = "final_answer",
                    steps: int = 2, **ppo_overrides) -> ExperimentConfig:
    ppo = dict(train_batch_size=4, rollout_n=2, ppo_mini_batch_size=2, ppo_micro_batch_size=2, ppo_epochs=1,
               max_prompt_length=16, max_response_length=12, adv_estimator="grpo", actor_lr=1e-3,
               use_kl_loss=True)
    ppo.update(ppo_overrides)
    trainer = TrainerConfig(output_dir=output_dir, seed=0, total_training_steps=steps, test_freq=100,
                            save_freq=1, val_before_train=False, use_tensorboard=False, progress_bar=False,
                            reward_fn_name="custom_ntl_final" if use_ntl else "compute_score")
    ntl = NTLConfig(enabled=use_ntl, reward_mode=reward_mode, weight=0.3)
    return ExperimentConfig(ppo=PPOConfig(**ppo), trainer=trainer, ntl=ntl)


def with_trainer(config: ExperimentConfig, **changes) -> ExperimentConfig:
    return config.replace(trainer=dataclasses.replace(config.trainer, **changes))


def load_tiny_tokenizer(directory: str):
    return load_tokenizer(directory)


#: Gin bindings that make README command 1 (the embedded default) a seconds-long run for tests: a tiny task and
#: warm start, a few PPO rows; add total_training_steps and what the test needs.
TINY_EMBEDDED_BINDINGS = [
    "ntl_jax.EmbeddedTaskConfig.num_train = 400", "ntl_jax.EmbeddedTaskConfig.num_val = 16",
    "ntl_jax.EmbeddedTaskConfig.hidden_size = 32", "ntl_jax.EmbeddedTaskConfig.intermediate_size = 64",
    "ntl_jax.WarmStartConfig.max_steps = 30", "ntl_jax.WarmStartConfig.eval_every = 30",
    "ntl_jax.WarmStartConfig.eval_samples = 16", "ntl_jax.WarmStartConfig.batch_size = 32",
    "ntl_jax.PPOConfig.train_batch_size = 4", "ntl_jax.PPOConfig.rollout_n = 4",
    "ntl_jax.PPOConfig.ppo_mini_batch_size = 2", "ntl_jax.PPOConfig.ppo_micro_batch_size_per_device = 1",
    "ntl_jax.PPOConfig.max_response_length = 24", "ntl_jax.TrainerConfig.val_batch_size = 16",
    "ntl_jax.TrainerConfig.test_freq = 2", "ntl_jax.TrainerConfig.save_freq = 2",
    "ntl_jax.TrainerConfig.progress_bar = False", "ntl_jax.TrainerConfig.use_tensorboard = False",
]


def load_module_from(path: str):
    """Import a script by file path (registered in sys.modules, as dataclasses in it need)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
