"""Advantage estimators against hand-computed values and numpy ports of verl's reference loops."""
from collections import defaultdict
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.ppo.advantages import (
    ADVANTAGE_ESTIMATORS,
    compute_advantages,
    compute_gae,
    compute_grpo,
    compute_rloo,
    register_advantage_estimator,
    scores_to_token_rewards,
)
from ntl_jax.ppo.masked import masked_mean, masked_var, masked_whiten

SQRT_HALF = 1.0 / np.sqrt(2.0)


# ---------------------------------------------------------------- numpy references (verl's loops, float64)
def _np_masked_whiten(x, mask):
    mean = (x * mask).sum() / mask.sum()
    n = mask.sum()
    var = (((x - mean) ** 2) * mask).sum() / n * n / (n - 1)
    return (x - mean) / np.sqrt(var + 1e-8)


def _np_verl_gae(rewards, values, mask, gamma, lam):
    """Line-by-line port of verl's compute_gae_advantage_return (skip-masked version)."""
    batch, length = rewards.shape
    nextvalues = np.zeros(batch)
    lastgaelam = np.zeros(batch)
    reversed_advantages = []
    for t in reversed(range(length)):
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam_ = delta + gamma * lam * lastgaelam
        nextvalues = values[:, t] * mask[:, t] + (1 - mask[:, t]) * nextvalues
        lastgaelam = lastgaelam_ * mask[:, t] + (1 - mask[:, t]) * lastgaelam
        reversed_advantages.append(lastgaelam)
    advantages = np.stack(reversed_advantages[::-1], axis=1)
    returns = advantages + values
    return _np_masked_whiten(advantages, mask), returns


def _np_verl_grpo(scores, index, norm_by_std, eps=1e-6):
    groups = defaultdict(list)
    for s, i in zip(scores, index):
        groups[i].append(s)
    out = np.array(scores, dtype=np.float64)
    for k, s in enumerate(scores):
        members = np.array(groups[index[k]])
        mean, std = (0.0, 1.0) if len(members) == 1 else (members.mean(), members.std(ddof=1))
        out[k] = (s - mean) / (std + eps) if norm_by_std else s - mean
    return out


def _np_verl_rloo(scores, index):
    groups = defaultdict(list)
    for s, i in zip(scores, index):
        groups[i].append(s)
    out = np.array(scores, dtype=np.float64)
    for k, s in enumerate(scores):
        n = len(groups[index[k]])
        if n > 1:
            mean = np.mean(groups[index[k]])
            out[k] = s * n / (n - 1) - mean * n / (n - 1)
    return out


# ---------------------------------------------------------------- masked statistics
def test_masked_mean_literal_values_and_axis():
    x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(masked_mean(x, mask), 7.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(masked_mean(x, mask, axis=-1), [1.5, 4.0], rtol=1e-6)


def test_masked_mean_empty_mask_is_zero_with_finite_grad_and_ignores_masked_inf():
    x = jnp.array([[1.0, jnp.inf], [2.0, jnp.nan]])
    mask = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(masked_mean(x, mask, axis=-1), [1.0, 0.0])
    grad = jax.grad(lambda v: masked_mean(v, jnp.zeros_like(v)))(jnp.ones((2, 3)))
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_masked_var_unbiased_and_biased():
    x = jnp.array([[1.0, 2.0, 99.0], [4.0, -5.0, 7.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 0]])
    # masked entries 1, 2, 4: mean 7/3, biased var 14/9, unbiased 7/3
    np.testing.assert_allclose(masked_var(x, mask), 7.0 / 3.0, rtol=1e-6)
    np.testing.assert_allclose(masked_var(x, mask, unbiased=False), 14.0 / 9.0, rtol=1e-6)
    np.testing.assert_allclose(masked_var(x, jnp.array([[0, 0, 1], [0, 0, 0]])), 0.0)


def test_masked_whiten_matches_numpy_and_shift_mean():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5)) * 3 + 1
    mask = (rng.random((3, 5)) > 0.3).astype(np.float64)
    mean = (x * mask).sum() / mask.sum()
    np.testing.assert_allclose(masked_whiten(jnp.asarray(x), jnp.asarray(mask)), _np_masked_whiten(x, mask),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(masked_whiten(jnp.asarray(x), jnp.asarray(mask), shift_mean=False),
                               _np_masked_whiten(x, mask) + mean, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- GAE
def test_gae_hand_computed_with_trailing_padding():
    rewards = jnp.array([[0.0, 1.0, 5.0]])  # the 5.0 sits on padding and must be ignored
    values = jnp.array([[0.5, 0.25, 9.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    # gamma=0.9, lam=0.8: A1 = 1 - 0.25 = 0.75; A0 = (0 + 0.9*0.25 - 0.5) + 0.72*0.75 = 0.265
    advantages, returns = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    np.testing.assert_allclose(returns, [[0.765, 1.0, 0.0]], rtol=1e-6)
    # two whitened values are -+1/sqrt(2) (unbiased std); padding is zeroed
    np.testing.assert_allclose(advantages, [[-SQRT_HALF, SQRT_HALF, 0.0]], rtol=1e-5)


def test_gae_skips_masked_gap_like_verl():
    rewards = jnp.array([[0.0, 100.0, 1.0]])
    values = jnp.array([[0.5, 7.0, 0.25]])
    mask = jnp.array([[1.0, 0.0, 1.0]])
    # t=2: A=1-0.25=0.75; t=1 masked: carry (V=0.25, A=0.75) unchanged; t=0: A = (0.25-0.5) + 0.75 = 0.5
    _, returns = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(returns, [[1.0, 0.0, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_matches_numpy_port_of_verl_loop(gamma, lam):
    rng = np.random.default_rng(1)
    batch, length = 4, 7
    rewards = rng.normal(size=(batch, length))
    values = rng.normal(size=(batch, length))
    lengths = np.array([7, 3, 5, 1])
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.float64)
    mask[0, 2] = 0.0  # an interior gap (observation token) in row 0
    ref_adv, ref_ret = _np_verl_gae(rewards, values, mask, gamma, lam)
    advantages, returns = jax.jit(compute_gae)(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                                               gamma, lam)
    np.testing.assert_allclose(advantages, ref_adv * mask, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(returns, ref_ret * mask, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(advantages)[mask == 0] == 0)


# ---------------------------------------------------------------- GRPO / Dr.GRPO / RLOO
GROUP_SCORES = jnp.array([1.0, 1.0, 0.0, 0.5, 0.0, 1.0])
GROUP_IDS = jnp.array([0, 1, 0, 2, 0, 1])  # interleaved: group 0 = {1,0,0}, group 1 = {1,1}, group 2 = {0.5}
GROUP_MASK = jnp.array([[1, 1, 0]] * 6, dtype=jnp.float32)


def test_grpo_hand_computed_with_singleton_group():
    advantages, returns = compute_grpo(GROUP_SCORES, GROUP_IDS, GROUP_MASK, num_groups=3)
    # group 0: mean 1/3, unbiased std sqrt(1/3); group 1: std 0 -> 0; group 2 (singleton): mean 0, std 1
    std0 = np.sqrt(1.0 / 3.0) + 1e-6
    expected = np.array([(2 / 3) / std0, 0.0, (-1 / 3) / std0, 0.5 / (1 + 1e-6), (-1 / 3) / std0, 0.0])
    np.testing.assert_allclose(advantages[:, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(advantages[:, 2], 0.0)
    np.testing.assert_allclose(advantages, returns)
    np.testing.assert_allclose(advantages[0, 0], 1.1547, rtol=1e-4)


def test_drgrpo_is_score_minus_group_mean():
    advantages, _ = compute_grpo(GROUP_SCORES, GROUP_IDS, GROUP_MASK, num_groups=3, norm_by_std=False)
    np.testing.assert_allclose(advantages[:, 0], [2 / 3, 0.0, -1 / 3, 0.5, -1 / 3, 0.0], rtol=1e-6, atol=1e-7)


def test_rloo_hand_computed():
    advantages, returns = compute_rloo(GROUP_SCORES, GROUP_IDS, GROUP_MASK, num_groups=3)
    # s - mean(others): group 0: 1-0=1, 0-0.5=-0.5; group 1: 0; singleton keeps its score (verl)
    np.testing.assert_allclose(advantages[:, 0], [1.0, 0.0, -0.5, 0.5, -0.5, 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(advantages[:, 2], 0.0)
    np.testing.assert_allclose(advantages, returns)


@pytest.mark.parametrize("norm_by_std", [True, False])
def test_grpo_and_rloo_match_numpy_port_of_verl(norm_by_std):
    rng = np.random.default_rng(2)
    index = rng.integers(0, 6, size=20)
    scores = rng.normal(size=20)
    mask = np.ones((20, 4), np.float32)
    grpo = jax.jit(partial(compute_grpo, num_groups=6, norm_by_std=norm_by_std))
    adv, _ = grpo(jnp.asarray(scores), jnp.asarray(index), jnp.asarray(mask))
    np.testing.assert_allclose(adv[:, 1], _np_verl_grpo(scores, index, norm_by_std), rtol=1e-4, atol=1e-5)
    rloo, _ = jax.jit(partial(compute_rloo, num_groups=6))(jnp.asarray(scores), jnp.asarray(index),
                                                           jnp.asarray(mask))
    np.testing.assert_allclose(rloo[:, 1], _np_verl_rloo(scores, index), rtol=1e-4, atol=1e-5)


def test_group_estimators_reject_bad_num_groups():
    with pytest.raises(ValueError, match="num_groups"):
        compute_grpo(GROUP_SCORES, GROUP_IDS, GROUP_MASK, num_groups=0)


# ---------------------------------------------------------------- token rewards and dispatcher
def test_scores_to_token_rewards_places_score_at_last_valid_token():
    mask = jnp.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    rewards = scores_to_token_rewards(jnp.array([2.0, -1.0, 7.0, 0.5]), mask)
    expected = np.array([[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0.5]])
    np.testing.assert_array_equal(rewards, expected)
    np.testing.assert_array_equal(jax.jit(scores_to_token_rewards)(jnp.array([2.0, -1.0, 7.0, 0.5]), mask),
                                  expected)


def test_compute_advantages_dispatches_each_estimator():
    rng = np.random.default_rng(3)
    mask = jnp.asarray((np.arange(5)[None, :] < np.array([5, 2, 4, 3, 1, 5])[:, None]).astype(np.float32))
    token_rewards = scores_to_token_rewards(GROUP_SCORES, mask)
    values = jnp.asarray(rng.normal(size=(6, 5)).astype(np.float32))
    common = dict(token_rewards=token_rewards, values=values, response_mask=mask, gamma=0.9, lam=0.95,
                  group_ids=GROUP_IDS, num_groups=3)
    assert ADVANTAGE_ESTIMATORS == ("gae", "grpo", "rloo")
    gae = compute_advantages("gae", **common)
    np.testing.assert_allclose(gae[0], compute_gae(token_rewards, values, mask, 0.9, 0.95)[0])
    # Outcome estimators score a response by the sum of its token rewards (verl sums them).
    grpo = compute_advantages("grpo", **common)
    np.testing.assert_allclose(grpo[0], compute_grpo(GROUP_SCORES, GROUP_IDS, mask, num_groups=3)[0], rtol=1e-6)
    no_std = compute_advantages("grpo", norm_by_std=False, **common)  # Dr.GRPO
    np.testing.assert_allclose(no_std[0], compute_grpo(GROUP_SCORES, GROUP_IDS, mask, num_groups=3,
                                                       norm_by_std=False)[0], rtol=1e-6)
    rloo = compute_advantages("rloo", **common)
    np.testing.assert_allclose(rloo[0], compute_rloo(GROUP_SCORES, GROUP_IDS, mask, num_groups=3)[0], rtol=1e-6)


def test_compute_advantages_errors_and_registry():
    zeros = jnp.zeros((6, 3))
    with pytest.raises(ValueError, match="advantage estimator 'ppo' is invalid; allowed: gae, grpo, rloo"):
        compute_advantages("ppo", token_rewards=zeros, values=zeros, response_mask=zeros, group_ids=GROUP_IDS,
                           num_groups=3)
    with pytest.raises(ValueError, match="'grpo' is registered already"):
        register_advantage_estimator("grpo")(lambda *a, **k: None)
