"""Benchmark 2 (rollout): ntl-jax `Sampler.generate` vs transformers PyTorch `generate` on the same weights.

Both sides load one random Qwen2 checkpoint written by ntl-jax `save_pretrained`: ntl-jax with `from_pretrained`,
PyTorch with `AutoModelForCausalLM.from_pretrained`. Same 32 left-padded prompts (8..16 tokens), greedy, 64 new
tokens. The EOS token's LM-head column is zeroed so its logit is exactly 0 and greedy decoding never picks it: both
sides generate all new tokens (checked). Throughput = generated tokens / median generate time; the first ntl-jax call
(tracing + XLA compilation) is excluded from the median and reported as `compile_s`. ntl-jax runs its default
`cpu_decode_matmuls='auto'` (YNNPACK on AVX-512 CPUs, else Eigen); full mode also reports the dot path 'auto' did
not pick and a bfloat16 KV cache beside it. Neither side computes per-token log-probs while generating (ntl-jax's
default, `return_logprobs=False`, as its trainer generates; transformers' default without `output_scores`).

A third, GRPO-shaped case (`GROUP`: MID, 8 prompts of 48..64 tokens x 8 samples each, 32 new tokens) measures what
a GRPO rollout pays: ntl-jax `generate` with `SamplingParams(n=8)` against transformers `generate` on the prompts
repeated 8 times (what `num_return_sequences=8` does inside `generate`; greedy, so both sides decode the same
tokens), held to its model's target.

Machine limit: the same ntl-jax worker then times the decode loop's weight matmuls alone at the same shape
(`machine_limit.decode_matmul_floor`: M = 32 rows, 64 steps, one compiled loop, the faster XLA:CPU dot path); the
row reports ntl-jax's tokens/s as a fraction of it. The GRPO-shaped case adds one prefill of each distinct prompt
(2 N FLOPs per prompt token) at the in-process 2048^3 matmul rate.

PyTorch runs every thread setting (`common.TORCH_THREAD_SETTINGS`) x cache mode (`CACHE_MODES`) in its own
process; the fastest one is the baseline (all are reported). Quick mode runs 1 thread with the dynamic cache only;
smoke mode runs `common.MICRO` with 4 prompts and 8 new tokens.
"""
from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any

import numpy as np

from benchmarks.common import (JAX_THREADS_NOTE, MICRO, MID, TINY, TORCH_THREAD_SETTINGS, ModelSpec, Result,
                               check_scale, jax_device_note, median, param_count, run_worker, save_random_checkpoint,
                               spread, timed_call, torch_thread_note, torch_thread_settings, worker_main)
from benchmarks.machine_limit import decode_matmul_floor, matmul_gflops

BATCH = 32
NEW_TOKENS = 64
PAD_ID, EOS_ID = 0, 1
TARGETS = {"tiny": 3.0, "mid": 1.5, "micro": 3.0}  # issue 14, against transformers at its best (micro: smoke only)
SMOKE_BATCH, SMOKE_NEW_TOKENS = 4, 8
# The GRPO-shaped case: prompts, samples per prompt, prompt lengths (min, max), new tokens; smoke: a toy version.
GROUP = {"prompts": 8, "samples": 8, "prompt_tokens": (48, 64), "new_tokens": 32}
SMOKE_GROUP = {"prompts": 2, "samples": 2, "prompt_tokens": (8, 16), "new_tokens": 4}
CACHE_MODES = ("dynamic", "static")


def make_prompts(vocab: int, seed: int = 0, batch: int = BATCH, lengths: tuple[int, int] = (8, 16)
                 ) -> list[list[int]]:
    """`batch` prompts of `lengths` = (shortest, longest) random ids (never pad / EOS); the first has the longest
    length, so both sides pad to it."""
    rng = np.random.default_rng(seed)
    shortest, longest = lengths
    lengths = rng.integers(shortest, longest + 1, batch)
    lengths[0] = longest
    return [rng.integers(2, vocab, n).tolist() for n in lengths]


def _left_pad(prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), PAD_ID, np.int64)
    mask = np.zeros((len(prompts), width), np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = p
        mask[i, width - len(p):] = 1
    return ids, mask


def _check_full_length(response: np.ndarray, new_tokens: int) -> None:
    if response.shape[1] != new_tokens or np.any(response == EOS_ID):
        raise RuntimeError(f"generation stopped early or emitted EOS (shape {response.shape}); the benchmark needs "
                           f"{new_tokens} tokens per row on both sides")


# ----------------------------------------------------------------------------------------------- workers
def jax_generate(args: dict[str, Any]) -> dict[str, Any]:
    import jax
    from flax import nnx

    from ntl_jax.models.hf_io import from_pretrained
    from ntl_jax.models.sampler import Sampler, SamplingParams

    model = from_pretrained(args["path"])
    graphdef, state = nnx.split(model)
    sampler = Sampler(graphdef, model.config, eos_token_ids=[EOS_ID], pad_token_id=PAD_ID,
                      cache_dtype=args.get("cache_dtype", "float32"),
                      cpu_decode_matmuls=args.get("cpu_decode_matmuls", "auto"))
    new_tokens = args.get("new_tokens", NEW_TOKENS)
    samples = args.get("samples", 1)
    params = SamplingParams(max_new_tokens=new_tokens, greedy=True, n=samples)
    prompts = args["prompts"]

    def generate():
        return sampler.generate(state, prompts, params, jax.random.key(0))

    first_s, out = timed_call(generate)
    times = [timed_call(generate)[0] for _ in range(args["reps"])]
    _check_full_length(out.response_ids, new_tokens)
    if sampler.last_num_steps != new_tokens or not out.response_mask.all():
        raise RuntimeError(f"ntl-jax ran {sampler.last_num_steps} decode steps; expected {new_tokens}")
    floor = None
    if args.get("machine_limit"):
        floor = decode_matmul_floor(model.config, len(prompts) * samples, new_tokens,
                                    reps=max(1, min(args["reps"], 5)))
        if samples > 1:  # the GRPO-shaped case also prefills its distinct prompts
            floor["matmul_gflops"] = matmul_gflops(2048)
    return {"times": times, "first_call_s": first_s, "compile_s": first_s - median(times),
            "device": jax_device_note(), "first_row": out.response_ids[0, :8].tolist(), "decode_matmul_floor": floor}


def machine_limit_text(tokens_per_s: float, floor: dict[str, Any] | None, tokens: int = 0,
                       prefill_flops: float = 0.0) -> str:
    """'<limit> tok/s decode matmuls alone; ntl-jax at <fraction>' (see `machine_limit.decode_matmul_floor`); with
    `prefill_flops`, the limit adds their time at the floor's `matmul_gflops` to the `tokens` decode tokens' time."""
    if not floor:
        return ""
    if not prefill_flops:
        limit, what = floor["tokens_per_s"], "decode matmuls alone"
    else:
        limit = tokens / (tokens / floor["tokens_per_s"] + prefill_flops / (floor["matmul_gflops"] * 1e9))
        what = f"decode matmuls + one prefill per prompt ({prefill_flops / 1e9:.0f} GFLOP) at matmul rate"
    return f"{limit:,.0f} tok/s {what}; ntl-jax at {tokens_per_s / limit:.0%}"


def torch_generate(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args["threads"])
    device = args.get("device", "cpu")
    model = AutoModelForCausalLM.from_pretrained(args["path"], dtype=torch.float32).to(device).eval()
    # n samples per prompt: each prompt repeated n times, as `num_return_sequences=n` expands the batch in `generate`
    ids, mask = _left_pad([p for p in args["prompts"] for _ in range(args.get("samples", 1))])
    ids, mask = torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
    new_tokens = args.get("new_tokens", NEW_TOKENS)
    kwargs = dict(attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, eos_token_id=EOS_ID,
                  pad_token_id=PAD_ID)
    if args["cache"] == "static":
        kwargs["cache_implementation"] = "static"

    def generate():
        with torch.inference_mode():
            out = model.generate(ids, **kwargs)
        if device != "cpu":
            torch.cuda.synchronize()
        return out

    first_s, out = timed_call(generate)
    times = [timed_call(generate)[0] for _ in range(args["reps"])]
    _check_full_length(out[:, ids.shape[1]:].cpu().numpy(), new_tokens)
    return {"times": times, "first_call_s": first_s, "threads": torch.get_num_threads(),
            "first_row": out[0, ids.shape[1]:ids.shape[1] + 8].tolist()}


# ----------------------------------------------------------------------------------------------- driver
def _case(spec: ModelSpec, workdir: str, scale: str, group: dict[str, Any] | None = None) -> Result:
    """One row: `spec` at the standard shape, or with `group` (a `GROUP`-like dict) the GRPO-shaped one."""
    full, smoke = scale == "full", scale == "smoke"
    if group is not None:
        batch, samples, new_tokens, lengths = group["prompts"], group["samples"], group["new_tokens"], \
            group["prompt_tokens"]
    else:
        batch, samples, lengths = (SMOKE_BATCH if smoke else BATCH), 1, (8, 16)
        new_tokens = SMOKE_NEW_TOKENS if smoke else NEW_TOKENS
    folder = spec.name if group is None else f"{spec.name}_grouped"
    path = save_random_checkpoint(spec, os.path.join(workdir, folder), eos_id=EOS_ID, pad_id=PAD_ID,
                                  silence_token=EOS_ID)
    prompts = make_prompts(spec.vocab, batch=batch, lengths=lengths)
    tokens = batch * samples * new_tokens
    shape = {"path": path, "prompts": prompts, "new_tokens": new_tokens, "samples": samples}
    ours = run_worker("rollout", "jax_generate", {**shape, "reps": 7 if full else (1 if smoke else 3),
                                                  "machine_limit": True})
    ours_tps = tokens / median(ours["times"])
    variants = {}
    if full and group is None:  # TrainerConfig.kv_cache_dtype='bfloat16', reported beside the float32 figure
        half = run_worker("rollout", "jax_generate", {**shape, "reps": 5, "cache_dtype": "bfloat16"})
        variants["bfloat16_kv_cache_tokens_per_s"] = tokens / median(half["times"])
        # TrainerConfig.cpu_decode_matmuls: the dot path 'auto' (the ratio's setting) did not pick on this CPU.
        from ntl_jax.cpu.decode_matmuls import resolve_decode_matmuls

        other = "eigen" if resolve_decode_matmuls("auto") == "xla_default" else "xla_default"
        run = run_worker("rollout", "jax_generate", {**shape, "reps": 5, "cpu_decode_matmuls": other})
        variants["auto_picked"] = resolve_decode_matmuls("auto")
        variants[f"{other}_decode_tokens_per_s"] = tokens / median(run["times"])
    baselines = {}
    for setting, cache in itertools.product(torch_thread_settings(scale), CACHE_MODES if full else CACHE_MODES[:1]):
        reps = (3 if spec is MID else 5) if full else (1 if smoke else 2)
        threads, env = TORCH_THREAD_SETTINGS[setting]
        run = run_worker("rollout", "torch_generate", {**shape, "reps": reps, "threads": threads, "cache": cache},
                         env=env)
        baselines[f"{setting}-{cache}"] = {"tokens_per_s": tokens / median(run["times"]),
                                             "times_s": spread(run["times"]), "first_call_s": run["first_call_s"]}
    best = max(baselines, key=lambda k: baselines[k]["tokens_per_s"])
    base_tps = baselines[best]["tokens_per_s"]
    setting = best.rsplit("-", 1)[0]
    counts = param_count(spec)
    prefill_flops = 0.0 if group is None else 2.0 * (counts["body"] * sum(map(len, prompts)) +
                                                     counts["lm_head"] * batch)
    case = f"{spec.name} ({spec.hidden}w/{spec.layers}L)"
    if group is not None:
        case += f", GRPO-shaped: {batch} prompts x {samples} samples"
    return Result(
        benchmark="rollout", case=case,
        ours=f"{ours_tps:,.0f} tok/s", baseline=f"{base_tps:,.0f} tok/s ({best})",
        ratio=ours_tps / base_tps, ratio_desc="tokens/s ntl-jax / transformers generate", target_op=">=",
        target=TARGETS[spec.name],
        machine_limit=machine_limit_text(ours_tps, ours["decode_matmul_floor"], tokens, prefill_flops),
        details={"model": spec.describe(), "batch": batch, "samples_per_prompt": samples, "new_tokens": new_tokens,
                 "prompt_tokens": lengths, "greedy": True, "decode_matmul_floor": ours["decode_matmul_floor"],
                 "prefill_flops": prefill_flops,
                 "ntl_jax": {"tokens_per_s": ours_tps, "times_s": spread(ours["times"]),
                             "compile_s": ours["compile_s"], "device": ours["device"], "threads": JAX_THREADS_NOTE,
                             **variants},
                 "torch": baselines, "torch_best": best, "torch_threads": torch_thread_note(setting),
                 "same_first_tokens": ours["first_row"] == run["first_row"]})


def run(scale: str) -> list[Result]:
    smoke = check_scale(scale) == "smoke"
    specs = (MICRO,) if smoke else (TINY, MID)
    with tempfile.TemporaryDirectory(prefix="bench_rollout_") as workdir:
        rows = [_case(spec, workdir, scale) for spec in specs]
        return rows + [_case(specs[-1], workdir, scale, SMOKE_GROUP if smoke else GROUP)]


if __name__ == "__main__":
    worker_main({"jax_generate": jax_generate, "torch_generate": torch_generate})
