"""Chunked token log-probs equal the naive full-logits computation in values and gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.models.logprobs import TokenLogProbs, token_logprobs, token_logprobs_naive

DIGIT_IDS = jnp.arange(20, 30, dtype=jnp.int32)


def _inputs(batch, seq_len, hidden_size, vocab, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(k1, (batch, seq_len, hidden_size), jnp.float32)
    kernel = jax.random.normal(k2, (hidden_size, vocab), jnp.float32) / np.sqrt(hidden_size)
    targets = jax.random.randint(k3, (batch, seq_len), 0, vocab)
    return hidden, kernel, targets


def _mixed_loss(fn, chunk_size):
    """A loss that touches all three outputs, so all their gradients are compared."""

    def loss(hidden, kernel, targets):
        out = fn(hidden, kernel, targets, digit_ids=DIGIT_IDS, chunk_size=chunk_size)
        weights = jnp.linspace(0.5, 1.5, out.digit_logits.shape[-1])
        return (
            -jnp.mean(out.logprobs)
            + 0.3 * jnp.mean(out.entropy)
            + 0.1 * jnp.mean(jax.nn.log_softmax(out.digit_logits, -1) * weights)
        )

    return loss


@pytest.mark.parametrize("seq_len,chunk_size", [(32, 8), (37, 8), (5, 16), (40, 40)])
def test_values_match_naive(seq_len, chunk_size):
    hidden, kernel, targets = _inputs(3, seq_len, 16, 64)
    chunked = jax.jit(lambda h, k, t: token_logprobs(h, k, t, digit_ids=DIGIT_IDS, chunk_size=chunk_size))(
        hidden, kernel, targets
    )
    naive = token_logprobs_naive(hidden, kernel, targets, digit_ids=DIGIT_IDS)
    assert isinstance(chunked, TokenLogProbs)
    assert chunked.logprobs.shape == (3, seq_len)
    assert chunked.entropy.shape == (3, seq_len)
    assert chunked.digit_logits.shape == (3, seq_len, 10)
    for got, want in zip(chunked, naive):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # Independent check of the formulas against jax.nn on the full logits.
    logits = hidden @ kernel
    log_probs = jax.nn.log_softmax(logits, -1)
    np.testing.assert_allclose(
        chunked.logprobs, jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0], atol=1e-5
    )
    np.testing.assert_allclose(chunked.entropy, -jnp.sum(jnp.exp(log_probs) * log_probs, -1), atol=1e-5)
    np.testing.assert_allclose(chunked.digit_logits, logits[..., 20:30], atol=1e-5)


@pytest.mark.parametrize("temperature", [0.6, 1.7])
def test_temperature_divides_the_logits_of_logprobs_and_entropy_but_not_the_digit_slice(temperature):
    # verl computes old, current and reference log-probs from logits / rollout temperature.
    hidden, kernel, targets = _inputs(2, 11, 16, 64, seed=2)
    out = jax.jit(lambda h, k, t: token_logprobs(h, k, t, digit_ids=DIGIT_IDS, chunk_size=4,
                                                 temperature=temperature))(hidden, kernel, targets)
    naive = token_logprobs_naive(hidden, kernel, targets, digit_ids=DIGIT_IDS, temperature=temperature)
    for got, want in zip(out, naive):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    logits = hidden @ kernel
    log_probs = jax.nn.log_softmax(logits / temperature, -1)
    np.testing.assert_allclose(out.logprobs, jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0],
                               atol=1e-5)
    np.testing.assert_allclose(out.entropy, -jnp.sum(jnp.exp(log_probs) * log_probs, -1), atol=1e-5)
    np.testing.assert_allclose(out.digit_logits, logits[..., 20:30], atol=1e-5)
    at_one = token_logprobs(hidden, kernel, targets, chunk_size=4)
    assert float(jnp.max(jnp.abs(out.logprobs - at_one.logprobs))) > 1e-2
    with pytest.raises(ValueError, match="temperature=0.0 is invalid"):
        token_logprobs(hidden, kernel, targets, temperature=0.0)


@pytest.mark.parametrize("seq_len,chunk_size", [(32, 8), (37, 8)])
def test_gradients_match_naive(seq_len, chunk_size):
    hidden, kernel, targets = _inputs(2, seq_len, 16, 64, seed=1)
    grad_chunked = jax.jit(jax.grad(_mixed_loss(token_logprobs, chunk_size), argnums=(0, 1)))(hidden, kernel, targets)
    grad_naive = jax.grad(_mixed_loss(token_logprobs_naive, chunk_size), argnums=(0, 1))(hidden, kernel, targets)
    for got, want in zip(grad_chunked, grad_naive):
        assert float(jnp.max(jnp.abs(want))) > 0
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_optional_outputs_are_none():
    hidden, kernel, targets = _inputs(2, 9, 8, 32)
    out = token_logprobs(hidden, kernel, targets, chunk_size=4, compute_entropy=False)
    assert out.entropy is None and out.digit_logits is None
    np.testing.assert_allclose(out.logprobs, token_logprobs_naive(hidden, kernel, targets).logprobs, atol=1e-5)


def test_bfloat16_inputs_accumulate_in_float32():
    hidden, kernel, targets = _inputs(2, 12, 16, 64)
    out = token_logprobs(hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), targets, chunk_size=5)
    assert out.logprobs.dtype == jnp.float32 and out.entropy.dtype == jnp.float32
    want = token_logprobs_naive(hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), targets)
    np.testing.assert_allclose(out.logprobs, want.logprobs, atol=1e-5)


def test_never_materialises_full_logits():
    """Compiled scratch memory of value+grad stays far below one [B, T, V] float32 buffer."""
    batch, seq_len, hidden_size, vocab, chunk = 2, 2048, 32, 4096, 32
    hidden, kernel, targets = _inputs(batch, seq_len, hidden_size, vocab)
    full_logits_bytes = batch * seq_len * vocab * 4

    def temp_bytes(fn):
        grad_fn = jax.jit(jax.value_and_grad(_mixed_loss(fn, chunk), argnums=(0, 1)))
        return grad_fn.lower(hidden, kernel, targets).compile().memory_analysis().temp_size_in_bytes

    chunked_bytes, naive_bytes = temp_bytes(token_logprobs), temp_bytes(token_logprobs_naive)
    assert naive_bytes >= full_logits_bytes
    # A handful of chunk-sized buffers (logits, probs, their cotangents) plus the kernel-gradient accumulator.
    chunk_logits_bytes = batch * chunk * vocab * 4
    assert chunked_bytes < 8 * chunk_logits_bytes < full_logits_bytes / 4, (chunked_bytes, full_logits_bytes)


def test_bad_inputs_raise():
    hidden, kernel, targets = _inputs(1, 4, 8, 16)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(hidden, kernel, targets, chunk_size=0)
    with pytest.raises(ValueError, match="hidden size"):
        token_logprobs(hidden, kernel[:4], targets)


def test_sequence_logprobs_matches_unpadded_per_row_forward():
    """Left-padded prompts + right-padded responses, scored under jit after nnx.merge, equal per-row unpadded runs."""
    from flax import nnx

    from ntl_jax.models.config import ModelConfig
    from ntl_jax.models.decoder import CausalLM
    from ntl_jax.models.logprobs import sequence_logprobs

    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    graphdef, state = nnx.split(CausalLM(config, rngs=nnx.Rngs(0)))
    prompts, responses = [[3, 4, 5], [6, 7, 8, 9, 10, 11]], [[40, 41, 42, 43, 44], [50, 51]]
    prompt_len, response_len = 6, 5
    prompt_ids = np.zeros((2, prompt_len), np.int32)
    prompt_mask = np.zeros_like(prompt_ids)
    response_ids = np.zeros((2, response_len), np.int32)
    response_mask = np.zeros_like(response_ids)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        prompt_ids[row, prompt_len - len(prompt):], prompt_mask[row, prompt_len - len(prompt):] = prompt, 1
        response_ids[row, :len(response)], response_mask[row, :len(response)] = response, 1

    score = jax.jit(lambda s, *a: sequence_logprobs(nnx.merge(graphdef, s), *a, digit_ids=DIGIT_IDS, chunk_size=2))
    out = score(state, prompt_ids, prompt_mask, response_ids, response_mask)
    assert out.logprobs.shape == (2, response_len) and out.digit_logits.shape == (2, response_len, 10)

    model = nnx.merge(graphdef, state)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        ids = jnp.asarray([prompt + response], jnp.int32)
        hidden, _ = model(ids, jnp.arange(ids.shape[1])[None], jnp.ones_like(ids))
        logits = model.logits(hidden)[0, len(prompt) - 1:-1]
        want = jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(response)[:, None], -1)[:, 0]
        np.testing.assert_allclose(out.logprobs[row, :len(response)], want, atol=1e-5)
        np.testing.assert_allclose(out.digit_logits[row, :len(response)], logits[:, 20:30], atol=1e-5)


def _grouped_batch(num_prompts: int, group: int, seed: int = 0):
    """Left-padded prompts of different lengths, each repeated for ``group`` right-padded responses."""
    rng = np.random.default_rng(seed)
    prompt_len, response_len = 6, 5
    prompt_ids = np.zeros((num_prompts, prompt_len), np.int32)
    prompt_mask = np.zeros_like(prompt_ids)
    for row in range(num_prompts):
        length = int(rng.integers(1, prompt_len + 1))
        prompt_ids[row, prompt_len - length:], prompt_mask[row, prompt_len - length:] = rng.integers(3, 60, length), 1
    prompt_ids, prompt_mask = np.repeat(prompt_ids, group, 0), np.repeat(prompt_mask, group, 0)
    response_ids = rng.integers(3, 60, (num_prompts * group, response_len)).astype(np.int32)
    lengths = rng.integers(1, response_len + 1, num_prompts * group)
    response_mask = (np.arange(response_len)[None] < lengths[:, None]).astype(np.float32)
    return prompt_ids, prompt_mask, np.where(response_mask > 0, response_ids, 0), response_mask


@pytest.mark.parametrize("group,layers", [(2, "loop"), (4, "loop"), (4, "scan+remat")])
def test_shared_prompt_forward_matches_per_row_forward(group, layers):
    """Each prompt run once for its group (KV prefix repeated) gives the per-row forward's log-probs, entropy,
    digit slice, critic values and parameter gradients; the prompt's gradient is the sum over its responses.
    Also with the layers scanned and rematerialised (the real-scale configs)."""
    from flax import nnx

    from ntl_jax.models.config import ModelConfig
    from ntl_jax.models.decoder import CausalLM, KVCache, ValueModel
    from ntl_jax.models.logprobs import sequence_logprobs
    from ntl_jax.ppo.steps import response_values

    config = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    policy = CausalLM(config, rngs=nnx.Rngs(0), remat=layers != "loop", scan_layers=layers != "loop")
    graphdef, state = nnx.split(policy)
    critic_graphdef, critic_state = nnx.split(ValueModel.from_policy(policy, rngs=nnx.Rngs(1)))
    batch = _grouped_batch(3, group)

    def loss(s, g):
        out = sequence_logprobs(nnx.merge(graphdef, s), *batch, digit_ids=DIGIT_IDS, chunk_size=2, group_size=g)
        mask = batch[3]
        value = (-jnp.sum(out.logprobs * mask) + 0.3 * jnp.sum(out.entropy * mask)
                 + 0.1 * jnp.sum(jax.nn.log_softmax(out.digit_logits, -1)[..., 3] * mask))
        return value, out

    for g in (group, group // 2):
        (shared_loss, shared), shared_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(state, g)
        (full_loss, full), full_grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)(state, 1)
        for a, b in zip(shared, full):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
        np.testing.assert_allclose(shared_loss, full_loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(shared_grad), jax.tree.leaves(full_grad)):
            np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
        values = [jax.jit(lambda s, gs=gs: response_values(nnx.merge(critic_graphdef, s), *batch, group_size=gs))(
            critic_state) for gs in (g, 1)]
        np.testing.assert_allclose(values[0], values[1], atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="group_size=5"):
        sequence_logprobs(nnx.merge(graphdef, state), *batch, group_size=5)
    body = nnx.merge(graphdef, state).model
    ids = jnp.asarray(batch[0])
    _, own = body(ids, jnp.zeros_like(ids), jnp.ones_like(ids), return_kv=True)
    b, t = ids.shape
    kvh, dh = config.num_key_value_heads, config.dim_per_head
    assert len(own.k) == len(own.v) == config.num_hidden_layers
    assert all(k.shape == (b, kvh, t, dh) and v.shape == (b, kvh, dh, t) for k, v in zip(own.k, own.v))
    with pytest.raises(ValueError, match="prefix keys of shape"):  # a prefix for other rows
        body(ids, jnp.zeros_like(ids), jnp.ones((ids.shape[0], 2 * ids.shape[1])), prefix=KVCache(
            *(tuple(x[:1] for x in layers) for layers in own)))
    with pytest.raises(ValueError, match="prefix with 1 / 1 layers"):  # one layer's keys / values only
        body(ids, jnp.zeros_like(ids), jnp.ones((ids.shape[0], 2 * ids.shape[1])), prefix=KVCache(
            own.k[:1], own.v[:1]))
    with pytest.raises(ValueError, match="allowed: prefix \\+ T = 12"):  # the mask must cover prefix + T slots
        body(ids, jnp.zeros_like(ids), jnp.ones_like(ids), prefix=own)


@pytest.mark.parametrize("vocab", [1000, 32000])
def test_entropy_matches_float64_at_large_logits(vocab):
    """At logit std 50 the unshifted form loses ~1e-3 in float32 (verl's softmax form ~3e-5); ours stays within
    1e-6 of a float64 reference."""
    from ntl_jax.models.logprobs import entropy_of_logits
    logits = (np.random.default_rng(0).standard_normal((8, vocab)) * 50.0).astype(np.float32)
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    weights = np.exp(shifted)
    reference = np.log(weights.sum(-1)) - (weights * shifted).sum(-1) / weights.sum(-1)
    got = np.asarray(entropy_of_logits(jnp.asarray(logits, jnp.float32)))
    assert np.abs(got - reference).max() < 1e-6
    sharp = np.asarray(entropy_of_logits(jnp.asarray([[1e4] + [0.0] * 9, [0.0] * 10])))
    assert sharp[0] == 0.0 and sharp[1] == pytest.approx(np.log(10), abs=1e-6)
