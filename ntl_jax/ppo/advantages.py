"""Advantage estimators for PPO on language models (verl semantics, pure jnp, jittable).

Shapes: B sequences, T response tokens. ``response_mask`` is 1.0 on response tokens that count and 0.0 on
padding (float weights are accepted by the masked statistics). Every estimator returns
``(advantages [B,T], returns [B,T])`` with masked entries set to 0.

Estimators (names as in verl's ``algorithm.adv_estimator``):
  - ``gae``: generalised advantage estimation with a critic, whitened advantages.
  - ``grpo``: per-group (prompt) normalised outcome scores; ``grpo_drgrpo`` (or ``norm_by_std=False``) is Dr.GRPO.
  - ``rloo``: leave-one-out baseline over the group.
"""
from __future__ import annotations

import numbers
from typing import Any

import chex
import jax
import jax.numpy as jnp

ADVANTAGE_ESTIMATORS = ("gae", "grpo", "grpo_drgrpo", "rloo")

# verl's masked_whiten adds this to the variance before rsqrt.
_WHITEN_EPS = 1e-8


def _as_float(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=jnp.float32)


def masked_sum(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """sum(x * mask) over ``axis``; entries with mask == 0 contribute exactly 0 (even if x is inf/nan there)."""
    chex.assert_equal_shape((x, mask))
    mask = _as_float(mask)
    return jnp.sum(jnp.where(mask != 0, x * mask, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """Masked mean (verl ``masked_mean``).

    mean = sum(x * mask, axis) / sum(mask, axis)

    Unlike verl (which returns nan for an empty mask) an all-zero mask gives 0, with finite gradients, so padded
    micro-batches stay finite under jit.
    """
    chex.assert_equal_shape((x, mask))
    mask = _as_float(mask)
    total = masked_sum(x, mask, axis)
    count = jnp.sum(mask, axis=axis)
    safe_count = jnp.where(count != 0, count, 1.0)
    return jnp.where(count != 0, total / safe_count, 0.0)


def masked_var(x: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
    """Masked variance over all entries (verl ``masked_var``).

    var = masked_mean((x - masked_mean(x))^2) * (n / (n - 1) if unbiased),  n = sum(mask)

    verl raises for n <= 1; that cannot be checked under jit, so here n <= 1 skips the Bessel correction
    (a single entry has variance 0, an empty mask gives 0).
    """
    chex.assert_equal_shape((x, mask))
    mask = _as_float(mask)
    mean = masked_mean(x, mask)
    variance = masked_mean(jnp.square(x - mean), mask)
    if unbiased:
        count = jnp.sum(mask)
        safe_denominator = jnp.where(count > 1, count - 1.0, 1.0)
        variance = jnp.where(count > 1, variance * count / safe_denominator, variance)
    return variance


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True) -> jax.Array:
    """Whiten with masked statistics (verl ``masked_whiten``).

    whitened = (x - mean) * rsqrt(var + 1e-8)   [+ mean when shift_mean is False]
    with mean = masked_mean(x, mask) and var = masked_var(x, mask, unbiased=True) over all entries.
    Masked entries are transformed too (callers zero them); they never enter the statistics.
    """
    chex.assert_equal_shape((x, mask))
    mean = masked_mean(x, mask)
    variance = masked_var(x, mask, unbiased=True)
    whitened = (x - mean) * jax.lax.rsqrt(variance + _WHITEN_EPS)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def compute_gae(
    token_rewards: jax.Array,
    values: jax.Array,
    response_mask: jax.Array,
    gamma: float | jax.Array,
    lam: float | jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """GAE over the response mask (verl ``compute_gae_advantage_return``, current version).

    Backward recursion over t = T-1 .. 0 (lax.scan, reverse), carrying (V_next, A_next), both starting at 0:
        delta_t = r_t + gamma * V_next - V_t
        A_t     = delta_t + gamma * lam * A_next
    On a masked position (m_t = 0) the carry passes through unchanged (V_next, A_next keep their values), so a
    valid token bootstraps from the next *valid* token's value and gaps inside the mask (e.g. tool/observation
    tokens) are skipped, exactly as verl does:
        V_next <- m_t * V_t + (1 - m_t) * V_next,   A_next <- m_t * A_t + (1 - m_t) * A_next
    returns    = A + V                          (before whitening, as verl)
    advantages = masked_whiten(A, mask)
    Both outputs are then multiplied by the mask (masked entries are 0; verl leaves garbage there).

    Args:
      token_rewards: [B,T] float, reward per token (outcome score at the last valid token, minus KL if in reward).
      values: [B,T] float, critic values V_t for the state before response token t.
      response_mask: [B,T] 0/1.
      gamma, lam: discount and GAE lambda (verl defaults 1.0 / 1.0).
    Returns:
      (advantages [B,T], returns [B,T]) float32.
    """
    chex.assert_rank(token_rewards, 2)
    chex.assert_equal_shape((token_rewards, values, response_mask))
    rewards = _as_float(token_rewards)
    values = _as_float(values)
    mask = _as_float(response_mask)
    gamma = _as_float(gamma)
    lam = _as_float(lam)

    def step(carry, inputs):
        next_value, next_advantage = carry
        reward_t, value_t, mask_t = inputs
        delta = reward_t + gamma * next_value - value_t
        advantage_t = delta + gamma * lam * next_advantage
        next_value = mask_t * value_t + (1.0 - mask_t) * next_value
        next_advantage = mask_t * advantage_t + (1.0 - mask_t) * next_advantage
        return (next_value, next_advantage), next_advantage

    batch = rewards.shape[0]
    init = (jnp.zeros((batch,), jnp.float32), jnp.zeros((batch,), jnp.float32))
    _, advantages_tb = jax.lax.scan(step, init, (rewards.T, values.T, mask.T), reverse=True)
    advantages = advantages_tb.T
    returns = (advantages + values) * mask
    advantages = masked_whiten(advantages, mask) * mask
    return advantages, returns


def _group_statistics(
    scores: jax.Array, group_ids: jax.Array, num_groups: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-sample (count n_g, mean_g, unbiased std_g) of the sample's group via segment sums.

    mean_g = sum_g s / n_g;  std_g = sqrt(sum_g (s - mean_g)^2 / (n_g - 1));  n_g = 1 -> mean 0, std 1 (verl).
    """
    count = jax.ops.segment_sum(jnp.ones_like(scores), group_ids, num_segments=num_groups)
    total = jax.ops.segment_sum(scores, group_ids, num_segments=num_groups)
    mean = total / jnp.maximum(count, 1.0)
    squared_dev = jax.ops.segment_sum(jnp.square(scores - mean[group_ids]), group_ids, num_segments=num_groups)
    std = jnp.sqrt(squared_dev / jnp.maximum(count - 1.0, 1.0))
    singleton = count <= 1
    mean = jnp.where(singleton, 0.0, mean)
    std = jnp.where(singleton, 1.0, std)
    return count[group_ids], mean[group_ids], std[group_ids]


def _check_group_inputs(scores: jax.Array, group_ids: jax.Array, response_mask: jax.Array, num_groups: int) -> None:
    chex.assert_rank([scores, group_ids, response_mask], [1, 1, 2])
    chex.assert_equal_shape_prefix((scores, group_ids, response_mask), 1)
    if not isinstance(num_groups, numbers.Integral) or isinstance(num_groups, bool) or num_groups < 1:
        raise ValueError(f"num_groups={num_groups!r} must be a static positive int (number of distinct prompts)")


def compute_grpo(
    scores: jax.Array,
    group_ids: jax.Array,
    response_mask: jax.Array,
    *,
    num_groups: int,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> tuple[jax.Array, jax.Array]:
    """GRPO outcome advantage (verl ``compute_grpo_outcome_advantage``).

    a_i = (s_i - mean_g) / (std_g + eps)   if norm_by_std   (GRPO; std is unbiased, like torch.std)
    a_i =  s_i - mean_g                    otherwise        (Dr.GRPO, arXiv:2503.20783)
    A[i, t] = a_i * mask[i, t];  returns = advantages.
    A group of one sample uses mean 0, std 1 (verl), i.e. a_i = s_i / (1 + eps).

    Args:
      scores: [B] float, one outcome score per sample.
      group_ids: [B] int in [0, num_groups), the prompt each sample answers.
      response_mask: [B,T].
      num_groups: static number of segments (ids >= num_groups are dropped by segment_sum: keep them in range).
    """
    _check_group_inputs(scores, group_ids, response_mask, num_groups)
    scores = _as_float(scores)
    _, mean, std = _group_statistics(scores, group_ids, num_groups)
    sample_advantage = (scores - mean) / (std + eps) if norm_by_std else scores - mean
    advantages = sample_advantage[:, None] * _as_float(response_mask)
    return advantages, advantages


def compute_rloo(
    scores: jax.Array, group_ids: jax.Array, response_mask: jax.Array, *, num_groups: int
) -> tuple[jax.Array, jax.Array]:
    """RLOO outcome advantage (verl ``compute_rloo_outcome_advantage``, arXiv:2402.14740).

    a_i = s_i * n/(n-1) - mean_g * n/(n-1)  (= s_i - mean of the other n-1 samples of the group)
    A[i, t] = a_i * mask[i, t];  returns = advantages.
    A group of one sample has no leave-one-out baseline: verl leaves its score unchanged (baseline 0), a_i = s_i.
    """
    _check_group_inputs(scores, group_ids, response_mask, num_groups)
    scores = _as_float(scores)
    count, mean, _ = _group_statistics(scores, group_ids, num_groups)
    scale = count / jnp.maximum(count - 1.0, 1.0)
    sample_advantage = jnp.where(count > 1, scores * scale - mean * scale, scores)
    advantages = sample_advantage[:, None] * _as_float(response_mask)
    return advantages, advantages


def scores_to_token_rewards(scores: jax.Array, response_mask: jax.Array) -> jax.Array:
    """Place each sequence's outcome score at its last valid response token (verl reward managers).

    R[i, t] = s_i if t == max{t' : mask[i, t'] > 0} else 0;  a row without valid tokens is all 0.
    """
    chex.assert_rank([scores, response_mask], [1, 2])
    chex.assert_equal_shape_prefix((scores, response_mask), 1)
    valid = jnp.asarray(response_mask) > 0
    length = valid.shape[1]
    last_index = length - 1 - jnp.argmax(valid[:, ::-1], axis=1)
    is_last = (jnp.arange(length)[None, :] == last_index[:, None]) & jnp.any(valid, axis=1, keepdims=True)
    return jnp.where(is_last, _as_float(scores)[:, None], 0.0)


_ESTIMATOR_ARGS = {
    "gae": (("token_rewards", "values", "response_mask"), ("gamma", "lam")),
    "grpo": (("scores", "group_ids", "response_mask", "num_groups"), ("norm_by_std", "eps")),
    "grpo_drgrpo": (("scores", "group_ids", "response_mask", "num_groups"), ("eps",)),
    "rloo": (("scores", "group_ids", "response_mask", "num_groups"), ()),
}
_KNOWN_ARGS = frozenset(
    name for required, optional in _ESTIMATOR_ARGS.values() for name in required + optional
) | {"token_rewards"}


def compute_advantages(estimator: str, **kwargs: Any) -> tuple[jax.Array, jax.Array]:
    """Dispatch to an estimator by verl name; returns (advantages [B,T], returns [B,T]).

    - 'gae':         compute_gae(token_rewards, values, response_mask, gamma=1.0, lam=1.0)
    - 'grpo':        compute_grpo(scores, group_ids, response_mask, num_groups, norm_by_std=True, eps=1e-6)
    - 'grpo_drgrpo': compute_grpo(..., norm_by_std=False)  (same as 'grpo' with norm_by_std=False)
    - 'rloo':        compute_rloo(scores, group_ids, response_mask, num_groups)
    Outcome estimators accept ``token_rewards`` instead of ``scores``: scores = sum_t token_rewards * mask
    (verl sums token_level_rewards, so a KL-in-reward penalty is included). Keyword arguments that belong to
    another estimator are ignored, so a trainer may pass one superset; an unknown keyword raises ValueError.
    """
    if estimator not in _ESTIMATOR_ARGS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; allowed: {', '.join(ADVANTAGE_ESTIMATORS)}")
    unknown = sorted(set(kwargs) - _KNOWN_ARGS)
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for compute_advantages; allowed: {sorted(_KNOWN_ARGS)}")
    required, optional = _ESTIMATOR_ARGS[estimator]
    if estimator != "gae" and kwargs.get("scores") is None and kwargs.get("token_rewards") is not None:
        kwargs = dict(kwargs, scores=masked_sum(kwargs["token_rewards"], kwargs["response_mask"], axis=-1))
    missing = [name for name in required if kwargs.get(name) is None]
    if missing:
        raise ValueError(f"estimator {estimator!r} needs argument(s) {missing}; got {sorted(kwargs)}")
    chosen = {name: kwargs[name] for name in required + optional if kwargs.get(name) is not None}
    if estimator == "gae":
        return compute_gae(
            chosen["token_rewards"], chosen["values"], chosen["response_mask"],
            gamma=chosen.get("gamma", 1.0), lam=chosen.get("lam", 1.0),
        )
    group_args = (chosen.pop("scores"), chosen.pop("group_ids"), chosen.pop("response_mask"))
    if estimator == "rloo":
        return compute_rloo(*group_args, num_groups=chosen["num_groups"])
    if estimator == "grpo_drgrpo":
        chosen["norm_by_std"] = False
    return compute_grpo(*group_args, **chosen)
