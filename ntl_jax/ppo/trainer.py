"""The PPO loop shared by standard and NTL training.

One iteration (``train_step``), in this order:

1. generate responses (colocated sampler or Ray rollout workers);
2. one jitted forward of the current policy over prompt+response: old log-probs, entropy and (NTL mode) the
   digit logit slice, turned into ``NTLInfo`` with the configured targets, *before* rewards;
3. reference log-probs and critic values;
4. rewards (``compute_score`` per sample, with ``ntl_info`` and ``tau`` in NTL mode);
5. KL in reward, advantages;
6. critic update, then actor update (``ppo_epochs`` x mini-batches, micro-batch gradient accumulation);
7. metrics, validation, checkpoint.

The NTL additions are hooks (``prepare_ntl``, ``reward_kwargs``, ...) that :class:`NTLPPOTrainer` fills in;
the standard trainer's hooks do nothing, so the two share every other line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from ntl_jax.data.verl_parquet import PromptBatch, PromptLoader
from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.distributed.multihost import broadcast_from_main, is_main_process, put_global, to_host, tree_to_host
from ntl_jax.models.config import generation_eos_token_ids
from ntl_jax.models.sampler import GenerationOutput, Sampler, SamplingParams
from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ppo import state as state_lib
from ntl_jax.ppo.checkpoint import CheckpointStore, PreemptionGuard
from ntl_jax.ppo.config import ExperimentConfig
from ntl_jax.ppo.kl_control import KLControllerState, kl_controller_update
from ntl_jax.ppo.metrics import MetricsLogger
from ntl_jax.ppo.rollout import ColocatedRollout, RayRollout
from ntl_jax.ppo.steps import (ActorLossSettings, RolloutBatch, batch_sharding, make_actor_update,
                               make_advantage_step, make_critic_update, make_logprob_step, make_value_step)
from ntl_jax.ppo.validation import batch_metrics, evaluate
from ntl_jax.rewards.registry import RewardFnSpec
from ntl_jax.rewards.workers import LocalRewardRunner, RayRewardRunner

log = logging.getLogger(__name__)

RAY_TEMP_DIR_MAX_CHARS = 43  # 107-byte AF_UNIX limit minus Ray's "/session_<time>_<pid>/sockets/plasma_store"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite updates)."""


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[f"timing_s/{name}"] = timings.get(f"timing_s/{name}", 0.0) + time.perf_counter() - start


@jax.jit
def _take_rows(tree: Any, rows: jax.Array) -> Any:
    """One compiled gather of a mini-batch's rows from every array of the rollout."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


def _eos_ids(tokenizer: Any, *model_eos: Any) -> list[int]:
    """Stop tokens: the tokenizer's eos, config.json's and generation_config.json's (HF generate stops on the last)."""
    ids = set()
    for value in (tokenizer.eos_token_id, *model_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer and model config define no eos_token_id; set one in the tokenizer")
    return sorted(ids)


def ray_temp_dir(output_dir: str) -> str:
    """``<output_dir>/ray`` when it is short enough for Ray's unix-socket paths (AF_UNIX allows 107 bytes and Ray
    appends ~64), else a short folder under /tmp that ``<output_dir>/ray`` links to, so the files stay findable."""
    preferred = os.path.join(os.path.abspath(output_dir), "ray")
    if len(preferred) <= RAY_TEMP_DIR_MAX_CHARS:
        return preferred
    short = tempfile.mkdtemp(prefix="ntl_ray_", dir="/tmp" if os.path.isdir("/tmp") else None)
    if len(short) > RAY_TEMP_DIR_MAX_CHARS:
        raise ValueError(f"no Ray temp dir of at most {RAY_TEMP_DIR_MAX_CHARS} characters: {preferred!r} and "
                         f"{short!r} are too long; allowed: a shorter TrainerConfig.output_dir")
    if not os.path.lexists(preferred):
        os.symlink(short, preferred)
    log.info("Ray temp dir %s (linked from %s; the output path is too long for Ray's sockets)", short, preferred)
    return short


class PPOTrainer:
    """Standard PPO (policy + critic + frozen reference) over a mesh. ``fit()`` runs the loop."""

    use_ntl = False

    def __init__(self, config: ExperimentConfig, tokenizer: Any, *, policy_path: str, train_rows: list[dict],
                 val_rows: list[dict] | None = None, mesh: Any = None, reward_fn: Any = None):
        self.config = config
        self.ppo, self.run = config.ppo, config.trainer
        self.tokenizer = tokenizer
        self.policy_path = policy_path
        self.output_dir = self.run.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        self.mesh = mesh if mesh is not None else make_mesh(self.run.mesh_data, self.run.mesh_fsdp,
                                                             self.run.mesh_tensor)
        self._check_divisibility()
        self.models = state_lib.build_models(policy_path, self.ppo, self.mesh, dtype=self.run.dtype,
                                             param_dtype=self.run.param_dtype, remat=self.run.remat,
                                             critic_path=self.run.critic_path, seed=self.run.seed)
        self.digit_ids = self.setup_digits()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = _eos_ids(tokenizer, self.models.model_config.eos_token_id,
                                generation_eos_token_ids(policy_path))
        self._build_steps()
        self.sampler = Sampler(self.models.policy.graphdef, self.models.model_config, eos_token_ids=self.eos_ids,
                               pad_token_id=self.pad_id, digit_ids=self.digit_ids, mesh=self.mesh)
        self.rollout = self._build_rollout()
        self.reward_spec = reward_fn if isinstance(reward_fn, RewardFnSpec) else RewardFnSpec(
            path=self.run.reward_fn_path, name=self.reward_fn_name(), kwargs=dict(self.run.reward_fn_kwargs))
        self.reward_runner = self._build_reward_runner(self.reward_spec)
        self.val_runner = self.reward_runner
        self.loader = PromptLoader(train_rows, tokenizer, self.ppo.train_batch_size, seed=self.run.seed,
                                   max_prompt_length=self.ppo.max_prompt_length, truncation=self.run.truncation,
                                   filter_overlong_prompts=self.run.filter_overlong_prompts, source="train")
        self.val_rows = list(val_rows or [])
        if self.run.val_max_samples:
            self.val_rows = self.val_rows[: self.run.val_max_samples]
        self.total_steps = self.run.total_training_steps or self.run.total_epochs * self.loader.steps_per_epoch
        self.kl_state = KLControllerState(value=float(self.ppo.kl_coef))
        self.global_step = 0
        self.consecutive_skips = 0
        self.counters = {"update_skipped_total": 0}
        self.base_rng = jax.random.key(self.run.seed)
        self.checkpoints = CheckpointStore(self.run.checkpoint_dir or os.path.join(self.output_dir, "checkpoints"),
                                           max_to_keep=self.run.max_to_keep)
        self.logger = MetricsLogger(self.output_dir, use_tensorboard=self.run.use_tensorboard,
                                    is_main_process=is_main_process(), use_wandb=self.run.use_wandb,
                                    wandb_project=self.run.wandb_project)
        self.history: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- set-up
    def _check_divisibility(self) -> None:
        shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.num_micro_batches = self.ppo.micro_batches(shards)
        self.log_prob_chunk = self.ppo.log_prob_chunk(shards)
        if self.ppo.responses_per_iteration % shards:
            raise ValueError(f"train_batch_size*rollout_n={self.ppo.responses_per_iteration} is invalid; allowed: "
                             f"a multiple of the data-parallel device count data*fsdp={shards}")

    def reward_fn_name(self) -> str:
        """``TrainerConfig.reward_fn_name``, or by default the correctness-only scorer."""
        return self.run.reward_fn_name or "compute_score"

    def setup_digits(self) -> jax.Array | None:
        """Digit token ids for the sampler and NTL (None in standard mode)."""
        return None

    def _build_steps(self) -> None:
        models, mesh, ppo = self.models, self.mesh, self.ppo
        ntl_method = self.config.ntl.method if self.use_ntl else None
        self.logprob_step = make_logprob_step(models.policy.graphdef, mesh, models.policy.shardings,
                                              digit_ids=self.digit_ids if self.use_ntl else None,
                                              chunk_size=ppo.logprob_chunk_size, temperature=ppo.temperature)
        self.ref_logprob_step = make_logprob_step(models.policy.graphdef, mesh, models.policy.shardings,
                                                  digit_ids=None, chunk_size=ppo.logprob_chunk_size,
                                                  temperature=ppo.temperature, compute_entropy=False)
        settings = ActorLossSettings.from_config(ppo, ntl_method)
        self.actor_update = make_actor_update(models.policy.graphdef, models.policy.tx, settings,
                                              digit_ids=self.digit_ids, num_micro_batches=self.num_micro_batches,
                                              mesh=mesh, param_shardings=models.policy.shardings,
                                              opt_shardings=models.policy.opt_shardings)
        self.advantage_step = make_advantage_step(ppo, mesh)
        if models.critic is not None:
            self.value_step = make_value_step(models.critic.graphdef, mesh, models.critic.shardings)
            self.critic_update = make_critic_update(models.critic.graphdef, models.critic.tx, ppo,
                                                    num_micro_batches=self.num_micro_batches, mesh=mesh,
                                                    param_shardings=models.critic.shardings,
                                                    opt_shardings=models.critic.opt_shardings)

    def _build_rollout(self):
        if self.run.rollout_mode == "colocated":
            return ColocatedRollout(self.sampler)
        if jax.default_backend() != "cpu" or jax.process_count() > 1:
            # Ray samplers are CPU processes that get the weights through the host every iteration: on accelerators
            # and pods the colocated sampler shares the trainer's devices and weights at no copy.
            raise ValueError(f"TrainerConfig.rollout_mode='ray' is invalid on {jax.default_backend()} with "
                             f"{jax.process_count()} process(es); allowed there: 'colocated' ('ray' is a "
                             "single-process CPU option)")
        self._start_ray()
        kwargs = dict(eos_token_ids=self.eos_ids, pad_token_id=self.pad_id,
                      digit_ids=None if self.digit_ids is None else np.asarray(self.digit_ids))
        return RayRollout(self.models.model_config, kwargs, self.run.rollout_num_workers)

    def _build_reward_runner(self, spec: RewardFnSpec):
        if self.run.reward_runner == "local":
            return LocalRewardRunner(spec, timeout_s=self.run.reward_timeout_s,
                                     fallback_score=self.run.reward_fallback_score)
        self._start_ray()
        return RayRewardRunner(spec, num_workers=self.run.reward_num_workers, timeout_s=self.run.reward_timeout_s,
                               fallback_score=self.run.reward_fallback_score)

    def _start_ray(self) -> None:
        """Start Ray (once per process) with its temp files beside the run; see :func:`ray_temp_dir`."""
        import ray

        from ntl_jax.rewards.workers import ensure_ray

        if not ray.is_initialized():
            ensure_ray(temp_dir=ray_temp_dir(self.output_dir))

    # ----------------------------------------------------------------- NTL hooks (no-ops here)
    def prepare_ntl(self, gen: GenerationOutput, rows: list[dict]) -> DigitTargets:
        """The batch's NTL targets: none in standard PPO."""
        return DigitTargets.empty(gen.response_ids.shape)

    def ntl_after_logprobs(self, gen: GenerationOutput, digit_logits: Any, targets: DigitTargets,
                           texts: list[str]) -> dict[str, float]:
        """Build NTLInfo from the log-prob pass (NTL mode); returns metrics."""
        return {}

    def reward_kwargs(self, index: int) -> dict[str, Any]:
        """Extra kwargs of sample ``index``'s ``compute_score`` call (``ntl_info``, ``tau`` in NTL mode)."""
        return {}

    def ntl_weight(self) -> float:
        return 0.0

    # ----------------------------------------------------------------- one iteration
    def sampling_params(self, validation: bool = False) -> SamplingParams:
        ppo = self.ppo
        if validation:
            return SamplingParams(max_new_tokens=ppo.max_response_length, temperature=max(ppo.val_temperature, 1e-6),
                                  greedy=ppo.val_temperature == 0.0, n=1)
        return SamplingParams(max_new_tokens=ppo.max_response_length, temperature=ppo.temperature,
                              top_k=ppo.top_k, top_p=ppo.top_p, n=ppo.rollout_n)

    def step_rng(self, step: int) -> jax.Array:
        """Per-step key derived from the seed: resuming at step s draws exactly what an unbroken run would."""
        return jax.random.fold_in(self.base_rng, step)

    def _device(self, tree: Any) -> Any:
        """Host arrays (the same on every process) with their rows sharded over the data-parallel devices."""
        return jax.tree.map(lambda x: put_global(x, batch_sharding(self.mesh)), tree)

    def train_step(self, batch: PromptBatch) -> dict[str, float]:
        ppo, models = self.ppo, self.models
        timings: dict[str, float] = {}
        step_start = time.perf_counter()
        rng = self.step_rng(self.global_step)
        with timed(timings, "gen"):
            gen = self.rollout.generate(models.policy.params, batch.prompt_token_ids, self.sampling_params(), rng,
                                        prompt_indices=batch.indices,
                                        return_digit_logits=self.use_ntl and self.config.ntl.extract_during_generation)
        rows = [row for row in batch.rows for _ in range(ppo.rollout_n)]
        texts = self.tokenizer.batch_decode(np.where(gen.response_mask > 0, gen.response_ids, self.pad_id),
                                            skip_special_tokens=True)
        prompt_ids, prompt_mask = self._device(gen.prompt_ids), self._device(gen.prompt_mask)
        response_ids = self._device(gen.response_ids)
        response_mask = self._device(gen.response_mask.astype(np.float32))
        arrays = (prompt_ids, prompt_mask, response_ids, response_mask)
        with timed(timings, "ntl_targets"):
            ntl = self._device(self.prepare_ntl(gen, rows))
        with timed(timings, "old_log_prob"):
            old = self._forward_in_chunks(self.logprob_step, models.policy.params, arrays)
            metrics = self.ntl_after_logprobs(gen, old.digit_logits, ntl, texts)
        ref_logprobs = old.logprobs
        if models.reference is not None:
            with timed(timings, "ref"):
                ref_logprobs = self._forward_in_chunks(self.ref_logprob_step, models.reference, arrays).logprobs
        values = jnp.zeros_like(old.logprobs)
        if models.critic is not None:
            with timed(timings, "values"):
                values = self._forward_in_chunks(self.value_step, models.critic.params, arrays)
        with timed(timings, "reward"):
            items = [{"data_source": row.get("data_source", ""), "solution_str": text,
                      "ground_truth": str(row["reward_model"]["ground_truth"]), "extra_info": row.get("extra_info"),
                      **self.reward_kwargs(i)} for i, (row, text) in enumerate(zip(rows, texts))]
            rewards = self.reward_runner.score(items)
            # Every process scores the same texts; process 0's scores are used, so all train on the same signal.
            scores = broadcast_from_main(np.asarray(rewards.scores, np.float32))
        with timed(timings, "adv"):
            token_rewards, advantages, returns, kl_mean = self.advantage_step(
                self._device(scores), response_mask, old.logprobs, ref_logprobs, values,
                jnp.float32(self.kl_state.value))
            if ppo.use_kl_in_reward:
                kl_mean = float(to_host(kl_mean))
                metrics["actor/reward_kl_penalty"] = kl_mean
                metrics["actor/reward_kl_penalty_coeff"] = float(self.kl_state.value)
                self.kl_state = kl_controller_update(ppo.kl_ctrl_type, self.kl_state, kl_mean, len(rows),
                                                     target=ppo.kl_target, horizon=ppo.kl_horizon)
        rollout = RolloutBatch(prompt_ids, prompt_mask, response_ids, response_mask, old.logprobs, ref_logprobs,
                               values, advantages, returns, ntl.target_digits, ntl.weights, ntl.layout)
        update_metrics = self.update(rollout, timings)
        metrics.update(update_metrics)
        metrics.update(batch_metrics(gen, scores=scores, token_rewards=token_rewards,
                                     advantages=advantages, returns=returns, values=values,
                                     max_response_length=ppo.max_response_length,
                                     with_critic=models.critic is not None, group_size=ppo.rollout_n))
        metrics.update(self._reward_extras(rewards))
        timings["timing_s/step"] = time.perf_counter() - step_start
        num_tokens = int(gen.response_mask.sum() + gen.prompt_mask.sum())
        metrics.update(timings)
        metrics["perf/total_num_tokens"] = num_tokens
        metrics["perf/time_per_step"] = timings["timing_s/step"]
        metrics["perf/throughput"] = num_tokens / max(timings["timing_s/step"], 1e-9) / len(jax.devices())
        return metrics

    def _forward_in_chunks(self, step: Any, params: Any, arrays: tuple[jax.Array, ...]) -> Any:
        """Run a jitted forward over ``log_prob_micro_batch_size`` responses at a time (bounded activation memory)."""
        size, total = self.log_prob_chunk, arrays[0].shape[0]
        if not size or size >= total:
            return step(params, *arrays)
        parts = [step(params, *(x[start:start + size] for x in arrays)) for start in range(0, total, size)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)

    def _reward_extras(self, rewards: Any) -> dict[str, float]:
        out = {"reward/errors": float(rewards.num_errors), "reward/timeouts": float(rewards.num_timeouts)}
        keys = {k for extra in rewards.extras for k, v in extra.items() if isinstance(v, (int, float, bool))}
        for key in sorted(keys):
            values = [float(e[key]) for e in rewards.extras if isinstance(e.get(key), (int, float, bool))]
            if values:
                out[f"reward_extra/{key}/mean"] = float(np.mean(values))
        return out

    def update(self, rollout: RolloutBatch, timings: dict[str, float]) -> dict[str, float]:
        """Critic then actor: ``ppo_epochs`` passes over shuffled mini-batches (advantages are already fixed)."""
        ppo, models = self.ppo, self.models
        mini_size = ppo.ppo_mini_batch_size * ppo.rollout_n
        collected: list[dict[str, Any]] = []
        rng = np.random.default_rng([self.run.seed, self.global_step])
        ntl_weight = jnp.asarray(self.ntl_weight(), jnp.float32)
        for epoch in range(ppo.ppo_epochs):
            order = rng.permutation(rollout.size)
            for start in range(0, rollout.size, mini_size):
                idx = self._device(np.sort(order[start:start + mini_size]))
                mini = _take_rows(rollout, idx)
                if models.critic is not None:
                    with timed(timings, "update_critic"):
                        models.critic.params, models.critic.opt_state, cm = self.critic_update(
                            models.critic.params, models.critic.opt_state, mini)
                        collected.append(cm)
                if ppo.critic_warmup <= self.global_step + 1:  # verl counts steps from 1
                    with timed(timings, "update_actor"):
                        models.policy.params, models.policy.opt_state, am = self.actor_update(
                            models.policy.params, models.policy.opt_state, mini, ntl_weight)
                        collected.append(am)
        host = tree_to_host(collected)
        merged: dict[str, list[float]] = {}
        for m in host:
            for k, v in m.items():
                merged.setdefault(k, []).append(float(v))
            self._count_skip(m)
        if self.consecutive_skips >= ppo.max_consecutive_skipped_updates:
            raise TrainingError(f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                                f"(max_consecutive_skipped_updates={ppo.max_consecutive_skipped_updates}); stopping")
        out = {k: float(np.mean(v)) for k, v in merged.items()}
        out["training/update_skipped_total"] = float(self.counters["update_skipped_total"])
        out["actor/lr"] = float(ppo.actor_lr)
        return out

    def _count_skip(self, update_metrics: dict[str, Any]) -> None:
        """Count one (critic or actor) update, in order: a finite one resets the consecutive-skip streak."""
        for key in ("critic/update_skipped", "actor/update_skipped"):
            if key in update_metrics:
                skipped = bool(update_metrics[key])
                self.counters["update_skipped_total"] += int(skipped)
                self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0

    # ----------------------------------------------------------------- validation, state
    def validate(self) -> dict[str, float]:
        if not self.val_rows:
            return {}
        return evaluate(self, self.val_rows)

    def _meta(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "loader": self.loader.state_dict(),
                "kl_coef": float(self.kl_state.value), "consecutive_skips": self.consecutive_skips,
                "counters": self.counters, "reference_policy_path": self.policy_path,
                **self.extra_meta()}

    def extra_meta(self) -> dict[str, Any]:
        return {}

    def load_extra_meta(self, meta: dict[str, Any]) -> None:
        pass

    def save_checkpoint(self) -> None:
        # The key as host data: the same on every process, saved once (a process-local jax.Array cannot be).
        tree = {**state_lib.train_state_tree(self.models), "rng": np.asarray(jax.random.key_data(self.base_rng))}
        self.checkpoints.save(self.global_step, tree, self._meta(), force=True)

    def maybe_resume(self) -> bool:
        if self.run.resume_mode == "disable":
            return False
        key_data = np.asarray(jax.random.key_data(self.base_rng))
        abstract = {**state_lib.abstract_train_state(self.models),
                    "rng": np.zeros_like(key_data)}
        restored = self.checkpoints.restore(None, abstract)
        if restored is None:
            return False
        tree, meta, step = restored
        state_lib.load_train_state(self.models, tree)
        self.base_rng = jax.random.wrap_key_data(np.asarray(tree["rng"]))
        self.global_step = int(meta["global_step"])
        self.loader.load_state_dict(meta["loader"])
        self.kl_state = KLControllerState(value=float(meta["kl_coef"]))
        self.consecutive_skips = int(meta.get("consecutive_skips", 0))
        self.counters.update(meta.get("counters", {}))
        self.load_extra_meta(meta)
        log.info("resumed from step %d (%s)", step, self.checkpoints.directory)
        return True

    def log_metrics(self, metrics: dict[str, float]) -> None:
        metrics = {"training/global_step": self.global_step, "training/epoch": self.loader.epoch, **metrics}
        self.history.append(metrics)
        self.logger.log(self.global_step, metrics)

    def fit(self) -> dict[str, Any]:
        """Run (or resume) training to ``total_steps``; checkpoint on SIGTERM; return first/last validation."""
        resumed = self.maybe_resume()
        result: dict[str, Any] = {"resumed": resumed, "start_step": self.global_step}
        if self.run.val_before_train and not resumed:
            val = self.validate()
            result["val_before"] = val
            if val:
                self.log_metrics(val)
        bar = tqdm(total=self.total_steps, initial=self.global_step, disable=not self.run.progress_bar,
                   desc="ppo", dynamic_ncols=True)
        try:
            with PreemptionGuard() as guard:
                while self.global_step < self.total_steps:
                    metrics = self.train_step(self.loader.next_batch())
                    self.global_step += 1
                    last = self.global_step == self.total_steps
                    if self.val_rows and (self.global_step % self.run.test_freq == 0 or last):
                        with timed(metrics, "testing"):
                            metrics.update(self.validate())
                    stop = guard.stop_agreed()  # every process sees the same answer, so all save and stop together
                    if self.global_step % self.run.save_freq == 0 or last or stop:
                        with timed(metrics, "save_checkpoint"):
                            self.save_checkpoint()
                    self.log_metrics(metrics)
                    bar.update(1)
                    bar.set_postfix(score=f"{metrics.get('critic/score/mean', 0.0):.3f}")
                    if stop:
                        log.warning("termination signal received: checkpoint written at step %d; exiting",
                                    self.global_step)
                        result["preempted"] = True
                        break
        finally:  # also on an error: a checkpoint still being written must reach the disk whole
            bar.close()
            self.checkpoints.wait()
        result["end_step"] = self.global_step
        result["val_after"] = {k: v for k, v in (self.history[-1] if self.history else {}).items()
                               if k.startswith("val-")}
        if is_main_process():
            with open(os.path.join(self.output_dir, "result.json"), "w") as f:
                json.dump(result, f, indent=2, default=float)
        return result

    def close(self) -> None:
        self.checkpoints.close()
        self.logger.close()
        self.rollout.close()
