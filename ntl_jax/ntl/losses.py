"""Number Token Loss (NTL) on the digit-logit slice, pure and jittable.

Every function takes ``digit_logits = logits[..., digit_ids]`` (shape ``[..., 10]``, column ``k`` is the token
"k") and integer ``target_digits`` (``[...]``). Probabilities are a softmax over those 10 columns only, in
float32 (Zausinger et al., "Regress, Don't Guess", ICML 2025; ``ntloss``):

    p_k        = softmax(digit_logits)_k                       k = 0..9
    NTL-MSE    = (sum_k p_k * k - y)^2
    NTL-WAS    = sum_k p_k * |k - y|                            (Wasserstein-1 to the one-hot target)
    NTL-number = |Yhat - Y| / (|Yhat| + |Y| + eps)               (symmetric MAPE, per number; see below)

A target outside 0..9 (e.g. -1 for "no target") is ignored exactly like a zero mask weight. ``mask`` may be
bool or float weights (hybrid reward mode passes fractional weights). Scalar reduction:

    loss = sum(per_pos * w) / sum(w),    w = mask * [0 <= y <= 9]

which is 0 with finite (zero) gradients when nothing is masked in (sum(w) = 0).

Which digits form one number (for NTL-number) is a :class:`NumberLayout`: the PPO targets give it explicitly (so
``1,000`` is one number whose comma has no target); without one, maximal runs of consecutive targeted positions
are the numbers (ntloss's convention on teacher-forced labels).
"""

from __future__ import annotations

from typing import Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

NUM_DIGITS = 10
METHODS = ("mse", "wasserstein", "number")
# ntloss NumberLevelLoss precomputes 10^0..10^(max_number_length-1) and clamps longer numbers' exponents.
MAX_NUMBER_LENGTH = 20

_DIGIT_VALUES = np.arange(NUM_DIGITS, dtype=np.float32)  # numpy: importing must not start a JAX backend


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"NTL method={method!r} is invalid; allowed: 'mse', 'wasserstein', 'number'")


def _check_digit_logits(digit_logits: jax.Array, target_digits: jax.Array) -> None:
    chex.assert_axis_dimension(digit_logits, -1, NUM_DIGITS)
    chex.assert_equal_shape_prefix((digit_logits, target_digits), target_digits.ndim)
    chex.assert_rank(digit_logits, target_digits.ndim + 1)


def valid_target_mask(target_digits: jax.Array) -> jax.Array:
    """``0 <= y <= 9`` elementwise (bool ``[...]``)."""
    return (target_digits >= 0) & (target_digits <= 9)


def effective_weights(target_digits: jax.Array, mask: jax.Array) -> jax.Array:
    """``w = mask * [0 <= y <= 9]`` as float32: positions with an out-of-range target weigh nothing."""
    return jnp.where(valid_target_mask(target_digits), mask.astype(jnp.float32), 0.0)


def digit_probs(digit_logits: jax.Array) -> jax.Array:
    """``p = softmax(digit_logits)`` over the 10 digit columns only, float32 ``[..., 10]``."""
    chex.assert_axis_dimension(digit_logits, -1, NUM_DIGITS)
    return jax.nn.softmax(digit_logits.astype(jnp.float32), axis=-1)


def expected_digit(digit_logits: jax.Array) -> jax.Array:
    """``E[d] = sum_k p_k * k`` (float32 ``[...]``)."""
    return digit_probs(digit_logits) @ _DIGIT_VALUES


def _target_values(target_digits: jax.Array) -> jax.Array:
    # Clipped so out-of-range targets still give finite values (and gradients) before being zeroed.
    return jnp.clip(target_digits, 0, 9).astype(jnp.float32)


def ntl_mse_per_position(digit_logits: jax.Array, target_digits: jax.Array) -> jax.Array:
    """``(sum_k p_k k - y)^2`` per position; 0 where ``y`` is outside 0..9."""
    _check_digit_logits(digit_logits, target_digits)
    err = expected_digit(digit_logits) - _target_values(target_digits)
    return jnp.where(valid_target_mask(target_digits), err * err, 0.0)


def ntl_wasserstein_per_position(digit_logits: jax.Array, target_digits: jax.Array) -> jax.Array:
    """``sum_k p_k |k - y|`` per position; 0 where ``y`` is outside 0..9."""
    _check_digit_logits(digit_logits, target_digits)
    distance = jnp.abs(_DIGIT_VALUES - _target_values(target_digits)[..., None])
    loss = jnp.sum(digit_probs(digit_logits) * distance, axis=-1)
    return jnp.where(valid_target_mask(target_digits), loss, 0.0)


@flax.struct.dataclass
class NumberLayout:
    """Which number each targeted digit belongs to, its place, and the number's true value ([..., T] each)."""

    number_ids: jax.Array  # int32, per row: 0, 1, ... for the numbers, -1 for positions in none
    places: jax.Array  # int32, exponent of the digit's place value (units 0, tens 1, first decimal -1)
    truth: jax.Array  # float32, the true value of the digit's number (0 outside numbers)


def place_value(places: jax.Array) -> jax.Array:
    """``10^place`` in float32, the place clamped to ``[-(MAX_NUMBER_LENGTH - 1), MAX_NUMBER_LENGTH - 1]``.

    Negative places are decimals. The clamp keeps every number the model can write finite: an answer of 40
    digits would overflow float32 (``10^39 > 3.4e38``) and turn its error into inf or nan; clamped, it is still
    wrong by ``>= 10^19``.
    """
    limit = MAX_NUMBER_LENGTH - 1
    return jnp.power(10.0, jnp.clip(places, -limit, limit).astype(jnp.float32))


def layout_from_runs(target_digits: jax.Array, mask: jax.Array) -> NumberLayout:
    """Numbers = maximal runs of consecutive positions with ``mask > 0`` and a target in 0..9 (along the last axis).

    A run of ``n`` digits has places ``n - 1, ..., 0`` (clamped at MAX_NUMBER_LENGTH - 1 as in ntloss) and true value
    ``sum_j y_j 10^(n - j)``.
    """
    batch_shape = target_digits.shape
    seq_len = batch_shape[-1] if batch_shape else 1
    in_run = (effective_weights(target_digits, mask) > 0).reshape(-1, seq_len)
    num_rows = in_run.shape[0]
    prev_in_run = jnp.pad(in_run[:, :-1], ((0, 0), (1, 0)))
    run_start = in_run & ~prev_in_run
    run_index = jnp.cumsum(run_start, axis=-1) - 1
    positions = jnp.broadcast_to(jnp.arange(seq_len), in_run.shape)
    start_position = jax.lax.cummax(jnp.where(run_start, positions, -1), axis=1)
    segment_ids = jnp.where(in_run, run_index + 1, 0) + (seq_len + 1) * jnp.arange(num_rows)[:, None]
    num_segments = num_rows * (seq_len + 1)
    run_length = jax.ops.segment_sum(in_run.astype(jnp.int32).ravel(), segment_ids.ravel(), num_segments)
    places = jnp.clip(run_length[segment_ids] - (positions - start_position + 1), 0, MAX_NUMBER_LENGTH - 1)
    digit_value = _target_values(target_digits).reshape(-1, seq_len) * place_value(places)
    truth = jax.ops.segment_sum(jnp.where(in_run, digit_value, 0.0).ravel(), segment_ids.ravel(), num_segments)
    return NumberLayout(number_ids=jnp.where(in_run, run_index, -1).reshape(batch_shape).astype(jnp.int32),
                        places=jnp.where(in_run, places, 0).reshape(batch_shape).astype(jnp.int32),
                        truth=jnp.where(in_run, truth[segment_ids], 0.0).reshape(batch_shape))


def expected_number(digit_logits: jax.Array, layout: NumberLayout, in_number: jax.Array) -> jax.Array:
    """``Yhat = sum_j E[d_j] 10^place_j`` over the digits of each number, written at each of its positions.

    ``in_number`` [..., T] bool: positions that count (others contribute nothing and read 0). Numbers are the
    ``layout.number_ids`` of each row.
    """
    batch_shape = layout.number_ids.shape
    seq_len = batch_shape[-1] if batch_shape else 1
    ids = layout.number_ids.reshape(-1, seq_len)
    counted = in_number.reshape(-1, seq_len) & (ids >= 0)
    num_rows = ids.shape[0]
    segment_ids = jnp.where(counted, jnp.clip(ids, 0, seq_len - 1) + 1, 0) + (seq_len + 1) * jnp.arange(num_rows)[:, None]
    contribution = jnp.where(counted, expected_digit(digit_logits).reshape(-1, seq_len)
                             * place_value(layout.places.reshape(-1, seq_len)), 0.0)
    totals = jax.ops.segment_sum(contribution.ravel(), segment_ids.ravel(), num_rows * (seq_len + 1))
    return jnp.where(counted, totals[segment_ids], 0.0).reshape(batch_shape)


def ntl_number_per_position(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array,
                            layout: NumberLayout | None = None) -> jax.Array:
    """Number-level NTL, the per-number term of ``ntloss.NumberLevelLoss`` (float_level=False):

        Yhat = sum_j E[d_j] * 10^place_j,   Y = the number's true value (``layout.truth``)
        loss = |Yhat - Y| / (|Yhat| + |Y| + eps)        eps = float32 machine epsilon, loss in [0, 1]

    written to *every* targeted position of the number; 0 elsewhere. ``Y`` carries the sign the response gave the
    number (``sign * truth``), so a wrong sign costs the maximum, 1; a place the response lacks contributes 0 to
    ``Yhat`` while ``Y`` keeps it. Without ``layout`` the numbers are runs (:func:`layout_from_runs`).

    Differences from ``NumberLevelLoss`` (whose per-number value this equals on runs, to float32 rounding): ntloss
    writes the number's loss only at its first digit and its mean counts one term per number; the scalar here is a
    weighted mean over *digit positions*, so a number counts once per digit.
    """
    _check_digit_logits(digit_logits, target_digits)
    chex.assert_equal_shape((target_digits, mask))
    if layout is None:
        layout = layout_from_runs(target_digits, mask)
    counted = effective_weights(target_digits, mask) > 0
    number_hat = expected_number(digit_logits, layout, counted)
    number_true = layout.truth.astype(jnp.float32)
    eps = jnp.finfo(jnp.float32).eps
    smape = jnp.abs(number_hat - number_true) / (jnp.abs(number_hat) + jnp.abs(number_true) + eps)
    return jnp.where(counted & (layout.number_ids >= 0), smape, 0.0)


def ntl_per_position(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array, method: str,
                     layout: NumberLayout | None = None) -> jax.Array:
    """Per-position NTL for ``method`` in {'mse', 'wasserstein', 'number'}; ``mask`` and ``layout`` only shape
    'number''s numbers."""
    check_method(method)
    if method == "number":
        return ntl_number_per_position(digit_logits, target_digits, mask, layout)
    per_position_fns: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
        "mse": ntl_mse_per_position,
        "wasserstein": ntl_wasserstein_per_position,
    }
    return per_position_fns[method](digit_logits, target_digits)


def masked_weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(values * weights) / sum(weights)`` over all axes (0, with zero gradients, when no weight).

    The denominator is the true weight sum (not floored at 1) so fractional hybrid weights give a weighted mean.
    """
    total = jnp.sum(weights)
    return jnp.sum(values * weights) / jnp.where(total > 0, total, 1.0)


def ntl_loss(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array, method: str,
             layout: NumberLayout | None = None) -> jax.Array:
    """Scalar NTL: ``sum(per_pos * w) / sum(w)`` with ``w = mask * [0 <= y <= 9]`` (0 when ``sum(w) = 0``)."""
    per_position = ntl_per_position(digit_logits, target_digits, mask, method, layout)
    return masked_weighted_mean(per_position, effective_weights(target_digits, mask))


def ntl_mse(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array) -> jax.Array:
    """Scalar NTL-MSE (``ntloss.NTLossDotProduct(reweigh=False)`` on the same digit labels)."""
    return ntl_loss(digit_logits, target_digits, mask, "mse")


def ntl_wasserstein(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array) -> jax.Array:
    """Scalar NTL-WAS (``ntloss.NTLoss(reweigh=False)`` on the same digit labels)."""
    return ntl_loss(digit_logits, target_digits, mask, "wasserstein")


def ntl_number(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array) -> jax.Array:
    """Scalar number-level NTL, a digit-weighted mean of per-number sMAPE (see ``ntl_number_per_position``)."""
    return ntl_loss(digit_logits, target_digits, mask, "number")


def ntl_per_sequence(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array, method: str,
                     layout: NumberLayout | None = None) -> jax.Array:
    """Per-row weighted mean ``sum_t l_t w_t / sum_t w_t`` over ``[B, T]`` (0 for rows with no weight) -> ``[B]``.

    Like the batch scalar, the denominator is the true weight sum: a reward needs the true mean of a row even
    when hybrid weights sum to less than one.
    """
    chex.assert_rank(target_digits, 2)
    per_position = ntl_per_position(digit_logits, target_digits, mask, method, layout)
    weights = effective_weights(target_digits, mask)
    row_weight = jnp.sum(weights, axis=-1)
    safe_row_weight = jnp.where(row_weight > 0, row_weight, 1.0)
    return jnp.sum(per_position * weights, axis=-1) / safe_row_weight


def digit_predictions(digit_logits: jax.Array) -> jax.Array:
    """``argmax_k digit_logits`` (int32 ``[...]``), the most likely digit."""
    chex.assert_axis_dimension(digit_logits, -1, NUM_DIGITS)
    return jnp.argmax(digit_logits, axis=-1).astype(jnp.int32)


def digit_correct(digit_logits: jax.Array, target_digits: jax.Array) -> jax.Array:
    """``argmax_k digit_logits == y`` (bool ``[...]``; False where ``y`` is outside 0..9)."""
    _check_digit_logits(digit_logits, target_digits)
    return (digit_predictions(digit_logits) == target_digits) & valid_target_mask(target_digits)


def digit_accuracy(digit_logits: jax.Array, target_digits: jax.Array, mask: jax.Array) -> jax.Array:
    """Fraction of counted digits (``mask > 0`` and ``y`` in 0..9) whose argmax is right; each counts once."""
    counted = effective_weights(target_digits, mask) > 0
    num_correct = jnp.sum(digit_correct(digit_logits, target_digits) & counted)
    return num_correct / jnp.maximum(jnp.sum(counted), 1)
