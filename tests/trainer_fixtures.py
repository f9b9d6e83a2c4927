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
