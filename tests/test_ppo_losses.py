"""PPO losses, aggregation modes and KL estimators against hand-computed values and a numpy port of verl."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.ppo.losses import LOSS_AGG_MODES, agg_loss, kl_penalty, policy_loss, value_loss


# ---------------------------------------------------------------- numpy reference (verl vanilla policy loss)
def _np_agg(loss, mask, mode):
    rows = mask.sum(-1) > 0
    if mode == "token-mean":
        return (loss * mask).sum() / mask.sum()
    if mode == "seq-mean-token-mean":
        return ((loss * mask).sum(-1)[rows] / mask.sum(-1)[rows]).mean()
    if mode == "seq-mean-token-sum-norm":  # verl: torch.sum(seq_losses) / loss_mask.shape[-1], a sum over rows
        return (loss * mask).sum(-1).sum() / mask.shape[-1]
    return (loss * mask).sum(-1)[rows].mean()


def _np_policy_loss(logp, old, adv, mask, low, high, c, mode):
    neg_kl = np.clip(logp - old, -20, 20)
    ratio = np.exp(neg_kl)
    l1, l2 = -adv * ratio, -adv * np.clip(ratio, 1 - low, 1 + high)
    clipped = np.maximum(l1, l2)
    l3 = -adv * c
    losses = np.where(adv < 0, np.minimum(l3, clipped), clipped)
    mean = lambda v: (v * mask).sum() / mask.sum()  # noqa: E731
    return (_np_agg(losses, mask, mode), mean((l2 > l1).astype(float)), mean(-neg_kl),
            mean(((clipped > l3) & (adv < 0)).astype(float)))


# ---------------------------------------------------------------- agg_loss
LOSS_MAT = jnp.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 9.0, 9.0, 9.0]])
LOSS_MASK = jnp.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=jnp.float32)


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", 21.0 / 5.0),              # (1+2+5+6+7)/5
    ("seq-mean-token-sum", 10.5),            # (3 + 18)/2, the empty row left out
    ("seq-mean-token-mean", 3.75),           # (1.5 + 6)/2
    ("seq-mean-token-sum-norm", 21.0 / 4),   # (3 + 18 + 0) / T: verl sums the rows, it does not average them
])
def test_agg_loss_modes_hand_computed(mode, expected):
    np.testing.assert_allclose(agg_loss(LOSS_MAT, LOSS_MASK, mode), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(partial(agg_loss, mode=mode))(LOSS_MAT, LOSS_MASK), expected, rtol=1e-6)


def test_agg_loss_norm_horizon_and_empty_mask():
    np.testing.assert_allclose(agg_loss(LOSS_MAT, LOSS_MASK, "seq-mean-token-sum-norm", loss_scale_factor=2.0),
                               10.5, rtol=1e-6)
    for mode in LOSS_AGG_MODES:
        assert float(agg_loss(LOSS_MAT, jnp.zeros_like(LOSS_MASK), mode)) == 0.0


def test_agg_loss_rejects_unknown_mode_listing_allowed():
    allowed = "token-mean, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm"
    with pytest.raises(ValueError, match=allowed):
        agg_loss(LOSS_MAT, LOSS_MASK, "token-sum")


# ---------------------------------------------------------------- policy loss
def _crafted_batch():
    ratios = np.array([[1.5, 0.5, 0.5, 5.0, 1.0]])
    old = np.full((1, 5), -1.0)
    logp = old + np.log(ratios)
    adv = np.array([[1.0, 1.0, -1.0, -1.0, -2.0]])
    mask = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    return logp, old, adv, mask


def test_policy_loss_hand_computed_clip_and_dual_clip():
    logp, old, adv, mask = (jnp.asarray(a, jnp.float32) for a in _crafted_batch())
    loss, metrics = policy_loss(logp, old, adv, mask)
    # per token: A=+1,r=1.5 -> -1.2 (clipped); A=+1,r=0.5 -> -0.5; A=-1,r=0.5 -> 0.8 (clipped);
    # A=-1,r=5 -> max(5, 1.2)=5 then dual clip min(5, 3) = 3 (lower clip); masked token ignored
    np.testing.assert_allclose(loss, (-1.2 - 0.5 + 0.8 + 3.0) / 4, rtol=1e-5)
    np.testing.assert_allclose(metrics["pg_clipfrac"], 0.5)
    np.testing.assert_allclose(metrics["pg_clipfrac_lower"], 0.25)
    np.testing.assert_allclose(metrics["ppo_kl"], -np.log(1.5 * 0.5 * 0.5 * 5.0) / 4, rtol=1e-5)


def test_policy_loss_asymmetric_clip_and_larger_c():
    logp, old, adv, mask = (jnp.asarray(a, jnp.float32) for a in _crafted_batch())
    loss, metrics = policy_loss(logp, old, adv, mask, clip_ratio_low=0.3, clip_ratio_high=0.6, clip_ratio_c=10.0)
    # A=+1,r=1.5 within 1.6 -> -1.5; A=+1,r=0.5 -> -0.5; A=-1,r=0.5 -> max(0.5, 0.7) = 0.7; A=-1,r=5 -> 5 (< c=10)
    np.testing.assert_allclose(loss, (-1.5 - 0.5 + 0.7 + 5.0) / 4, rtol=1e-5)
    np.testing.assert_allclose(metrics["pg_clipfrac"], 0.25)
    np.testing.assert_allclose(metrics["pg_clipfrac_lower"], 0.0)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_policy_loss_matches_numpy_port_for_every_agg_mode(mode):
    rng = np.random.default_rng(0)
    old = rng.normal(size=(4, 6)) - 2
    logp = old + rng.normal(size=(4, 6)) * 0.5
    adv = rng.normal(size=(4, 6))
    mask = (np.arange(6)[None, :] < np.array([6, 2, 4, 1])[:, None]).astype(np.float64)
    loss_fn = jax.jit(partial(policy_loss, clip_ratio_low=0.2, clip_ratio_high=0.28, loss_agg_mode=mode))
    loss, metrics = loss_fn(*(jnp.asarray(a, jnp.float32) for a in (logp, old, adv, mask)))
    ref_loss, ref_clipfrac, ref_kl, ref_lower = _np_policy_loss(logp, old, adv, mask, 0.2, 0.28, 3.0, mode)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["pg_clipfrac"], ref_clipfrac, rtol=1e-6)
    np.testing.assert_allclose(metrics["ppo_kl"], ref_kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["pg_clipfrac_lower"], ref_lower, rtol=1e-6)
    assert 0.0 < float(metrics["pg_clipfrac"]) < 1.0


def test_policy_loss_gradients_finite_and_zero_on_clipped_tokens():
    logp, old, adv, mask = (jnp.asarray(a, jnp.float32) for a in _crafted_batch())
    logp = logp.at[0, 4].set(1e4)  # a huge log-ratio on a masked token must not poison the gradient
    grad = jax.grad(lambda lp: policy_loss(lp, old, adv, mask)[0])(logp)
    assert np.all(np.isfinite(grad))
    # only the unclipped A=+1, r=0.5 token has a gradient: d(-A r)/dlogp / N = -0.5 / 4
    np.testing.assert_allclose(grad, [[0.0, -0.125, 0.0, 0.0, 0.0]], atol=1e-6)
    far = jnp.array([[40.0, -40.0]])
    big_grad = jax.grad(lambda lp: policy_loss(lp, jnp.zeros_like(lp), jnp.array([[1.0, -1.0]]),
                                               jnp.ones_like(lp))[0])(far)
    assert np.all(np.isfinite(big_grad))


def test_policy_loss_ratio_is_clamped_at_exp_20():
    loss, metrics = policy_loss(jnp.array([[30.0]]), jnp.array([[0.0]]), jnp.array([[-1e-6]]), jnp.ones((1, 1)),
                                clip_ratio_c=1e9)
    np.testing.assert_allclose(loss, 1e-6 * np.exp(20.0), rtol=1e-4)
    np.testing.assert_allclose(metrics["ppo_kl"], -20.0)


def test_policy_loss_rejects_clip_ratio_c_not_above_one():
    with pytest.raises(ValueError, match="clip_ratio_c=1.0"):
        policy_loss(*(jnp.zeros((1, 2)),) * 3, jnp.ones((1, 2)), clip_ratio_c=1.0)


# ---------------------------------------------------------------- value loss
def test_value_loss_hand_computed():
    values, old_values = jnp.array([[1.0, 2.0, 5.0]]), jnp.array([[0.0, 1.8, 0.0]])
    returns, mask = jnp.array([[1.2, 0.0, 0.0]]), jnp.array([[1.0, 1.0, 0.0]])
    # token 0: clip(1.0, -0.5, 0.5)=0.5 -> max(0.04, 0.49)=0.49 (clipped); token 1: 2.0 in [1.3, 2.3] -> 4.0
    loss, metrics = value_loss(values, old_values, returns, mask)
    np.testing.assert_allclose(loss, 0.5 * (0.49 + 4.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["vf_clipfrac"], 0.5)
    loss_seq, _ = value_loss(values, old_values, returns, mask, cliprange_value=10.0,
                             loss_agg_mode="seq-mean-token-sum")
    np.testing.assert_allclose(loss_seq, 0.5 * (0.04 + 4.0), rtol=1e-6)
    grad = jax.grad(lambda v: value_loss(v, old_values, returns, mask)[0])(values)
    # token 0 is clipped (no gradient); token 1: d 0.5*(v-R)^2/2 = (2-0)/2
    np.testing.assert_allclose(grad, [[0.0, 1.0, 0.0]], atol=1e-6)


# ---------------------------------------------------------------- KL estimators and entropy
LOGP = jnp.array([[-1.0, -2.0, -0.5]])
REF = jnp.array([[-1.5, -1.0, -0.5]])


@pytest.mark.parametrize("kinds,expected", [
    (("kl", "k1"), [0.5, -1.0, 0.0]),
    (("abs",), [0.5, 1.0, 0.0]),
    (("mse", "k2"), [0.125, 0.5, 0.0]),
    # k = ref - logp = (-0.5, 1, 0): exp(k) - k - 1
    (("low_var_kl", "k3"), [np.exp(-0.5) - 0.5, np.e - 2.0, 0.0]),
])
def test_kl_penalty_kinds_hand_computed(kinds, expected):
    for kind in kinds:
        np.testing.assert_allclose(kl_penalty(LOGP, REF, kind), [expected], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(jax.jit(partial(kl_penalty, kind=kind))(LOGP, REF), [expected],
                                   rtol=1e-6, atol=1e-7)


def test_low_var_kl_is_clamped_and_nonnegative():
    value = kl_penalty(jnp.array([[-40.0, 0.0]]), jnp.array([[0.0, -40.0]]), "low_var_kl")
    # k = +40 -> clamp 20 -> exp(20)-21 -> clamp 10; k = -40 -> clamp -20 -> exp(-20)+19 -> clamp 10
    np.testing.assert_allclose(value, [[10.0, 10.0]])
    rng = np.random.default_rng(1)
    random_value = kl_penalty(jnp.asarray(rng.normal(size=(3, 8))), jnp.asarray(rng.normal(size=(3, 8))), "k3")
    assert np.all(np.asarray(random_value) >= 0)


@pytest.mark.parametrize("kind", ["full", "k4", ""])
def test_kl_penalty_rejects_unknown_kind(kind):
    with pytest.raises(ValueError, match="allowed: kl, k1, abs, mse, k2, low_var_kl, k3"):
        kl_penalty(LOGP, REF, kind)
