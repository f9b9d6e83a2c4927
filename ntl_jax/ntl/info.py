"""``NTLInfo``: the per-batch NTL record that reward functions and logs read.

Built once per batch from the digit-logit slice the log-prob pass returns and the batch's :class:`DigitTargets`;
``sample_view(i)`` is the plain-Python dict a reward function receives as its ``ntl_info`` kwarg.

Per sequence, with ``l_t`` the method's loss at targeted digit ``t`` and ``w_t`` its weight:

    ntl_loss      = (sum_t w_t l_t + w_a * sum_missing l0(y)) / (sum_t w_t + w_a * n_missing)
                    l0(y) = the loss of a certain 0 against the missing truth digit y (Wasserstein y, MSE y^2),
                    w_a = the final answer's weight; an answer with the wrong sign counts the method's largest
                    loss (Wasserstein 9, MSE 81) at each of its places. NTL-number sees missing places and the
                    sign in its number values already. A wrong digit count or sign is never free.
    answer_error  = |Yhat - Y| / max(|Y|, 1),  Yhat = sign * sum_j E[d_j] 10^place_j over the answer's digits
                    (the answer's sign, the model's expected digits; a missing place adds 0), Y the signed truth:
                    the relative error of the answer the model expects (0 without an answer)
    number_error  = the largest relative error over the numbers with targets (the answer and, in all_tokens /
                    hybrid mode, every checked step): restating a correct number cannot hide a wrong one.
    answer_confidence = min_j p_j(written digit_j) over the digits the answer shows, p_j the softmax over the ten
                    digit logits: a number is as sure as its least sure digit. 0 without an answer or when a digit
                    sits on a merged multi-digit token. How surely the model wrote what it wrote, never how close
                    that is to the truth.

``answer_error`` and ``number_error`` describe the model's digit distributions, not the number it wrote: a hedge
between a right and a wrong digit lowers them. The built-in NTL reward therefore grades the written number
(``ntl_jax.rewards.ntl_rewards``) and reads only ``answer_confidence`` from here.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ntl_jax.ntl import losses
from ntl_jax.ntl.targets import BatchTargets

#: Largest per-digit loss of each method: what a place of an answer with the wrong sign costs.
MAX_DIGIT_LOSS = {"wasserstein": 9.0, "mse": 81.0, "number": 1.0}


@flax.struct.dataclass
class DigitTargets:
    """A batch's NTL targets on device (``ntl_jax.ntl.targets.BatchTargets`` as arrays); [B, T] or [B]."""

    target_digits: jax.Array  # [B, T] int32, -1 where no target
    weights: jax.Array  # [B, T] float32
    layout: losses.NumberLayout  # [B, T] number ids, places, true values (NTL-number, number errors)
    is_final_answer: jax.Array  # [B, T] bool, digits of the final answer
    written_digits: jax.Array  # [B, T] int32, the digit a final-answer token shows, -1 elsewhere
    answer_digit_count: jax.Array  # [B] int32, digits the final answer shows (merged tokens included)
    answer_truth: jax.Array  # [B] float32, answer sign * truth
    answer_weight: jax.Array  # [B] float32, weight of the answer's places (1, or hybrid_weight)
    has_answer: jax.Array  # [B] bool
    missing_digits: jax.Array  # [B] int32
    missing_digit_sum: jax.Array  # [B] float32
    missing_digit_square_sum: jax.Array  # [B] float32
    sign_wrong: jax.Array  # [B] bool
    bad_ground_truth: jax.Array  # [B] bool

    @classmethod
    def from_batch(cls, batch: BatchTargets, answer_weight: float = 1.0) -> "DigitTargets":
        """Host (numpy) targets of ``build_batch_targets``; place them on devices before use."""
        size = batch.target_digits.shape[0]
        return cls(
            target_digits=np.asarray(batch.target_digits, np.int32), weights=np.asarray(batch.weights, np.float32),
            layout=losses.NumberLayout(number_ids=np.asarray(batch.number_index, np.int32),
                                       places=np.asarray(batch.places, np.int32),
                                       truth=np.asarray(batch.number_truth, np.float32)),
            is_final_answer=np.asarray(batch.is_final_answer, bool),
            written_digits=np.asarray(batch.written_digits, np.int32),
            answer_digit_count=np.asarray(batch.answer_digit_count, np.int32),
            answer_truth=np.asarray(batch.answer_truth, np.float32),
            answer_weight=np.full((size,), answer_weight, np.float32),
            has_answer=np.asarray(batch.has_answer, bool), missing_digits=np.asarray(batch.missing_digits, np.int32),
            missing_digit_sum=np.asarray(batch.missing_digit_sum, np.float32),
            missing_digit_square_sum=np.asarray(batch.missing_digit_square_sum, np.float32),
            sign_wrong=np.asarray(batch.sign_wrong, bool), bad_ground_truth=np.asarray(batch.bad_ground_truth, bool))

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> "DigitTargets":
        """No targets for a [B, T] batch (standard PPO), as host arrays."""
        size = shape[0]
        zeros = np.zeros((size,), np.float32)
        return cls(target_digits=np.full(shape, -1, np.int32), weights=np.zeros(shape, np.float32),
                   layout=losses.NumberLayout(number_ids=np.full(shape, -1, np.int32),
                                              places=np.zeros(shape, np.int32), truth=np.zeros(shape, np.float32)),
                   is_final_answer=np.zeros(shape, bool), written_digits=np.full(shape, -1, np.int32),
                   answer_digit_count=np.zeros((size,), np.int32), answer_truth=zeros, answer_weight=zeros,
                   has_answer=np.zeros((size,), bool), missing_digits=np.zeros((size,), np.int32),
                   missing_digit_sum=zeros, missing_digit_square_sum=zeros, sign_wrong=np.zeros((size,), bool),
                   bad_ground_truth=np.zeros((size,), bool))

    @classmethod
    def from_arrays(cls, target_digits: Any, weights: Any, layout: losses.NumberLayout | None = None) -> "DigitTargets":
        """Targets without answer bookkeeping (teacher-forced labels, tests): numbers are runs, no answer."""
        target_digits, weights = jnp.asarray(target_digits, jnp.int32), jnp.asarray(weights, jnp.float32)
        empty = cls.empty(target_digits.shape)
        return empty.replace(target_digits=target_digits, weights=weights,
                             layout=losses.layout_from_runs(target_digits, weights) if layout is None else layout)


@flax.struct.dataclass
class NTLInfo:
    """NTL statistics of a batch of ``B`` responses of length ``T`` (formulas in the module docstring).

    ``digit_positions`` marks the digits that have a target (``0 <= y <= 9``) and a positive weight;
    ``digit_ground_truth`` holds their targets (-1 elsewhere); accuracies count each marked digit once and each
    missing answer digit as wrong.
    """

    digit_log_probs: jax.Array  # [B, T, 10] float32, log-softmax over the digit slice
    digit_positions: jax.Array  # [B, T] bool
    digit_ground_truth: jax.Array  # [B, T] int32, -1 where no target
    ntl_loss: jax.Array  # [] float32, weighted mean over the batch's targeted digits
    per_sequence_loss: jax.Array  # [B] float32
    answer_error: jax.Array  # [B] float32
    number_error: jax.Array  # [B] float32
    answer_confidence: jax.Array  # [B] float32
    digit_accuracy: jax.Array  # [] float32
    per_sequence_digit_accuracy: jax.Array  # [B] float32
    total_digits: jax.Array  # [] int32
    correct_digits: jax.Array  # [] int32
    has_digits: jax.Array  # [B] bool
    has_answer: jax.Array  # [B] bool
    missing_digits: jax.Array  # [B] int32
    sign_wrong: jax.Array  # [B] bool
    bad_ground_truth: jax.Array  # [B] bool
    method: str = flax.struct.field(pytree_node=False, default="wasserstein")
    batch_size: int = flax.struct.field(pytree_node=False, default=0)
    seq_len: int = flax.struct.field(pytree_node=False, default=0)
    sequence_strings: tuple[str, ...] | None = flax.struct.field(pytree_node=False, default=None)
    answer_texts: tuple[str | None, ...] | None = flax.struct.field(pytree_node=False, default=None)

    def to_host(self, fetch: Callable[[jax.Array], np.ndarray] = np.asarray) -> "NTLInfo":
        """The same record with every array fetched to numpy by ``fetch`` (do this once before many
        ``sample_view`` calls). ``np.asarray`` serves one process; the trainer passes
        ``ntl_jax.distributed.multihost.to_host``, which gathers arrays sharded over several processes, so that
        ``ntl/`` itself needs nothing of the distributed layer."""
        return jax.tree.map(lambda x: fetch(x) if isinstance(x, (jax.Array, np.ndarray)) else x, self)

    def sample_view(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as plain Python values (the ``ntl_info`` kwarg of a reward function).

        Keys: ntl_loss, answer_error, number_error, answer_confidence, digit_accuracy (float); total_digits,
        correct_digits, missing_digits (int); has_digits, has_answer, sign_wrong, bad_ground_truth (bool);
        digit_positions (token indices), digit_ground_truth, digit_predictions (lists of int, aligned); method;
        answer_text (the answer NTL read, as its scorer compares it) when the record has it.
        """
        if not 0 <= i < self.batch_size:
            raise ValueError(f"sample index i={i} is invalid; allowed: 0 <= i < batch_size={self.batch_size}")
        positions = np.flatnonzero(np.asarray(self.digit_positions[i]))
        ground_truth = np.asarray(self.digit_ground_truth[i])[positions]
        predictions = np.argmax(np.asarray(self.digit_log_probs[i]), axis=-1)[positions]
        view = {
            "ntl_loss": float(self.per_sequence_loss[i]),
            "answer_error": float(self.answer_error[i]),
            "number_error": float(self.number_error[i]),
            "answer_confidence": float(self.answer_confidence[i]),
            "digit_accuracy": float(self.per_sequence_digit_accuracy[i]),
            "total_digits": int(positions.size),
            "correct_digits": int(np.sum(predictions == ground_truth)),
            "missing_digits": int(self.missing_digits[i]),
            "has_digits": bool(self.has_digits[i]),
            "has_answer": bool(self.has_answer[i]),
            "sign_wrong": bool(self.sign_wrong[i]),
            "bad_ground_truth": bool(self.bad_ground_truth[i]),
            "digit_positions": [int(t) for t in positions],
            "digit_ground_truth": [int(y) for y in ground_truth],
            "digit_predictions": [int(k) for k in predictions],
            "method": self.method,
        }
        if self.sequence_strings is not None:
            view["sequence_string"] = self.sequence_strings[i]
        if self.answer_texts is not None:
            view["answer_text"] = self.answer_texts[i]
        return view

    def sample_views(self, fetch: Callable[[jax.Array], np.ndarray] = np.asarray) -> list[dict[str, Any]]:
        """``[sample_view(i) for i in range(B)]`` with a single device-to-host transfer (``fetch``: as in
        :meth:`to_host`)."""
        host = self.to_host(fetch)
        return [host.sample_view(i) for i in range(self.batch_size)]

    def to_metrics(self) -> dict[str, float]:
        """Batch metrics (``ntl/*``): loss, digit accuracy, digits, answers, missing digits, sign errors, bad truths."""
        has_answer = np.asarray(self.has_answer)
        answer_error = np.asarray(self.answer_error)[has_answer]
        return {
            "ntl/loss": float(self.ntl_loss),
            "ntl/digit_accuracy": float(self.digit_accuracy),
            "ntl/total_digits": float(self.total_digits),
            "ntl/correct_digits": float(self.correct_digits),
            "ntl/frac_with_digits": float(np.mean(np.asarray(self.has_digits))) if self.batch_size else 0.0,
            "ntl/frac_with_answer": float(np.mean(has_answer)) if self.batch_size else 0.0,
            "ntl/answer_error": float(np.median(answer_error)) if answer_error.size else 0.0,
            "ntl/missing_digits": float(np.sum(np.asarray(self.missing_digits))),
            "ntl/sign_wrong": float(np.sum(np.asarray(self.sign_wrong))),
            "ntl/bad_ground_truth": float(np.sum(np.asarray(self.bad_ground_truth))),
        }


def _relative_error(estimate: jax.Array, truth: jax.Array) -> jax.Array:
    """``|estimate - truth| / max(|truth|, 1)``, kept finite (a truth beyond float32, ~3.4e38, reads as the largest
    float32 error) so a reward ``exp(-error / tau)`` is 0 there rather than an error."""
    error = jnp.abs(estimate - truth) / jnp.maximum(jnp.abs(truth), 1.0)
    largest = jnp.finfo(jnp.float32).max
    return jnp.nan_to_num(error, nan=largest, posinf=largest)


def _ntl_info_arrays(digit_logits: jax.Array, targets: DigitTargets, method: str) -> NTLInfo:
    target_digits, weights = targets.target_digits, targets.weights
    w = losses.effective_weights(target_digits, weights)
    counted = w > 0
    per_position = losses.ntl_per_position(digit_logits, target_digits, weights, method, targets.layout)
    # Per sequence: the answer's missing places and a wrong sign are counted (module docstring).
    answer_place = counted & targets.is_final_answer
    if method != "number":
        wrong_sign = targets.sign_wrong[:, None] & answer_place
        per_position_seq = jnp.where(wrong_sign, MAX_DIGIT_LOSS[method], per_position)
        missing_loss = targets.missing_digit_sum if method == "wasserstein" else targets.missing_digit_square_sum
        missing_loss = jnp.where(targets.sign_wrong, MAX_DIGIT_LOSS[method] * targets.missing_digits, missing_loss)
    else:
        per_position_seq, missing_loss = per_position, jnp.zeros_like(targets.missing_digit_sum)
    missing_weight = targets.answer_weight * targets.missing_digits * (method != "number")
    row_weight = jnp.sum(w, axis=-1) + missing_weight
    row_total = jnp.sum(per_position_seq * w, axis=-1) + targets.answer_weight * missing_loss
    per_sequence = row_total / jnp.where(row_weight > 0, row_weight, 1.0)

    # Number-level errors: the answer (a row sum over its digits) and every targeted number (segments).
    place_value = losses.place_value(targets.layout.places)
    expected = losses.expected_digit(digit_logits)
    answer_digits = targets.is_final_answer & (target_digits >= 0)
    # |sign * M - Y| = |M - sign * Y|: the magnitude the model expects against the truth as the answer's sign sees it.
    magnitude = jnp.sum(jnp.where(answer_digits, expected * place_value, 0.0), axis=-1)
    answer_error = jnp.where(targets.has_answer, _relative_error(magnitude, targets.answer_truth), 0.0)
    numbers = losses.expected_number(digit_logits, targets.layout, counted)
    step_error = jnp.where(counted & (targets.layout.number_ids > 0),
                           _relative_error(numbers, targets.layout.truth), 0.0)
    number_error = jnp.maximum(answer_error, jnp.max(step_error, axis=-1, initial=0.0))
    digit_log_probs = jax.nn.log_softmax(digit_logits.astype(jnp.float32), axis=-1)
    written = targets.written_digits
    written_prob = jnp.exp(jnp.take_along_axis(digit_log_probs, jnp.maximum(written, 0)[..., None], axis=-1)[..., 0])
    shown = targets.is_final_answer & (written >= 0)
    weakest = jnp.min(jnp.where(shown, written_prob, 1.0), axis=-1)
    every_digit_shown = jnp.sum(shown, axis=-1) == targets.answer_digit_count
    answer_confidence = jnp.where(targets.has_answer & every_digit_shown, weakest, 0.0)

    correct = losses.digit_correct(digit_logits, target_digits) & counted
    digits_per_row = jnp.sum(counted, axis=-1, dtype=jnp.int32)
    correct_per_row = jnp.sum(correct, axis=-1, dtype=jnp.int32)
    scored_per_row = digits_per_row + targets.missing_digits
    batch_size, seq_len = target_digits.shape
    return NTLInfo(
        digit_log_probs=digit_log_probs,
        digit_positions=counted,
        digit_ground_truth=jnp.where(counted, target_digits, -1).astype(jnp.int32),
        ntl_loss=losses.masked_weighted_mean(per_position, w),
        per_sequence_loss=per_sequence,
        answer_error=answer_error,
        number_error=number_error,
        answer_confidence=answer_confidence,
        digit_accuracy=jnp.sum(correct_per_row) / jnp.maximum(jnp.sum(scored_per_row), 1),
        per_sequence_digit_accuracy=correct_per_row / jnp.maximum(scored_per_row, 1),
        total_digits=jnp.sum(digits_per_row),
        correct_digits=jnp.sum(correct_per_row),
        has_digits=digits_per_row > 0,
        has_answer=targets.has_answer,
        missing_digits=targets.missing_digits,
        sign_wrong=targets.sign_wrong,
        bad_ground_truth=targets.bad_ground_truth,
        method=method,
        batch_size=batch_size,
        seq_len=seq_len,
    )


_ntl_info_arrays_jit = jax.jit(_ntl_info_arrays, static_argnames="method")


def compute_ntl_info(
    digit_logits: jax.Array,
    targets: DigitTargets,
    method: str,
    sequence_strings: Sequence[str] | None = None,
    answer_texts: Sequence[str | None] | None = None,
) -> NTLInfo:
    """Build ``NTLInfo`` from ``digit_logits [B,T,10]`` and the batch's :class:`DigitTargets`; ``answer_texts``
    (``BatchTargets.answer_texts``) lets reward functions check that NTL read the answer their scorer grades.

    Jitted with ``method`` static; safe to call inside an outer ``jax.jit`` when both string lists are None.
    """
    losses.check_method(method)
    chex.assert_rank(targets.target_digits, 2)
    chex.assert_equal_shape((targets.target_digits, targets.weights))
    chex.assert_shape(digit_logits, (*targets.target_digits.shape, losses.NUM_DIGITS))
    info = _ntl_info_arrays_jit(digit_logits, targets, method=method)
    for name, values in (("sequence_strings", sequence_strings), ("answer_texts", answer_texts)):
        if values is not None and len(values) != info.batch_size:
            raise ValueError(f"len({name})={len(values)} is invalid; allowed: batch_size={info.batch_size}")
    if sequence_strings is not None:
        info = info.replace(sequence_strings=tuple(str(s) for s in sequence_strings))
    if answer_texts is not None:
        info = info.replace(answer_texts=tuple(None if t is None else str(t) for t in answer_texts))
    return info
