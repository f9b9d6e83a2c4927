"""The jitted PPO steps: the NTL term inside the actor loss reaches exactly the digit logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM
from ntl_jax.ntl.losses import ntl_loss
from ntl_jax.models.logprobs import sequence_logprobs
from ntl_jax.ppo.state import ModuleState
from ntl_jax.ppo.steps import ActorLossSettings, RolloutBatch, actor_loss, make_actor_update

VOCAB = 40
DIGIT_IDS = jnp.arange(20, 30, dtype=jnp.int32)


def _model(seed: int = 0) -> CausalLM:
    config = ModelConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    return CausalLM(config, rngs=nnx.Rngs(seed))


def _batch(n: int = 4, p: int = 3, t: int = 5, advantages: float = 0.0) -> RolloutBatch:
    rng = np.random.default_rng(0)
    response_ids = rng.integers(0, VOCAB, (n, t)).astype(np.int32)
    targets = np.full((n, t), -1, np.int32)
    targets[:, 1:4] = rng.integers(0, 10, (n, 3))
    zeros = np.zeros((n, t), np.float32)
    return RolloutBatch(
        prompt_ids=jnp.asarray(rng.integers(0, VOCAB, (n, p)), jnp.int32), prompt_mask=jnp.ones((n, p), jnp.int32),
        response_ids=jnp.asarray(response_ids), response_mask=jnp.ones((n, t), jnp.float32),
        old_logprobs=jnp.asarray(zeros), ref_logprobs=jnp.asarray(zeros), old_values=jnp.asarray(zeros),
        advantages=jnp.full((n, t), advantages, jnp.float32), returns=jnp.asarray(zeros),
        ntl_targets=jnp.asarray(targets), ntl_weights=jnp.asarray((targets >= 0).astype(np.float32)))


def _settings(ntl_method: str | None) -> ActorLossSettings:
    return ActorLossSettings(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, loss_agg_mode="token-mean",
                             entropy_coeff=0.0, use_kl_loss=False, kl_loss_coef=0.0, kl_loss_type="low_var_kl",
                             ntl_method=ntl_method, chunk_size=4)


def _lm_head_grad(weight: float, method: str | None) -> np.ndarray:
    model = _model()
    graphdef, params = nnx.split(model)
    batch = _batch()

    def loss_of(p):
        return actor_loss(nnx.merge(graphdef, p), batch, jnp.float32(weight), _settings(method), DIGIT_IDS)[0]

    grads = jax.grad(loss_of)(params)
    return np.asarray(grads["lm_head"][...])  # the untied [D, V] output kernel


@pytest.mark.parametrize("method", ["wasserstein", "mse", "number"])
def test_ntl_gradient_reaches_only_digit_logits(method):
    # Zero advantages and no entropy/KL: the NTL term is the only source of gradient.
    grad = _lm_head_grad(1.0, method)
    digit = np.zeros(VOCAB, bool)
    digit[np.asarray(DIGIT_IDS)] = True
    assert np.abs(grad[:, digit]).max() > 1e-6
    # Softmax over the 10 digit logits only: no other vocabulary column receives gradient.
    np.testing.assert_array_equal(grad[:, ~digit], 0.0)


def test_ntl_weight_zero_contributes_nothing():
    np.testing.assert_array_equal(_lm_head_grad(0.0, "wasserstein"), 0.0)


def test_actor_loss_adds_weighted_ntl_from_the_same_forward():
    model = _model()
    batch = _batch(advantages=0.5)
    base, _ = actor_loss(model, batch, jnp.float32(0.0), _settings("wasserstein"), DIGIT_IDS)
    with_ntl, metrics = actor_loss(model, batch, jnp.float32(0.3), _settings("wasserstein"), DIGIT_IDS)
    out = sequence_logprobs(model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask,
                            digit_ids=DIGIT_IDS, chunk_size=4)
    expected_ntl = ntl_loss(out.digit_logits, batch.ntl_targets, batch.ntl_weights, "wasserstein")
    np.testing.assert_allclose(metrics["ntl/train_loss"], expected_ntl, rtol=1e-6)
    np.testing.assert_allclose(with_ntl - base, 0.3 * expected_ntl, rtol=1e-5)


def test_actor_update_skips_non_finite_updates():
    mesh = make_mesh(devices=jax.devices()[:1])
    tx = optax.adam(1e-2)
    state = ModuleState.from_module(_model(), mesh, tx)
    update = make_actor_update(state.graphdef, tx, _settings("wasserstein"), digit_ids=DIGIT_IDS,
                               num_micro_batches=2, mesh=mesh, param_shardings=state.shardings,
                               opt_shardings=state.opt_shardings)
    before = jax.tree.map(np.asarray, state.params)
    poisoned = _batch(advantages=float("nan"))
    params, opt_state, metrics = update(state.params, state.opt_state, poisoned, jnp.float32(0.3))
    assert float(metrics["actor/update_skipped"]) == 1.0
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params), before)
    params, opt_state, metrics = update(params, opt_state, _batch(advantages=1.0), jnp.float32(0.3))
    assert float(metrics["actor/update_skipped"]) == 0.0
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), params, before)
    assert any(jax.tree.leaves(changed))
