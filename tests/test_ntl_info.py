"""NTLInfo: hand-computed batch, plain-Python sample views, metrics, pytree/jit behaviour."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from ntl_jax.ntl import losses
from ntl_jax.ntl.info import DigitTargets, NTLInfo, compute_ntl_info


def _batch():
    """Row 0: digits at t=0,1 (argmax 3 right, argmax 0 wrong), t=2 weight 0. Row 1: no digits. Row 2: one digit."""
    one_hot = lambda d: 60.0 * jax.nn.one_hot(d, 10)  # noqa: E731
    digit_logits = jnp.stack([
        jnp.stack([one_hot(3), jnp.zeros(10), one_hot(5), jnp.zeros(10)]),
        jnp.stack([jnp.zeros(10)] * 4),
        jnp.stack([jnp.zeros(10), jnp.zeros(10), jnp.zeros(10), one_hot(7)]),
    ])
    targets = jnp.array([[3, 4, 6, -1], [-1, -1, -1, -1], [-1, -1, -1, 9]])
    weights = jnp.array([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    return digit_logits, DigitTargets.from_arrays(targets, weights)


def test_compute_ntl_info_hand_computed_wasserstein():
    digit_logits, targets = _batch()
    info = compute_ntl_info(digit_logits, targets, "wasserstein", sequence_strings=["34", "none", "7"])
    assert (info.batch_size, info.seq_len, info.method) == (3, 4, "wasserstein")
    assert info.sequence_strings == ("34", "none", "7")
    assert info.digit_log_probs.shape == (3, 4, 10)
    np.testing.assert_allclose(jnp.exp(info.digit_log_probs[1, 0]), np.full(10, 0.1), rtol=1e-6)
    np.testing.assert_array_equal(info.digit_positions, [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(info.digit_ground_truth, [[3, 4, -1, -1], [-1] * 4, [-1, -1, -1, 9]])
    # Row 0: WAS 0 (exact 3) and 2.5 (uniform vs 4); row 2: |7 - 9| = 2.
    np.testing.assert_allclose(info.per_sequence_loss, [1.25, 0.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(info.ntl_loss, (0.0 + 2.5 + 2.0) / 3, atol=1e-5)
    np.testing.assert_allclose(info.per_sequence_digit_accuracy, [0.5, 0.0, 0.0])
    np.testing.assert_allclose(info.digit_accuracy, 1 / 3, rtol=1e-6)
    assert int(info.total_digits) == 3 and int(info.correct_digits) == 1
    np.testing.assert_array_equal(info.has_digits, [True, False, True])


def test_sample_view_is_plain_python():
    digit_logits, targets = _batch()
    info = compute_ntl_info(digit_logits, targets, "mse")
    view = info.sample_view(0)
    assert view == {
        "ntl_loss": pytest.approx((0.0 + 0.5**2) / 2, abs=1e-5),
        "answer_error": 0.0,
        "number_error": 0.0,
        "answer_confidence": 0.0,
        "digit_accuracy": 0.5,
        "total_digits": 2,
        "correct_digits": 1,
        "missing_digits": 0,
        "has_digits": True,
        "has_answer": False,
        "sign_wrong": False,
        "bad_ground_truth": False,
        "digit_positions": [0, 1],
        "digit_ground_truth": [3, 4],
        "digit_predictions": [3, 0],
        "method": "mse",
    }
    assert all(type(v) in (float, int, bool, list, str) for v in view.values())
    empty = info.sample_view(1)
    assert empty["has_digits"] is False and empty["digit_positions"] == [] and empty["ntl_loss"] == 0.0
    assert info.sample_views() == [info.sample_view(i) for i in range(3)]
    with pytest.raises(ValueError, match="sample index i=3 is invalid"):
        info.sample_view(3)


def test_to_metrics():
    digit_logits, targets = _batch()
    metrics = compute_ntl_info(digit_logits, targets, "wasserstein").to_metrics()
    assert metrics["ntl/loss"] == pytest.approx(1.5, abs=1e-5)
    assert metrics["ntl/digit_accuracy"] == pytest.approx(1 / 3)
    assert metrics["ntl/total_digits"] == 3.0
    assert metrics["ntl/frac_with_digits"] == pytest.approx(2 / 3)
    assert metrics["ntl/bad_ground_truth"] == 0.0 and metrics["ntl/frac_with_answer"] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())


def test_number_method_matches_losses_module():
    key = jax.random.PRNGKey(0)
    digit_logits = jax.random.normal(key, (2, 6, 10))
    targets = jnp.array([[1, 2, -1, 3, 4, 5], [0, -1, 9, 9, -1, -1]])
    weights = (targets >= 0).astype(jnp.float32)
    info = compute_ntl_info(digit_logits, DigitTargets.from_arrays(targets, weights), "number")
    np.testing.assert_allclose(info.ntl_loss, losses.ntl_number(digit_logits, targets, weights), rtol=1e-6)
    np.testing.assert_allclose(info.per_sequence_loss,
                               losses.ntl_per_sequence(digit_logits, targets, weights, "number"), rtol=1e-6)


def test_pytree_static_fields_and_outer_jit():
    digit_logits, targets = _batch()

    @jax.jit
    def loss_and_info(logits):
        info = compute_ntl_info(logits, targets, "wasserstein")
        return info.ntl_loss * 2.0, info

    doubled, info = loss_and_info(digit_logits)
    assert isinstance(info, NTLInfo) and info.method == "wasserstein" and info.batch_size == 3
    np.testing.assert_allclose(doubled, 3.0, atol=1e-5)
    assert len(jax.tree_util.tree_leaves(info)) == 17  # static fields are not leaves
    host = info.to_host()
    assert isinstance(host.digit_log_probs, np.ndarray) and host.seq_len == 4


def test_bad_inputs():
    digit_logits, targets = _batch()
    with pytest.raises(ValueError, match=r"len\(sequence_strings\)=2 is invalid"):
        compute_ntl_info(digit_logits, targets, "mse", sequence_strings=["a", "b"])
    with pytest.raises(ValueError, match="method='ce' is invalid"):
        compute_ntl_info(digit_logits, targets, "ce")
    with pytest.raises(AssertionError):
        compute_ntl_info(digit_logits[..., :9], targets, "mse")
