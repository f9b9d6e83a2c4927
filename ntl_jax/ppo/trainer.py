"""The PPO loop, standard and NTL alike: ``PPOTrainer.train_step`` is one iteration, read top to bottom.

    generate -> log-probs (+ NTL digit slice, NTLInfo) -> reference, values -> rewards (see ntl_info)
             -> advantages -> critic and actor updates -> metrics

It is verl's order with the log-prob pass moved before the rewards, so reward functions can see NTL. Standard PPO
and PPO + NTL differ by data, not by code path: with ``NTLConfig.enabled`` off, the iteration's ``NTLStep`` has
no targets and weight 0, and the NTL functions (``ntl_jax.ppo.ntl_step``) return at once. Every hot step is a
plain ``jax.jit`` over explicit shardings (``ntl_jax.ppo.steps``); Python only orchestrates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ntl_jax.data.verl_parquet import PromptBatch, PromptLoader
from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.distributed.multihost import broadcast_from_main, is_main_process, put_global, to_host, tree_to_host
from ntl_jax.models.config import generation_eos_token_ids, stop_token_ids
from ntl_jax.models.sampler import GenerationOutput, Sampler, SamplingParams
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ppo import ntl_step
from ntl_jax.ppo import state as state_lib
from ntl_jax.ppo.batch_stats import batch_metrics
from ntl_jax.ppo.checkpoint import CheckpointStore, PreemptionGuard
from ntl_jax.ppo.compile_ahead import CompileAhead, abstract_like, abstract_rollout
from ntl_jax.ppo.config import ExperimentConfig
from ntl_jax.ppo.console import Console
from ntl_jax.ppo.evaluation import evaluate
from ntl_jax.ppo.kl_control import KLControllerState, kl_controller_update
from ntl_jax.ppo.lr_schedule import lr_multiplier, schedule_settings
from ntl_jax.ppo.metrics import MetricsLogger
from ntl_jax.ppo.rollout import ColocatedRollout, RayRollout
from ntl_jax.ppo.steps import (
    ActorLossSettings,
    RolloutBatch,
    batch_sharding,
    make_actor_update,
    make_advantage_step,
    make_critic_update,
    make_logprob_step,
    make_value_step,
)
from ntl_jax.rewards.registry import RewardFnSpec, reward_spec
from ntl_jax.rewards.scoring import reward_item
from ntl_jax.rewards.workers import LocalRewardRunner, RayRewardRunner, RewardResult, ensure_ray, ray_temp_dir

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many consecutive non-finite updates)."""


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[Callable[[Any], None]]:
    """Adds the block's wall time to ``timing_s/<name>``. The block hands its outputs to the yielded ``wait``; they
    are waited for before the clock stops, so on asynchronous backends (GPU, TPU, and XLA:CPU's async dispatch) a
    phase is charged its own compute rather than its dispatch: one sync per phase, not per op."""
    start, outputs = time.perf_counter(), []
    yield outputs.append
    jax.block_until_ready(outputs)
    timings[f"timing_s/{name}"] = timings.get(f"timing_s/{name}", 0.0) + time.perf_counter() - start


@jax.jit
def _take_rows(tree: Any, rows: jax.Array) -> Any:
    """One compiled gather of a mini-batch's rows from every array of the rollout."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), tree)


@dataclasses.dataclass
class Sequences:
    """One iteration's prompts and sampled responses: host rows and texts, device arrays (rows sharded)."""

    rows: list[dict]  # the verl row of each response (a prompt's row rollout_n times)
    texts: list[str]
    generation: GenerationOutput
    prompt_ids: jax.Array
    prompt_mask: jax.Array
    response_ids: jax.Array
    response_mask: jax.Array  # float32

    @property
    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        return self.prompt_ids, self.prompt_mask, self.response_ids, self.response_mask


class PPOTrainer:
    """PPO (policy + critic + frozen reference), with or without NTL, over a mesh. ``fit()`` runs the loop."""

    def __init__(self, config: ExperimentConfig, tokenizer: Any, *, policy_path: str, train_rows: list[dict],
                 val_rows: list[dict] | None = None, mesh: Any = None, reward_fn: Any = None):
        self.config, self.ppo, self.run, self.ntl = config, config.ppo, config.trainer, config.ntl
        self.tokenizer, self.policy_path, self.output_dir = tokenizer, policy_path, config.trainer.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        self.mesh = mesh if mesh is not None else make_mesh(self.run.mesh_data, self.run.mesh_fsdp,
                                                             self.run.mesh_tensor)
        data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        self.num_micro_batches = self.ppo.micro_batches(data_parallel)
        self.log_prob_chunk = self.ppo.log_prob_chunk(data_parallel)
        # The separate old-log-prob pass is redundant when its only reader is the one update (verl's on_policy).
        self.old_log_prob_from_update = (self.ppo.skip_on_policy_old_log_prob
                                         and self.ppo.one_actor_step_per_iteration
                                         and not self.ntl.enabled and not self.ppo.use_kl_in_reward)
        if self.ppo.responses_per_iteration % data_parallel:
            raise ValueError(f"train_batch_size*rollout_n={self.ppo.responses_per_iteration} is invalid; allowed: "
                             f"a multiple of the data-parallel device count data*fsdp={data_parallel}")
        self.loader = PromptLoader(train_rows, tokenizer, self.ppo.train_batch_size, seed=self.run.seed,
                                   max_prompt_length=self.ppo.max_prompt_length, truncation=self.run.truncation,
                                   filter_overlong_prompts=self.run.filter_overlong_prompts, source="train")
        self.total_steps = self.run.total_training_steps or self.run.total_epochs * self.loader.steps_per_epoch
        self.models = state_lib.build_models(policy_path, self.ppo, self.mesh, dtype=self.run.dtype,
                                             param_dtype=self.run.param_dtype, remat=self.run.remat,
                                             scan_layers=self.run.scan_layers, critic_path=self.run.critic_path,
                                             total_iterations=self.total_steps)
        self.digit_ids = (np.asarray(digit_token_ids(tokenizer, logits_dim=self.models.model_config.vocab_size,
                                                     cache=self.ntl.cache_digit_mappings), np.int32)
                          if self.ntl.enabled else None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = stop_token_ids(tokenizer, self.models.model_config.eos_token_id,
                                generation_eos_token_ids(policy_path))
        self._build_steps()
        self.compile_ahead = CompileAhead(self.run.compile_ahead)
        self.sampler = Sampler(self.models.policy.graphdef, self.models.model_config, eos_token_ids=self.eos_ids,
                               pad_token_id=self.pad_id, digit_ids=self.digit_ids, mesh=self.mesh,
                               cache_dtype=state_lib.DTYPES[self.run.kv_cache_dtype],
                               cpu_decode_matmuls=self.run.cpu_decode_matmuls)
        self.rollout = self._build_rollout()
        if not isinstance(reward_fn, RewardFnSpec):
            reward_fn = reward_spec(self.run.reward_fn_path, self.run.reward_fn_name, self.run.reward_fn_kwargs,
                                    self.ntl.enabled)
        self.reward_spec = reward_fn
        self.reward_runner = self._build_reward_runner(reward_fn)
        self.val_rows = list(val_rows or [])[: self.run.val_max_samples or None]
        self.kl_state = KLControllerState(value=float(self.ppo.kl_coef))
        self.ntl_tracker = ntl_step.NTLTracker()
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
    def _build_steps(self) -> None:
        models, mesh, ppo = self.models, self.mesh, self.ppo
        policy = models.policy
        forward_group, update_group = ppo.prompt_groups(self.mesh.shape["data"] * self.mesh.shape["fsdp"],
                                                        self.num_micro_batches)
        log.info("rows per shared prompt: %d in log-prob / value passes, %d in updates", forward_group, update_group)
        self.logprob_step = make_logprob_step(policy.graphdef, mesh, policy.shardings, digit_ids=self.digit_ids,
                                              chunk_size=ppo.logprob_chunk_size, temperature=ppo.temperature,
                                              group_size=forward_group)
        self.ref_logprob_step = make_logprob_step(policy.graphdef, mesh, policy.shardings, digit_ids=None,
                                                  chunk_size=ppo.logprob_chunk_size, temperature=ppo.temperature,
                                                  compute_entropy=False, group_size=forward_group)
        settings = ActorLossSettings.from_config(ppo, self.ntl.method if self.ntl.enabled else None,
                                                 on_policy=self.old_log_prob_from_update, group_size=update_group)
        self.actor_update = make_actor_update(policy.graphdef, policy.tx, settings, digit_ids=self.digit_ids,
                                              num_micro_batches=self.num_micro_batches, mesh=mesh,
                                              param_shardings=policy.shardings, opt_shardings=policy.opt_shardings)
        self.advantage_step = make_advantage_step(ppo, mesh)
        if models.critic is not None:
            critic = models.critic
            self.value_step = make_value_step(critic.graphdef, mesh, critic.shardings, group_size=forward_group)
            self.critic_update = make_critic_update(critic.graphdef, critic.tx, ppo,
                                                    num_micro_batches=self.num_micro_batches, mesh=mesh,
                                                    param_shardings=critic.shardings,
                                                    opt_shardings=critic.opt_shardings, group_size=update_group)

    def _build_rollout(self):
        if self.run.rollout_mode == "colocated":
            return ColocatedRollout(self.sampler, self.ppo.rollout_max_rows)
        if jax.default_backend() != "cpu" or jax.process_count() > 1:
            # Ray samplers are CPU processes that get the weights through the host every iteration: on accelerators
            # and pods the colocated sampler shares the trainer's devices and weights at no copy.
            raise ValueError(f"TrainerConfig.rollout_mode='ray' is invalid on {jax.default_backend()} with "
                             f"{jax.process_count()} process(es); allowed there: 'colocated' ('ray' is a "
                             "single-process CPU option)")
        ensure_ray(temp_dir=ray_temp_dir(self.output_dir))
        kwargs = dict(eos_token_ids=self.eos_ids, pad_token_id=self.pad_id, digit_ids=self.digit_ids,
                      cache_dtype=state_lib.DTYPES[self.run.kv_cache_dtype],
                      cpu_decode_matmuls=self.run.cpu_decode_matmuls)
        return RayRollout(self.models.model_config, kwargs, self.run.rollout_num_workers)

    def _build_reward_runner(self, spec: RewardFnSpec):
        if self.run.reward_runner == "local":
            return LocalRewardRunner(spec, timeout_s=self.run.reward_timeout_s,
                                     fallback_score=self.run.reward_fallback_score)
        ensure_ray(temp_dir=ray_temp_dir(self.output_dir))
        return RayRewardRunner(spec, num_workers=self.run.reward_num_workers, timeout_s=self.run.reward_timeout_s,
                               fallback_score=self.run.reward_fallback_score)

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

    # ----------------------------------------------------------------- one iteration
    def train_step(self, batch: PromptBatch) -> dict[str, float]:
        """One PPO iteration on a batch of prompts; returns its metrics (verl's names, plus ntl/*)."""
        ppo, models, timings, start = self.ppo, self.models, {}, time.perf_counter()
        self._compile_updates_ahead(batch)  # a no-op once this shape has been seen

        # 1. Sample rollout_n responses per prompt with the current policy.
        with timed(timings, "gen") as wait:
            sequences = self.generate(batch)
            wait(sequences.arrays)
        with timed(timings, "ntl_targets") as wait:
            ntl = ntl_step.targets(self.ntl, self.ntl_tracker, sequences.generation, sequences.rows,
                                   self.tokenizer, self.digit_ids, self.global_step)
            ntl_targets = self._device(ntl.targets)
            wait(ntl_targets)

        # 2. Log-probs and entropy at the rollout temperature, and the digit slice -> NTLInfo, before rewards
        #    (no pass when the single update's own forward gives them: see old_log_prob_from_update).
        old_logprobs, digit_logits = jnp.zeros_like(sequences.response_mask), None
        if not self.old_log_prob_from_update:
            with timed(timings, "old_log_prob") as wait:
                old = self.forward(self.logprob_step, models.policy.params, sequences)
                old_logprobs, digit_logits = old.logprobs, old.digit_logits
                wait(old)
        ntl, metrics = ntl_step.summarize(self.ntl, self.ntl_tracker, ntl, digit_logits, sequences.generation,
                                          sequences.texts, self.global_step, self.output_dir)

        # 3. The frozen reference's log-probs (KL) and the critic's values (GAE).
        ref_logprobs, values = old_logprobs, jnp.zeros_like(old_logprobs)
        if models.reference is not None:
            with timed(timings, "ref") as wait:
                ref_logprobs = self.forward(self.ref_logprob_step, models.reference, sequences).logprobs
                wait(ref_logprobs)
        if models.critic is not None:
            with timed(timings, "values") as wait:
                values = self.forward(self.value_step, models.critic.params, sequences)
                wait(values)

        # 4. Rewards: compute_score per response, with ntl_info and tau when NTL is on.
        with timed(timings, "reward"):
            rewards = self.reward_runner.score(
                [reward_item(row, text, **ntl_step.reward_kwargs(self.ntl, ntl, i))
                 for i, (row, text) in enumerate(zip(sequences.rows, sequences.texts))])
            # Every process scores the same texts; process 0's scores are used, so all train on the same signal.
            scores = broadcast_from_main(np.asarray(rewards.scores, np.float32))

        # 5. Token rewards (minus KL when it is in the reward) and advantages.
        with timed(timings, "adv") as wait:
            token_rewards, advantages, returns, kl_mean = self.advantage_step(
                self._device(scores), sequences.response_mask, old_logprobs, ref_logprobs, values,
                jnp.float32(self.kl_state.value))
            wait(advantages)
            if ppo.use_kl_in_reward:
                metrics.update(self._update_kl_controller(float(to_host(kl_mean)), len(sequences.rows)))

        # 6. Critic and actor updates: ppo_epochs passes over mini-batches, gradients accumulated over micro-batches.
        rollout = RolloutBatch(*sequences.arrays, old_logprobs, ref_logprobs, values, advantages, returns,
                               ntl_targets.target_digits, ntl_targets.weights, ntl_targets.layout)
        metrics.update(self.update(rollout, ntl.weight, timings))

        # 7. Metrics.
        metrics.update(batch_metrics(sequences.generation, scores=scores, token_rewards=token_rewards,
                                     advantages=advantages, returns=returns, values=values,
                                     max_response_length=ppo.max_response_length,
                                     with_critic=models.critic is not None, group_size=ppo.rollout_n,
                                     reward_extras=rewards.extras))
        metrics.update(self._reward_extras(rewards))
        return self._timing_metrics(metrics, timings, sequences.generation, start)

    def generate(self, batch: PromptBatch) -> Sequences:
        """rollout_n sampled responses per prompt (row i * rollout_n + j is prompt i's j-th), placed on the mesh."""
        gen = self.rollout.generate(self.models.policy.params, batch.prompt_token_ids, self.sampling_params(),
                                    self.step_rng(self.global_step), prompt_indices=batch.indices,
                                    return_digit_logits=self.ntl.enabled and self.ntl.extract_during_generation)
        texts = self.tokenizer.batch_decode(np.where(gen.response_mask > 0, gen.response_ids, self.pad_id),
                                            skip_special_tokens=True)
        rows = [row for row in batch.rows for _ in range(self.ppo.rollout_n)]
        n = self.ppo.rollout_n
        if self.ppo.share_prompt_forward and n > 1 and not np.array_equal(  # the shared-prompt forward relies on it
                gen.prompt_ids, np.repeat(gen.prompt_ids[::n], n, axis=0)):
            raise RuntimeError(f"the rollout's rows are not in groups of rollout_n={n} rows per prompt (row i * n + j "
                               "= sample j of prompt i); set PPOConfig.share_prompt_forward = False for this rollout")
        prompt_ids, prompt_mask, response_ids, response_mask = self._device(
            (gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask.astype(np.float32)))
        return Sequences(rows, texts, gen, prompt_ids, prompt_mask, response_ids, response_mask)

    def _compile_updates_ahead(self, batch: PromptBatch) -> None:
        """Start compiling the critic / actor updates for this batch's shapes beside the rollout (`compile_ahead`)."""
        ppo, models = self.ppo, self.models
        rows, prompt_len = ppo.ppo_mini_batch_size * ppo.rollout_n, self.sampler.prompt_width(batch.prompt_token_ids)
        with_critic, with_actor = models.critic is not None, ppo.critic_warmup <= self.global_step + 1
        key = (rows, prompt_len, with_critic, with_actor)
        if self.compile_ahead.seen(key):
            return
        mini = abstract_rollout(rows, prompt_len, ppo.max_response_length, batch_sharding(self.mesh))
        jobs = []
        if with_critic:
            jobs.append((self.critic_update, (*abstract_like((models.critic.params, models.critic.opt_state)), mini)))
        if with_actor:
            jobs.append((self.actor_update, (*abstract_like((models.policy.params, models.policy.opt_state)), mini,
                                             jax.ShapeDtypeStruct((), jnp.float32))))
        self.compile_ahead.start(key, jobs)

    def forward(self, step: Any, params: Any, sequences: Sequences) -> Any:
        """A jitted forward over ``log_prob_micro_batch_size`` responses at a time (bounded activation memory)."""
        arrays, size = sequences.arrays, self.log_prob_chunk
        total = arrays[0].shape[0]
        if not size or size >= total:
            return step(params, *arrays)
        parts = [step(params, *(x[start:start + size] for x in arrays)) for start in range(0, total, size)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)

    def update(self, rollout: RolloutBatch, ntl_weight: float, timings: dict[str, float]) -> dict[str, float]:
        """Critic then actor: ``ppo_epochs`` passes over shuffled mini-batches (advantages are already fixed)."""
        ppo, models = self.ppo, self.models
        self.compile_ahead.wait()
        mini_size = ppo.ppo_mini_batch_size * ppo.rollout_n
        collected: list[dict[str, Any]] = []
        rng = np.random.default_rng([self.run.seed, self.global_step])
        for _ in range(ppo.ppo_epochs):
            order = rng.permutation(rollout.size)
            for start in range(0, rollout.size, mini_size):
                rows = np.sort(order[start:start + mini_size])  # all rows in order when one mini-batch
                mini = rollout if rows.size == rollout.size else _take_rows(rollout, self._device(rows))
                if models.critic is not None:
                    with timed(timings, "update_critic") as wait:
                        models.critic.params, models.critic.opt_state, critic_metrics = self.critic_update(
                            models.critic.params, models.critic.opt_state, mini)
                        collected.append(critic_metrics)
                        wait(models.critic.params)
                if ppo.critic_warmup <= self.global_step + 1:  # verl counts steps from 1
                    with timed(timings, "update_actor") as wait:
                        models.policy.params, models.policy.opt_state, actor_metrics = self.actor_update(
                            models.policy.params, models.policy.opt_state, mini, jnp.float32(ntl_weight))
                        collected.append(actor_metrics)
                        wait(models.policy.params)
        merged: dict[str, list[float]] = {}
        for update_metrics in tree_to_host(collected):
            for key, value in update_metrics.items():
                merged.setdefault(key, []).append(float(value))
            self._count_skip(update_metrics)
        if self.consecutive_skips >= ppo.max_consecutive_skipped_updates:
            raise TrainingError(f"{self.consecutive_skips} consecutive updates had a non-finite loss or gradient "
                                f"(max_consecutive_skipped_updates={ppo.max_consecutive_skipped_updates}); stopping")
        out = {key: float(np.mean(values)) for key, values in merged.items()}
        out["training/update_skipped_total"] = float(self.counters["update_skipped_total"])
        out["actor/lr"] = ppo.actor_lr * self._lr_multiplier(self.global_step + 1 - max(ppo.critic_warmup, 1))
        if models.critic is not None:
            out["critic/lr"] = ppo.critic_lr * self._lr_multiplier(self.global_step)
        return out

    def _lr_multiplier(self, iterations_done: int) -> float:
        """The schedule's rate / peak for an optimiser that has updated in ``iterations_done`` earlier iterations."""
        return lr_multiplier(max(iterations_done, 0), total_iterations=self.total_steps,
                             **schedule_settings(self.ppo))

    def _count_skip(self, update_metrics: dict[str, Any]) -> None:
        """Count one (critic or actor) update, in order: a finite one resets the consecutive-skip streak."""
        for key in ("critic/update_skipped", "actor/update_skipped"):
            if key in update_metrics:
                skipped = bool(update_metrics[key])
                self.counters["update_skipped_total"] += int(skipped)
                self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0

    def _update_kl_controller(self, kl_mean: float, batch_size: int) -> dict[str, float]:
        metrics = {"actor/reward_kl_penalty": kl_mean, "actor/reward_kl_penalty_coeff": float(self.kl_state.value)}
        self.kl_state = kl_controller_update(self.ppo.kl_ctrl_type, self.kl_state, kl_mean, batch_size,
                                             target=self.ppo.kl_target, horizon=self.ppo.kl_horizon)
        return metrics

    @staticmethod
    def _reward_extras(rewards: RewardResult) -> dict[str, float]:
        out = rewards.to_metrics()
        keys = {k for extra in rewards.extras for k, v in extra.items() if isinstance(v, (int, float, bool))}
        for key in sorted(keys):
            values = [float(e[key]) for e in rewards.extras if isinstance(e.get(key), (int, float, bool))]
            out[f"reward_extra/{key}/mean"] = float(np.mean(values))
        if "ntl_reward" in keys:  # the NTL guide's name for the mean NTL component of the reward
            out["ntl/reward"] = out["reward_extra/ntl_reward/mean"]
        return out

    @staticmethod
    def _timing_metrics(metrics: dict[str, float], timings: dict[str, float], gen: GenerationOutput,
                        start: float) -> dict[str, float]:
        timings["timing_s/step"] = time.perf_counter() - start
        num_tokens = int(gen.response_mask.sum() + gen.prompt_mask.sum())
        return {**metrics, **timings, "perf/total_num_tokens": num_tokens, "perf/time_per_step": timings["timing_s/step"],
                "perf/throughput": num_tokens / max(timings["timing_s/step"], 1e-9) / len(jax.devices())}

    # ----------------------------------------------------------------- validation, state, loop
    def validate(self) -> dict[str, float]:
        if not self.val_rows:
            return {}
        run = self.run
        return evaluate(self.rollout, self.models.policy.params, self.val_rows, self.tokenizer, self.reward_runner,
                        self.sampling_params(validation=True), max_prompt_length=self.ppo.max_prompt_length,
                        truncation=run.truncation, filter_overlong_prompts=run.filter_overlong_prompts,
                        batch_size=run.val_batch_size, seed=run.seed, pad_id=self.pad_id)

    def _meta(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "loader": self.loader.state_dict(),
                "kl_coef": float(self.kl_state.value), "consecutive_skips": self.consecutive_skips,
                "counters": self.counters, "reference_policy_path": self.policy_path,
                **self.ntl_tracker.state_dict()}

    def save_checkpoint(self) -> None:
        # The key as host data: the same on every process, saved once (a process-local jax.Array cannot be).
        tree = {**state_lib.train_state_tree(self.models), "rng": np.asarray(jax.random.key_data(self.base_rng))}
        self.checkpoints.save(self.global_step, tree, self._meta(), force=True)

    def maybe_resume(self) -> bool:
        if self.run.resume_mode == "disable":
            return False
        key_data = np.asarray(jax.random.key_data(self.base_rng))
        restored = self.checkpoints.restore(None, {**state_lib.abstract_train_state(self.models),
                                                   "rng": np.zeros_like(key_data)})
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
        self.ntl_tracker.load_state_dict(meta)
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
        console = Console(self.total_steps, self.global_step, enabled=self.run.progress_bar,
                          every=self.run.console_every)
        if self.run.val_before_train and not resumed:
            val = self.validate()
            result["val_before"] = val
            if val:
                self.log_metrics(val)
                console.validation(self.global_step, val)
        try:
            with PreemptionGuard() as guard:
                while self.global_step < self.total_steps:
                    metrics = self.train_step(self.loader.next_batch())
                    self.global_step += 1
                    last = self.global_step == self.total_steps
                    if self.val_rows and (self.global_step % self.run.test_freq == 0 or last):
                        with timed(metrics, "testing"):
                            metrics.update(self.validate())
                        console.validation(self.global_step, metrics)
                    stop = guard.stop_agreed()  # every process sees the same answer, so all save and stop together
                    if self.global_step % self.run.save_freq == 0 or last or stop:
                        with timed(metrics, "save_checkpoint"):
                            self.save_checkpoint()
                    self.log_metrics(metrics)
                    console.step(self.global_step, metrics)
                    if stop:
                        log.warning("termination signal received: checkpoint written at step %d; exiting",
                                    self.global_step)
                        result["preempted"] = True
                        break
        finally:  # also on an error: a checkpoint still being written must reach the disk whole
            console.close()
            self.checkpoints.wait()
        result["end_step"] = self.global_step
        result["val_after"] = {k: v for k, v in (self.history[-1] if self.history else {}).items()
                               if k.startswith("val-")}
        if is_main_process():
            with open(os.path.join(self.output_dir, "result.json"), "w") as f:
                json.dump(result, f, indent=2, default=float)
        return result

    def close(self) -> None:
        self.compile_ahead.close()
        self.checkpoints.close()
        self.logger.close()
        self.rollout.close()
