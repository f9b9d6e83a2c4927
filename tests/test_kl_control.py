"""KL controllers (verl formulas, hand-computed numbers) and the KL-in-reward penalty."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.ppo.kl_control import (
    KLControllerState,
    adaptive_kl_update,
    apply_kl_in_reward,
    fixed_kl_update,
    kl_controller_update,
)


class _VerlAdaptiveKLController:
    """Port of verl's AdaptiveKLController (float64, mutating) as the reference."""

    def __init__(self, init_kl_coef, target_kl, horizon):
        self.value, self.target, self.horizon = init_kl_coef, target_kl, horizon

    def update(self, current_kl, n_steps):
        proportional_error = np.clip(current_kl / self.target - 1, -0.2, 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


def test_fixed_controller_keeps_value():
    state = KLControllerState(value=0.001)
    assert fixed_kl_update(state, current_kl=5.0, n_steps=256).value == 0.001
    assert kl_controller_update("fixed", state, 5.0, 256).value == 0.001


@pytest.mark.parametrize("current_kl,expected", [
    (0.15, 0.001 * (1 + 0.2 * 256 / 10000)),    # error 0.5 clipped to 0.2 -> 0.00100512
    (0.09, 0.001 * (1 - 0.1 * 256 / 10000)),    # error -0.1 -> 0.00099744
    (0.0, 0.001 * (1 - 0.2 * 256 / 10000)),     # error -1 clipped to -0.2
    (0.1, 0.001),                               # on target
])
def test_adaptive_controller_hand_computed(current_kl, expected):
    state = adaptive_kl_update(KLControllerState(value=0.001), current_kl, 256, target=0.1, horizon=10000)
    np.testing.assert_allclose(state.value, expected, rtol=1e-6)


def test_adaptive_controller_sequence_matches_verl_and_jits():
    kls = [0.3, 0.12, 0.05, 0.1, 0.0, 0.2, 0.08]
    reference = _VerlAdaptiveKLController(0.2, target_kl=0.1, horizon=100)
    update = jax.jit(partial(kl_controller_update, "adaptive", target=0.1, horizon=100))
    state = KLControllerState(value=jnp.float32(0.2))
    for kl in kls:
        reference.update(kl, n_steps=32)
        state = update(state, jnp.float32(kl), 32)
        np.testing.assert_allclose(state.value, reference.value, rtol=1e-5)
    assert len(jax.tree_util.tree_leaves(state)) == 1  # a pytree with one leaf: checkpointable


def test_controller_errors():
    with pytest.raises(ValueError, match="horizon=0"):
        adaptive_kl_update(KLControllerState(value=0.1), 0.1, 1, target=0.1, horizon=0)
    with pytest.raises(ValueError, match="'pid'.*fixed, adaptive"):
        kl_controller_update("pid", KLControllerState(value=0.1), 0.1, 1)


def test_apply_kl_in_reward_hand_computed():
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    scores = jnp.array([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    old = jnp.array([[-1.0, -2.0, -3.0], [-0.5, -1.0, -1.0], [-1.0, -1.0, -1.0]])
    ref = jnp.array([[-1.5, -1.0, -9.0], [-1.0, -1.0, -1.0], [-3.0, -3.0, -3.0]])
    # kl = old - ref = [[0.5, -1, (6 masked)], [0.5, ...], (row 2 empty)]
    rewards, kl_mean = apply_kl_in_reward(scores, old, ref, mask, kl_coef=0.1, kind="kl")
    np.testing.assert_allclose(rewards, [[-0.05, 1.1, 0.0], [1.95, 0.0, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)
    # per-sequence means -0.25 and 0.5; the empty row counts as 0 in the mean over 3 rows, as in verl
    np.testing.assert_allclose(kl_mean, 0.25 / 3, rtol=1e-6)


def test_apply_kl_in_reward_kinds_and_jit_with_controller_loop():
    rng = np.random.default_rng(0)
    old = jnp.asarray(rng.normal(size=(4, 5)) - 1, jnp.float32)
    ref = jnp.asarray(rng.normal(size=(4, 5)) - 1, jnp.float32)
    mask = jnp.asarray((np.arange(5)[None, :] < np.array([5, 3, 2, 4])[:, None]).astype(np.float32))
    scores = jnp.zeros((4, 5))
    np_mask = np.asarray(mask)
    kld = np.clip(np.exp(np.asarray(ref - old)) - np.asarray(ref - old) - 1, -10, 10) * np_mask
    expected_kl = np.mean(kld.sum(-1) / np_mask.sum(-1))

    @jax.jit
    def step(state):
        rewards, kl_mean = apply_kl_in_reward(scores, old, ref, mask, state.value, "low_var_kl")
        return rewards, kl_mean, adaptive_kl_update(state, kl_mean, 4, target=0.1, horizon=10000)

    rewards, kl_mean, new_state = step(KLControllerState(value=jnp.float32(0.05)))
    np.testing.assert_allclose(kl_mean, expected_kl, rtol=1e-5)
    np.testing.assert_allclose(rewards, -0.05 * kld, rtol=1e-5, atol=1e-7)
    error = np.clip(expected_kl / 0.1 - 1, -0.2, 0.2)
    np.testing.assert_allclose(new_state.value, 0.05 * (1 + error * 4 / 10000), rtol=1e-6)
    with pytest.raises(ValueError, match="allowed"):
        apply_kl_in_reward(scores, old, ref, mask, 0.1, "bogus")
