"""``NTLInfo``: the per-batch NTL record that reward functions and logs read.

Built once per batch from the digit-logit slice the log-prob pass returns; ``sample_view(i)`` is the plain-Python
dict a reward function receives as its ``ntl_info`` kwarg.
"""

from __future__ import annotations

from typing import Any, Sequence

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ntl_jax.ntl import losses


@flax.struct.dataclass
class NTLInfo:
    """NTL statistics of a batch of ``B`` responses of length ``T``.

    ``digit_positions`` marks the digits that have a target (``0 <= y <= 9``) and a positive weight;
    ``digit_ground_truth`` holds their targets (-1 elsewhere). Losses follow ``losses.ntl_loss`` /
    ``losses.ntl_per_sequence`` for ``method``; accuracies count each marked digit once.
    """

    digit_log_probs: jax.Array  # [B, T, 10] float32, log-softmax over the digit slice
    digit_positions: jax.Array  # [B, T] bool
    digit_ground_truth: jax.Array  # [B, T] int32, -1 where no target
    ntl_loss: jax.Array  # [] float32
    per_sequence_loss: jax.Array  # [B] float32
    digit_accuracy: jax.Array  # [] float32
    per_sequence_digit_accuracy: jax.Array  # [B] float32
    total_digits: jax.Array  # [] int32
    correct_digits: jax.Array  # [] int32
    has_digits: jax.Array  # [B] bool
    method: str = flax.struct.field(pytree_node=False, default="wasserstein")
    batch_size: int = flax.struct.field(pytree_node=False, default=0)
    seq_len: int = flax.struct.field(pytree_node=False, default=0)
    sequence_strings: tuple[str, ...] | None = flax.struct.field(pytree_node=False, default=None)

    def to_host(self) -> "NTLInfo":
        """The same record with every array fetched to numpy (do this once before many ``sample_view`` calls)."""
        return jax.device_get(self)

    def sample_view(self, i: int) -> dict[str, Any]:
        """Sample ``i`` as plain Python values (the ``ntl_info`` kwarg of a reward function).

        Keys: ntl_loss, digit_accuracy (float); total_digits, correct_digits (int); has_digits (bool);
        digit_positions (token indices), digit_ground_truth, digit_predictions (lists of int, aligned); method.
        """
        if not 0 <= i < self.batch_size:
            raise ValueError(f"sample index i={i} is invalid; allowed: 0 <= i < batch_size={self.batch_size}")
        positions = np.flatnonzero(np.asarray(self.digit_positions[i]))
        ground_truth = np.asarray(self.digit_ground_truth[i])[positions]
        predictions = np.argmax(np.asarray(self.digit_log_probs[i]), axis=-1)[positions]
        view = {
            "ntl_loss": float(self.per_sequence_loss[i]),
            "digit_accuracy": float(self.per_sequence_digit_accuracy[i]),
            "total_digits": int(positions.size),
            "correct_digits": int(np.sum(predictions == ground_truth)),
            "has_digits": bool(self.has_digits[i]),
            "digit_positions": [int(t) for t in positions],
            "digit_ground_truth": [int(y) for y in ground_truth],
            "digit_predictions": [int(k) for k in predictions],
            "method": self.method,
        }
        if self.sequence_strings is not None:
            view["sequence_string"] = self.sequence_strings[i]
        return view

    def sample_views(self) -> list[dict[str, Any]]:
        """``[sample_view(i) for i in range(B)]`` with a single device-to-host transfer."""
        host = self.to_host()
        return [host.sample_view(i) for i in range(self.batch_size)]

    def to_metrics(self) -> dict[str, float]:
        """Batch metrics: ntl/loss, ntl/digit_accuracy, ntl/total_digits (+ correct digits, share with digits)."""
        return {
            "ntl/loss": float(self.ntl_loss),
            "ntl/digit_accuracy": float(self.digit_accuracy),
            "ntl/total_digits": float(self.total_digits),
            "ntl/correct_digits": float(self.correct_digits),
            "ntl/frac_sequences_with_digits": float(np.mean(np.asarray(self.has_digits))) if self.batch_size else 0.0,
        }


def _ntl_info_arrays(digit_logits: jax.Array, target_digits: jax.Array, weights: jax.Array, method: str) -> NTLInfo:
    counted = losses.effective_weights(target_digits, weights) > 0
    correct = losses.digit_correct(digit_logits, target_digits) & counted
    digits_per_row = jnp.sum(counted, axis=-1, dtype=jnp.int32)
    correct_per_row = jnp.sum(correct, axis=-1, dtype=jnp.int32)
    batch_size, seq_len = target_digits.shape
    return NTLInfo(
        digit_log_probs=jax.nn.log_softmax(digit_logits.astype(jnp.float32), axis=-1),
        digit_positions=counted,
        digit_ground_truth=jnp.where(counted, target_digits, -1).astype(jnp.int32),
        ntl_loss=losses.ntl_loss(digit_logits, target_digits, weights, method),
        per_sequence_loss=losses.ntl_per_sequence(digit_logits, target_digits, weights, method),
        digit_accuracy=losses.digit_accuracy(digit_logits, target_digits, weights),
        per_sequence_digit_accuracy=correct_per_row / jnp.maximum(digits_per_row, 1),
        total_digits=jnp.sum(digits_per_row),
        correct_digits=jnp.sum(correct_per_row),
        has_digits=digits_per_row > 0,
        method=method,
        batch_size=batch_size,
        seq_len=seq_len,
    )


_ntl_info_arrays_jit = jax.jit(_ntl_info_arrays, static_argnames="method")


def compute_ntl_info(
    digit_logits: jax.Array,
    target_digits: jax.Array,
    weights: jax.Array,
    method: str,
    sequence_strings: Sequence[str] | None = None,
) -> NTLInfo:
    """Build ``NTLInfo`` from ``digit_logits [B,T,10]``, ``target_digits [B,T]`` (-1 none), ``weights [B,T]``.

    Jitted with ``method`` static; safe to call inside an outer ``jax.jit`` when ``sequence_strings`` is None.
    """
    losses.check_method(method)
    chex.assert_rank(target_digits, 2)
    chex.assert_equal_shape((target_digits, weights))
    chex.assert_shape(digit_logits, (*target_digits.shape, losses.NUM_DIGITS))
    info = _ntl_info_arrays_jit(digit_logits, target_digits, weights, method=method)
    if sequence_strings is None:
        return info
    strings = tuple(str(s) for s in sequence_strings)
    if len(strings) != info.batch_size:
        raise ValueError(f"len(sequence_strings)={len(strings)} is invalid; allowed: batch_size={info.batch_size}")
    return info.replace(sequence_strings=strings)
