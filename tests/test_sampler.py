"""Sampler: greedy parity with transformers `generate`, masks, keys, n samples, early stop, compile counts, mesh."""
import numpy as np
import pytest
import torch
import transformers
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from ntl_jax.models.hf_io import from_pretrained
from ntl_jax.models.logprobs import sequence_logprobs
from ntl_jax.models.sampler import GenerationOutput, Sampler, SamplingParams, sample_tokens, warp_logits

PAD, UNLIKELY_EOS, VOCAB = 0, 127, 128
DIGIT_IDS = np.arange(30, 40, dtype=np.int32)
BUCKETS = (16, 32)
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51]]


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    """A tiny random Qwen2 (fixed seed; initializer_range 0.2 so greedy choices are not near-ties)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, tie_word_embeddings=False,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    path = tmp_path_factory.mktemp("tiny_qwen2")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def model(hf_model_dir):
    return from_pretrained(hf_model_dir[0])


@pytest.fixture(scope="module")
def split(model):
    return nnx.split(model)


@pytest.fixture(scope="module")
def sampler(split, model):
    return Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, digit_ids=DIGIT_IDS,
                   prompt_buckets=BUCKETS)


def _hf_greedy(hf_model, prompts, max_new_tokens, eos):
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    with torch.no_grad():
        out = hf_model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                                pad_token_id=PAD, eos_token_id=eos, output_scores=True, return_dict_in_generate=True)
    top2 = torch.stack(out.scores, 1).topk(2, dim=-1).values
    assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-3, "fixture premise: greedy choices are not near-ties"
    return out.sequences[:, width:].numpy()


def _expected_mask(tokens, eos_ids):
    """1 up to and including the first EOS of each row."""
    is_eos = np.isin(tokens, eos_ids)
    after_eos = np.cumsum(is_eos, axis=1) - is_eos > 0
    return (~after_eos).astype(np.int32)


def test_greedy_matches_transformers_to_max_length(hf_model_dir, split, sampler):
    hf_tokens = _hf_greedy(hf_model_dir[1], PROMPTS, 16, UNLIKELY_EOS)
    assert hf_tokens.shape == (4, 16) and not np.isin(hf_tokens, UNLIKELY_EOS).any()
    out = sampler.generate(split[1], PROMPTS, SamplingParams(max_new_tokens=16, greedy=True), jax.random.key(0))
    assert isinstance(out, GenerationOutput)
    np.testing.assert_array_equal(out.response_ids, hf_tokens)
    np.testing.assert_array_equal(out.response_mask, np.ones((4, 16), np.int32))
    assert sampler.last_num_steps == 16
    assert out.response_logprobs is None  # only on request (return_logprobs=True)
    # Left padding to the bucket.
    assert out.prompt_ids.shape == (4, 16)
    np.testing.assert_array_equal(out.prompt_ids[1, -7:], PROMPTS[1])
    np.testing.assert_array_equal(out.prompt_mask.sum(1), [len(p) for p in PROMPTS])
    assert (out.prompt_ids[out.prompt_mask == 0] == PAD).all()


def test_greedy_matches_transformers_with_early_eos(hf_model_dir, split, model):
    """EOS chosen as the token row 0 emits at step 4: some rows stop early, the rest continue; pads/mask like HF."""
    free_run = _hf_greedy(hf_model_dir[1], PROMPTS, 16, UNLIKELY_EOS)
    eos = int(free_run[0, 4])
    hf_tokens = _hf_greedy(hf_model_dir[1], PROMPTS, 16, eos)
    early = Sampler(split[0], model.config, eos_token_ids=[eos], pad_token_id=PAD, prompt_buckets=BUCKETS)
    out = early.generate(split[1], PROMPTS, SamplingParams(max_new_tokens=16, greedy=True), jax.random.key(0),
                         return_logprobs=True)
    hf_len = hf_tokens.shape[1]
    np.testing.assert_array_equal(out.response_ids[:, :hf_len], hf_tokens)
    assert (out.response_ids[:, hf_len:] == PAD).all()
    expected_mask = _expected_mask(out.response_ids, [eos])
    np.testing.assert_array_equal(out.response_mask, expected_mask)
    assert out.response_mask[0].sum() <= 5 and out.response_mask.sum(1).max() > out.response_mask[0].sum()
    assert (out.response_ids[out.response_mask == 0] == PAD).all()
    assert (out.response_logprobs[out.response_mask == 0] == 0).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_digit_logits_match_full_recompute(split, model, sampler, temperature):
    # The PPO recompute at the rollout temperature reproduces the sampler's log-probs (verl: logits / temperature).
    params = SamplingParams(max_new_tokens=16, temperature=temperature, n=2)
    out = sampler.generate(split[1], PROMPTS, params, jax.random.key(3), return_digit_logits=True,
                           return_logprobs=True)
    assert out.response_ids.shape == (8, 16) and out.digit_logits.shape == (8, 16, 10)
    recompute = jax.jit(lambda state, *a: sequence_logprobs(nnx.merge(split[0], state), *a, digit_ids=DIGIT_IDS,
                                                             chunk_size=8, temperature=temperature))
    ref = recompute(split[1], out.prompt_ids, out.prompt_mask, out.response_ids, out.response_mask)
    valid = out.response_mask == 1
    np.testing.assert_allclose(out.response_logprobs[valid], np.asarray(ref.logprobs)[valid], atol=1e-4)
    np.testing.assert_allclose(out.digit_logits[valid], np.asarray(ref.digit_logits)[valid], atol=1e-4)
    assert (out.response_logprobs[valid] < 0).all()


def test_top_k_one_equals_greedy(split, sampler):
    greedy = sampler.generate(split[1], PROMPTS, SamplingParams(max_new_tokens=16, greedy=True), jax.random.key(0))
    top1 = sampler.generate(split[1], PROMPTS, SamplingParams(max_new_tokens=16, top_k=1, temperature=0.7),
                            jax.random.key(9))
    np.testing.assert_array_equal(top1.response_ids, greedy.response_ids)


def test_sampling_reproducible_and_key_dependent(split, sampler):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50)
    first = sampler.generate(split[1], PROMPTS, params, jax.random.key(1), return_logprobs=True)
    again = sampler.generate(split[1], PROMPTS, params, jax.random.key(1), return_logprobs=True)
    other = sampler.generate(split[1], PROMPTS, params, jax.random.key(2))
    np.testing.assert_array_equal(first.response_ids, again.response_ids)
    np.testing.assert_array_equal(first.response_logprobs, again.response_logprobs)
    assert (first.response_ids != other.response_ids).any()


def test_prompt_samples_do_not_depend_on_batch(split, sampler):
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=2)
    alone = sampler.generate(split[1], [PROMPTS[1]], params, jax.random.key(4), prompt_indices=[5],
                             return_logprobs=True)
    batch = sampler.generate(split[1], [PROMPTS[0], PROMPTS[1], PROMPTS[3]], params, jax.random.key(4),
                             prompt_indices=[3, 5, 7], return_logprobs=True)
    np.testing.assert_array_equal(batch.response_ids[2:4], alone.response_ids)
    np.testing.assert_allclose(batch.response_logprobs[2:4], alone.response_logprobs, atol=1e-5)
    # n samples: row i*n + j holds sample j of prompt i, and the two samples differ.
    np.testing.assert_array_equal(batch.prompt_ids[0], batch.prompt_ids[1])
    np.testing.assert_array_equal(batch.prompt_ids[2], alone.prompt_ids[0])
    assert (alone.response_ids[0] != alone.response_ids[1]).any()


def test_samples_of_a_prompt_share_one_prefill(split, model, sampler):
    # Prefill runs once per prompt and its cache is repeated n times: sample 0 of each prompt under n = 3 is the
    # n = 1 sample (same row key), and the prefill program sees the prompts, not the rows.
    once = sampler.generate(split[1], PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0), jax.random.key(8),
                            return_logprobs=True)
    fresh = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS)
    three = fresh.generate(split[1], PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, n=3),
                           jax.random.key(8), return_logprobs=True)
    np.testing.assert_array_equal(three.response_ids[::3], once.response_ids)
    np.testing.assert_allclose(three.response_logprobs[::3], once.response_logprobs, atol=1e-5)
    np.testing.assert_array_equal(three.prompt_ids, np.repeat(once.prompt_ids, 3, axis=0))
    assert [key[1:3] for key in fresh._programs] == [(len(PROMPTS), 3 * len(PROMPTS))]  # prompts, rows


def test_compiles_once_per_bucket(split, model):
    fresh = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS)
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    for length in (3, 9, 16):
        fresh.generate(split[1], [list(range(2, 2 + length))] * 4, params, jax.random.key(length))
    assert fresh.num_compilations == 1 and fresh.trace_counts == {"prefill": 1, "decode": 1}
    fresh.generate(split[1], [list(range(2, 19))] * 4, params, jax.random.key(0))  # length 17 -> bucket 32
    assert fresh.num_compilations == 2


def test_while_loop_stops_when_all_rows_emit_eos(split, model, sampler):
    params = SamplingParams(max_new_tokens=12, greedy=True)
    free_run = sampler.generate(split[1], PROMPTS, params, jax.random.key(0))
    eos_ids = sorted(set(free_run.response_ids[:, 2].tolist()))  # every row emits one of these by step 2
    stopping = Sampler(split[0], model.config, eos_token_ids=eos_ids, pad_token_id=PAD, prompt_buckets=BUCKETS)
    out = stopping.generate(split[1], PROMPTS, params, jax.random.key(0))
    assert stopping.last_num_steps == out.response_mask.sum(1).max() <= 3 < params.max_new_tokens
    np.testing.assert_array_equal(out.response_mask, _expected_mask(free_run.response_ids, eos_ids))
    np.testing.assert_array_equal(np.where(out.response_mask == 1, free_run.response_ids, PAD), out.response_ids)


def test_warp_logits_top_k_and_top_p():
    logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))
    kept = lambda **kw: np.isfinite(np.asarray(warp_logits(logits, SamplingParams(**kw))))[0].tolist()
    assert kept(top_k=2) == [False, True, False, True]
    assert kept(top_p=0.7) == [False, True, False, True]  # mass before: 0, .5, .8 -> two tokens
    assert kept(top_p=0.85) == [False, True, True, True]
    assert kept(top_p=0.01) == [False, True, False, False]  # at least one token
    np.testing.assert_allclose(warp_logits(logits, SamplingParams(temperature=2.0)), logits / 2.0)


def test_greedy_pick_is_jnp_argmax_with_ties_nan_and_inf():
    """The sampler's argmax (whole-row and blocked) equals jnp.argmax: first maximum on ties, the first NaN wins (also
    after a larger value or +inf), all -inf -> 0."""
    rows = jnp.array([[1.0, 3.0, 3.0, 0.0], [jnp.nan, 1.0, jnp.nan, 2.0], [-jnp.inf] * 4, [2.0, jnp.inf, 0.0, jnp.inf],
                      [0.5, -1.0, 7.0, 7.0], [9.0, 1.0, jnp.nan, 2.0], [jnp.inf, 1.0, 0.0, jnp.nan]], jnp.float32)
    random_rows = jax.random.normal(jax.random.key(0), (64, 8192))
    special = random_rows[:6].at[0, 7000].set(jnp.nan).at[1, 3].set(50.0).at[1, 5000].set(jnp.nan)
    special = special.at[2, 100].set(jnp.inf).at[2, 8000].set(jnp.nan).at[3, 129].set(9.0).at[3, 8191].set(9.0)
    special = special.at[4].set(-jnp.inf).at[5, 4000].set(jnp.inf)
    greedy = SamplingParams(greedy=True)
    for logits in (rows, random_rows, jnp.round(random_rows), special):  # rounding makes ties common
        picked = sample_tokens(logits, jax.random.split(jax.random.key(1), logits.shape[0]), greedy)
        assert picked.dtype == jnp.int32
        np.testing.assert_array_equal(np.asarray(picked), np.asarray(jnp.argmax(logits, axis=-1)))


def test_sample_tokens_follow_warped_distribution():
    probs = np.array([0.05, 0.5, 0.15, 0.3])
    rows = 20000
    logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (rows, 1))
    keys = jax.random.split(jax.random.key(0), rows)
    for params, expected in [(SamplingParams(temperature=1.0), probs),
                             (SamplingParams(temperature=1.0, top_p=0.7), np.array([0, 0.5, 0, 0.3]) / 0.8)]:
        counts = np.bincount(np.asarray(sample_tokens(logits, keys, params)), minlength=4) / rows
        np.testing.assert_allclose(counts, expected, atol=0.015)


def test_mesh_generation_matches_single_device(split, model, sampler):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, mesh=mesh,
                      prompt_buckets=BUCKETS)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=2)  # 3 prompts padded to 4, x 2 = 8 rows
    prompts = PROMPTS[:3]
    want = sampler.generate(split[1], prompts, params, jax.random.key(6), return_logprobs=True)
    got = sharded.generate(split[1], prompts, params, jax.random.key(6), return_logprobs=True)
    np.testing.assert_array_equal(got.response_ids, want.response_ids[:, :8])
    np.testing.assert_allclose(got.response_logprobs, want.response_logprobs[:, :8], atol=1e-4)
    # One prompt x 2 samples: prefill pads the prompts to the 4 batch shards, decode only the rows (4, not 8).
    one = sharded.generate(split[1], prompts[:1], params, jax.random.key(6))
    np.testing.assert_array_equal(one.response_ids, want.response_ids[:2, :8])
    assert (BUCKETS[0], 4, 4) in [key[:3] for key in sharded._programs]


def test_bad_inputs_raise(split, model, sampler):
    greedy = SamplingParams(max_new_tokens=4, greedy=True)
    with pytest.raises(ValueError, match="prompt length 33"):
        sampler.generate(split[1], [list(range(2, 35))], greedy, jax.random.key(0))
    with pytest.raises(ValueError, match="prompts"):
        sampler.generate(split[1], [[]], greedy, jax.random.key(0))
    with pytest.raises(ValueError, match="prompt_indices"):
        sampler.generate(split[1], PROMPTS, greedy, jax.random.key(0), prompt_indices=[0])
    with pytest.raises(ValueError, match="outside"):
        sampler.generate(split[1], [[VOCAB]], greedy, jax.random.key(0))
    no_digits = Sampler(split[0], model.config, eos_token_ids=1, pad_token_id=PAD)
    with pytest.raises(ValueError, match="digit_ids"):
        no_digits.generate(split[1], PROMPTS, greedy, jax.random.key(0), return_digit_logits=True)
    for bad in (dict(temperature=0.0), dict(top_p=0.0), dict(top_k=-1), dict(n=0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="eos_token_ids"):
        Sampler(split[0], model.config, eos_token_ids=VOCAB, pad_token_id=PAD)


def test_bfloat16_kv_cache_is_bfloat16_and_decodes_like_float32(split, model, sampler):
    """TrainerConfig.kv_cache_dtype='bfloat16': the cache the prefill returns is bfloat16 (half the decode memory);
    keys and values are rounded, so the first greedy steps and their log-probs stay close to the float32 cache's."""
    half = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS,
                   cache_dtype=jnp.bfloat16)
    params = SamplingParams(max_new_tokens=8, greedy=True)
    prefill, _ = half.build_programs(16, 4, params, with_digits=False, with_logprobs=False)
    ids = jnp.zeros((4, 16), jnp.int32)
    cache, _ = jax.eval_shape(prefill, split[1], ids, jnp.ones_like(ids))
    assert {leaf.dtype for leaf in jax.tree.leaves(cache)} == {jnp.dtype(jnp.bfloat16)}
    assert len(cache.k) == model.config.num_hidden_layers
    full = sampler.generate(split[1], PROMPTS, params, jax.random.key(0), return_logprobs=True)
    rounded = half.generate(split[1], PROMPTS, params, jax.random.key(0), return_logprobs=True)
    np.testing.assert_array_equal(rounded.response_ids[:, :4], full.response_ids[:, :4])
    np.testing.assert_allclose(rounded.response_logprobs[:, :4], full.response_logprobs[:, :4], atol=0.05)


def _decode_hlo(sampler_, split_, params):
    """Optimised HLO text of the decode program for 4 rows at prompt bucket 16."""
    prefill, decode = sampler_.build_programs(16, 4, params, with_digits=False, with_logprobs=False)
    ids, rows = jnp.zeros((4, 16), jnp.int32), jnp.arange(4, dtype=jnp.int32)
    cache, logits = jax.eval_shape(prefill, split_[1], ids, jnp.ones_like(ids))
    return decode.lower(split_[1], cache, logits, jnp.ones_like(ids), jax.random.key(0), rows, rows).compile().as_text()


def test_cpu_decode_matmuls_eigen_turns_ynnpack_off_for_decode_only_and_decodes_the_same(split, model):
    """TrainerConfig.cpu_decode_matmuls: 'eigen' compiles the CPU decode loop without YNNPACK fusions (faster at its
    few rows on AVX2 machines, benchmarks/rollout.py); 'xla_default' keeps jaxlib's; 'auto' (default) picks
    'xla_default' on AVX-512 CPUs, else 'eigen'. Same greedy tokens either way."""
    from ntl_jax.cpu.decode_matmuls import decode_compiler_options, host_has_avx512, resolve_decode_matmuls

    default = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS,
                      cpu_decode_matmuls="xla_default")
    sampler = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS,
                      cpu_decode_matmuls="eigen")
    automatic = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS)
    params = SamplingParams(max_new_tokens=8, greedy=True)
    assert default.decode_compiler_options == {}
    assert resolve_decode_matmuls("auto") == ("xla_default" if host_has_avx512() else "eigen")
    assert automatic.decode_compiler_options == decode_compiler_options(resolve_decode_matmuls("auto"), "cpu")
    assert decode_compiler_options("eigen", "gpu") == decode_compiler_options("eigen", "tpu") == {}
    with pytest.raises(ValueError, match=r"cpu_decode_matmuls='mkl'; allowed: one of \('auto', 'eigen', "
                                         r"'xla_default'\)"):
        Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, cpu_decode_matmuls="mkl")
    assert "ynn_fusion" not in _decode_hlo(sampler, split, params)
    if "ynn_fusion" not in _decode_hlo(default, split, params):
        pytest.skip("this jaxlib does not hand decode dots to YNNPACK: nothing to compare")
    assert sampler.decode_compiler_options == {"xla_cpu_experimental_ynn_fusion_type": ""}
    eigen = sampler.generate(split[1], PROMPTS, params, jax.random.key(0), return_logprobs=True)
    ynnpack = default.generate(split[1], PROMPTS, params, jax.random.key(0), return_logprobs=True)
    np.testing.assert_array_equal(eigen.response_ids, ynnpack.response_ids)
    np.testing.assert_allclose(eigen.response_logprobs, ynnpack.response_logprobs, atol=1e-5)


@pytest.mark.parametrize("max_rows", [1, 4, 6])
def test_a_chunked_rollout_gives_the_samples_of_one_call(split, sampler, max_rows):
    """``PPOConfig.rollout_max_rows`` bounds the KV cache by sampling in chunks; every row keeps its key, so the
    responses (and digit slices) are those of the unchunked call, prompts of several lengths included."""
    from ntl_jax.ppo.rollout import ColocatedRollout, prompts_per_chunk

    prompts = [[5, 6, 7], [8], [9, 10, 11, 12, 13], [14, 15], [16]]
    params = SamplingParams(max_new_tokens=6, temperature=1.0, n=2)
    rng, indices = jax.random.key(3), [10, 11, 12, 13, 14]
    whole = ColocatedRollout(sampler).generate(split[1], prompts, params, rng, prompt_indices=indices,
                                               return_digit_logits=True)
    chunked = ColocatedRollout(sampler, max_rows=max_rows).generate(split[1], prompts, params, rng,
                                                                    prompt_indices=indices, return_digit_logits=True)
    assert prompts_per_chunk(5, 2, max_rows) == max(1, max_rows // 2) < 5
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask"):
        np.testing.assert_array_equal(getattr(chunked, field), getattr(whole, field), err_msg=field)
    np.testing.assert_allclose(chunked.digit_logits, whole.digit_logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rollout_max_rows=-1 is invalid"):
        ColocatedRollout(sampler, max_rows=-1)


def test_rollout_max_rows_is_refused_where_it_would_be_ignored():
    from ntl_jax.ntl.config import NTLConfig
    from ntl_jax.ppo.config import ExperimentConfig, PPOConfig, TrainerConfig

    with pytest.raises(ValueError, match=r"PPOConfig.rollout_max_rows=8 is invalid; allowed: 0 with "
                                         r"TrainerConfig.rollout_mode='ray'"):
        ExperimentConfig(ppo=PPOConfig(rollout_max_rows=8), trainer=TrainerConfig(rollout_mode="ray"), ntl=NTLConfig())
    with pytest.raises(ValueError, match="rollout_max_rows=-1 is invalid"):
        PPOConfig(rollout_max_rows=-1)


# ------------------------------------------------------------------------------------------ accelerator programs
def _wide_vocab_sampler(platform):
    """A tiny model whose vocabulary (512) is wide enough for the blocked argmax, built for ``platform``."""
    from ntl_jax.models.config import ModelConfig
    from ntl_jax.models.decoder import CausalLM

    config = ModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    graphdef, state = nnx.split(CausalLM(config, rngs=nnx.Rngs(0)))
    return Sampler(graphdef, config, eos_token_ids=[1], pad_token_id=0, platform=platform), state


@pytest.mark.parametrize("platform, conditionals", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_accelerator_decode_loop_has_no_conditional(platform, conditionals):
    """On XLA:GPU a conditional in the decode loop's body is a device-to-host sync per step: built for an
    accelerator, the decode program (compiled here, for the CPU) has none; built for the CPU it has the blocked
    argmax's. Lowering the accelerator program for CUDA also succeeds on this CPU-only machine."""
    sampler_, state = _wide_vocab_sampler(platform)
    hlo = _decode_hlo(sampler_, (None, state), SamplingParams(max_new_tokens=8, greedy=True))
    assert (" conditional(" in hlo) == conditionals
    if platform == "gpu":
        from jax import export

        prefill, decode = sampler_.build_programs(16, 4, SamplingParams(max_new_tokens=8, n=1), with_digits=False,
                                                  with_logprobs=False)
        ids, rows = jnp.zeros((4, 16), jnp.int32), jnp.arange(4, dtype=jnp.int32)
        cache, logits = jax.eval_shape(prefill, state, ids, jnp.ones_like(ids))
        exported = export.export(decode, platforms=["cuda"])(state, cache, logits, jnp.ones_like(ids),
                                                             jax.random.key(0), rows, rows)
        assert "stablehlo.while" in exported.mlir_module()


def test_accelerator_and_cpu_argmax_pick_the_same_tokens():
    """jnp.argmax (accelerators) and the blocked argmax (CPU) agree, on ties, +inf and NaN rows too."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 512)).astype(np.float32)
    logits[1, [7, 300]] = 9.0  # a tie: the first index wins
    logits[2, 400] = np.inf
    logits[3, [10, 200]] = np.nan
    logits[4, [5, 6]] = [np.inf, np.nan]
    logits = jnp.asarray(logits)
    keys = jax.random.split(jax.random.key(0), 16)
    for params in (SamplingParams(greedy=True), SamplingParams(temperature=0.7), SamplingParams(top_k=50)):
        np.testing.assert_array_equal(sample_tokens(logits, keys, params, blocked_argmax=True),
                                      sample_tokens(logits, keys, params, blocked_argmax=False))


def test_prefill_attends_over_the_prompt_slots_only(split, model):
    """The prefill's attention reads the P prompt slots, not the P + max_new_tokens of the cache it fills."""
    sampler_ = Sampler(split[0], model.config, eos_token_ids=UNLIKELY_EOS, pad_token_id=PAD, prompt_buckets=BUCKETS)
    prefill, _ = sampler_.build_programs(16, 4, SamplingParams(max_new_tokens=11, greedy=True), with_digits=False,
                                         with_logprobs=False)
    ids = jnp.zeros((4, 16), jnp.int32)
    text = prefill.lower(split[1], ids, jnp.ones_like(ids)).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert dots and not any("x27x" in line or "x27>" in line for line in dots)  # 27 = 16 + 11 slots
    assert any("x27x" in line for line in text.splitlines())  # the cache itself has all 27 slots


def test_kv_cache_dtype_auto_is_bfloat16_on_accelerators_and_float32_on_cpu():
    from ntl_jax.models.sampler import resolve_cache_dtype

    assert resolve_cache_dtype("auto", "cpu") == jnp.float32
    assert resolve_cache_dtype("auto", "gpu") == resolve_cache_dtype("auto", "tpu") == jnp.bfloat16
    assert resolve_cache_dtype("float32", "gpu") == jnp.float32
    with pytest.raises(ValueError, match="kv_cache_dtype='half' is invalid; allowed: 'auto'"):
        resolve_cache_dtype("half", "cpu")
