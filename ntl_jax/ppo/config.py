"""Gin-configurable PPO and run configuration.

Names and defaults follow verl's ``ppo_trainer.yaml`` (``actor_rollout_ref.actor.*``, ``algorithm.*``,
``trainer.*``) so a verl user recognises every knob; where ntl-jax differs the help text says why. Each field
carries its help text (``ntl_jax.knobs.knob``), and every value is checked on construction: a bad one raises a
one-line ``ValueError`` naming the key, the value and what is allowed. Choices come from the registries that
implement them (advantage estimators, loss aggregations, KL estimators, KL controllers).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import gin

from ntl_jax.cpu import DECODE_MATMULS
from ntl_jax.models.decoder import ATTENTION_IMPLEMENTATIONS, DTYPES
from ntl_jax.knobs import check_bool, check_choice, check_positive_int, check_range, fail, knob
from ntl_jax.ntl.config import NTLConfig
from ntl_jax.ppo.advantages import ADVANTAGE_ESTIMATORS
from ntl_jax.ppo.kl_control import KL_CONTROLLER_KINDS
from ntl_jax.ppo.losses import KL_ESTIMATORS, LOSS_AGG_MODES
from ntl_jax.ppo.lr_schedule import LR_SCHEDULER_TYPES

RESUME_MODES = ("auto", "disable")
ROLLOUT_MODES = ("colocated", "ray")
REWARD_RUNNERS = ("local", "ray")
PLATFORMS = ("any", "cpu", "gpu", "tpu", "accelerator")
TRUNCATIONS = ("error", "left", "right")
DTYPE_NAMES = tuple(DTYPES)


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """Algorithm settings (verl: ``algorithm.*`` and ``actor_rollout_ref.actor.*``, ``critic.*``).

    Batch sizes count *prompts* like verl: one iteration samples ``train_batch_size * rollout_n`` responses
    and the actor takes ``train_batch_size / ppo_mini_batch_size`` optimiser steps per epoch.
    """

    train_batch_size: int = knob(32, "prompts per iteration (verl data.train_batch_size)")
    rollout_n: int = knob(1, "responses sampled per prompt (GRPO/RLOO group size)")
    ppo_mini_batch_size: int = knob(16, "prompts per optimiser step; train_batch_size / this = steps per epoch")
    ppo_micro_batch_size: int = knob(16, "responses per gradient-accumulation step, over all devices")
    ppo_micro_batch_size_per_device: int = knob(0, "the same per device (verl's ppo_micro_batch_size_per_gpu); "
                                                   "> 0 replaces ppo_micro_batch_size")
    ppo_epochs: int = knob(1, "passes over each iteration's responses")
    max_prompt_length: int = knob(64, "longest prompt in tokens (longer ones: TrainerConfig.truncation)")
    max_response_length: int = knob(32, "tokens generated per response at most")
    adv_estimator: str = knob("gae", "advantage estimator: " + ", ".join(ADVANTAGE_ESTIMATORS) + " (gae uses a critic)")
    gamma: float = knob(1.0, "GAE discount")
    lam: float = knob(1.0, "GAE lambda")
    norm_adv_by_std_in_grpo: bool = knob(True, "GRPO divides by the group's std; False is Dr.GRPO")
    clip_ratio_low: float = knob(0.2, "PPO clip below 1 (ratio >= 1 - this)")
    clip_ratio_high: float = knob(0.2, "PPO clip above 1 (ratio <= 1 + this; DAPO's clip-higher raises it)")
    clip_ratio_c: float = knob(3.0, "dual-clip bound for negative advantages (> 1)")
    loss_agg_mode: str = knob("token-mean", "how token losses become one number: " + ", ".join(LOSS_AGG_MODES))
    entropy_coeff: float = knob(0.0, "entropy bonus coefficient")
    use_kl_loss: bool = knob(False, "add kl_loss_coef * KL(policy || reference) to the actor loss (GRPO style)")
    kl_loss_coef: float = knob(0.001, "coefficient of the KL loss")
    kl_loss_type: str = knob("low_var_kl", "KL estimator of the loss: " + ", ".join(KL_ESTIMATORS))
    use_kl_in_reward: bool = knob(False, "subtract kl_coef * KL from the token rewards (PPO/GAE style)")
    kl_penalty: str = knob("kl", "KL estimator of the reward penalty: " + ", ".join(KL_ESTIMATORS))
    kl_ctrl_type: str = knob("fixed", "KL-in-reward coefficient controller: " + ", ".join(KL_CONTROLLER_KINDS))
    kl_coef: float = knob(0.001, "initial KL-in-reward coefficient")
    kl_target: float = knob(0.1, "adaptive controller's target KL")
    kl_horizon: int = knob(10000, "adaptive controller's horizon")
    cliprange_value: float = knob(0.5, "value clip around the old values")
    critic_warmup: int = knob(0, "the actor updates from step critic_warmup on, steps counted from 1 (verl)")
    actor_lr: float = knob(1e-6, "actor learning rate (AdamW)")
    critic_lr: float = knob(1e-5, "critic learning rate (AdamW)")
    weight_decay: float = knob(0.01, "AdamW weight decay of actor and critic")
    grad_clip: float = knob(1.0, "global gradient-norm clip")
    lr_warmup_steps: int = knob(0, "linear learning-rate warm-up from 0, in iterations (verl: its scheduler steps "
                                   "once per iteration, so every update of an iteration uses one rate)")
    lr_scheduler_type: str = knob("constant", "learning-rate schedule over the run's iterations, for actor and critic "
                                              "(verl's optim.lr_scheduler_type): " + ", ".join(LR_SCHEDULER_TYPES))
    min_lr_ratio: float = knob(0.0, "cosine: the rate at the last iteration, as a fraction of actor_lr / critic_lr")
    num_cycles: float = knob(0.5, "cosine: waves over the run; 0.5 = one half-cosine from the peak to the floor")
    temperature: float = knob(1.0, "rollout sampling temperature; log-probs, entropy and KL are of logits / this")
    top_k: int = knob(0, "sample among the k most likely tokens (0 = all)")
    top_p: float = knob(1.0, "nucleus sampling mass (1 = all)")
    val_temperature: float = knob(0.0, "validation temperature; 0 = greedy (verl's default)")
    max_consecutive_skipped_updates: int = knob(10, "stop after this many non-finite updates in a row")
    logprob_chunk_size: int = knob(32, "sequence positions per chunk of the log-prob / entropy / digit-slice scan "
                                       "(never [B, T, V] logits at once)")
    log_prob_micro_batch_size: int = knob(0, "responses per forward in the old/ref log-prob and value passes; 0 = all")
    log_prob_micro_batch_size_per_device: int = knob(0, "the same per device (verl's *_per_gpu); > 0 replaces it")
    rollout_max_rows: int = knob(0, "most responses one sampler call generates (the KV cache holds rows x (prompt "
                                    "+ response) positions); the iteration's rows go in chunks of this size with "
                                    "the same samples; 0 = all at once")
    response_bucket: int = knob(0, "train on the iteration's longest response rounded up to a multiple of this, not "
                                   "on max_response_length: fewer positions in the log-prob, value and update passes "
                                   "(the same results), one compiled shape per multiple; 0 = always the full length")
    skip_on_policy_old_log_prob: bool = knob(
        True, "with one actor step per iteration (ppo_epochs=1, ppo_mini_batch_size=train_batch_size), take the old "
              "log-probs from the update's own forward (stop-gradient; verl's on_policy) and skip the separate pass; "
              "only without NTL and KL-in-reward, which read that pass")
    share_prompt_forward: bool = knob(
        True, "in the log-prob / value passes and in updates whose mini-batch is the whole iteration, run each "
              "prompt once for its rollout_n responses and attend to its keys / values (the same function, prompt "
              "tokens not recomputed n times; rounding differs)")

    def __post_init__(self) -> None:
        n = "PPOConfig"
        for key in ("train_batch_size", "rollout_n", "ppo_mini_batch_size", "ppo_micro_batch_size", "ppo_epochs",
                    "max_prompt_length", "max_response_length", "kl_horizon", "max_consecutive_skipped_updates",
                    "logprob_chunk_size"):
            check_positive_int(n, key, getattr(self, key))
        for key in ("critic_warmup", "lr_warmup_steps", "top_k", "log_prob_micro_batch_size",
                    "ppo_micro_batch_size_per_device", "log_prob_micro_batch_size_per_device", "rollout_max_rows",
                    "response_bucket"):
            check_positive_int(n, key, getattr(self, key), allow_zero=True)
        for key in ("norm_adv_by_std_in_grpo", "use_kl_loss", "use_kl_in_reward", "skip_on_policy_old_log_prob",
                    "share_prompt_forward"):
            check_bool(n, key, getattr(self, key))
        check_choice(n, "adv_estimator", self.adv_estimator, ADVANTAGE_ESTIMATORS)
        check_choice(n, "loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        check_choice(n, "kl_loss_type", self.kl_loss_type, KL_ESTIMATORS)
        check_choice(n, "kl_penalty", self.kl_penalty, KL_ESTIMATORS)
        check_choice(n, "kl_ctrl_type", self.kl_ctrl_type, KL_CONTROLLER_KINDS)
        check_choice(n, "lr_scheduler_type", self.lr_scheduler_type, LR_SCHEDULER_TYPES)
        check_range(n, "min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range(n, "num_cycles", self.num_cycles, 0.0, lo_open=True)
        for key in ("gamma", "lam", "top_p"):
            check_range(n, key, getattr(self, key), 0.0, 1.0)
        for key in ("clip_ratio_low", "clip_ratio_high", "entropy_coeff", "kl_loss_coef", "kl_coef", "weight_decay",
                    "val_temperature", "cliprange_value"):
            check_range(n, key, getattr(self, key), 0.0)
        for key in ("actor_lr", "critic_lr", "grad_clip", "kl_target", "temperature"):
            check_range(n, key, getattr(self, key), 0.0, lo_open=True)
        check_range(n, "clip_ratio_c", self.clip_ratio_c, 1.0, lo_open=True)
        if self.response_bucket and self.loss_agg_mode == "seq-mean-token-sum-norm":
            # Its horizon is the response width; a trimmed width would change the loss.
            fail(n, "response_bucket", self.response_bucket, "0 with loss_agg_mode='seq-mean-token-sum-norm'")
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
    def one_actor_step_per_iteration(self) -> bool:
        """The policy that sampled is the one every micro-batch of the only update differentiates."""
        return self.ppo_epochs == 1 and self.ppo_mini_batch_size == self.train_batch_size

    @property
    def responses_per_iteration(self) -> int:
        return self.train_batch_size * self.rollout_n

    @property
    def updates_per_iteration(self) -> int:
        """Optimiser steps of the actor (and of the critic) in one iteration: epochs x mini-batches."""
        return self.ppo_epochs * (self.train_batch_size // self.ppo_mini_batch_size)

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

    def prompt_groups(self, data_parallel: int, num_micro_batches: int) -> tuple[int, int]:
        """Rows per shared prompt (``share_prompt_forward``) in (the log-prob / value passes, each update
        micro-batch); 1 = every row runs its own prompt. Rows come in the sampler's order (row i * rollout_n + j
        answers prompt i); passes take contiguous chunks, micro-batches every ``num_micro_batches``-th row of a
        mini-batch, and only a mini-batch holding the whole iteration keeps that order (smaller ones are shuffled)."""
        if not self.share_prompt_forward:
            return 1, 1
        rows = self.log_prob_chunk(data_parallel) or self.responses_per_iteration
        forward = shared_prompt_group(rows, math.gcd(self.rollout_n, rows), data_parallel)
        update = 1
        if self.ppo_mini_batch_size == self.train_batch_size and self.rollout_n % num_micro_batches == 0:
            update = shared_prompt_group(self.responses_per_iteration // num_micro_batches,
                                         self.rollout_n // num_micro_batches, data_parallel)
        return forward, update


def shared_prompt_group(num_rows: int, samples_per_prompt: int, data_parallel: int) -> int:
    """Rows per shared prompt for a forward over ``num_rows`` rows whose consecutive runs of ``samples_per_prompt``
    rows answer one prompt: the largest ``g`` dividing ``samples_per_prompt`` with ``num_rows % (g * data_parallel)
    == 0``, so every group sits whole on one device's contiguous block of rows (1 = no sharing)."""
    for g in range(samples_per_prompt, 0, -1):
        if samples_per_prompt % g == 0 and num_rows % (g * data_parallel) == 0:
            return g
    return 1


@gin.configurable(module="ntl_jax")
@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Run settings (verl: ``trainer.*``, ``data.*``, ``reward_model.*``, ``custom_reward_function.*``).

    ``model_path=None`` selects the embedded default: a tiny decoder with the built-in character tokenizer,
    trained on the generated arithmetic task after a short supervised warm start.
    """

    output_dir: str = knob("outputs/run", "run directory: metrics.jsonl, tensorboard/, checkpoints/, operative config")
    seed: int = knob(0, "seeds the whole run: warm start, data order, sampling")
    total_epochs: int = knob(1, "epochs over the training prompts (when total_training_steps is 0)")
    total_training_steps: int = knob(0, "PPO iterations; 0 = total_epochs * steps_per_epoch")
    test_freq: int = knob(10, "validate every this many iterations (and after the last)")
    save_freq: int = knob(10, "checkpoint every this many iterations (and after the last)")
    max_to_keep: int = knob(3, "checkpoints kept")
    resume_mode: str = knob("auto", "auto: continue from the newest readable checkpoint; disable: start fresh")
    checkpoint_dir: str | None = knob(None, "checkpoint folder shared by all processes (local, NFS or gs://); "
                                            "None = <output_dir>/checkpoints")
    allow_unshared_checkpoint_dir: bool = knob(False, "multi-process runs refuse a checkpoint folder that not every "
                                                      "process sees (a resume would find other steps per host); "
                                                      "True allows it")
    val_before_train: bool = knob(True, "validate before the first iteration")
    model_path: str | None = knob(None, "HF model folder of the policy; None = the embedded default")
    tokenizer_path: str | None = knob(None, "tokenizer folder; None = model_path")
    critic_path: str | None = knob(None, "HF folder of the critic; None = from the policy (new value head)")
    dtype: str = knob("float32", "compute dtype of forward and backward passes: float32, bfloat16")
    param_dtype: str = knob("float32", "storage dtype of parameters and Adam moments (keep float32 for small lrs)")
    kv_cache_dtype: str = knob("auto", "dtype of the rollout KV cache: bfloat16 (half the decode memory and cache "
                                       "traffic; keys/values rounded to bfloat16), float32, auto (bfloat16 on GPU and "
                                       "TPU, float32 on CPU)")
    cpu_decode_matmuls: str = knob("auto", "XLA:CPU only, the rollout decode loop's matmuls: eigen (YNNPACK dot "
                                           "fusions off for that program: faster at its few rows on AVX2 machines), "
                                           "xla_default (jaxlib's YNNPACK: faster on AVX-512 ones), auto (xla_default "
                                           "if the CPU has AVX-512, else eigen); training programs keep jaxlib's")
    compile_ahead: bool = knob(True, "compile the updates' programs in a background thread while the first "
                                     "iteration's rollout runs (their shapes are known before it)")
    remat: bool = knob(False, "rematerialise each layer in the backward pass (less memory, ~1/3 more compute)")
    attention: str = knob("einsum", "attention of every pass but a decode step: einsum (explicit float32 scores), "
                                    "dot_product_attention (jax.nn.dot_product_attention: cuDNN's fused kernel on "
                                    "GPUs where it applies, XLA's elsewhere; scores in the compute dtype)")
    scan_layers: bool = knob(False, "differentiated passes run the layers as one lax.scan over stacked weights: one "
                                    "layer's gathered fsdp weights live at a time, one compiled layer (large models)")
    train_files: tuple[str, ...] = knob((), "verl parquet file(s) of training prompts (with a model_path)")
    val_files: tuple[str, ...] = knob((), "verl parquet file(s) of validation prompts")
    val_batch_size: int = knob(256, "prompts per validation generation batch")
    val_max_samples: int = knob(0, "validate on the first this many prompts; 0 = all")
    truncation: str = knob("error", "overlong prompts when not filtered: error, left, right")
    filter_overlong_prompts: bool = knob(True, "drop prompts longer than max_prompt_length (with a warning)")
    reward_fn_path: str | None = knob(None, "Python file of a custom reward function (verl custom_reward_function)")
    reward_fn_name: str | None = knob(None, "function name in reward_fn_path, or a built-in; None = "
                                            "'custom_ntl_reward' with NTL on, else 'compute_score'")
    reward_fn_kwargs: tuple[tuple[str, Any], ...] = knob((), "keyword arguments bound to the reward function")
    reward_runner: str = knob("local", "where rewards run: local (in-process, timeout per sample), ray (actors)")
    reward_num_workers: int = knob(2, "Ray reward actors")
    reward_timeout_s: float = knob(30.0, "seconds per sample before its reward counts as failed")
    reward_fallback_score: float = knob(0.0, "score of a sample whose reward failed or timed out (counted)")
    rollout_mode: str = knob("colocated", "colocated: sample on the trainer's devices; ray: CPU sampler actors")
    rollout_num_workers: int = knob(1, "Ray sampler actors")
    platform: str = knob("any", "backend the run needs: " + ", ".join(PLATFORMS) + "; CPU JAX then stops at start-up")
    compilation_cache_dir: str = knob("~/.cache/ntl_jax/xla", "persistent XLA compilation cache (JAX's "
                                      "jax_compilation_cache_dir): a later run with the same shapes loads the "
                                      "compiled steps instead of compiling them; '' turns it off")
    mesh_data: int = knob(-1, "data-parallel mesh axis (-1 = the remaining devices)")
    mesh_fsdp: int = knob(1, "fully-sharded data-parallel axis: parameters and Adam state sharded (-1 = the rest)")
    mesh_tensor: int = knob(1, "tensor-parallel axis (heads, MLP, vocabulary; -1 = the rest)")
    use_tensorboard: bool = knob(True, "write TensorBoard scalars under <output_dir>/tensorboard")
    use_wandb: bool = knob(False, "log to Weights & Biases (pip install wandb)")
    wandb_project: str = knob("ntl-jax", "W&B project")
    progress_bar: bool = knob(True, "console output: a bar on a terminal, plain lines elsewhere, a line per "
                                    "validation (False: silent)")
    console_every: int = knob(10, "print a compact metric line every N iterations (0: never)")

    def __post_init__(self) -> None:
        n = "TrainerConfig"
        check_positive_int(n, "total_epochs", self.total_epochs)
        for key in ("total_training_steps", "seed", "val_max_samples", "console_every"):
            check_positive_int(n, key, getattr(self, key), allow_zero=True)
        for key in ("test_freq", "save_freq", "max_to_keep", "val_batch_size", "reward_num_workers",
                    "rollout_num_workers"):
            check_positive_int(n, key, getattr(self, key))
        check_choice(n, "resume_mode", self.resume_mode, RESUME_MODES)
        check_choice(n, "truncation", self.truncation, TRUNCATIONS)
        check_choice(n, "reward_runner", self.reward_runner, REWARD_RUNNERS)
        check_choice(n, "rollout_mode", self.rollout_mode, ROLLOUT_MODES)
        check_choice(n, "platform", self.platform, PLATFORMS)
        check_choice(n, "dtype", self.dtype, DTYPE_NAMES)
        check_choice(n, "param_dtype", self.param_dtype, DTYPE_NAMES)
        check_choice(n, "attention", self.attention, ATTENTION_IMPLEMENTATIONS)
        check_choice(n, "kv_cache_dtype", self.kv_cache_dtype, ("auto",) + DTYPE_NAMES)
        check_choice(n, "cpu_decode_matmuls", self.cpu_decode_matmuls, DECODE_MATMULS)
        for key in ("val_before_train", "remat", "scan_layers", "filter_overlong_prompts", "use_tensorboard",
                    "use_wandb", "progress_bar", "allow_unshared_checkpoint_dir"):
            check_bool(n, key, getattr(self, key))
        if not isinstance(self.compilation_cache_dir, str):
            fail(n, "compilation_cache_dir", self.compilation_cache_dir, "a folder path, or '' for no cache")
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
    """The whole run: algorithm (``ppo``), run settings (``trainer``) and NTL settings (``ntl``).

    ``ntl.enabled`` is the one switch between standard PPO and PPO + NTL; in gin the macro
    ``use_ntl_trainer = True`` binds it (``ntl_jax.NTLConfig.enabled = %use_ntl_trainer`` in configs/base.gin).
    """

    ppo: PPOConfig = knob(None, "algorithm settings", factory=PPOConfig)
    trainer: TrainerConfig = knob(None, "run settings", factory=TrainerConfig)
    ntl: NTLConfig = knob(None, "Number Token Loss settings; NTLConfig.enabled switches NTL on", factory=NTLConfig)

    def __post_init__(self) -> None:
        for key, cls in (("ppo", PPOConfig), ("trainer", TrainerConfig), ("ntl", NTLConfig)):
            if not isinstance(getattr(self, key), cls):
                fail("ExperimentConfig", key, type(getattr(self, key)).__name__, f"a {cls.__name__}")
        if self.ppo.rollout_max_rows and self.trainer.rollout_mode != "colocated":
            # Ray samplers take their whole shard in one call: the bound would be silently ignored there.
            fail("PPOConfig", "rollout_max_rows", self.ppo.rollout_max_rows,
                 f"0 with TrainerConfig.rollout_mode={self.trainer.rollout_mode!r} (chunks are for 'colocated')")

    @property
    def use_ntl(self) -> bool:
        return self.ntl.enabled

    def replace(self, **changes: Any) -> "ExperimentConfig":
        return dataclasses.replace(self, **changes)
