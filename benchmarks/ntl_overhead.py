"""Benchmark 1 (ntl_overhead): one jitted PPO actor update (`make_actor_update`) in NTL mode vs standard mode.

Same model, batch, lengths, optimiser and loss settings; the only difference is `ActorLossSettings.ntl_method`
('wasserstein' vs None): NTL mode also gathers the digit logit slice inside the chunked log-prob pass and adds
`ntl_weight * NTL`. Both programs are compiled first (compile time reported), then repetitions alternate
(std, ntl), (ntl, std), ... in one process; ratio = median(NTL) / median(standard).

Cases: `embedded` is the embedded default's actor mini-batch (tiny char-level decoder, 128 responses, prompt 16,
response 48); `qwen_vocab` uses Qwen2.5's 151,936-token vocabulary, where the LM head dominates. Smoke scale runs
the toy `smoke` case only.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from benchmarks.common import (JAX_THREADS_NOTE, ModelSpec, Result, check_scale, jax_device_note, median, run_worker,
                               spread, timed_call, worker_main)

TARGET = 1.02
CASES: dict[str, dict[str, Any]] = {
    # EmbeddedTaskConfig's decoder with the character tokenizer (83 tokens); base.gin's mini-batch of 16 x 8.
    "embedded": {"spec": ModelSpec("embedded", 64, 2, 4, 2, 256, 83, tie=True), "batch": 128, "prompt": 16,
                 "response": 48, "digit_ids": list(range(4, 14))},
    "qwen_vocab": {"spec": ModelSpec("qwen_vocab", 128, 2, 4, 2, 512, 151936, tie=True), "batch": 4, "prompt": 16,
                   "response": 64, "digit_ids": list(range(15, 25))},
    # Qwen2.5-0.5B's shape with 4 of its 24 layers; GPU runs only (`benchmarks.gpu_suite`).
    "qwen05b_shape": {"spec": ModelSpec("qwen05b_shape", 896, 4, 14, 2, 4864, 151936, tie=True), "batch": 16,
                      "prompt": 64, "response": 256, "digit_ids": list(range(15, 25))},
    # Smoke scale (tests/test_benchmarks.py): a toy shape, seconds.
    "smoke": {"spec": ModelSpec("smoke", 32, 1, 2, 1, 64, 83, tie=True), "batch": 8, "prompt": 8, "response": 16,
              "digit_ids": list(range(4, 14))},
}
# scale -> {CPU case: repetitions}
REPS = {"full": {"embedded": 40, "qwen_vocab": 16}, "quick": {"embedded": 10, "qwen_vocab": 6}, "smoke": {"smoke": 2}}


def _rollout_batch(case: dict[str, Any], seed: int = 0):
    """Random responses of random lengths; ~40% of response tokens carry a digit target (weight 1)."""
    import jax.numpy as jnp

    from ntl_jax.ntl.info import DigitTargets
    from ntl_jax.ppo.steps import RolloutBatch

    rng = np.random.default_rng(seed)
    n, p, t, vocab = case["batch"], case["prompt"], case["response"], case["spec"].vocab
    prompt_len = rng.integers(p // 2, p + 1, n)
    prompt_mask = (np.arange(p)[None, :] >= p - prompt_len[:, None]).astype(np.int32)
    response_len = rng.integers(t // 2, t + 1, n)
    response_mask = (np.arange(t)[None, :] < response_len[:, None]).astype(np.float32)
    is_digit = (rng.random((n, t)) < 0.4) & (response_mask > 0)
    digit_ids = np.asarray(case["digit_ids"])
    digit_values = rng.integers(0, 10, (n, t))
    response_ids = np.where(is_digit, digit_ids[digit_values], rng.integers(0, vocab, (n, t)))
    logprobs = -rng.random((n, t)).astype(np.float32) * 3
    arrays = dict(
        prompt_ids=rng.integers(0, vocab, (n, p)) * prompt_mask, prompt_mask=prompt_mask,
        response_ids=response_ids * response_mask.astype(np.int64), response_mask=response_mask,
        old_logprobs=logprobs, ref_logprobs=logprobs, old_values=np.zeros((n, t), np.float32),
        advantages=rng.standard_normal((n, t)).astype(np.float32) * response_mask,
        returns=np.zeros((n, t), np.float32))
    dtypes = {"prompt_ids": jnp.int32, "prompt_mask": jnp.int32, "response_ids": jnp.int32}
    return RolloutBatch(**{k: jnp.asarray(v, dtypes.get(k, jnp.float32)) for k, v in arrays.items()},
                        ntl=DigitTargets.from_arrays(np.where(is_digit, digit_values, -1), is_digit))


def actor_updates(args: dict[str, Any]) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    from benchmarks.common import random_model
    from ntl_jax.distributed.mesh import make_mesh
    from ntl_jax.ppo.config import PPOConfig
    from ntl_jax.ppo.state import ModuleState
    from ntl_jax.ppo.steps import ActorLossSettings, make_actor_update, make_optimizer

    case = CASES[args["case"]]
    mesh = make_mesh(devices=jax.devices()[:1])
    ppo = PPOConfig(use_kl_loss=True, entropy_coeff=0.001)  # every loss term on, as in base.gin (+ entropy)
    tx = make_optimizer(1e-5, weight_decay=0.01, grad_clip=1.0)
    policy = ModuleState.from_module(random_model(case["spec"]), mesh, tx)
    batch = _rollout_batch(case)
    digit_ids = jnp.asarray(case["digit_ids"], jnp.int32)
    modes = {"standard": None, "ntl": "wasserstein"}
    updates, states, compile_s = {}, {}, {}
    for mode, method in modes.items():
        updates[mode] = make_actor_update(policy.graphdef, tx, ActorLossSettings.from_config(ppo, method),
                                          digit_ids=digit_ids, num_micro_batches=1, mesh=mesh,
                                          param_shardings=policy.shardings, opt_shardings=policy.opt_shardings)
        states[mode] = (jax.tree.map(jnp.copy, policy.params), jax.tree.map(jnp.copy, policy.opt_state))
    weights = {"standard": jnp.float32(0.0), "ntl": jnp.float32(0.3)}

    def step(mode: str) -> float:
        def call():
            params, opt_state, metrics = updates[mode](*states[mode], batch, weights[mode])
            jax.block_until_ready(metrics)
            states[mode] = (params, opt_state)
            return metrics
        seconds, metrics = timed_call(call)
        if metrics["actor/update_skipped"] != 0:
            raise RuntimeError(f"{mode} update was skipped (non-finite loss)")
        return seconds

    for mode in modes:
        compile_s[mode] = step(mode)
    for _ in range(args["warmup"]):
        step("standard"), step("ntl")
    times: dict[str, list[float]] = {"standard": [], "ntl": []}
    for rep in range(args["reps"]):
        order = ("standard", "ntl") if rep % 2 == 0 else ("ntl", "standard")
        for mode in order:
            times[mode].append(step(mode))
    pair_ratios = [n / s for n, s in zip(times["ntl"], times["standard"])]
    return {"times": times, "first_call_s": compile_s, "pair_ratio_median": median(pair_ratios),
            "device": jax_device_note()}


def result_row(name: str, out: dict[str, Any]) -> Result:
    case = CASES[name]
    std, ntl = median(out["times"]["standard"]), median(out["times"]["ntl"])
    spec = case["spec"]
    return Result(
        benchmark="ntl_overhead", case=name, ours=f"NTL {ntl * 1e3:.1f} ms", baseline=f"standard {std * 1e3:.1f} ms",
        ratio=ntl / std, ratio_desc="median actor-update time NTL / standard", target_op="<=", target=TARGET,
        details={"model": spec.describe(), "responses": case["batch"], "prompt_len": case["prompt"],
                 "response_len": case["response"], "ntl_method": "wasserstein",
                 "standard_s": spread(out["times"]["standard"]), "ntl_s": spread(out["times"]["ntl"]),
                 "median_of_pair_ratios": out["pair_ratio_median"],
                 "first_call_s (compile)": out["first_call_s"], "device": out["device"],
                 "threads": JAX_THREADS_NOTE if out["device"].startswith("cpu") else "n/a (accelerator)"})


def run(scale: str) -> list[Result]:
    warmup = 0 if check_scale(scale) == "smoke" else 2
    return [result_row(name, run_worker("ntl_overhead", "actor_updates", {"case": name, "reps": reps,
                                                                          "warmup": warmup}))
            for name, reps in REPS[scale].items()]


if __name__ == "__main__":
    worker_main({"actor_updates": actor_updates})
