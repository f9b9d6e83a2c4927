"""PPO actor / critic losses, loss aggregation and KL estimators (verl semantics, pure jnp, jittable).

Shapes: B sequences, T response tokens; every ``[B,T]`` matrix is paired with a 0/1 ``response_mask``.
Names and defaults follow verl's ``ppo_trainer.yaml`` (clip_ratio 0.2, clip_ratio_c 3.0, cliprange_value 0.5,
loss_agg_mode 'token-mean').
"""
from __future__ import annotations

import numbers

import chex
import flax.struct
import jax
import jax.numpy as jnp

from ntl_jax.ppo.masked import masked_mean, masked_sum

LOSS_AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")

# verl clamps log-ratios to +-20 before exp (ratio and low_var_kl) and the low_var_kl value to +-10.
_LOG_RATIO_CLAMP = 20.0
_LOW_VAR_KL_CLAMP = 10.0


@flax.struct.dataclass
class LossNormalizer:
    """The denominators of a whole mini-batch (verl's ``global_batch_info``: ``batch_num_tokens``,
    ``global_batch_size``).

    A micro-batch loss divided by the *mini-batch's* counts is that micro-batch's share of the mini-batch loss, so
    the shares (and their gradients) sum to the loss of the whole mini-batch: the result does not depend on how
    the mini-batch is cut into micro-batches, nor on how many devices hold it.
    """

    num_tokens: jax.Array  # sum of the response mask over the mini-batch
    num_seqs: jax.Array  # rows of the mini-batch with at least one response token

    @classmethod
    def of(cls, mask: jax.Array) -> "LossNormalizer":
        mask = jnp.asarray(mask, jnp.float32)
        return cls(num_tokens=jnp.sum(mask), num_seqs=jnp.sum((jnp.sum(mask, axis=-1) > 0).astype(jnp.float32)))


def _safe_divide(total: jax.Array, count: jax.Array) -> jax.Array:
    """total / count, and 0 (with finite gradients) when count is 0."""
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def token_mean(x: jax.Array, mask: jax.Array, normalizer: LossNormalizer | None = None) -> jax.Array:
    """sum_{i,t} x m / N_tokens, N_tokens of ``normalizer`` (the mini-batch) or of ``mask``; 0 when empty."""
    normalizer = LossNormalizer.of(mask) if normalizer is None else normalizer
    return _safe_divide(masked_sum(x, mask), normalizer.num_tokens)


def agg_loss(
    loss_mat: jax.Array, mask: jax.Array, mode: str, *, normalizer: LossNormalizer | None = None,
    loss_scale_factor: float | None = None,
) -> jax.Array:
    """Aggregate a [B,T] loss matrix to a scalar (verl ``agg_loss`` with its global batch info).

    With m the mask, S_i = sum_t L[i,t] m[i,t], n_i = sum_t m[i,t], N_tok and N_seq the token and non-empty
    row counts of the mini-batch (``normalizer``; default: of this ``mask``):
      token-mean:              sum_{i,t} L m / N_tok
      seq-mean-token-sum:      sum_{i: n_i > 0} S_i / N_seq
      seq-mean-token-mean:     sum_{i: n_i > 0} (S_i / n_i) / N_seq
      seq-mean-token-sum-norm: sum_i S_i / H,   H = loss_scale_factor, default T = mask.shape[-1]
                               (Dr.GRPO's constant horizon; verl sums over rows, it does not average them)
    Fully masked rows are left out of the sequence counts, as verl does. An empty mask gives 0 (verl: nan).
    Every mode is a sum over rows divided by a mini-batch constant, so the shares of micro-batches add up to the
    mini-batch value (see :class:`LossNormalizer`).
    """
    chex.assert_rank(loss_mat, 2)
    chex.assert_equal_shape((loss_mat, mask))
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r} is not supported; allowed: {', '.join(LOSS_AGG_MODES)}")
    if mode == "token-mean":
        return token_mean(loss_mat, mask, normalizer)
    if mode == "seq-mean-token-sum-norm":
        horizon = mask.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return masked_sum(loss_mat, mask) / horizon
    normalizer = LossNormalizer.of(mask) if normalizer is None else normalizer
    if mode == "seq-mean-token-mean":
        seq_losses = masked_mean(loss_mat, mask, axis=-1)  # 0 for an empty row
    else:
        seq_losses = masked_sum(loss_mat, mask, axis=-1)
    return _safe_divide(jnp.sum(seq_losses), normalizer.num_seqs)


def _check_clip_ratio_c(clip_ratio_c: float | jax.Array) -> None:
    if isinstance(clip_ratio_c, numbers.Real) and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c={clip_ratio_c!r} must be > 1.0 (dual-clip lower bound, verl default 3.0)")


def policy_loss(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    response_mask: jax.Array,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Dual-clip PPO policy loss (verl ``compute_policy_loss_vanilla``).

    d      = clip(logp - logp_old, -20, 20)          (verl's negative_approx_kl)
    r      = exp(d)
    L1     = -A r,   L2 = -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high)
    Lclip  = max(L1, L2)
    L3     = -A c   (c = clip_ratio_c > 1, dual clip, arXiv:1912.09729)
    L      = min(Lclip, L3) where A < 0 else Lclip
    loss   = agg_loss(L, mask, loss_agg_mode, normalizer)
    Metrics (token means over the mini-batch of ``normalizer``, so micro-batch shares add up):
      pg_clipfrac       = mean[L2 > L1]
      ppo_kl            = mean[-d] = mean[logp_old - logp]
      pg_clipfrac_lower = mean[(Lclip > L3) & (A < 0)]
    """
    chex.assert_rank(logprobs, 2)
    chex.assert_equal_shape((logprobs, old_logprobs, advantages, response_mask))
    _check_clip_ratio_c(clip_ratio_c)
    advantages = jnp.asarray(advantages, jnp.float32)
    log_ratio = jnp.clip(logprobs - old_logprobs, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    ratio = jnp.exp(log_ratio)
    ppo_kl = token_mean(-log_ratio, response_mask, normalizer)

    pg_losses1 = -advantages * ratio
    pg_losses2 = -advantages * jnp.clip(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped_losses = jnp.maximum(pg_losses1, pg_losses2)
    pg_clipfrac = token_mean((pg_losses2 > pg_losses1).astype(jnp.float32), response_mask, normalizer)

    pg_losses3 = -advantages * clip_ratio_c
    negative_advantage = advantages < 0
    pg_clipfrac_lower = token_mean(
        ((clipped_losses > pg_losses3) & negative_advantage).astype(jnp.float32), response_mask, normalizer
    )
    pg_losses = jnp.where(negative_advantage, jnp.minimum(clipped_losses, pg_losses3), clipped_losses)
    loss = agg_loss(pg_losses, response_mask, loss_agg_mode, normalizer=normalizer)
    metrics = {"pg_clipfrac": pg_clipfrac, "ppo_kl": ppo_kl, "pg_clipfrac_lower": pg_clipfrac_lower}
    return loss, metrics


def value_loss(
    values: jax.Array,
    old_values: jax.Array,
    returns: jax.Array,
    response_mask: jax.Array,
    *,
    cliprange_value: float = 0.5,
    loss_agg_mode: str = "token-mean",
    normalizer: LossNormalizer | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clipped value loss (verl ``compute_value_loss``).

    v_clip = clip(v, v_old - c, v_old + c),   c = cliprange_value
    loss   = 0.5 * agg_loss(max((v - R)^2, (v_clip - R)^2), mask, loss_agg_mode, normalizer)
    vf_clipfrac = token mean[(v_clip - R)^2 > (v - R)^2]
    """
    chex.assert_rank(values, 2)
    chex.assert_equal_shape((values, old_values, returns, response_mask))
    values_clipped = jnp.clip(values, old_values - cliprange_value, old_values + cliprange_value)
    vf_losses1 = jnp.square(values - returns)
    vf_losses2 = jnp.square(values_clipped - returns)
    loss = 0.5 * agg_loss(jnp.maximum(vf_losses1, vf_losses2), response_mask, loss_agg_mode, normalizer=normalizer)
    vf_clipfrac = token_mean((vf_losses2 > vf_losses1).astype(jnp.float32), response_mask, normalizer)
    return loss, {"vf_clipfrac": vf_clipfrac}


def _k1(log_ratio: jax.Array) -> jax.Array:
    return log_ratio


def _abs(log_ratio: jax.Array) -> jax.Array:
    return jnp.abs(log_ratio)


def _k2(log_ratio: jax.Array) -> jax.Array:
    return 0.5 * jnp.square(log_ratio)


def _k3(log_ratio: jax.Array) -> jax.Array:
    ref_minus_logp = jnp.clip(-log_ratio, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    return jnp.clip(jnp.exp(ref_minus_logp) - ref_minus_logp - 1.0, -_LOW_VAR_KL_CLAMP, _LOW_VAR_KL_CLAMP)


# verl's kl_penalty names (and J. Schulman's k1/k2/k3 aliases) -> estimator of d = logp - logp_ref.
_KL_ESTIMATORS = {"kl": _k1, "k1": _k1, "abs": _abs, "mse": _k2, "k2": _k2, "low_var_kl": _k3, "k3": _k3}
KL_ESTIMATORS: tuple[str, ...] = tuple(_KL_ESTIMATORS)


def kl_penalty(logprobs: jax.Array, ref_logprobs: jax.Array, kind: str) -> jax.Array:
    """Per-token KL estimate between the policy and the reference (verl ``kl_penalty``; J. Schulman's k1/k2/k3).

    With d = logp - logp_ref:
      'kl' | 'k1':          d
      'abs':                |d|
      'mse' | 'k2':         0.5 d^2
      'low_var_kl' | 'k3':  clip(exp(k) - k - 1, -10, 10),  k = clip(logp_ref - logp, -20, 20)
    'full' (needs full-vocabulary logits) is not supported, as in verl.
    """
    chex.assert_equal_shape((logprobs, ref_logprobs))
    if kind not in _KL_ESTIMATORS:
        raise ValueError(f"kl penalty kind {kind!r} is not supported; allowed: {', '.join(KL_ESTIMATORS)}")
    return _KL_ESTIMATORS[kind](jnp.asarray(logprobs, jnp.float32) - jnp.asarray(ref_logprobs, jnp.float32))
