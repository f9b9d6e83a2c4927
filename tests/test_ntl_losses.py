"""NTL losses: hand-computed values, ntloss parity (real HF tokenizer + torch), jit, finite gradients."""

import numpy as np
import pytest
import torch
import jax
import jax.numpy as jnp
import ntloss
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ntl_jax.ntl import losses

torch.set_num_threads(1)

# Digits deliberately out of order and non-contiguous in the vocabulary.
_VOCAB_TOKENS = ["<pad>", "<eos>", "a", "7", "b", "3", "+", "0", "=", "9", "1", ".", "x", "5", "2", " ", "8",
                 "6", "-", "4", "#", "y"]
EXTRA_LOGITS = 9  # model logit dim > len(tokenizer), as with Qwen2.5


def _char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(_VOCAB_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def tokenizer():
    tok = _char_tokenizer()
    assert tok.convert_ids_to_tokens(tok.encode("12.5")) == ["1", "2", ".", "5"]
    return tok


def _digit_ids(tok) -> np.ndarray:
    vocab = tok.get_vocab()
    return np.array([vocab[str(d)] for d in range(10)], dtype=np.int32)


def _labels_to_digits(labels: np.ndarray, digit_ids: np.ndarray) -> np.ndarray:
    value_of_id = {int(tid): d for d, tid in enumerate(digit_ids)}
    return np.vectorize(lambda t: value_of_id.get(int(t), -1))(labels).astype(np.int32)


def _random_batch(tok, seed: int, batch: int = 3, seq_len: int = 17):
    """Random logits [B,T,V] and labels with digit runs, non-digits and -100."""
    rng = np.random.default_rng(seed)
    vocab_size = len(tok) + EXTRA_LOGITS
    digit_ids = _digit_ids(tok)
    non_digit_ids = np.array([i for i in range(len(tok)) if i not in set(digit_ids.tolist())])
    kind = rng.choice(3, size=(batch, seq_len), p=[0.6, 0.25, 0.15])
    labels = np.where(kind == 0, rng.choice(digit_ids, size=(batch, seq_len)),
                      np.where(kind == 1, rng.choice(non_digit_ids, size=(batch, seq_len)), -100))
    logits = (rng.normal(size=(batch, seq_len, vocab_size)) * 3.0).astype(np.float32)
    return logits, labels.astype(np.int64), digit_ids


def _ours(logits: np.ndarray, labels: np.ndarray, digit_ids: np.ndarray):
    digit_logits = jnp.asarray(logits)[..., jnp.asarray(digit_ids)]
    return digit_logits, jnp.asarray(_labels_to_digits(labels, digit_ids))


@pytest.mark.parametrize("seed", [0, 1])
def test_parity_with_ntloss_wasserstein_and_mse(tokenizer, seed):
    logits, labels, digit_ids = _random_batch(tokenizer, seed)
    vocab_size = logits.shape[-1]
    digit_logits, targets = _ours(logits, labels, digit_ids)
    mask = jnp.asarray(labels != -100)

    was_ref = ntloss.NTLoss(tokenizer, vocab_size=vocab_size, digit_level=True, reweigh=False)
    mse_ref = ntloss.NTLossDotProduct(tokenizer, vocab_size=vocab_size, digit_level=True, reweigh=False)
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
    np.testing.assert_allclose(jax.jit(losses.ntl_wasserstein)(digit_logits, targets, mask),
                               was_ref(t_logits, t_labels).item(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.jit(losses.ntl_mse)(digit_logits, targets, mask),
                               mse_ref(t_logits, t_labels).item(), rtol=1e-5, atol=1e-5)

    # Per position: ntloss reduction='none' is the [B,T] map of the same values.
    np.testing.assert_allclose(losses.ntl_wasserstein_per_position(digit_logits, targets),
                               was_ref(t_logits, t_labels, reduction="none").numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(losses.ntl_mse_per_position(digit_logits, targets),
                               mse_ref(t_logits, t_labels, reduction="none").numpy(), rtol=1e-5, atol=1e-5)

    # Float weights (sum > 1, where both reductions divide by the weight sum).
    weights = np.random.default_rng(seed + 10).uniform(0.5, 2.0, size=labels.shape).astype(np.float32)
    np.testing.assert_allclose(
        losses.ntl_wasserstein(digit_logits, targets, jnp.asarray(weights)),
        was_ref(t_logits, t_labels, loss_weights=torch.from_numpy(weights)).item(), rtol=1e-5, atol=1e-5)


def test_gradient_parity_with_ntloss(tokenizer):
    logits, labels, digit_ids = _random_batch(tokenizer, seed=3, batch=2, seq_len=9)
    vocab_size = logits.shape[-1]
    targets = jnp.asarray(_labels_to_digits(labels, digit_ids))
    mask = jnp.ones(labels.shape)
    for ours, ref in [(losses.ntl_wasserstein, ntloss.NTLoss), (losses.ntl_mse, ntloss.NTLossDotProduct)]:
        full_grad = jax.grad(lambda lg: ours(lg[..., digit_ids], targets, mask))(jnp.asarray(logits))
        t_logits = torch.from_numpy(logits).requires_grad_(True)
        ref(tokenizer, vocab_size=vocab_size, reweigh=False)(t_logits, torch.from_numpy(labels)).backward()
        np.testing.assert_allclose(full_grad, t_logits.grad.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 4])
def test_number_level_per_number_parity_with_ntloss(tokenizer, seed):
    logits, labels, digit_ids = _random_batch(tokenizer, seed, batch=4, seq_len=20)
    vocab_size = logits.shape[-1]
    digit_logits, targets = _ours(logits, labels, digit_ids)
    ref = ntloss.NumberLevelLoss(tokenizer, vocab_size=vocab_size, reweigh=False)
    t_logits, t_labels = torch.from_numpy(logits), torch.from_numpy(labels)
    ref_map = ref(t_logits, t_labels, reduction="none").numpy()

    is_digit = np.asarray(targets) >= 0
    run_start = is_digit & ~np.pad(is_digit[:, :-1], ((0, 0), (1, 0)))
    assert (run_start.sum(1) >= 2).all() and (is_digit & ~run_start).any()  # several numbers, multi-digit ones
    per_position = np.asarray(jax.jit(losses.ntl_number_per_position)(digit_logits, targets, jnp.ones(labels.shape)))
    np.testing.assert_allclose(per_position[run_start], ref_map[run_start], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ref_map[~run_start], 0.0)
    # Sum over numbers agrees with ntloss; the mean differs by design (digit-weighted here).
    np.testing.assert_allclose(per_position[run_start].sum(), ref(t_logits, t_labels, reduction="sum").item(),
                               rtol=1e-5)
    expected_digit_weighted = per_position[is_digit].sum() / is_digit.sum()
    np.testing.assert_allclose(losses.ntl_number(digit_logits, targets, jnp.ones(labels.shape)),
                               expected_digit_weighted, rtol=1e-6)


def _logits_from_probs(probs) -> jnp.ndarray:
    return jnp.log(jnp.asarray(probs, dtype=jnp.float32) + 1e-30)


def _one_hot_logits(digits, scale: float = 60.0) -> jnp.ndarray:
    return scale * jax.nn.one_hot(jnp.asarray(digits), 10)


def test_hand_computed_mse_and_wasserstein():
    bimodal = np.zeros(10)
    bimodal[[3, 5]] = 0.5  # the MSE local minimum from the paper: E = 4
    digit_logits = jnp.stack([_logits_from_probs(bimodal)] * 2 + [jnp.zeros(10)] * 3)
    targets = jnp.array([4, 3, 0, 9, 4])
    np.testing.assert_allclose(losses.ntl_mse_per_position(digit_logits, targets), [0.0, 1.0, 20.25, 20.25, 0.25],
                               atol=1e-5)
    np.testing.assert_allclose(losses.ntl_wasserstein_per_position(digit_logits, targets), [1.0, 1.0, 4.5, 4.5, 2.5],
                               atol=1e-5)
    mask = jnp.array([1.0, 1.0, 0.0, 0.0, 2.0])
    np.testing.assert_allclose(losses.ntl_wasserstein(digit_logits, targets, mask), (1 + 1 + 2 * 2.5) / 4, rtol=1e-6)
    np.testing.assert_allclose(losses.ntl_mse(digit_logits, targets, mask), (0 + 1 + 2 * 0.25) / 4, rtol=1e-6)


def test_out_of_range_targets_are_ignored():
    digit_logits = jnp.zeros((4, 10))
    targets = jnp.array([0, -1, 10, -100])
    mask = jnp.ones(4)
    np.testing.assert_allclose(losses.ntl_wasserstein_per_position(digit_logits, targets), [4.5, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(losses.ntl_wasserstein(digit_logits, targets, mask), 4.5, rtol=1e-6)
    np.testing.assert_allclose(losses.ntl_mse(digit_logits, targets, mask), 20.25, rtol=1e-6)


def test_number_level_hand_computed():
    # Row: "13" predicted for truth "12", a break, "7" predicted uniformly (E=4.5) for truth "7".
    predicted = _one_hot_logits([1, 3, 0, 0])
    predicted = predicted.at[3].set(0.0)
    targets = jnp.array([1, 2, -1, 7])
    mask = jnp.ones(4)
    loss_12 = 1.0 / 25.0  # |13-12| / (13+12)
    loss_7 = 2.5 / 11.5  # |4.5-7| / (4.5+7)
    per_position = losses.ntl_number_per_position(predicted, targets, mask)
    np.testing.assert_allclose(per_position, [loss_12, loss_12, 0.0, loss_7], rtol=1e-5)
    np.testing.assert_allclose(losses.ntl_number(predicted, targets, mask), (2 * loss_12 + loss_7) / 3, rtol=1e-5)

    # A zero mask weight drops the "2": what is left of "12" is the number "1", predicted exactly.
    split = losses.ntl_number_per_position(predicted, targets, jnp.array([1.0, 0.0, 1.0, 1.0]))
    np.testing.assert_allclose(split, [0.0, 0.0, 0.0, loss_7], atol=1e-6)
    split2 = losses.ntl_number_per_position(predicted, jnp.array([1, 2, 2, 7]), jnp.array([1.0, 0.0, 1.0, 1.0]))
    # Positions 2,3 form the number "27", predicted "04.5" = 4.5: |4.5-27|/(31.5)
    np.testing.assert_allclose(split2, [0.0, 0.0, 22.5 / 31.5, 22.5 / 31.5], rtol=1e-5)

    # Uniform prediction for "12": Yhat = 4.5*10 + 4.5 = 49.5.
    uniform = losses.ntl_number_per_position(jnp.zeros((2, 10)), jnp.array([1, 2]), jnp.ones(2))
    np.testing.assert_allclose(uniform, [37.5 / 61.5] * 2, rtol=1e-5)


def test_number_level_runs_along_last_axis_with_leading_dims():
    key = jax.random.PRNGKey(0)
    digit_logits = jax.random.normal(key, (2, 3, 5, 10))
    targets = jax.random.randint(jax.random.PRNGKey(1), (2, 3, 5), -1, 10)
    mask = jnp.ones((2, 3, 5))
    nd = losses.ntl_number_per_position(digit_logits, targets, mask)
    flat = losses.ntl_number_per_position(digit_logits.reshape(6, 5, 10), targets.reshape(6, 5), mask.reshape(6, 5))
    np.testing.assert_allclose(nd.reshape(6, 5), flat, rtol=1e-5)
    # Rows do not leak into each other: each row alone gives the same values.
    for row in range(6):
        alone = losses.ntl_number_per_position(digit_logits.reshape(6, 5, 10)[row], targets.reshape(6, 5)[row],
                                               jnp.ones(5))
        np.testing.assert_allclose(flat[row], alone, rtol=1e-5)


@pytest.mark.parametrize("method", losses.METHODS)
def test_gradients_finite_with_all_zero_mask_and_extreme_logits(method):
    digit_logits = jnp.array(np.random.default_rng(0).normal(size=(2, 6, 10)) * 1e4, dtype=jnp.float32)
    targets = jnp.array([[1, 2, 3, -1, 0, 0], [9, 9, 9, 9, 9, 9]])
    grad_fn = jax.jit(jax.value_and_grad(losses.ntl_loss), static_argnames="method")
    value, grad = grad_fn(digit_logits, targets, jnp.zeros((2, 6)), method=method)
    assert value == 0.0 and np.isfinite(grad).all() and not np.asarray(grad).any()
    value, grad = grad_fn(digit_logits, targets, jnp.ones((2, 6)), method=method)
    assert np.isfinite(value) and np.isfinite(grad).all()
    zero_logits = jnp.zeros((2, 6, 10))
    value, grad = grad_fn(zero_logits, jnp.ones((2, 6), jnp.int32), jnp.ones((2, 6)), method=method)
    assert np.isfinite(grad).all() and np.asarray(grad).any()


def test_ntl_per_position_dispatch_and_bad_method():
    digit_logits = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 10))
    targets = jnp.array([[1, 2, 3, -1], [0, 5, -1, 4]])
    mask = jnp.ones((2, 4))
    np.testing.assert_array_equal(losses.ntl_per_position(digit_logits, targets, mask, "mse"),
                                  losses.ntl_mse_per_position(digit_logits, targets))
    np.testing.assert_array_equal(losses.ntl_per_position(digit_logits, targets, mask, "number"),
                                  losses.ntl_number_per_position(digit_logits, targets, mask))
    with pytest.raises(ValueError, match="method='l1' is invalid; allowed: 'mse', 'wasserstein', 'number'"):
        losses.ntl_loss(digit_logits, targets, mask, "l1")


def test_per_sequence_and_digit_accuracy():
    digit_logits = jnp.stack([
        jnp.stack([_one_hot_logits(3), jnp.zeros(10), _one_hot_logits(5)]),
        jnp.stack([jnp.zeros(10)] * 3),
    ])
    targets = jnp.array([[3, 4, 6], [-1, -1, -1]])
    weights = jnp.array([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    per_seq = jax.jit(losses.ntl_per_sequence, static_argnames="method")(digit_logits, targets, weights,
                                                                         method="wasserstein")
    np.testing.assert_allclose(per_seq, [(0.0 + 0.5 * 2.5) / 1.5, 0.0], atol=1e-5)
    np.testing.assert_array_equal(losses.digit_correct(digit_logits, targets), [[True, False, False]] + [[False] * 3])
    # Counted digits: (0,0) right, (0,1) wrong (argmax of uniform is 0); (0,2) has weight 0.
    np.testing.assert_allclose(losses.digit_accuracy(digit_logits, targets, weights), 0.5)
    np.testing.assert_allclose(losses.digit_accuracy(digit_logits, targets, jnp.zeros((2, 3))), 0.0)
    np.testing.assert_allclose(losses.digit_probs(jnp.zeros((1, 10))), np.full((1, 10), 0.1), rtol=1e-6)


def test_bf16_logits_computed_in_float32():
    digit_logits = jax.random.normal(jax.random.PRNGKey(5), (3, 10)).astype(jnp.bfloat16)
    targets = jnp.array([1, 5, 9])
    out = losses.ntl_wasserstein_per_position(digit_logits, targets)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, losses.ntl_wasserstein_per_position(digit_logits.astype(jnp.float32), targets),
                               rtol=1e-6)
