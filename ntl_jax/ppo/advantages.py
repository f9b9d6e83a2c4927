"""Advantage estimators for PPO on language models (verl semantics, pure jnp, jittable).

Shapes: B sequences, T response tokens. ``response_mask`` is 1.0 on response tokens that count and 0.0 on
padding (float weights are accepted by the masked statistics). Every estimator returns
``(advantages [B,T], returns [B,T])`` with masked entries set to 0.

Estimators (names as in verl's ``algorithm.adv_estimator``; a registry, ``register_advantage_estimator``):
  - ``gae``: generalised advantage estimation with a critic, whitened advantages.
  - ``grpo``: per-group (prompt) normalised outcome scores; ``norm_by_std=False`` is Dr.GRPO.
  - ``rloo``: leave-one-out baseline over the group.
"""
from __future__ import annotations

import numbers
from typing import Callable

import chex
import jax
import jax.numpy as jnp

from ntl_jax.ppo.masked import as_float, masked_sum, masked_whiten


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
    rewards = as_float(token_rewards)
    values = as_float(values)
    mask = as_float(response_mask)
    gamma = as_float(gamma)
    lam = as_float(lam)

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
    scores = as_float(scores)
    _, mean, std = _group_statistics(scores, group_ids, num_groups)
    sample_advantage = (scores - mean) / (std + eps) if norm_by_std else scores - mean
    advantages = sample_advantage[:, None] * as_float(response_mask)
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
    scores = as_float(scores)
    count, mean, _ = _group_statistics(scores, group_ids, num_groups)
    scale = count / jnp.maximum(count - 1.0, 1.0)
    sample_advantage = jnp.where(count > 1, scores * scale - mean * scale, scores)
    advantages = sample_advantage[:, None] * as_float(response_mask)
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
    return jnp.where(is_last, as_float(scores)[:, None], 0.0)


# ---------------------------------------------------------------- registry (verl's algorithm.adv_estimator)
AdvantageEstimator = Callable[..., tuple[jax.Array, jax.Array]]
_ESTIMATORS: dict[str, AdvantageEstimator] = {}


def register_advantage_estimator(name: str) -> Callable[[AdvantageEstimator], AdvantageEstimator]:
    """Register ``fn(token_rewards, values, response_mask, group_ids, *, num_groups, gamma, lam, norm_by_std)
    -> (advantages, returns)`` under ``name`` (the value of ``PPOConfig.adv_estimator``)."""
    def register(fn: AdvantageEstimator) -> AdvantageEstimator:
        if name in _ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is registered already")
        _ESTIMATORS[name] = fn
        return fn
    return register


@register_advantage_estimator("gae")
def _gae(token_rewards, values, response_mask, group_ids, *, num_groups, gamma, lam, norm_by_std):
    del group_ids, num_groups, norm_by_std
    return compute_gae(token_rewards, values, response_mask, gamma, lam)


def _outcome_scores(token_rewards: jax.Array, response_mask: jax.Array) -> jax.Array:
    """One score per response: the sum of its token rewards (verl sums token_level_rewards; includes KL in reward)."""
    return masked_sum(token_rewards, response_mask, axis=-1)


@register_advantage_estimator("grpo")
def _grpo(token_rewards, values, response_mask, group_ids, *, num_groups, gamma, lam, norm_by_std):
    del values, gamma, lam
    return compute_grpo(_outcome_scores(token_rewards, response_mask), group_ids, response_mask,
                        num_groups=num_groups, norm_by_std=norm_by_std)


@register_advantage_estimator("rloo")
def _rloo(token_rewards, values, response_mask, group_ids, *, num_groups, gamma, lam, norm_by_std):
    del values, gamma, lam, norm_by_std
    return compute_rloo(_outcome_scores(token_rewards, response_mask), group_ids, response_mask,
                        num_groups=num_groups)


ADVANTAGE_ESTIMATORS: tuple[str, ...] = tuple(_ESTIMATORS)


def compute_advantages(estimator: str, *, token_rewards: jax.Array, values: jax.Array, response_mask: jax.Array,
                       group_ids: jax.Array, num_groups: int, gamma: float = 1.0, lam: float = 1.0,
                       norm_by_std: bool = True) -> tuple[jax.Array, jax.Array]:
    """(advantages [B,T], returns [B,T]) of the registered ``estimator`` ('gae', 'grpo', 'rloo', ...).

    Outcome estimators score each response by the sum of its token rewards (verl), so a KL-in-reward penalty is
    included; GAE uses the token rewards and the critic's values; ``norm_by_std=False`` is Dr.GRPO.
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"advantage estimator {estimator!r} is invalid; allowed: {', '.join(_ESTIMATORS)}")
    return _ESTIMATORS[estimator](token_rewards, values, response_mask, group_ids, num_groups=num_groups,
                                  gamma=gamma, lam=lam, norm_by_std=norm_by_std)
