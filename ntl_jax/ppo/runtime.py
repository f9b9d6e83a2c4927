"""What a PPO run computes with: one object owns the mesh, the models, their jitted steps, the sampler, the rollout
and the reward runner; the learner (``ntl_jax.ppo.trainer.PPOTrainer``) owns the algorithm and its state.

Building a runtime checks its settings, places the models on the mesh and jits the steps; it starts no worker
pools. A Ray rollout or a Ray reward runner starts on first use (the first generation or validation), so a
trainer that is only inspected, resumed into a finished run or closed early never starts Ray.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.distributed.multihost import put_global
from ntl_jax.models.config import generation_eos_token_ids, stop_token_ids
from ntl_jax.models.sampler import Sampler, SamplingParams, resolve_cache_dtype
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ppo import state as state_lib
from ntl_jax.ppo.compile_ahead import CompileAhead, abstract_like, abstract_rollout
from ntl_jax.ppo.config import ExperimentConfig
from ntl_jax.ppo.rollout import ColocatedRollout, RayRollout
from ntl_jax.ppo.steps import (
    ActorLossSettings,
    batch_sharding,
    make_actor_update,
    make_advantage_step,
    make_critic_update,
    make_logprob_step,
    make_value_step,
)
from ntl_jax.rewards.registry import RewardFnSpec, load_reward_function, reward_spec
from ntl_jax.rewards.workers import LocalRewardRunner, RayRewardRunner, ensure_ray, ray_temp_dir

log = logging.getLogger(__name__)


class PPORuntime:
    """Mesh, models (policy, frozen reference, critic), jitted steps, sampler, rollout and reward runner of a run."""

    def __init__(self, config: ExperimentConfig, tokenizer: Any, *, policy_path: str, total_iterations: int,
                 mesh: Any = None, reward_fn: Any = None):
        self.ppo, self.run, self.ntl = config.ppo, config.trainer, config.ntl
        self.output_dir = config.trainer.output_dir
        self.mesh = mesh if mesh is not None else make_mesh(self.run.mesh_data, self.run.mesh_fsdp,
                                                             self.run.mesh_tensor)
        data_parallel = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if self.ppo.responses_per_iteration % data_parallel:
            raise ValueError(f"train_batch_size*rollout_n={self.ppo.responses_per_iteration} is invalid; allowed: "
                             f"a multiple of the data-parallel device count data*fsdp={data_parallel}")
        if self.run.rollout_mode == "ray" and (jax.default_backend() != "cpu" or jax.process_count() > 1):
            # Ray samplers are CPU processes that get the weights through the host every iteration: on accelerators
            # and pods the colocated sampler shares the trainer's devices and weights at no copy.
            raise ValueError(f"TrainerConfig.rollout_mode='ray' is invalid on {jax.default_backend()} with "
                             f"{jax.process_count()} process(es); allowed there: 'colocated' ('ray' is a "
                             "single-process CPU option)")
        self.num_micro_batches = self.ppo.micro_batches(data_parallel)
        self.log_prob_chunk = self.ppo.log_prob_chunk(data_parallel)
        # The separate old-log-prob pass is redundant when its only reader is the one update (verl's on_policy).
        self.old_log_prob_from_update = (self.ppo.skip_on_policy_old_log_prob
                                         and self.ppo.one_actor_step_per_iteration
                                         and not self.ntl.enabled and not self.ppo.use_kl_in_reward)
        self.models = state_lib.build_models(policy_path, self.ppo, self.mesh, dtype=self.run.dtype,
                                             param_dtype=self.run.param_dtype, remat=self.run.remat,
                                             scan_layers=self.run.scan_layers, attention=self.run.attention,
                                             critic_path=self.run.critic_path,
                                             total_iterations=total_iterations)
        self.digit_ids = (np.asarray(digit_token_ids(tokenizer, logits_dim=self.models.model_config.vocab_size,
                                                     cache=self.ntl.cache_digit_mappings), np.int32)
                          if self.ntl.enabled else None)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_ids = stop_token_ids(tokenizer, self.models.model_config.eos_token_id,
                                      generation_eos_token_ids(policy_path))
        self._build_steps()
        self.compile_ahead = CompileAhead(self.run.compile_ahead)
        self.cache_dtype = resolve_cache_dtype(self.run.kv_cache_dtype, self.mesh.devices.flat[0].platform)
        self.sampler = Sampler(self.models.policy.graphdef, self.models.model_config, eos_token_ids=self.eos_ids,
                               pad_token_id=self.pad_id, digit_ids=self.digit_ids, mesh=self.mesh,
                               cache_dtype=self.cache_dtype,
                               cpu_decode_matmuls=self.run.cpu_decode_matmuls)
        if not isinstance(reward_fn, RewardFnSpec):
            reward_fn = reward_spec(self.run.reward_fn_path, self.run.reward_fn_name, self.run.reward_fn_kwargs,
                                    self.ntl.enabled)
        load_reward_function(reward_fn)  # a missing file or function fails here, in one line, not at first use
        self.reward_spec = reward_fn
        self._rollout: Any = None
        self._reward_runner: Any = None

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

    @property
    def rollout(self) -> ColocatedRollout | RayRollout:
        """The sampler's rollout: in-process, or a pool of Ray samplers started on first use."""
        if self._rollout is None:
            if self.run.rollout_mode == "colocated":
                self._rollout = ColocatedRollout(self.sampler, self.ppo.rollout_max_rows)
            else:
                ensure_ray(temp_dir=ray_temp_dir(self.output_dir))
                kwargs = dict(eos_token_ids=self.eos_ids, pad_token_id=self.pad_id, digit_ids=self.digit_ids,
                              cache_dtype=self.cache_dtype,
                              cpu_decode_matmuls=self.run.cpu_decode_matmuls)
                self._rollout = RayRollout(self.models.model_config, kwargs, self.run.rollout_num_workers)
        return self._rollout

    @property
    def reward_runner(self) -> LocalRewardRunner | RayRewardRunner:
        """The reward function's runner: in-process, or a pool of Ray actors started on first use."""
        if self._reward_runner is None:
            run = self.run
            if run.reward_runner == "local":
                self._reward_runner = LocalRewardRunner(self.reward_spec, timeout_s=run.reward_timeout_s,
                                                        fallback_score=run.reward_fallback_score)
            else:
                ensure_ray(temp_dir=ray_temp_dir(self.output_dir))
                self._reward_runner = RayRewardRunner(self.reward_spec, num_workers=run.reward_num_workers,
                                                      timeout_s=run.reward_timeout_s,
                                                      fallback_score=run.reward_fallback_score)
        return self._reward_runner

    # ----------------------------------------------------------------- services the learner calls
    def sampling_params(self, validation: bool = False) -> SamplingParams:
        ppo = self.ppo
        if validation:
            return SamplingParams(max_new_tokens=ppo.max_response_length, temperature=max(ppo.val_temperature, 1e-6),
                                  greedy=ppo.val_temperature == 0.0, n=1)
        return SamplingParams(max_new_tokens=ppo.max_response_length, temperature=ppo.temperature,
                              top_k=ppo.top_k, top_p=ppo.top_p, n=ppo.rollout_n)

    def device(self, tree: Any) -> Any:
        """Host arrays (the same on every process) with their rows sharded over the data-parallel devices."""
        return jax.tree.map(lambda x: put_global(x, batch_sharding(self.mesh)), tree)

    def forward(self, step: Any, params: Any, arrays: Sequence[jax.Array]) -> Any:
        """A jitted forward over ``log_prob_micro_batch_size`` responses at a time (bounded activation memory)."""
        size, total = self.log_prob_chunk, arrays[0].shape[0]
        if not size or size >= total:
            return step(params, *arrays)
        parts = [step(params, *(x[start:start + size] for x in arrays)) for start in range(0, total, size)]
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *parts)

    def compile_updates_ahead(self, prompt_token_ids: list[list[int]], *, with_actor: bool) -> None:
        """Start compiling the critic / actor updates for this batch's shapes beside the rollout (`compile_ahead`);
        a no-op once these shapes have been seen."""
        ppo, models = self.ppo, self.models
        if ppo.response_bucket:  # the updates' response width is known only after the rollout
            return
        rows, prompt_len = ppo.ppo_mini_batch_size * ppo.rollout_n, self.sampler.prompt_width(prompt_token_ids)
        with_critic = models.critic is not None
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

    def close(self) -> None:
        """Stop the compile thread and the worker pools that were started."""
        self.compile_ahead.close()
        for pool in (self._rollout, self._reward_runner):
            if pool is not None:
                pool.close()
        self._rollout = self._reward_runner = None


__all__ = ["PPORuntime"]
