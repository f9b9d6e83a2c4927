#!/usr/bin/env python
"""Time one GRPO actor update alone, with and without the shared-prompt forward, at the trl_grpo benchmark's shape.

The `trl_grpo` benchmark's model (width 128, 4 layers, 4 / 2 heads, MLP 512, the 83-token character vocabulary),
random weights; 32 prompts of 8 slots (2 of them left padding) x 8 responses of 8 tokens, one micro-batch, on-policy
(`ActorLossSettings.on_policy`, as the benchmark runs it), no NTL. For each requested group size (1 = every row runs
its own prompt; 8 = each prompt once for its 8 responses) the update is compiled once (`compile_s`, tracing
included) and then timed over `--reps` calls, each waiting for its metrics; the sizes alternate in the order given,
so `--groups 8,1,8,1` interleaves them. Prints one JSON line per measurement.

    python benchmarks/probes/time_shared_prompt_update.py --groups 8,1,8,1
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM
from ntl_jax.ppo.config import PPOConfig
from ntl_jax.ppo.state import ModuleState
from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ppo.steps import ActorLossSettings, RolloutBatch, make_actor_update

PROMPTS, SAMPLES, PROMPT_SLOTS, RESPONSE_TOKENS = 32, 8, 8, 8


def grouped_batch(vocab: int) -> RolloutBatch:
    """PROMPTS prompts, each in SAMPLES consecutive rows (the sampler's order), random responses and advantages."""
    rng = np.random.default_rng(0)
    rows = PROMPTS * SAMPLES
    prompt_mask = np.ones((rows, PROMPT_SLOTS), np.int32)
    prompt_mask[:, :2] = 0
    prompt_ids = np.repeat(rng.integers(3, vocab, (PROMPTS, PROMPT_SLOTS)), SAMPLES, axis=0).astype(np.int32)
    zeros = jnp.zeros((rows, RESPONSE_TOKENS), jnp.float32)
    return RolloutBatch(
        prompt_ids=jnp.asarray(prompt_ids * prompt_mask), prompt_mask=jnp.asarray(prompt_mask),
        response_ids=jnp.asarray(rng.integers(3, vocab, (rows, RESPONSE_TOKENS)), jnp.int32),
        response_mask=jnp.ones((rows, RESPONSE_TOKENS), jnp.float32), old_logprobs=zeros, ref_logprobs=zeros,
        old_values=zeros, advantages=jnp.asarray(rng.normal(size=(rows, RESPONSE_TOKENS)), jnp.float32),
        returns=zeros, ntl=DigitTargets.empty((rows, RESPONSE_TOKENS)))


def time_update(group_size: int, reps: int) -> dict:
    config = ModelConfig(vocab_size=83, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2)
    mesh = make_mesh(devices=jax.devices()[:1])
    tx = optax.adamw(1e-6)
    state = ModuleState.from_module(CausalLM(config, rngs=nnx.Rngs(0)), mesh, tx)
    ppo = PPOConfig(train_batch_size=PROMPTS, rollout_n=SAMPLES, ppo_mini_batch_size=PROMPTS,
                    ppo_micro_batch_size=PROMPTS * SAMPLES)
    settings = ActorLossSettings.from_config(ppo, None, on_policy=True, group_size=group_size)
    update = make_actor_update(state.graphdef, tx, settings, digit_ids=None, num_micro_batches=1, mesh=mesh,
                               param_shardings=state.shardings, opt_shardings=state.opt_shardings)
    batch, params, opt_state = grouped_batch(config.vocab_size), state.params, state.opt_state
    start = time.perf_counter()
    params, opt_state, metrics = update(params, opt_state, batch, jnp.float32(0.0))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        params, opt_state, metrics = update(params, opt_state, batch, jnp.float32(0.0))
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"group_size": group_size, "compile_s": round(compile_s, 2),
            "update_ms_median": round(float(np.median(times)) * 1e3, 1), "reps": reps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="8,1,8,1", help="comma-separated group sizes, timed in this order")
    parser.add_argument("--reps", type=int, default=15, help="timed updates per measurement")
    args = parser.parse_args()
    for group_size in (int(g) for g in args.groups.split(",")):
        print(json.dumps(time_update(group_size, args.reps)), flush=True)


if __name__ == "__main__":
    main()
