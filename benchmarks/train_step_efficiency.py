"""Benchmark 5 (train_step_efficiency): jitted train step vs PyTorch, and achieved FLOP/s vs a large matmul.

One training step = forward, backward and AdamW (lr 1e-4, weight decay 0.01, no clipping) of the mid-size random
Qwen2 decoder (`common.MID`: width 512, 8 layers) on batch 8 x sequence 256, next-token cross-entropy (token mean).

- ntl-jax: `CausalLM` + `token_logprobs` (the product's chunked, rematerialised log-prob path at the default
  chunk, `logprob_memory.DEFAULT_CHUNK` = `PPOConfig.logprob_chunk_size`) inside
  one `jax.jit` with params and optimiser state donated; variant `full_logits` uses `token_logprobs_naive`.
- PyTorch: transformers `Qwen2ForCausalLM` loaded from the same checkpoint, `model(ids, labels=ids).loss`,
  `backward()`, `torch.optim.AdamW.step()`; every `common.TORCH_THREAD_SETTINGS` setting in full mode (each its own
  process), the fastest is the baseline.

Model FLOPs per step (rematerialisation not counted):
    6 * N_matmul * B * T  +  12 * L * B * T^2 * (H * Dh)
N_matmul = every weight multiplying activations (attention, MLP, LM head; not the embedding lookup); the second
term is QK^T and PV over the full T x T score matrix (3x the forward for forward + backward).
Peak reference: a 2048^3 float32 matmul in the same framework and process, timed interleaved with the steps.
Smoke scale: `common.MICRO`, batch 2 x 32, a 256^3 matmul, one repetition.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from benchmarks.common import (JAX_THREADS_NOTE, MICRO, MID, TORCH_THREAD_SETTINGS, ModelSpec, Result, check_scale,
                               jax_device_note, median, param_count, run_worker, save_random_checkpoint, spread,
                               timed_call, torch_thread_note, torch_thread_settings, worker_main)
from benchmarks.logprob_memory import DEFAULT_CHUNK
from benchmarks.machine_limit import square_matmul

BATCH, SEQ = 8, 256
MATMUL_N = 2048
# scale -> model, batch, sequence, reference matmul size, repetitions
_FULL = {"spec": MID, "batch": BATCH, "seq": SEQ, "matmul_n": MATMUL_N, "reps": 8}
SIZES: dict[str, dict[str, Any]] = {
    "full": _FULL, "quick": {**_FULL, "reps": 3},
    "smoke": {"spec": MICRO, "batch": 2, "seq": 32, "matmul_n": 256, "reps": 1},
}
LR, WEIGHT_DECAY = 1e-4, 0.01
TARGET_SPEED, TARGET_EFFICIENCY = 1.0, 0.9  # issue 14: PyTorch at its best setting; 90% of the matmul rate


def step_flops(spec: ModelSpec = MID, batch: int = BATCH, seq: int = SEQ) -> float:
    n_matmul = param_count(spec)["matmul"]
    attention = 12 * spec.layers * batch * seq**2 * spec.hidden
    return 6.0 * n_matmul * batch * seq + attention


def _tokens(vocab: int, batch: int, seq: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, (batch, seq)).astype(np.int32)


def make_jax_step(model: Any, variant: str = "chunked", batch: int = BATCH, seq: int = SEQ) -> tuple[Any, Any]:
    """The benchmark's ntl-jax step for ``model``: (jitted ``step(params, opt_state) -> (params, opt_state, loss)``
    with both donated, ``(params, opt_state)``). Next-token cross-entropy on fixed random tokens, AdamW."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ntl_jax.models.logprobs import token_logprobs, token_logprobs_naive

    graphdef, params = nnx.split(model, nnx.Param)
    logprob_fn = token_logprobs if variant == "chunked" else token_logprobs_naive
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
    ids = jnp.asarray(_tokens(model.config.vocab_size, batch, seq))
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    mask = jnp.ones_like(ids)

    def loss_fn(p):
        m = nnx.merge(graphdef, p)
        hidden, _ = m(ids, positions, mask)
        out = logprob_fn(hidden[:, :-1], m.lm_head_kernel(), ids[:, 1:], chunk_size=DEFAULT_CHUNK,
                         compute_entropy=False)
        return -jnp.mean(out.logprobs)

    def train_step(p, s):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    return jax.jit(train_step, donate_argnums=(0, 1)), (params, tx.init(params))


def jax_train_step(args: dict[str, Any]) -> dict[str, Any]:
    import jax

    from ntl_jax.models.hf_io import from_pretrained

    step, (params, opt_state) = make_jax_step(from_pretrained(args["path"]), args["variant"],
                                              args.get("batch", BATCH), args.get("seq", SEQ))
    n = args.get("matmul_n", MATMUL_N)
    matmul = square_matmul(n)
    state = {"p": params, "s": opt_state}

    def run_step():
        state["p"], state["s"], loss = step(state["p"], state["s"])
        return jax.block_until_ready(loss)

    compile_s, loss0 = timed_call(run_step)
    matmul()
    step_times, matmul_times = [], []
    for _ in range(args["reps"]):
        step_times.append(timed_call(run_step)[0])
        for _ in range(3):
            matmul_times.append(timed_call(matmul)[0])
    loss1 = float(run_step())
    if not np.isfinite(loss1) or loss1 >= float(loss0):
        raise RuntimeError(f"ntl-jax training loss did not decrease ({float(loss0):.4f} -> {loss1:.4f})")
    return {"step_times": step_times, "matmul_times": matmul_times, "compile_s": compile_s - median(step_times),
            "loss_first": float(loss0), "loss_last": loss1, "device": jax_device_note(), "matmul_n": n}


def torch_train_step(args: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args["threads"])
    device = args.get("device", "cpu")
    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    model = AutoModelForCausalLM.from_pretrained(args["path"], dtype=torch.float32).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    ids = _tokens(model.config.vocab_size, args.get("batch", BATCH), args.get("seq", SEQ))
    ids = torch.from_numpy(ids.astype(np.int64)).to(device)
    n = args.get("matmul_n", MATMUL_N)
    a = torch.ones(n, n, device=device) / n
    b = torch.ones(n, n, device=device)

    def run_step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        return float(loss)

    def run_matmul():
        out = a @ b
        sync()
        return out

    first_s, loss0 = timed_call(run_step)
    run_matmul()
    step_times, matmul_times = [], []
    for _ in range(args["reps"]):
        step_times.append(timed_call(run_step)[0])
        for _ in range(3):
            matmul_times.append(timed_call(run_matmul)[0])
    loss1 = run_step()
    return {"step_times": step_times, "matmul_times": matmul_times, "first_call_s": first_s, "loss_first": loss0,
            "loss_last": loss1, "threads": torch.get_num_threads(), "matmul_n": n}


def summarize(out: dict[str, Any], flops: float, tokens: int = BATCH * SEQ) -> dict[str, Any]:
    step_s, matmul_s = median(out["step_times"]), median(out["matmul_times"])
    achieved, peak = flops / step_s / 1e9, 2.0 * out.get("matmul_n", MATMUL_N) ** 3 / matmul_s / 1e9
    return {"step_s": spread(out["step_times"]), "tokens_per_s": tokens / step_s, "gflops": achieved,
            "matmul_gflops": peak, "efficiency": achieved / peak}


def machine_limit_text(flops: float, stats: dict[str, Any]) -> str:
    """The step's model FLOPs at the in-process matmul rate (`summarize`'s stats), and ntl-jax's fraction of it."""
    return (f"{flops / (stats['matmul_gflops'] * 1e9):.3g} s/step at the {stats['matmul_gflops']:.0f} GFLOP/s "
            f"in-process matmul rate; ntl-jax at {stats['efficiency']:.0%}")


def run(scale: str) -> list[Result]:
    size = SIZES[check_scale(scale)]
    spec, shape = size["spec"], {k: size[k] for k in ("batch", "seq", "matmul_n", "reps")}
    flops, tokens = step_flops(spec, size["batch"], size["seq"]), size["batch"] * size["seq"]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as workdir:
        path = save_random_checkpoint(spec, os.path.join(workdir, spec.name))
        variants = ("chunked", "full_logits") if scale == "full" else ("chunked",)
        ours = {v: run_worker("train_step_efficiency", "jax_train_step", {"path": path, "variant": v, **shape})
                for v in variants}
        torch_runs = {}
        for setting in torch_thread_settings(scale):
            threads, env = TORCH_THREAD_SETTINGS[setting]
            torch_runs[setting] = run_worker("train_step_efficiency", "torch_train_step",
                                             {"path": path, "threads": threads, **shape}, env=env)
    jax_stats = {v: {**summarize(out, flops, tokens), "compile_s": out["compile_s"],
                     "loss": [out["loss_first"], out["loss_last"]]} for v, out in ours.items()}
    torch_stats = {t: {**summarize(out, flops, tokens), "first_call_s": out["first_call_s"]}
                   for t, out in torch_runs.items()}
    best_t = max(torch_stats, key=lambda t: torch_stats[t]["tokens_per_s"])
    ours_main, base = jax_stats["chunked"], torch_stats[best_t]
    limit_text = machine_limit_text(flops, ours_main)
    common_details = {"model": spec.describe(), "batch": size["batch"], "seq": size["seq"],
                      "model_gflop_per_step": flops / 1e9,
                      "flop_formula": "6*N_matmul*B*T + 12*L*B*T^2*(H*Dh)", "ntl_jax": jax_stats,
                      "torch": torch_stats, "jax_threads": JAX_THREADS_NOTE,
                      "torch_threads": torch_thread_note(best_t), "device": ours["chunked"]["device"]}
    return [
        Result(benchmark="train_step_efficiency", case="tokens/s vs PyTorch",
               ours=f"{ours_main['step_s']['median']:.2f} s/step", baseline=f"{base['step_s']['median']:.2f} s/step "
               f"({best_t})", ratio=ours_main["tokens_per_s"] / base["tokens_per_s"],
               ratio_desc="tokens/s ntl-jax / PyTorch", target_op=">=", target=TARGET_SPEED, details=common_details,
               machine_limit=limit_text),
        Result(benchmark="train_step_efficiency", case="FLOP/s vs matmul",
               ours=f"{ours_main['gflops']:.0f} GFLOP/s", baseline=f"matmul {ours_main['matmul_gflops']:.0f} GFLOP/s",
               ratio=ours_main["efficiency"],
               ratio_desc=f"model FLOP/s of the step / {size['matmul_n']}^3 matmul FLOP/s (same run)",
               target_op=">=", target=TARGET_EFFICIENCY, machine_limit=limit_text,
               details={"torch_efficiency_vs_own_matmul": {t: s["efficiency"] for t, s in torch_stats.items()},
                        **({"full_logits_efficiency": jax_stats["full_logits"]["efficiency"]}
                           if "full_logits" in jax_stats else {})}),
    ]


if __name__ == "__main__":
    worker_main({"jax_train_step": jax_train_step, "torch_train_step": torch_train_step})
