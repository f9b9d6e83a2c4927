"""The jitted PPO steps: the NTL term inside the actor loss reaches exactly the digit logits; micro-batch
accumulation and the device count do not change the update (every loss is aggregated over the mini-batch)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM
from ntl_jax.ntl.info import DigitTargets
from ntl_jax.ntl.losses import ntl_per_position
from ntl_jax.models.logprobs import sequence_logprobs
from ntl_jax.ppo.losses import LOSS_AGG_MODES, agg_loss
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
        ntl=DigitTargets.from_arrays(targets, (targets >= 0).astype(np.float32)))


def _settings(ntl_method: str | None, mode: str = "token-mean", **changes) -> ActorLossSettings:
    return ActorLossSettings(clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0, loss_agg_mode=mode,
                             entropy_coeff=changes.get("entropy_coeff", 0.0), use_kl_loss=changes.get("use_kl", False),
                             kl_loss_coef=changes.get("kl_coef", 0.0), kl_loss_type="low_var_kl",
                             ntl_method=ntl_method, chunk_size=4, temperature=changes.get("temperature", 1.0))


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
    # Aggregated like the policy-gradient loss: NTL summed over the digit positions / all response tokens (token-mean).
    targets = batch.ntl.target_digits
    per_position = np.asarray(ntl_per_position(out.digit_logits, targets, batch.ntl.weights, "wasserstein"))
    expected_ntl = per_position[np.asarray(targets) >= 0].sum() / np.asarray(batch.response_mask).sum()
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


def _ragged_batch(n: int = 8, p: int = 3, t: int = 6, seed: int = 1) -> RolloutBatch:
    """Responses of different lengths (one empty), random advantages and old/ref log-probs, digit targets."""
    rng = np.random.default_rng(seed)
    lengths = np.array([6, 1, 4, 0, 5, 2, 6, 3])[:n]
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    targets = np.where(rng.random((n, t)) < 0.4, rng.integers(0, 10, (n, t)), -1).astype(np.int32)
    logp = rng.normal(size=(n, t)).astype(np.float32) - 2.0
    return RolloutBatch(
        prompt_ids=jnp.asarray(rng.integers(0, VOCAB, (n, p)), jnp.int32), prompt_mask=jnp.ones((n, p), jnp.int32),
        response_ids=jnp.asarray(rng.integers(0, VOCAB, (n, t)), jnp.int32), response_mask=jnp.asarray(mask),
        old_logprobs=jnp.asarray(logp), ref_logprobs=jnp.asarray(logp + 0.1), old_values=jnp.zeros((n, t)),
        advantages=jnp.asarray(rng.normal(size=(n, 1)) * mask, jnp.float32), returns=jnp.zeros((n, t)),
        ntl=DigitTargets.from_arrays(targets, (targets >= 0) * 0.5))


def _sgd_update(settings: ActorLossSettings, num_micro: int, mesh) -> np.ndarray:
    """The gradient an update applies (SGD with lr 1: new = old - grad), flattened, after one update."""
    tx = optax.sgd(1.0)
    state = ModuleState.from_module(_model(), mesh, tx)
    before = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
    update = make_actor_update(state.graphdef, tx, settings, digit_ids=DIGIT_IDS, num_micro_batches=num_micro,
                               mesh=mesh, param_shardings=state.shardings, opt_shardings=state.opt_shardings)
    params, _, metrics = update(state.params, state.opt_state, _ragged_batch(), jnp.float32(0.7))
    after = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(params))])
    return before - after, jax.device_get(metrics)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_micro_batch_accumulation_equals_the_full_batch_gradient(mode):
    # Ragged lengths and an empty row: a per-micro-batch mean would weigh tokens differently per split.
    settings = _settings("wasserstein", mode, entropy_coeff=0.01, use_kl=True, kl_coef=0.1, temperature=0.7)
    mesh = make_mesh(devices=jax.devices()[:1])
    full, full_metrics = _sgd_update(settings, 1, mesh)
    assert np.abs(full).max() > 1e-4
    for num_micro in (2, 4):
        split, metrics = _sgd_update(settings, num_micro, mesh)
        np.testing.assert_allclose(split, full, rtol=2e-4, atol=1e-7)
        for key in ("actor/pg_loss", "actor/entropy", "actor/kl_loss", "ntl/train_loss", "actor/pg_clipfrac"):
            np.testing.assert_allclose(metrics[key], full_metrics[key], rtol=1e-4, atol=1e-7)


def test_update_on_eight_devices_equals_one_device_global_aggregation():
    """The loss is aggregated over the global mini-batch (verl's global batch info), not per device: eight devices
    holding rows of different lengths give the single-device update, which differs from averaging per-device
    token means (what per-rank aggregation with gradient averaging would compute)."""
    settings = _settings("wasserstein", "token-mean", use_kl=True, kl_coef=0.1)
    one, _ = _sgd_update(settings, 1, make_mesh(devices=jax.devices()[:1]))
    eight, _ = _sgd_update(settings, 2, make_mesh())
    np.testing.assert_allclose(eight, one, rtol=2e-4, atol=1e-7)

    model, batch = _model(), _ragged_batch()
    graphdef, params = nnx.split(model)

    def per_device_mean_loss(p):
        rows = jax.tree.map(lambda x: x.reshape((4, 2) + x.shape[1:]), batch)  # 4 "devices" of 2 rows each
        losses = [actor_loss(nnx.merge(graphdef, p), jax.tree.map(lambda x: x[d], rows), jnp.float32(0.7), settings,
                             DIGIT_IDS)[0] for d in range(4)]
        return sum(losses) / 4

    def global_loss(p):
        return actor_loss(nnx.merge(graphdef, p), batch, jnp.float32(0.7), settings, DIGIT_IDS)[0]

    assert abs(float(per_device_mean_loss(params)) - float(global_loss(params))) > 1e-3


def test_loss_aggregation_over_micro_batches_matches_agg_loss_of_the_whole_batch():
    from ntl_jax.ppo.losses import LossNormalizer

    rng = np.random.default_rng(3)
    mask = jnp.asarray(np.arange(5)[None, :] < np.array([[5], [0], [2], [4]]), jnp.float32)
    loss_mat = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
    normalizer = LossNormalizer.of(mask)
    for mode in LOSS_AGG_MODES:
        whole = agg_loss(loss_mat, mask, mode)
        shares = sum(agg_loss(loss_mat[i:i + 2], mask[i:i + 2], mode, normalizer=normalizer) for i in (0, 2))
        np.testing.assert_allclose(shares, whole, rtol=1e-6)


def test_the_one_deliberate_difference_from_verl_micro_batch_scaling():
    """verl's legacy dp_actor / dp_critic aggregate each micro-batch on its own and scale it by 1/GA (GA = micro-
    batches per mini-batch); ntl-jax aggregates over the whole mini-batch, so its update does not change with the
    micro-batch size (test above). For seq-mean-token-sum-norm verl's gradient is 1/GA of ntl-jax's; for token-mean
    with ragged lengths the two weigh tokens differently; for seq-mean-* with equal micro-batches they agree.
    docs/NTL.md, "Coming from verl"."""
    rng = np.random.default_rng(4)
    mask = jnp.asarray(np.arange(6)[None, :] < np.array([[6], [1], [3], [6], [2], [5], [4], [6]]), jnp.float32)
    loss_mat = jnp.asarray(np.arange(8)[:, None] + rng.normal(size=(8, 6)), jnp.float32)  # rows of unlike size
    for ga in (2, 4):
        rows = 8 // ga

        def verl_legacy(mode):
            return sum(float(agg_loss(loss_mat[i:i + rows], mask[i:i + rows], mode)) / ga for i in range(0, 8, rows))

        whole = {mode: float(agg_loss(loss_mat, mask, mode)) for mode in LOSS_AGG_MODES}
        assert whole["seq-mean-token-sum-norm"] == pytest.approx(ga * verl_legacy("seq-mean-token-sum-norm"), rel=1e-6)
        assert abs(whole["token-mean"] - verl_legacy("token-mean")) > 1e-3
        for mode in ("seq-mean-token-sum", "seq-mean-token-mean"):
            assert whole[mode] == pytest.approx(verl_legacy(mode), rel=1e-6)


def _grouped(batch: RolloutBatch, group: int) -> RolloutBatch:
    """``batch`` with rows i*group .. i*group+group-1 answering one prompt (the sampler's order), some left-padded."""
    first = np.arange(batch.size) // group * group
    prompt_ids, prompt_mask = np.asarray(batch.prompt_ids)[first], np.asarray(batch.prompt_mask).copy()[first]
    prompt_mask[first % (2 * group) == 0, 0] = 0  # every other prompt one token shorter (left padding)
    return batch.replace(prompt_ids=jnp.asarray(np.where(prompt_mask > 0, prompt_ids, 0)),
                         prompt_mask=jnp.asarray(prompt_mask))


def test_shared_prompt_update_equals_per_row_update():
    """A group's prompt run once (``ActorLossSettings.group_size``) gives the per-row update: on one device, with
    strided micro-batches (2 micro-batches of a rollout grouped by 4 hold groups of 2), and on eight devices."""
    settings = _settings("wasserstein", "token-mean", entropy_coeff=0.01, use_kl=True, kl_coef=0.1)
    one = make_mesh(devices=jax.devices()[:1])

    def sgd(group_size, num_micro, mesh, rows=8, group=4):
        tx = optax.sgd(1.0)
        state = ModuleState.from_module(_model(), mesh, tx)
        update = make_actor_update(state.graphdef, tx, dataclasses.replace(settings, group_size=group_size),
                                   digit_ids=DIGIT_IDS, num_micro_batches=num_micro, mesh=mesh,
                                   param_shardings=state.shardings, opt_shardings=state.opt_shardings)
        batch = _grouped(jax.tree.map(lambda x: jnp.concatenate([x] * (rows // 8)), _ragged_batch()), group)
        before = jax.device_get(state.params)  # the update donates its inputs
        params, _, metrics = update(state.params, state.opt_state, batch, jnp.float32(0.7))
        delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), before, jax.device_get(params))
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(delta)]), jax.device_get(metrics)

    full, full_metrics = sgd(1, 1, one)
    for group_size, num_micro, mesh, rows in ((4, 1, one, 8), (2, 2, one, 8), (2, 1, make_mesh(), 16)):
        shared, metrics = sgd(group_size, num_micro, mesh, rows)
        reference = full if rows == 8 else sgd(1, 1, one, rows)[0]
        np.testing.assert_allclose(shared, reference, rtol=2e-4, atol=1e-6)
        if rows == 8:
            np.testing.assert_allclose(metrics["actor/pg_loss"], full_metrics["actor/pg_loss"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rows,chunk,micro,mini,expected", [
    (8, 0, 1, 32, (8, 8)),     # whole iteration in one pass and one micro-batch
    (8, 64, 2, 32, (8, 4)),    # two strided micro-batches hold 4 of each prompt's 8 rows
    (8, 0, 3, 32, (8, 1)),     # 3 micro-batches do not divide a group of 8: rows mix prompts
    (8, 0, 1, 16, (8, 1)),     # smaller mini-batches are shuffled rows
    (8, 4, 1, 32, (4, 8)),     # passes of 4 rows: each holds half a group
])
def test_prompt_groups(rows, chunk, micro, mini, expected):
    from ntl_jax.ppo.config import PPOConfig

    ppo = PPOConfig(train_batch_size=32, rollout_n=rows, ppo_mini_batch_size=mini, ppo_micro_batch_size=8,
                    log_prob_micro_batch_size=chunk)
    assert ppo.prompt_groups(1, micro) == expected
    assert dataclasses.replace(ppo, share_prompt_forward=False).prompt_groups(1, micro) == (1, 1)


def test_shared_prompt_group_keeps_groups_on_one_device():
    from ntl_jax.ppo.config import shared_prompt_group

    assert shared_prompt_group(256, 8, 1) == 8
    assert shared_prompt_group(16, 8, 4) == 4   # 4 rows per device: half a group each
    assert shared_prompt_group(16, 8, 16) == 1  # one row per device
    assert shared_prompt_group(24, 6, 4) == 6   # 6 rows per device: one whole group
    assert shared_prompt_group(12, 6, 4) == 3   # 3 rows per device: half a group each
