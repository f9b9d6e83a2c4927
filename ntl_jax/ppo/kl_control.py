"""KL coefficient controllers and the KL-in-reward penalty (verl ``apply_kl_penalty``), pure jnp, jittable.

The controller state is a pytree (``flax.struct.dataclass``) so it can live in the train state and be
checkpointed; updates are functions state -> state instead of verl's mutating objects.
"""
from __future__ import annotations

import numbers

import chex
from flax import struct
import jax
import jax.numpy as jnp

from ntl_jax.ppo.masked import masked_mean
from ntl_jax.ppo.losses import kl_penalty

KL_CONTROLLER_KINDS = ("fixed", "adaptive")


@struct.dataclass
class KLControllerState:
    """Current KL coefficient beta (verl ``kl_ctrl.value``; default kl_coef 0.001)."""

    value: float | jax.Array


def fixed_kl_update(
    state: KLControllerState, current_kl: float | jax.Array, n_steps: int | jax.Array
) -> KLControllerState:
    """Fixed controller (verl ``FixedKLController.update``): beta' = beta; the arguments are ignored."""
    del current_kl, n_steps
    return state


def adaptive_kl_update(
    state: KLControllerState,
    current_kl: float | jax.Array,
    n_steps: int | jax.Array,
    *,
    target: float,
    horizon: float,
) -> KLControllerState:
    """Adaptive controller (verl ``AdaptiveKLController.update``, Ziegler et al. arXiv:1909.08593).

    e     = clip(current_kl / target - 1, -0.2, 0.2)
    beta' = beta * (1 + e * n_steps / horizon)
    verl defaults: target_kl 0.1, horizon 10000; verl passes n_steps = batch size (sequences).
    """
    if isinstance(horizon, numbers.Real) and not horizon > 0:
        raise ValueError(f"horizon={horizon!r} must be > 0 for the adaptive KL controller")
    if isinstance(target, numbers.Real) and not target > 0:
        raise ValueError(f"target={target!r} must be > 0 for the adaptive KL controller")
    proportional_error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
    multiplier = 1.0 + proportional_error * jnp.asarray(n_steps, jnp.float32) / horizon
    return state.replace(value=jnp.asarray(state.value, jnp.float32) * multiplier)


def kl_controller_update(
    kind: str,
    state: KLControllerState,
    current_kl: float | jax.Array,
    n_steps: int | jax.Array,
    *,
    target: float = 0.1,
    horizon: float = 10000.0,
) -> KLControllerState:
    """Dispatch on verl's ``algorithm.kl_ctrl.type``: 'fixed' -> fixed_kl_update, 'adaptive' -> adaptive_kl_update."""
    if kind == "fixed":
        return fixed_kl_update(state, current_kl, n_steps)
    if kind == "adaptive":
        return adaptive_kl_update(state, current_kl, n_steps, target=target, horizon=horizon)
    raise ValueError(f"kl controller kind {kind!r} is not supported; allowed: {', '.join(KL_CONTROLLER_KINDS)}")


def apply_kl_in_reward(
    token_level_scores: jax.Array,
    old_logprobs: jax.Array,
    ref_logprobs: jax.Array,
    response_mask: jax.Array,
    kl_coef: float | jax.Array,
    kind: str,
) -> tuple[jax.Array, jax.Array]:
    """KL penalty folded into the token rewards (verl ``apply_kl_penalty``).

    kld[i,t]      = kl_penalty(logp_old, logp_ref, kind)[i,t] * mask[i,t]
    rewards[i,t]  = scores[i,t] - beta * kld[i,t],   beta = kl_coef (the controller's current value)
    kl_mean       = (1/B) sum_i ( sum_t kld[i,t] m[i,t] / sum_t m[i,t] )
    i.e. the batch mean of each sequence's masked token mean (verl's ``current_kl``, logged as
    actor/reward_kl_penalty and fed to the controller with n_steps = batch size). A row without valid tokens
    counts as 0 in the mean over all B rows, as in verl (its masked mean divides by ``sum m + 1e-8``).
    """
    chex.assert_rank(token_level_scores, 2)
    chex.assert_equal_shape((token_level_scores, old_logprobs, ref_logprobs, response_mask))
    mask = jnp.asarray(response_mask, jnp.float32)
    kld = jnp.where(mask != 0, kl_penalty(old_logprobs, ref_logprobs, kind) * mask, 0.0)
    token_rewards = jnp.asarray(token_level_scores, jnp.float32) - kl_coef * kld
    kl_mean = jnp.mean(masked_mean(kld, mask, axis=-1))
    return token_rewards, kl_mean
