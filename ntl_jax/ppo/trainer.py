"""The PPO loop, standard and NTL alike: ``PPOTrainer.train_step`` is one iteration, read top to bottom.

    generate -> log-probs (+ NTL digit slice, NTLInfo) -> reference, values -> rewards (see ntl_info)
             -> advantages -> critic and actor updates -> metrics

It is verl's order with the log-prob pass moved before the rewards, so reward functions can see NTL. Standard PPO
and PPO + NTL differ by data, not by code path: with ``NTLConfig.enabled`` off, the iteration's ``NTLStep`` has
no targets and weight 0, and the run's ``NTLStage`` (``ntl_jax.ppo.ntl_step``) answers every question at once. Every hot step is a
plain ``jax.jit`` over explicit shardings (``ntl_jax.ppo.steps``), owned with the models, sampler and workers by
``ntl_jax.ppo.runtime.PPORuntime``; Python only orchestrates.
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
from ntl_jax.distributed.multihost import is_main_process, to_host, tree_to_host
from ntl_jax.models.sampler import GenerationOutput
from ntl_jax.ppo import state as state_lib
from ntl_jax.ppo.batch_stats import batch_metrics
from ntl_jax.ppo.checkpoint import CheckpointStore, PreemptionGuard
from ntl_jax.ppo.config import ExperimentConfig
from ntl_jax.ppo.console import Console
from ntl_jax.ppo.evaluation import evaluate
from ntl_jax.ppo.kl_control import KLControllerState, kl_controller_update
from ntl_jax.ppo.lr_schedule import lr_multiplier, schedule_settings
from ntl_jax.ppo.metrics import MetricsLogger
from ntl_jax.ppo.ntl_step import NTLStage
from ntl_jax.ppo.runtime import PPORuntime
from ntl_jax.ppo.steps import RolloutBatch
from ntl_jax.rewards.scoring import reward_item
from ntl_jax.rewards.sharded import score_once_across_processes
from ntl_jax.rewards.workers import RewardResult

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


def bucketed_width(longest: int, bucket: int, width: int) -> int:
    """``min(width, bucket * ceil(longest / bucket))`` (``width`` when ``bucket`` is 0; at least one bucket)."""
    return min(width, bucket * -(-max(int(longest), 1) // bucket)) if bucket else width


def trim_responses(gen: GenerationOutput, bucket: int) -> GenerationOutput:
    """The response columns up to ``bucketed_width`` of the longest response (all of them when ``bucket`` is 0 or
    that is not shorter): the columns cut are padding in every row, which no pass attends to or counts."""
    width = gen.response_ids.shape[1]
    trimmed = bucketed_width(int(np.max(np.sum(gen.response_mask, axis=1), initial=1)), bucket, width)
    if trimmed == width:
        return gen
    return gen._replace(**{name: None if value is None else value[:, :trimmed]
                           for name, value in gen._asdict().items() if name.startswith("response") or
                           name == "digit_logits"})


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
    """PPO (policy + critic + frozen reference), with or without NTL: the algorithm and its state. ``fit()`` runs
    the loop; ``runtime`` (`PPORuntime`) owns the mesh, models, jitted steps, sampler and workers it computes with."""

    def __init__(self, config: ExperimentConfig, tokenizer: Any, *, policy_path: str, train_rows: list[dict],
                 val_rows: list[dict] | None = None, mesh: Any = None, reward_fn: Any = None):
        self.config, self.ppo, self.run = config, config.ppo, config.trainer
        self.tokenizer, self.policy_path, self.output_dir = tokenizer, policy_path, config.trainer.output_dir
        os.makedirs(self.output_dir, exist_ok=True)
        self.loader = PromptLoader(train_rows, tokenizer, self.ppo.train_batch_size, seed=self.run.seed,
                                   max_prompt_length=self.ppo.max_prompt_length, truncation=self.run.truncation,
                                   filter_overlong_prompts=self.run.filter_overlong_prompts, source="train")
        self.total_steps = self.run.total_training_steps or self.run.total_epochs * self.loader.steps_per_epoch
        self.runtime = PPORuntime(config, tokenizer, policy_path=policy_path, total_iterations=self.total_steps,
                                  mesh=mesh, reward_fn=reward_fn)
        self.val_rows = list(val_rows or [])[: self.run.val_max_samples or None]
        self.kl_state = KLControllerState(value=float(self.ppo.kl_coef))
        self.ntl_stage = NTLStage(config.ntl, tokenizer, self.runtime.digit_ids, self.output_dir)
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

    def step_rng(self, step: int) -> jax.Array:
        """Per-step key derived from the seed: resuming at step s draws exactly what an unbroken run would."""
        return jax.random.fold_in(self.base_rng, step)

    # ----------------------------------------------------------------- one iteration
    def train_step(self, batch: PromptBatch) -> dict[str, float]:
        """One PPO iteration on a batch of prompts; returns its metrics (verl's names, plus ntl/*)."""
        ppo, rt, timings, start = self.ppo, self.runtime, {}, time.perf_counter()
        models = rt.models
        rt.compile_updates_ahead(batch.prompt_token_ids, with_actor=self._actor_updates())

        # 1. Sample rollout_n responses per prompt with the current policy.
        with timed(timings, "gen") as wait:
            sequences = self.generate(batch)
            wait(sequences.arrays)
        # 2. Log-probs and entropy at the rollout temperature, and the digit slice -> NTLInfo, before rewards
        #    (no pass when the single update's own forward gives them: see old_log_prob_from_update). The pass is
        #    dispatched first, so the host builds NTL's digit targets while the devices compute it.
        old_logprobs, digit_logits, old = jnp.zeros_like(sequences.response_mask), None, None
        if not rt.old_log_prob_from_update:
            with timed(timings, "old_log_prob"):  # its dispatch; the wait for it is charged below
                old = rt.forward(rt.logprob_step, models.policy.params, sequences.arrays)
        with timed(timings, "ntl_targets"):  # host work only: its transfer queues behind the pass on some backends
            ntl = self.ntl_stage.targets(sequences.generation, sequences.rows, self.global_step)
            ntl_targets = rt.device(ntl.targets)
        if old is not None:
            with timed(timings, "old_log_prob") as wait:
                wait(old)
            old_logprobs, digit_logits = old.logprobs, old.digit_logits
        ntl, metrics = self.ntl_stage.summarize(ntl, digit_logits, sequences.generation, sequences.texts,
                                                self.global_step)

        # 3. The frozen reference's log-probs (KL) and the critic's values (GAE).
        ref_logprobs, values = old_logprobs, jnp.zeros_like(old_logprobs)
        if models.reference is not None:
            with timed(timings, "ref") as wait:
                ref_logprobs = rt.forward(rt.ref_logprob_step, models.reference, sequences.arrays).logprobs
                wait(ref_logprobs)
        if models.critic is not None:
            with timed(timings, "values") as wait:
                values = rt.forward(rt.value_step, models.critic.params, sequences.arrays)
                wait(values)

        # 4. Rewards: compute_score per response, with ntl_info and tau when NTL is on.
        with timed(timings, "reward"):
            # Each process scores its share of the responses; every process gets all the results.
            rewards = score_once_across_processes(rt.reward_runner, [
                reward_item(row, text, **self.ntl_stage.reward_kwargs(ntl, i))
                for i, (row, text) in enumerate(zip(sequences.rows, sequences.texts))])
            scores = np.asarray(rewards.scores, np.float32)

        # 5. Token rewards (minus KL when it is in the reward) and advantages.
        with timed(timings, "adv") as wait:
            token_rewards, advantages, returns, kl_mean = rt.advantage_step(
                rt.device(scores), sequences.response_mask, old_logprobs, ref_logprobs, values,
                jnp.float32(self.kl_state.value))
            credit, credit_metrics = self.ntl_stage.credit(ntl, sequences.generation.response_ids, ppo.rollout_n)
            if credit is not None:  # after the estimator: digit credit never flows to other tokens (ntl/credit.py)
                advantages = advantages + rt.device(credit)  # 0 off the targets, which lie inside the mask
                metrics.update(credit_metrics)
            wait(advantages)
            if ppo.use_kl_in_reward:
                metrics.update(self._update_kl_controller(float(to_host(kl_mean)), len(sequences.rows)))

        # 6. Critic and actor updates: ppo_epochs passes over mini-batches, gradients accumulated over micro-batches.
        rollout = RolloutBatch(*sequences.arrays, old_logprobs, ref_logprobs, values, advantages, returns,
                               ntl_targets)
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
        rt = self.runtime
        gen = rt.rollout.generate(rt.models.policy.params, batch.prompt_token_ids, rt.sampling_params(),
                                    self.step_rng(self.global_step), prompt_indices=batch.indices,
                                    return_digit_logits=self.ntl_stage.digit_logits_from_sampler)
        gen = trim_responses(gen, self.ppo.response_bucket)
        texts = self.tokenizer.batch_decode(np.where(gen.response_mask > 0, gen.response_ids, rt.pad_id),
                                            skip_special_tokens=True)
        rows = [row for row in batch.rows for _ in range(self.ppo.rollout_n)]
        n = self.ppo.rollout_n
        if self.ppo.share_prompt_forward and n > 1 and not np.array_equal(  # the shared-prompt forward relies on it
                gen.prompt_ids, np.repeat(gen.prompt_ids[::n], n, axis=0)):
            raise RuntimeError(f"the rollout's rows are not in groups of rollout_n={n} rows per prompt (row i * n + j "
                               "= sample j of prompt i); set PPOConfig.share_prompt_forward = False for this rollout")
        prompt_ids, prompt_mask, response_ids, response_mask = rt.device(
            (gen.prompt_ids, gen.prompt_mask, gen.response_ids, gen.response_mask.astype(np.float32)))
        return Sequences(rows, texts, gen, prompt_ids, prompt_mask, response_ids, response_mask)

    def _actor_updates(self) -> bool:
        """Whether this iteration updates the actor (after critic_warmup iterations; verl counts from 1)."""
        return self.ppo.critic_warmup <= self.global_step + 1

    def update(self, rollout: RolloutBatch, ntl_weight: float, timings: dict[str, float]) -> dict[str, float]:
        """Critic then actor: ``ppo_epochs`` passes over shuffled mini-batches (advantages are already fixed)."""
        ppo, rt = self.ppo, self.runtime
        models = rt.models
        rt.compile_ahead.wait()
        mini_size = ppo.ppo_mini_batch_size * ppo.rollout_n
        collected: list[dict[str, Any]] = []
        rng = np.random.default_rng([self.run.seed, self.global_step])
        for _ in range(ppo.ppo_epochs):
            order = rng.permutation(rollout.size)
            for start in range(0, rollout.size, mini_size):
                rows = np.sort(order[start:start + mini_size])  # all rows in order when one mini-batch
                mini = rollout if rows.size == rollout.size else _take_rows(rollout, rt.device(rows))
                if models.critic is not None:
                    with timed(timings, "update_critic") as wait:
                        models.critic.params, models.critic.opt_state, critic_metrics = rt.critic_update(
                            models.critic.params, models.critic.opt_state, mini)
                        collected.append(critic_metrics)
                        wait(models.critic.params)
                if self._actor_updates():
                    with timed(timings, "update_actor") as wait:
                        models.policy.params, models.policy.opt_state, actor_metrics = rt.actor_update(
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
        run, rt = self.run, self.runtime
        return evaluate(rt.rollout, rt.models.policy.params, self.val_rows, self.tokenizer, rt.reward_runner,
                        rt.sampling_params(validation=True), max_prompt_length=self.ppo.max_prompt_length,
                        truncation=run.truncation, filter_overlong_prompts=run.filter_overlong_prompts,
                        batch_size=run.val_batch_size, seed=run.seed, pad_id=rt.pad_id)

    def _meta(self) -> dict[str, Any]:
        return {"global_step": self.global_step, "loader": self.loader.state_dict(),
                "kl_coef": float(self.kl_state.value), "consecutive_skips": self.consecutive_skips,
                "counters": self.counters, "reference_policy_path": self.policy_path,
                **self.ntl_stage.tracker.state_dict()}

    def save_checkpoint(self) -> None:
        # The key as host data: the same on every process, saved once (a process-local jax.Array cannot be).
        tree = {**state_lib.train_state_tree(self.runtime.models), "rng": np.asarray(jax.random.key_data(self.base_rng))}
        self.checkpoints.save(self.global_step, tree, self._meta(), force=True)

    def maybe_resume(self) -> bool:
        if self.run.resume_mode == "disable":
            return False
        key_data = np.asarray(jax.random.key_data(self.base_rng))
        restored = self.checkpoints.restore(None, {**state_lib.abstract_train_state(self.runtime.models),
                                                   "rng": np.zeros_like(key_data)})
        if restored is None:
            return False
        tree, meta, step = restored
        state_lib.load_train_state(self.runtime.models, tree)
        self.base_rng = jax.random.wrap_key_data(np.asarray(tree["rng"]))
        self.global_step = int(meta["global_step"])
        self.loader.load_state_dict(meta["loader"])
        self.kl_state = KLControllerState(value=float(meta["kl_coef"]))
        self.consecutive_skips = int(meta.get("consecutive_skips", 0))
        self.counters.update(meta.get("counters", {}))
        self.ntl_stage.tracker.load_state_dict(meta)
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
        self.runtime.close()
        self.checkpoints.close()
        self.logger.close()
