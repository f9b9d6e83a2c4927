"""attention='dot_product_attention' (jax.nn.dot_product_attention) against the einsum attention, on the CPU:
the function alone, the whole model (padding, a shared prefix, the KV-cache prefill and decode) and the trainer."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ntl_jax.models.config import ModelConfig
from ntl_jax.models.decoder import CausalLM, KVCache, fused_attention, grouped_attention
from ntl_jax.models.logprobs import response_positions
from ntl_jax.models.sampler import Sampler, SamplingParams

CONFIG = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=128)


def _models():
    """The same weights under both attentions."""
    einsum = CausalLM(CONFIG, rngs=nnx.Rngs(0))
    fused = CausalLM(CONFIG, rngs=nnx.Rngs(1), attention="dot_product_attention")
    nnx.update(fused, nnx.state(einsum))
    return einsum, fused


def test_fused_attention_matches_the_einsum_on_every_row_with_a_key():
    rng = np.random.default_rng(0)
    b, t, s, kvh, g, hd = 3, 5, 9, 2, 3, 8
    q = jnp.asarray(rng.normal(size=(b, t, kvh, g, hd)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, kvh, s, hd)), jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, kvh, hd, s)), jnp.float32)
    attend = jnp.asarray(rng.random((b, t, s)) < 0.6).at[:, :, 0].set(True)
    want = grouped_attention(q, k, v, attend, scale=hd ** -0.5, dtype=jnp.float32)
    got = fused_attention(q, k, v, attend, scale=hd ** -0.5)
    np.testing.assert_allclose(got, want, atol=2e-6, rtol=1e-5)


def test_whole_model_matches_with_left_padding_and_a_prefix():
    einsum, fused = _models()
    rng = np.random.default_rng(1)
    ids = jnp.asarray(rng.integers(1, CONFIG.vocab_size, (2, 12)), jnp.int32)
    mask = jnp.ones((2, 12), jnp.int32).at[1, :4].set(0)  # row 1 left-padded
    positions = response_positions(mask)
    real = np.asarray(mask, bool)
    a, _ = einsum(ids, positions, mask)
    b, _ = fused(ids, positions, mask)
    programs = [str(jax.make_jaxpr(lambda m=m: m(ids, positions, mask))()) for m in (einsum, fused)]
    assert programs[0] != programs[1]  # the fused model does not run the einsum
    np.testing.assert_allclose(np.asarray(b)[real], np.asarray(a)[real], atol=1e-5, rtol=1e-5)
    # A shared prompt's keys / values as a prefix (the grouped-rollout path of the updates).
    _, prefix = einsum.model(ids[:, :6], positions[:, :6], mask[:, :6], return_kv=True)
    _, prefix_fused = fused.model(ids[:, :6], positions[:, :6], mask[:, :6], return_kv=True)
    a, _ = einsum.model(ids[:, 6:], positions[:, 6:], mask, prefix=prefix)
    b, _ = fused.model(ids[:, 6:], positions[:, 6:], mask, prefix=KVCache(*prefix_fused))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=1e-5)


def test_sampler_decodes_the_same_tokens():
    """The prefill goes through the fused attention, decode steps through the einsum (cache read in place)."""
    einsum, fused = _models()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16]]
    params = SamplingParams(max_new_tokens=10, greedy=True)
    outs = []
    for model in (einsum, fused):
        graphdef, state = nnx.split(model)
        sampler = Sampler(graphdef, CONFIG, eos_token_ids=[CONFIG.vocab_size - 1], pad_token_id=0)
        outs.append(sampler.generate(state, prompts, params, jax.random.key(0), return_logprobs=True))
    np.testing.assert_array_equal(outs[1].response_ids, outs[0].response_ids)
    np.testing.assert_allclose(outs[1].response_logprobs, outs[0].response_logprobs, atol=1e-5)


def test_bad_attention_is_refused_in_one_line():
    with pytest.raises(ValueError, match="attention='flash' is invalid; allowed: 'einsum', 'dot_product_attention'"):
        CausalLM(CONFIG, rngs=nnx.Rngs(0), attention="flash")


def test_trainer_with_fused_attention_trains_like_the_einsum(tmp_path):
    from test_trainer import _run
    from trainer_fixtures import make_tiny_policy, tiny_experiment, with_trainer
    from ntl_jax.ppo.metrics import read_metrics_jsonl

    policy_dir = make_tiny_policy(str(tmp_path / "policy"))
    with pytest.raises(ValueError, match="attention='flash' is invalid"):
        with_trainer(tiny_experiment(str(tmp_path / "bad")), attention="flash")
    last = {}
    for attention in ("einsum", "dot_product_attention"):
        config = with_trainer(tiny_experiment(str(tmp_path / attention), steps=1), attention=attention)
        trainer, _ = _run(config, policy_dir, val_rows=[])
        last[attention] = read_metrics_jsonl(tmp_path / attention / "metrics.jsonl")[-1]
    a, b = last["einsum"], last["dot_product_attention"]
    assert a["response_length/mean"] == b["response_length/mean"]  # same samples
    for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "critic/score/mean"):
        assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-5), key
