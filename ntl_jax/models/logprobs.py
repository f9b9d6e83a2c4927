"""Per-token log-probs, entropy and digit logits without materialising [B, T, V] float32 logits.

For every position t with final hidden state h_t, LM-head kernel W [D, V] and sampling temperature tau:

    z_t            = h_t @ W                                   (float32 logits of the model)
    s_t            = z_t / tau                                 (the distribution the rollout sampled from)
    logprob_t      = s_t[y_t] - logsumexp(s_t)
    entropy_t      = logsumexp(s_t) - sum_v softmax(s_t)_v * s_t[v]   (computed shifted: entropy_of_logits)
    digit_logits_t = z_t[digit_ids]                            ([10], the NTL slice, of the model itself: tau-free)

Dividing by tau is what verl does (``logits.div_(temperature)`` in every actor forward): the PPO ratio, the
KL to the reference and the entropy then describe the policy that produced the samples. NTL measures the model's
own digit distribution, so its slice is taken before the division.

`token_logprobs` scans over chunks of `chunk_size` positions and wraps the chunk body in `jax.checkpoint`, so
neither the forward nor the backward pass ever holds more than [B, chunk_size, V] float32 logits at once.
`token_logprobs_naive` computes the same quantities from full logits (reference for tests and benchmarks).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from ntl_jax.models.decoder import KVCache, dense


class TokenLogProbs(NamedTuple):
    """Per-token outputs; `entropy` / `digit_logits` are None when not requested."""

    logprobs: jax.Array  # [B, T] float32
    entropy: jax.Array | None  # [B, T] float32
    digit_logits: jax.Array | None  # [B, T, 10] float32


def _logits_f32(hidden: jax.Array, lm_head_kernel: jax.Array) -> jax.Array:
    """hidden [..., D] @ kernel [D, V] accumulated in float32 without up-casting the (possibly bf16) kernel."""
    return dense(hidden, lm_head_kernel, preferred_element_type=jnp.float32)


def entropy_of_logits(logits: jax.Array) -> jax.Array:
    """``H = log S - sum_v e_v d_v / S`` with ``d = s - max(s)``, ``e = exp(d)``, ``S = sum_v e_v``: the same value as
    ``logsumexp(s) - sum_v softmax(s)_v s_v`` without subtracting two numbers of the logits' size (at logit std 50
    that form loses 1e-3 in float32; this one 1e-7 against float64, ``tests/test_logprobs.py``)."""
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.exp(shifted)
    total = jnp.sum(weights, axis=-1)
    return jnp.log(total) - jnp.sum(weights * shifted, axis=-1) / total


def _stats_from_logits(
    logits: jax.Array, target_ids: jax.Array, digit_ids: jax.Array | None, compute_entropy: bool,
    temperature: float = 1.0,
) -> TokenLogProbs:
    """Log-prob of targets and entropy of ``logits / temperature``, digit slice of ``logits``, from float32 [..., V]."""
    digit_logits = None if digit_ids is None else jnp.take(logits, digit_ids, axis=-1)
    if temperature != 1.0:
        logits = logits / temperature
    logsumexp = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, target_ids[..., None], axis=-1)[..., 0]
    logprobs = target_logits - logsumexp
    entropy = None
    if compute_entropy:
        entropy = entropy_of_logits(logits)
    return TokenLogProbs(logprobs, entropy, digit_logits)


def _check_inputs(hidden: jax.Array, lm_head_kernel: jax.Array, target_ids: jax.Array, digit_ids: Any,
                  temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"temperature={temperature!r} is invalid; allowed: a number > 0 (the rollout temperature)")
    chex.assert_rank(hidden, 3)
    chex.assert_rank(lm_head_kernel, 2)
    chex.assert_shape(target_ids, hidden.shape[:2])
    if hidden.shape[-1] != lm_head_kernel.shape[0]:
        raise ValueError(
            f"hidden size {hidden.shape[-1]} does not match lm_head_kernel rows {lm_head_kernel.shape[0]}; they must be equal"
        )
    if digit_ids is not None:
        chex.assert_rank(digit_ids, 1)


def token_logprobs_naive(
    hidden: jax.Array,
    lm_head_kernel: jax.Array,
    target_ids: jax.Array,
    *,
    digit_ids: jax.Array | None = None,
    chunk_size: int = 128,
    compute_entropy: bool = True,
    temperature: float = 1.0,
) -> TokenLogProbs:
    """Reference: same outputs as `token_logprobs`, computed from the full [B, T, V] float32 logits.

    `chunk_size` is accepted (and ignored) so both functions share one signature.
    """
    del chunk_size
    _check_inputs(hidden, lm_head_kernel, target_ids, digit_ids, temperature)
    logits = _logits_f32(hidden, lm_head_kernel)
    digit_ids = None if digit_ids is None else jnp.asarray(digit_ids, jnp.int32)
    return _stats_from_logits(logits, target_ids.astype(jnp.int32), digit_ids, compute_entropy, temperature)


def token_logprobs(
    hidden: jax.Array,
    lm_head_kernel: jax.Array,
    target_ids: jax.Array,
    *,
    digit_ids: jax.Array | None = None,
    chunk_size: int = 128,
    compute_entropy: bool = True,
    temperature: float = 1.0,
) -> TokenLogProbs:
    """Chunked, rematerialised log-probs: `lax.scan` over ceil(T / chunk_size) chunks of the sequence axis.

    T is padded up to a multiple of the chunk (padding rows use target id 0 and are sliced off). The chunk body is
    `jax.checkpoint`-ed, so the backward pass recomputes each chunk's [B, chunk, V] logits instead of storing them.
    """
    _check_inputs(hidden, lm_head_kernel, target_ids, digit_ids, temperature)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; it must be a positive int")
    batch, seq_len, hidden_size = hidden.shape
    chunk = min(chunk_size, max(seq_len, 1))
    num_chunks = -(-seq_len // chunk)
    pad = num_chunks * chunk - seq_len
    digit_ids = None if digit_ids is None else jnp.asarray(digit_ids, jnp.int32)
    target_ids = target_ids.astype(jnp.int32)
    if pad:
        hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
        target_ids = jnp.pad(target_ids, ((0, 0), (0, pad)))

    # [B, n*c, ...] -> [n, B, c, ...]: scan runs over the leading (chunk) axis.
    hidden_chunks = hidden.reshape(batch, num_chunks, chunk, hidden_size).swapaxes(0, 1)
    target_chunks = target_ids.reshape(batch, num_chunks, chunk).swapaxes(0, 1)

    @jax.checkpoint
    def chunk_stats(kernel: jax.Array, hidden_chunk: jax.Array, target_chunk: jax.Array) -> TokenLogProbs:
        logits = _logits_f32(hidden_chunk, kernel)
        return _stats_from_logits(logits, target_chunk, digit_ids, compute_entropy, temperature)

    def body(carry: None, xs: tuple[jax.Array, jax.Array]) -> tuple[None, TokenLogProbs]:
        return carry, chunk_stats(lm_head_kernel, *xs)

    _, stacked = jax.lax.scan(body, None, (hidden_chunks, target_chunks))

    def unchunk(x: jax.Array | None) -> jax.Array | None:
        if x is None:
            return None
        x = x.swapaxes(0, 1)  # [B, n, c, ...]
        return x.reshape(batch, num_chunks * chunk, *x.shape[3:])[:, :seq_len]

    return TokenLogProbs(unchunk(stacked.logprobs), unchunk(stacked.entropy), unchunk(stacked.digit_logits))


def response_positions(attention_mask: jax.Array) -> jax.Array:
    """positions = cumsum(mask) - 1, clipped at 0 for left padding (pad slots are never attended)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def sequence_inputs(prompt_ids: jax.Array, prompt_mask: jax.Array, response_ids: jax.Array,
                    response_mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Concatenate prompt and response: ``input_ids``, ``attention_mask`` (int32), ``positions = cumsum(mask) - 1``."""
    input_ids = jnp.concatenate([prompt_ids, response_ids], axis=1).astype(jnp.int32)
    attention_mask = jnp.concatenate([prompt_mask, response_mask.astype(prompt_mask.dtype)], axis=1).astype(jnp.int32)
    return input_ids, attention_mask, response_positions(attention_mask)


def _first_of_groups(x: jax.Array, group_size: int) -> jax.Array:
    """[N, ...] -> [N / g, ...]: row i * g of each group, as a reshape (keeps a row-sharded layout local)."""
    return x.reshape(x.shape[0] // group_size, group_size, *x.shape[1:])[:, 0]


def _repeat_rows(x: jax.Array, group_size: int, axis: int = 0) -> jax.Array:
    """Each row along ``axis`` repeated ``group_size`` times in place (``jnp.repeat``) as broadcast + reshape."""
    x = jnp.expand_dims(x, axis + 1)
    shape = x.shape[: axis + 1] + (group_size,) + x.shape[axis + 2:]
    x = jnp.broadcast_to(x, shape)
    return x.reshape(shape[:axis] + (shape[axis] * group_size,) + shape[axis + 2:])


def scoring_hidden(body: Any, prompt_ids: jax.Array, prompt_mask: jax.Array, response_ids: jax.Array,
                   response_mask: jax.Array, *, group_size: int = 1) -> jax.Array:
    """Final-norm hidden states that predict the T response tokens: slots ``P-1 .. P+T-2`` of concat(prompt,
    response) -> [N, T, D]. ``body`` is a `DecoderBody` (a `CausalLM`'s or `ValueModel`'s ``.model``).

    ``group_size`` g > 1: rows ``i*g .. i*g+g-1`` hold the same prompt (the sampler's row order with n = g), so the
    prompt runs once per group; its keys / values and its last hidden state are
    repeated g times and the responses run as a continuation that attends to them (``DecoderBody``'s
    ``return_kv`` / ``prefix``, differentiable; with remat and scanned layers too). The same function as g = 1
    (tested), on ``N/g * P + N * T`` positions instead of ``N * (P + T)``; the prompt's gradient is the sum over
    its g responses. Float rounding differs from g = 1 (attention sums over keys in another order).
    """
    prompt_len, response_len = prompt_ids.shape[1], response_ids.shape[1]
    if group_size == 1:
        input_ids, attention_mask, positions = sequence_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
        hidden, _ = body(input_ids, positions, attention_mask)
        return jax.lax.slice_in_dim(hidden, prompt_len - 1, prompt_len - 1 + response_len, axis=1)
    if not isinstance(group_size, int) or group_size < 1 or prompt_ids.shape[0] % group_size:
        raise ValueError(f"group_size={group_size!r} is invalid; allowed: a positive int dividing the "
                         f"{prompt_ids.shape[0]} rows")
    group_ids, group_mask = _first_of_groups(prompt_ids, group_size), _first_of_groups(prompt_mask, group_size)
    prompt_hidden, prompt_kv = body(group_ids.astype(jnp.int32), response_positions(group_mask), group_mask,
                                    return_kv=True)
    prefix = KVCache(*(tuple(_repeat_rows(x, group_size) for x in layers) for layers in prompt_kv))
    input_ids, attention_mask, positions = sequence_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    response_hidden, _ = body(input_ids[:, prompt_len:], positions[:, prompt_len:], attention_mask, prefix=prefix)
    last_prompt = _repeat_rows(prompt_hidden[:, prompt_len - 1:], group_size)
    return jnp.concatenate([last_prompt, response_hidden[:, : response_len - 1]], axis=1)


def sequence_logprobs(
    model: Any,
    prompt_ids: jax.Array,
    prompt_mask: jax.Array,
    response_ids: jax.Array,
    response_mask: jax.Array,
    *,
    digit_ids: jax.Array | None = None,
    chunk_size: int = 128,
    compute_entropy: bool = True,
    temperature: float = 1.0,
    group_size: int = 1,
) -> TokenLogProbs:
    """Run `model` (a CausalLM) over concat(prompt, response) and score the T response tokens.

    The hidden state at slot P-1+t predicts response token t, so the slice hidden[:, P-1 : P-1+T] is scored against
    `response_ids` (`scoring_hidden`; ``group_size`` > 1 runs each group's shared prompt once). Positions are
    cumsum(mask)-1 over the concatenated mask (left-padded prompts keep RoPE exact).
    Log-probs and entropy are of ``logits / temperature`` (pass the rollout temperature), the digit slice is raw.
    """
    chex.assert_rank([prompt_ids, prompt_mask, response_ids, response_mask], 2)
    chex.assert_equal_shape([prompt_ids, prompt_mask])
    chex.assert_equal_shape([response_ids, response_mask])
    chex.assert_equal_shape_prefix([prompt_ids, response_ids], 1)
    prompt_len = prompt_ids.shape[1]
    if prompt_len < 1:
        raise ValueError(f"prompt length {prompt_len} is invalid; at least one prompt slot is needed to predict token 0")
    hidden = scoring_hidden(model.model, prompt_ids, prompt_mask, response_ids, response_mask, group_size=group_size)
    return token_logprobs(
        hidden,
        model.lm_head_kernel(),
        response_ids,
        digit_ids=digit_ids,
        chunk_size=chunk_size,
        compute_entropy=compute_entropy,
        temperature=temperature,
    )
