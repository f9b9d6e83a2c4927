"""The machine's limit for a benchmark row, measured in the same worker process as the figure it bounds.

Two measures (issue 14: "record the in-process matmul rate in the same run as the machine's limit"):

- `matmul_gflops(n)`: a jitted n x n x n float32 matmul, 2 n^3 / median time. The rate of one large GEMM: the
  ceiling of any step whose work is matmuls (train step, the GRPO iteration's update).
- `decode_matmul_floor(config, batch, steps)`: the decode loop's weight matmuls alone, at the decode shape
  (M = `batch` rows), in one compiled `lax.fori_loop` of `steps` iterations: per layer x@Wq, x@Wk, x@Wv, a@Wo,
  x@Wgate, x@Wup, (g*u)@Wdown, then the LM head; no attention, norms, RoPE, sampling or cache. Tokens/s of that
  loop is the rate a decoder of this shape cannot beat on this machine without changing its arithmetic; it is
  compiled with both XLA:CPU dot paths (jaxlib's default YNNPACK and Eigen, `ntl_jax.cpu.decode_matmuls`) and the
  faster one is the limit.

`iteration_matmul_flops` counts a GRPO iteration's model FLOPs (2 N per token forward, 6 N per token trained), so
"time at the matmul rate" = FLOPs / `matmul_gflops` is a lower bound on the iteration on this machine.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np


def median_seconds(fn: Any, reps: int) -> float:
    """Median wall seconds of ``reps`` calls of ``fn`` after one unmeasured call (compilation, warm-up)."""
    fn()  # compile / warm
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def square_matmul(n: int) -> Callable[[], Any]:
    """A blocking zero-argument call of a jitted [n, n] @ [n, n] float32 matmul (XLA's default dot path)."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32) / n
    b = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    return lambda: matmul(a, b).block_until_ready()


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """2 n^3 / median seconds of `square_matmul(n)`."""
    return 2.0 * n**3 / median_seconds(square_matmul(n), reps) / 1e9


def decode_weight_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """[K, N] of each weight a decoder layer of ``config`` multiplies its activations by."""
    d, f = config.hidden_size, config.intermediate_size
    dh = d // config.num_attention_heads
    q_width, kv_width = config.num_attention_heads * dh, config.num_key_value_heads * dh
    return {"q": (d, q_width), "k": (d, kv_width), "v": (d, kv_width), "o": (q_width, d),
            "gate": (d, f), "up": (d, f), "down": (f, d)}


def decode_matmul_floor(config: Any, batch: int, steps: int, reps: int = 5) -> dict[str, Any]:
    """Tokens/s of `steps` decode steps of `config`'s weight matmuls alone at M = `batch` (see module docstring).

    Returns {"tokens_per_s": best, "by_dot_path": {"xla_default": ..., "eigen": ...}} ("eigen" on CPU only).
    """
    import jax
    import jax.numpy as jnp

    from ntl_jax.cpu.decode_matmuls import decode_compiler_options

    d, v = config.hidden_size, config.vocab_size
    shapes = decode_weight_shapes(config)
    keys = iter(jax.random.split(jax.random.key(0), 8 * config.num_hidden_layers + 2))
    layers = [{name: 0.02 * jax.random.normal(next(keys), shape) for name, shape in shapes.items()}
              for _ in range(config.num_hidden_layers)]
    head = 0.02 * jax.random.normal(next(keys), (d, v))
    x0 = jax.random.normal(next(keys), (batch, d))

    def decode_matmuls(weights: Any, x: jax.Array) -> jax.Array:
        layers, head = weights

        def step(_: Any, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
            x, kv_sum = carry
            for w in layers:
                kv_sum = kv_sum + jnp.sum(x @ w["k"]) + jnp.sum(x @ w["v"])  # the cache writes' matmuls, kept live
                x = x + (x @ w["q"]) @ w["o"]
                x = x + ((x @ w["gate"]) * (x @ w["up"])) @ w["down"]
                x = x * 0.5
            logits = x @ head
            return x + 1e-3 * logits[:, :d], kv_sum  # the next step depends on this step's logits, as decoding does

        return jax.lax.fori_loop(0, steps, step, (x, jnp.zeros((), jnp.float32)))

    paths = {"xla_default": {}}
    eigen = decode_compiler_options("eigen", jax.default_backend())
    if eigen:  # {} off CPU or without YNNPACK: the same program as xla_default, not timed twice
        paths["eigen"] = eigen
    rates = {}
    for path, options in paths.items():
        compiled = jax.jit(decode_matmuls, compiler_options=options).lower((layers, head), x0).compile()
        seconds = median_seconds(lambda: jax.block_until_ready(compiled((layers, head), x0)), reps)
        rates[path] = batch * steps / seconds
    return {"tokens_per_s": max(rates.values()), "by_dot_path": rates,
            "what": f"the decode loop's weight matmuls alone, M = {batch}, {steps} steps, one compiled loop"}


def iteration_matmul_flops(n_matmul: int, sequences: int, prompt_positions: float, completion_tokens: float,
                           samples_per_prompt: int = 1) -> dict:
    """Model FLOPs of one RL iteration without critic / reference / separate old-log-prob pass:

        positions = sequences / samples_per_prompt * prompt_positions + sequences * completion_tokens
        rollout   = 2 * N * positions    (prefill + decode, one pass each)
        update    = 6 * N * positions    (forward + backward over the batch)

    A prompt's samples share its prefix, so the least work runs each prompt once (both the sampler and the
    update's shared-prompt forward do). N = weights multiplying activations (`common.param_count(...)["matmul"]`);
    attention is negligible at <= 16 positions and not counted.
    """
    positions = sequences / samples_per_prompt * prompt_positions + sequences * completion_tokens
    return {"rollout": 2.0 * n_matmul * positions, "update": 6.0 * n_matmul * positions,
            "total": 8.0 * n_matmul * positions}
