"""Gin-configurable PPO and run configuration.

Names and defaults follow verl's ``ppo_trainer.yaml`` (``actor_rollout_ref.actor.*``, ``algorithm.*``,
``trainer.*``) so a verl user recognises every knob; where ntl-jax differs the field says why.
Every value is checked on construction: a bad one raises a one-line ``ValueError`` naming the key, the value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gin

ADV_ESTIMATORS = ("gae", "grpo", "rloo")
LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_TYPES = ("kl", "abs", "mse", "low_var_kl")
KL_CTRL_TYPES = ("fixed", "adaptive")
RESUME_MODES = ("auto", "disable")
ROLLOUT_MODES = ("colocated", "ray")
REWARD_RUNNERS = ("local", "ray")
PLATFORMS = ("any", "cpu", "gpu", "tpu", "accelerator")


def fail(cls: str, key: str, value: Any, allowed: str) -> None:
    raise ValueError(f"{cls}.{key}={value!r} is invalid; allowed: {allowed}")


def check_choice(cls: str, key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        fail(cls, key, value, ", ".join(repr(c) for c in choices))


def check_range(cls: str, key: str, value: float, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        lo_txt = "" if lo is None else (f"> {lo}" if lo_open else f">= {lo}")
        hi_txt = "" if hi is None else f"<= {hi}"
        fail(cls, key, value, " ".join(["a finite number", " and ".join(t for t in (lo_txt, hi_txt) if t)]).strip())


def check_positive_int(cls: str, key: str, value: Any, allow_zero: bool = False) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if allow_zero else 1):
        fail(cls, key, value, "an integer >= " + ("0" if allow_zero else "1"))


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Algorithm settings (verl: ``algorithm.*`` and ``actor_rollout_ref.actor.*``, ``critic.*``).

    Batch sizes count *prompts* like verl: one iteration samples ``train_batch_size * rollout_n`` responses
    and the actor takes ``train_batch_size / ppo_mini_batch_size`` optimiser steps per epoch.
    """

    # Batch geometry.
    train_batch_size: int = 32
    rollout_n: int = 1
    ppo_mini_batch_size: int = 16
    ppo_micro_batch_size: int = 16  # per micro-batch, in responses over all devices; gradients are accumulated
    ppo_micro_batch_size_per_device: int = 0  # verl's ppo_micro_batch_size_per_gpu; > 0 replaces the global one
    ppo_epochs: int = 1
    max_prompt_length: int = 64
    max_response_length: int = 32
    # Advantages.
    adv_estimator: str = "gae"
    gamma: float = 1.0
    lam: float = 1.0
    norm_adv_by_std_in_grpo: bool = True
    # Policy loss.
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    entropy_coeff: float = 0.0
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    # KL in reward.
    use_kl_in_reward: bool = False
    kl_penalty: str = "kl"
    kl_ctrl_type: str = "fixed"
    kl_coef: float = 0.001
    kl_target: float = 0.1
    kl_horizon: int = 10000
    # Critic.
    cliprange_value: float = 0.5
    critic_warmup: int = 0  # the actor updates from step critic_warmup on, steps counted from 1 as in verl
    # Optimisers.
    actor_lr: float = 1e-6
    critic_lr: float = 1e-5
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    lr_warmup_steps: int = 0
    # Rollout sampling (verl: actor_rollout_ref.rollout.*).
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    val_temperature: float = 0.0  # 0 = greedy validation, verl's default
    # Robustness.
    max_consecutive_skipped_updates: int = 10
    logprob_chunk_size: int = 32  # sequence chunk of the log-prob/entropy/digit-slice scan (never [B,T,V] logits)
    log_prob_micro_batch_size: int = 0  # responses per forward in the old/ref log-prob and value passes; 0 = all
    log_prob_micro_batch_size_per_device: int = 0  # the same per device (verl's *_per_gpu); > 0 replaces it

    def __post_init__(self) -> None:
        n = "PPOConfig"
        for key in ("train_batch_size", "rollout_n", "ppo_mini_batch_size", "ppo_micro_batch_size", "ppo_epochs",
                    "max_prompt_length", "max_response_length", "kl_horizon", "max_consecutive_skipped_updates",
                    "logprob_chunk_size"):
            check_positive_int(n, key, getattr(self, key))
        for key in ("critic_warmup", "lr_warmup_steps", "top_k", "log_prob_micro_batch_size",
                    "ppo_micro_batch_size_per_device", "log_prob_micro_batch_size_per_device"):
            check_positive_int(n, key, getattr(self, key), allow_zero=True)
        check_choice(n, "adv_estimator", self.adv_estimator, ADV_ESTIMATORS)
        check_choice(n, "loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        check_choice(n, "kl_loss_type", self.kl_loss_type, KL_TYPES)
        check_choice(n, "kl_penalty", self.kl_penalty, KL_TYPES)
        check_choice(n, "kl_ctrl_type", self.kl_ctrl_type, KL_CTRL_TYPES)
        for key in ("gamma", "lam", "top_p"):
            check_range(n, key, getattr(self, key), 0.0, 1.0)
        for key in ("clip_ratio_low", "clip_ratio_high", "entropy_coeff", "kl_loss_coef", "kl_coef", "weight_decay",
                    "val_temperature", "cliprange_value"):
            check_range(n, key, getattr(self, key), 0.0)
        for key in ("actor_lr", "critic_lr", "grad_clip", "kl_target", "temperature"):
            check_range(n, key, getattr(self, key), 0.0, lo_open=True)
        check_range(n, "clip_ratio_c", self.clip_ratio_c, 1.0, lo_open=True)
        if self.train_batch_size % self.ppo_mini_batch_size:
            fail(n, "ppo_mini_batch_size", self.ppo_mini_batch_size,
                  f"a divisor of train_batch_size={self.train_batch_size}")
        mini_responses = self.ppo_mini_batch_size * self.rollout_n
        if not self.ppo_micro_batch_size_per_device and mini_responses % self.ppo_micro_batch_size:
            fail(n, "ppo_micro_batch_size", self.ppo_micro_batch_size,
                  f"a divisor of ppo_mini_batch_size*rollout_n={mini_responses}")
        if self.log_prob_micro_batch_size and self.responses_per_iteration % self.log_prob_micro_batch_size:
            fail(n, "log_prob_micro_batch_size", self.log_prob_micro_batch_size,
                  f"0 or a divisor of train_batch_size*rollout_n={self.responses_per_iteration}")
        if self.adv_estimator in ("grpo", "rloo") and self.rollout_n < 2:
            fail(n, "rollout_n", self.rollout_n, f"an integer >= 2 with adv_estimator={self.adv_estimator!r}")

    @property
    def uses_critic(self) -> bool:
        return self.adv_estimator == "gae"

    @property
    def uses_reference(self) -> bool:
        return self.use_kl_loss or self.use_kl_in_reward

    @property
    def responses_per_iteration(self) -> int:
        return self.train_batch_size * self.rollout_n

    @property
    def num_mini_batches(self) -> int:
        return self.train_batch_size // self.ppo_mini_batch_size

    def micro_batches(self, data_parallel: int) -> int:
        """Micro-batches per mini-batch on ``data_parallel`` (data x fsdp) devices; one-line error if they do not fit."""
        mini_responses = self.ppo_mini_batch_size * self.rollout_n
        if self.ppo_micro_batch_size_per_device:
            micro, key, value = (self.ppo_micro_batch_size_per_device * data_parallel,
                                 "ppo_micro_batch_size_per_device", self.ppo_micro_batch_size_per_device)
        else:
            micro, key, value = self.ppo_micro_batch_size, "ppo_micro_batch_size", self.ppo_micro_batch_size
            if micro % data_parallel:
                fail("PPOConfig", key, value, f"a multiple of the data-parallel device count data*fsdp={data_parallel} "
                     "(or set ppo_micro_batch_size_per_device)")
        if mini_responses % micro:
            fail("PPOConfig", key, value, f"a micro-batch ({micro} responses on {data_parallel} devices) that divides "
                 f"ppo_mini_batch_size*rollout_n={mini_responses}")
        return mini_responses // micro

    def log_prob_chunk(self, data_parallel: int) -> int:
        """Responses per forward in the log-prob / value passes on ``data_parallel`` devices (0 = all at once)."""
        if self.log_prob_micro_batch_size_per_device:
            size, key = self.log_prob_micro_batch_size_per_device * data_parallel, "log_prob_micro_batch_size_per_device"
            if self.responses_per_iteration % size:
                fail("PPOConfig", key, self.log_prob_micro_batch_size_per_device,
                     f"a per-device size whose total ({size} on {data_parallel} devices) divides "
                     f"train_batch_size*rollout_n={self.responses_per_iteration}")
            return size
        if self.log_prob_micro_batch_size and self.log_prob_micro_batch_size % data_parallel:
            fail("PPOConfig", "log_prob_micro_batch_size", self.log_prob_micro_batch_size,
                 f"0 or a multiple of the data-parallel device count data*fsdp={data_parallel}")
        return self.log_prob_micro_batch_size


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Run settings (verl: ``trainer.*``, ``data.*``, ``reward_model.*``, ``custom_reward_function.*``).

    ``model_path=None`` selects the embedded default: a tiny decoder with the built-in character tokenizer,
    trained on the generated arithmetic task after a short supervised warm start.
    """

    output_dir: str = "outputs/run"
    seed: int = 0
    total_epochs: int = 1
    total_training_steps: int = 0  # 0 = total_epochs * steps_per_epoch
    test_freq: int = 10
    save_freq: int = 10
    max_to_keep: int = 3
    resume_mode: str = "auto"
    checkpoint_dir: str | None = None  # shared by all processes: local/NFS path or gs://...; None = <output_dir>/checkpoints
    val_before_train: bool = True
    # Model.
    model_path: str | None = None
    tokenizer_path: str | None = None
    critic_path: str | None = None
    dtype: str = "float32"  # compute dtype of the forward/backward passes
    param_dtype: str = "float32"  # storage dtype of parameters and optimiser moments (keep float32 for small lrs)
    remat: bool = False  # rematerialise each decoder layer in the backward pass (less memory, ~1/3 more compute)
    # Data.
    train_files: tuple[str, ...] = ()
    val_files: tuple[str, ...] = ()
    val_batch_size: int = 256
    val_max_samples: int = 0  # 0 = all
    truncation: str = "error"
    filter_overlong_prompts: bool = True
    # Rewards.
    reward_fn_path: str | None = None
    # None: 'custom_ntl_reward' (correctness * NTL bonus) when NTL is on, else 'compute_score' (correctness only).
    reward_fn_name: str | None = None
    reward_fn_kwargs: tuple[tuple[str, Any], ...] = ()
    reward_runner: str = "local"
    reward_num_workers: int = 2
    reward_timeout_s: float = 30.0
    reward_fallback_score: float = 0.0
    # Rollout.
    rollout_mode: str = "colocated"
    rollout_num_workers: int = 1
    platform: str = "any"  # backend the run needs: any, cpu, gpu, tpu, accelerator; CPU JAX then stops at start-up
    # Mesh: -1 = all remaining devices.
    mesh_data: int = -1
    mesh_fsdp: int = 1
    mesh_tensor: int = 1
    # Logging.
    use_tensorboard: bool = True
    use_wandb: bool = False
    wandb_project: str = "ntl-jax"
    progress_bar: bool = True

    def __post_init__(self) -> None:
        n = "TrainerConfig"
        check_positive_int(n, "total_epochs", self.total_epochs)
        for key in ("total_training_steps", "seed", "val_max_samples"):
            check_positive_int(n, key, getattr(self, key), allow_zero=True)
        for key in ("test_freq", "save_freq", "max_to_keep", "val_batch_size", "reward_num_workers",
                    "rollout_num_workers"):
            check_positive_int(n, key, getattr(self, key))
        check_choice(n, "resume_mode", self.resume_mode, RESUME_MODES)
        check_choice(n, "truncation", self.truncation, ("error", "left", "right"))
        check_choice(n, "reward_runner", self.reward_runner, REWARD_RUNNERS)
        check_choice(n, "rollout_mode", self.rollout_mode, ROLLOUT_MODES)
        check_choice(n, "platform", self.platform, PLATFORMS)
        check_choice(n, "dtype", self.dtype, ("float32", "bfloat16"))
        check_choice(n, "param_dtype", self.param_dtype, ("float32", "bfloat16"))
        check_range(n, "reward_timeout_s", self.reward_timeout_s, 0.0, lo_open=True)
        check_range(n, "reward_fallback_score", self.reward_fallback_score)
        for key in ("train_files", "val_files"):  # verl accepts one path or a list; a bare str must not be iterated
            value = (getattr(self, key),) if isinstance(getattr(self, key), str) else getattr(self, key)
            if not isinstance(value, (tuple, list)) or not all(isinstance(p, str) and p for p in value):
                fail(n, key, getattr(self, key), "a parquet file path or a tuple of them")
            object.__setattr__(self, key, tuple(value))
        try:
            kwargs = dict(self.reward_fn_kwargs)
        except (TypeError, ValueError):
            fail(n, "reward_fn_kwargs", self.reward_fn_kwargs, "a dict or a tuple of (name, value) pairs")
        if not all(isinstance(k, str) for k in kwargs):
            fail(n, "reward_fn_kwargs", self.reward_fn_kwargs, "string keyword names")
        object.__setattr__(self, "reward_fn_kwargs", tuple(kwargs.items()))
        for key in ("mesh_data", "mesh_fsdp", "mesh_tensor"):
            value = getattr(self, key)
            if not isinstance(value, int) or (value < 1 and value != -1):
                fail(n, key, value, "a positive integer or -1 (all remaining devices)")


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole run: algorithm, run settings, NTL settings, and which trainer to build.

    ``use_ntl_trainer`` is the one switch between standard PPO and PPO + NTL (in gin: the macro
    ``use_ntl_trainer = True``, which also sets ``NTLConfig.enabled``).
    """

    ppo: PPOConfig = dataclasses.field(default_factory=PPOConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    ntl: Any = None  # NTLConfig; None = NTLConfig() with gin bindings
    use_ntl_trainer: bool = False

    def __post_init__(self) -> None:
        from ntl_jax.ntl.config import NTLConfig

        if self.ntl is None:
            object.__setattr__(self, "ntl", NTLConfig())
        if not isinstance(self.ntl, NTLConfig):
            fail("ExperimentConfig", "ntl", type(self.ntl).__name__, "an NTLConfig")
        if self.use_ntl_trainer and not self.ntl.enabled:
            object.__setattr__(self, "ntl", dataclasses.replace(self.ntl, enabled=True))

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)
