"""Rollout generation: a colocated in-process sampler, or Ray actors that hold their own sampler.

Both paths call the same jitted :class:`~ntl_jax.models.sampler.Sampler` with the same per-prompt PRNG keys
(``fold_in(rng, prompt_index)``), so for one seed they return identical samples. Use the colocated path when the
trainer and the sampler share devices (no weight copy); use Ray workers when sampling runs on other hosts or
processes (weights are pushed to every worker once per iteration).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import jax
import numpy as np
from flax import nnx

from ntl_jax.models.config import ModelConfig
from ntl_jax.models.sampler import GenerationOutput, Sampler, SamplingParams

log = logging.getLogger(__name__)


class Rollout(Protocol):
    def generate(self, state: Any, prompts: Sequence[Sequence[int]], params: SamplingParams, rng: jax.Array, *,
                 prompt_indices: Sequence[int], return_digit_logits: bool = False) -> GenerationOutput: ...

    def close(self) -> None: ...


def prompts_per_chunk(num_prompts: int, n: int, max_rows: int) -> int:
    """Prompts per sampler call so that a call holds at most ``max_rows`` responses (``n`` per prompt; at least one
    prompt); ``max_rows = 0`` means all at once."""
    if max_rows < 0:
        raise ValueError(f"rollout_max_rows={max_rows} is invalid; allowed: 0 (no limit) or a positive integer")
    return num_prompts if max_rows == 0 else max(1, min(num_prompts, max_rows // n))


class ColocatedRollout:
    """Samples with the trainer's own (already placed) policy state: no copy.

    With ``max_rows`` the prompts go to the sampler in chunks of at most ``max_rows`` responses, which bounds the KV
    cache (rows x (prompt + response) positions); each row keeps its own key (``fold_in(rng, prompt_index)``), so
    the samples are those of one call."""

    def __init__(self, sampler: Sampler, max_rows: int = 0):
        prompts_per_chunk(1, 1, max_rows)  # validates
        self.sampler, self.max_rows = sampler, max_rows

    def generate(self, state, prompts, params, rng, *, prompt_indices, return_digit_logits=False):
        prompts, prompt_indices = [list(p) for p in prompts], list(prompt_indices)
        size = prompts_per_chunk(len(prompts), params.n, self.max_rows)
        parts = [self.sampler.generate(state, prompts[i:i + size], params, rng, return_digit_logits=return_digit_logits,
                                       prompt_indices=prompt_indices[i:i + size])
                 for i in range(0, len(prompts), size)]
        return parts[0] if len(parts) == 1 else _concat_outputs(parts, pad_id=self.sampler.pad_token_id)

    def close(self) -> None:
        pass


def _concat_outputs(parts: list[GenerationOutput], pad_id: int) -> GenerationOutput:
    """Stack worker outputs back into one batch, padding prompt columns on the left to the widest bucket."""
    width = max(p.prompt_ids.shape[1] for p in parts)

    def pad_left(x: np.ndarray, value: int) -> np.ndarray:
        return np.pad(x, ((0, 0), (width - x.shape[1], 0)), constant_values=value)

    fields: dict[str, Any] = {
        "prompt_ids": np.concatenate([pad_left(p.prompt_ids, pad_id) for p in parts]),
        "prompt_mask": np.concatenate([pad_left(p.prompt_mask, 0) for p in parts]),
    }
    for name in ("response_ids", "response_mask"):
        fields[name] = np.concatenate([getattr(p, name) for p in parts])
    for name in ("response_logprobs", "digit_logits"):  # optional outputs
        fields[name] = None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])
    extra = {k: getattr(parts[0], k) for k in GenerationOutput._fields if k not in fields}
    return GenerationOutput(**fields, **extra)


class _RolloutWorker:
    """Body of the Ray actor: rebuilds the policy graph from its config, keeps its own jitted sampler."""

    def __init__(self, model_config: ModelConfig, sampler_kwargs: dict):
        from ntl_jax.models.decoder import CausalLM  # imported in the worker process

        model = CausalLM(model_config, rngs=nnx.Rngs(0))
        self.graphdef, self.state = nnx.split(model)
        self.sampler = Sampler(self.graphdef, model_config, **sampler_kwargs)

    def set_weights(self, pure_weights: dict) -> bool:
        nnx.replace_by_pure_dict(self.state, jax.tree.map(jax.numpy.asarray, pure_weights))
        return True

    def generate(self, prompts, params, rng_data, prompt_indices, return_digit_logits):
        rng = jax.random.wrap_key_data(np.asarray(rng_data))
        out = self.sampler.generate(self.state, prompts, params, rng, return_digit_logits=return_digit_logits,
                                    prompt_indices=prompt_indices)
        return GenerationOutput(*[None if x is None else np.asarray(x) for x in out])


def host_weights(state: Any) -> dict:
    """nnx State -> nested dict of numpy arrays: what crosses the process boundary to a Ray worker."""
    return jax.tree.map(np.asarray, jax.device_get(nnx.to_pure_dict(state)))


class RayRollout:
    """Splits each batch of prompts over ``num_workers`` Ray actors; pushes the policy weights every call.

    A worker that dies is restarted and its share of prompts is generated again (per-prompt keys make the
    redo identical to what the dead worker would have returned).
    """

    def __init__(self, model_config: ModelConfig, sampler_kwargs: dict, num_workers: int,
                 num_cpus_per_worker: float = 1.0):
        import ray

        self._ray = ray
        self._actor_cls = ray.remote(num_cpus=num_cpus_per_worker, max_restarts=0)(_RolloutWorker)
        self._args = (model_config, sampler_kwargs)
        self.workers = [self._actor_cls.remote(*self._args) for _ in range(num_workers)]
        self.restarts = 0

    def _restart(self, index: int) -> None:
        self._ray.kill(self.workers[index], no_restart=True)
        self.workers[index] = self._actor_cls.remote(*self._args)
        self.restarts += 1

    def generate(self, state, prompts, params, rng, *, prompt_indices, return_digit_logits=False):
        ray = self._ray
        weights_ref = ray.put(host_weights(state))
        rng_data = np.asarray(jax.random.key_data(rng))
        shards = np.array_split(np.arange(len(prompts)), len(self.workers))
        results: dict[int, GenerationOutput] = {}
        for attempt in range(3):
            pending = {}
            for w, idx in enumerate(shards):
                if w in results or len(idx) == 0:
                    continue
                worker = self.workers[w]
                worker.set_weights.remote(weights_ref)
                pending[w] = worker.generate.remote([list(prompts[i]) for i in idx], params, rng_data,
                                                    [int(prompt_indices[i]) for i in idx], return_digit_logits)
            for w, ref in pending.items():
                try:
                    results[w] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    log.warning("rollout worker %d died (%s); restarting it and regenerating its %d prompts",
                                w, type(err).__name__, len(shards[w]))
                    self._restart(w)
            if all(w in results or len(idx) == 0 for w, idx in enumerate(shards)):
                break
        else:
            raise RuntimeError("rollout workers kept dying; giving up after 3 attempts")
        return _concat_outputs([results[w] for w, idx in enumerate(shards) if len(idx)],
                               pad_id=int(self._args[1]["pad_token_id"]))

    def close(self) -> None:
        for worker in self.workers:
            self._ray.kill(worker, no_restart=True)
        self.workers = []
