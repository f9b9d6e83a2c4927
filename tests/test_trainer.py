"""End-to-end tests of the PPO loop on a tiny random policy (real sampler, real rewards, real orbax)."""

from __future__ import annotations

import ast
import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ntl_jax.ppo import factory
from ntl_jax.ppo.metrics import read_metrics_jsonl
from ntl_jax.ppo.ntl_step import NTLError
from ntl_jax.ppo.trainer import PPOTrainer
from ntl_jax.rewards.registry import RewardFnSpec
from trainer_fixtures import load_tiny_tokenizer, make_tiny_policy, tiny_experiment, tiny_rows, with_trainer


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return make_tiny_policy(str(tmp_path_factory.mktemp("policy")))


def single_device_mesh():
    import jax

    from ntl_jax.distributed.mesh import make_mesh

    return make_mesh(devices=jax.devices()[:1])


def _trainer(config, policy_dir, **kwargs):
    tokenizer = load_tiny_tokenizer(policy_dir)
    kwargs.setdefault("mesh", single_device_mesh())
    kwargs.setdefault("val_rows", tiny_rows(8, seed=1, split="test"))
    return factory.create_ppo_trainer(config, tokenizer, policy_path=policy_dir, train_rows=tiny_rows(), **kwargs)


def _run(config, policy_dir, **kwargs):
    trainer = _trainer(config, policy_dir, **kwargs)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    return trainer, result


def test_standard_run_logs_verl_metrics(tmp_path, policy_dir):
    trainer, result = _run(tiny_experiment(str(tmp_path)), policy_dir)
    assert type(trainer) is PPOTrainer
    assert result["end_step"] == 2
    rows = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("actor/pg_loss", "actor/pg_clipfrac", "actor/ppo_kl", "actor/entropy", "actor/grad_norm",
                "critic/score/mean", "response_length/mean", "timing_s/gen", "perf/throughput", "actor/kl_loss"):
        assert key in rows[-1] and np.isfinite(rows[-1][key]), key
    assert not any(k.startswith("ntl/loss") for k in rows[-1])


@pytest.mark.parametrize("reward_mode", ["final_answer", "all_tokens", "hybrid"])
def test_ntl_modes_run_end_to_end(tmp_path, policy_dir, reward_mode):
    trainer, result = _run(tiny_experiment(str(tmp_path), use_ntl=True, reward_mode=reward_mode), policy_dir)
    assert type(trainer) is PPOTrainer and trainer.config.ntl.enabled and trainer.config.ntl.reward_mode == reward_mode
    assert result["end_step"] == 2
    last = read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]
    # The NTL guide's metric names (ntl/loss, ntl/digit_accuracy, ntl/total_digits, ntl/reward, ntl/temperature)
    # beside ntl-jax's own.
    for key in ("ntl/loss", "ntl/digit_accuracy", "ntl/total_digits", "ntl/reward", "ntl/temperature",
                "ntl/answer_error", "ntl/tau", "ntl/train_loss", "ntl/bad_ground_truth", "reward_extra/ntl_bonus/mean"):
        assert key in last and np.isfinite(last[key]), key
    assert last["ntl/tau"] == last["ntl/temperature"] == pytest.approx(0.1)
    assert last["ntl/reward"] == pytest.approx(last["reward_extra/ntl_reward/mean"])
    assert 0.0 <= last["ntl/reward"] <= 0.5  # ntl_weight * closeness
    if reward_mode == "all_tokens":
        # A random policy emits digits somewhere in 8 x 12 tokens; all of them are targets in this mode.
        assert last["ntl/total_digits"] > 0


def test_scan_layers_trains_like_the_layer_loop(tmp_path, policy_dir):
    """TrainerConfig.scan_layers reaches actor, critic and reference passes and changes no logged number."""
    metrics = {}
    for scan in (False, True):
        config = with_trainer(tiny_experiment(str(tmp_path / str(scan)), use_ntl=True, adv_estimator="gae",
                                              rollout_n=1, ppo_micro_batch_size=2), scan_layers=scan)
        trainer, _ = _run(config, policy_dir)
        for module in (trainer.runtime.models.policy, trainer.runtime.models.critic):
            assert nnx.merge(module.graphdef, module.params).model.scan_layers is scan
        metrics[scan] = read_metrics_jsonl(tmp_path / str(scan) / "metrics.jsonl")[-1]
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/vf_loss", "critic/grad_norm", "ntl/loss",
                "actor/kl_loss", "critic/score/mean"):
        assert metrics[True][key] == pytest.approx(metrics[False][key], rel=1e-4, abs=1e-6), key


def test_on_policy_iteration_skips_the_old_log_prob_pass_and_trains_the_same(tmp_path, policy_dir):
    """One actor step per iteration: the old log-probs come from the update's own forward (verl's on_policy),
    the separate pass is skipped, and the updates equal those computed with the pass (ratio 1 either way)."""
    runs = {}
    for skip in (False, True):
        config = tiny_experiment(str(tmp_path / str(skip)), ppo_mini_batch_size=4, ppo_micro_batch_size=4,
                                 skip_on_policy_old_log_prob=skip)
        trainer, _ = _run(config, policy_dir)
        assert trainer.runtime.old_log_prob_from_update is skip
        runs[skip] = read_metrics_jsonl(tmp_path / str(skip) / "metrics.jsonl")
    assert all("timing_s/old_log_prob" in row for row in runs[False])
    assert not any("timing_s/old_log_prob" in row for row in runs[True])
    for with_pass, without in zip(runs[False], runs[True]):
        for key in ("actor/pg_loss", "actor/grad_norm", "actor/kl_loss", "actor/entropy", "critic/score/mean"):
            assert without[key] == pytest.approx(with_pass[key], rel=1e-4, abs=1e-6), key
        assert without["actor/ppo_kl"] == 0.0 and abs(with_pass["actor/ppo_kl"]) < 1e-5
    # Two mini-batches, NTL or KL-in-reward read the old pass: it stays.
    for overrides in (dict(), dict(use_kl_in_reward=True, ppo_mini_batch_size=4, ppo_micro_batch_size=4)):
        trainer = _trainer(tiny_experiment(str(tmp_path / "kept"), **overrides), policy_dir)
        assert not trainer.runtime.old_log_prob_from_update
        trainer.close()
    trainer = _trainer(tiny_experiment(str(tmp_path / "ntl"), use_ntl=True, ppo_mini_batch_size=4,
                                       ppo_micro_batch_size=4), policy_dir)
    assert not trainer.runtime.old_log_prob_from_update
    trainer.close()


def test_kv_cache_dtype_and_cpu_decode_matmuls_reach_the_sampler_and_are_validated(tmp_path, policy_dir):
    import jax.numpy as jnp

    trainer = _trainer(with_trainer(tiny_experiment(str(tmp_path)), kv_cache_dtype="bfloat16",
                                    cpu_decode_matmuls="xla_default"), policy_dir)
    assert trainer.runtime.sampler.cache_dtype == jnp.bfloat16
    assert trainer.runtime.sampler.decode_compiler_options == {}  # 'eigen' and 'auto' (default): test_sampler.py
    trainer.close()
    with pytest.raises(ValueError, match="kv_cache_dtype='float16' is invalid; allowed: 'auto', 'float32', 'bfloat16'"):
        with_trainer(tiny_experiment(str(tmp_path)), kv_cache_dtype="float16")
    with pytest.raises(ValueError, match="cpu_decode_matmuls='mkl' is invalid; allowed: 'auto', 'eigen', 'xla_default'"):
        with_trainer(tiny_experiment(str(tmp_path)), cpu_decode_matmuls="mkl")


def test_gae_with_critic_runs(tmp_path, policy_dir):
    config = tiny_experiment(str(tmp_path), adv_estimator="gae", rollout_n=1, ppo_micro_batch_size=2)
    trainer, result = _run(config, policy_dir)
    last = read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert trainer.runtime.models.critic is not None
    for key in ("critic/vf_loss", "critic/vf_clipfrac", "critic/values/mean", "critic/vf_explained_var"):
        assert key in last and np.isfinite(last[key]), key


def test_rewards_see_ntl_info_and_tau(tmp_path, policy_dir):
    """The NTL pass runs before rewards: every compute_score call receives ntl_info and tau."""
    log_path = tmp_path / "calls.jsonl"
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text(textwrap.dedent(f"""
        import json
        def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
            info = kwargs.get("ntl_info")
            with open({str(log_path)!r}, "a") as f:
                f.write(json.dumps({{"has_info": info is not None, "tau": kwargs.get("tau"),
                                    "keys": sorted(info) if info else []}}) + "\\n")
            return {{"score": 0.5, "seen": float(info is not None)}}
    """))
    config = tiny_experiment(str(tmp_path), use_ntl=True, steps=1)
    config = with_trainer(config, reward_fn_path=str(reward_file), reward_fn_name="compute_score")
    _run(config, policy_dir, val_rows=[])
    calls = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(calls) == 8  # 4 prompts x 2 samples
    assert all(c["has_info"] and c["tau"] == pytest.approx(0.1) for c in calls)
    assert {"ntl_loss", "number_error", "answer_error", "digit_accuracy", "total_digits", "has_digits",
            "has_answer", "missing_digits", "sign_wrong"} <= set(calls[0]["keys"])
    last = read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert last["reward_extra/seen/mean"] == 1.0


def test_standard_mode_passes_no_ntl_info(tmp_path, policy_dir):
    reward_file = tmp_path / "r.py"
    reward_file.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                           "    return {'score': 0.0, 'seen': float('ntl_info' in kw)}\n")
    config = with_trainer(tiny_experiment(str(tmp_path), steps=1), reward_fn_path=str(reward_file))
    _run(config, policy_dir)
    assert read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]["reward_extra/seen/mean"] == 0.0


def test_one_binding_switches_mode(tmp_path):
    import gin

    from ntl_jax.train import build_experiment, parse_gin

    gin.clear_config()
    try:
        parse_gin(["configs/standard.gin"], [])
        assert build_experiment().use_ntl is False
        gin.clear_config()
        parse_gin(["configs/standard.gin"], ["use_ntl_trainer = True"])
        config = build_experiment()
        assert config.use_ntl is True and config.ntl.enabled is True
    finally:
        gin.clear_config()


def test_factory_functions(tmp_path, policy_dir):
    config = tiny_experiment(str(tmp_path))
    tokenizer = load_tiny_tokenizer(policy_dir)
    kwargs = dict(policy_path=policy_dir, train_rows=tiny_rows(), mesh=single_device_mesh())
    made = [
        factory.create_standard_trainer(config, tokenizer, **kwargs),
        factory.create_ntl_trainer(config, tokenizer, method="mse", reward_mode="all_tokens", tau=0.5,
                                   weight=0.2, extract_during_generation=True, debug_mode=True, **kwargs),
        factory.create_final_answer_ntl_trainer(config, tokenizer, **kwargs),
        factory.create_all_tokens_ntl_trainer(config, tokenizer, **kwargs),
        factory.create_ppo_trainer(config, tokenizer, use_ntl=True, **kwargs),
        factory.create_ppo_trainer(config, tokenizer, **kwargs),
    ]
    try:
        # One trainer class; standard and NTL differ by their NTLConfig.
        assert all(type(t) is PPOTrainer for t in made)
        assert [t.config.ntl.enabled for t in made] == [False, True, True, True, True, False]
        ntl = made[1].config.ntl
        assert (ntl.method, ntl.reward_mode, ntl.tau, ntl.weight, ntl.extract_during_generation,
                ntl.debug_mode) == ("mse", "all_tokens", 0.5, 0.2, True, True)
        with pytest.warns(DeprecationWarning, match="tau"):  # the seed's name of tau still works
            made.append(factory.create_ntl_trainer(config, tokenizer, temperature=0.7, **kwargs))
        assert made[-1].config.ntl.tau == 0.7
        assert made[2].config.ntl.reward_mode == "final_answer"
        assert made[3].config.ntl.reward_mode == "all_tokens"
        preset = factory.create_ntl_trainer(config, tokenizer, **factory.EXAMPLE_CONFIGS["debug_mode"], **kwargs)
        made.append(preset)
        assert preset.config.ntl.debug_mode and preset.config.ntl.save_digit_info
        with pytest.raises(ValueError, match="method='bogus'"):
            factory.create_ntl_trainer(config, tokenizer, method="bogus", **kwargs)
    finally:
        for t in made:
            t.close()


def test_resume_continues_with_identical_metrics(tmp_path, policy_dir):
    full_dir, cut_dir = str(tmp_path / "full"), str(tmp_path / "cut")
    _run(tiny_experiment(full_dir, use_ntl=True, steps=4), policy_dir)
    _run(tiny_experiment(cut_dir, use_ntl=True, steps=2), policy_dir)
    trainer, result = _run(tiny_experiment(cut_dir, use_ntl=True, steps=4), policy_dir)
    assert result["resumed"] and result["start_step"] == 2 and result["end_step"] == 4
    full = {r["step"]: r for r in read_metrics_jsonl(os.path.join(full_dir, "metrics.jsonl"))}
    cut = {r["step"]: r for r in read_metrics_jsonl(os.path.join(cut_dir, "metrics.jsonl"))}
    assert sorted(cut) == [1, 2, 3, 4]
    for step in (3, 4):
        for key in ("actor/pg_loss", "actor/entropy", "critic/score/mean", "ntl/loss", "response_length/mean"):
            assert cut[step][key] == pytest.approx(full[step][key], rel=1e-5, abs=1e-6), (step, key)


def test_ntl_failure_raises_or_falls_back(tmp_path, policy_dir, monkeypatch):
    import ntl_jax.ppo.ntl_step as ntl_step

    def broken(*args, **kwargs):
        raise RuntimeError("target extraction exploded")

    monkeypatch.setattr(ntl_step, "build_batch_targets", broken)
    with pytest.raises(NTLError, match="target extraction exploded"):
        _run(tiny_experiment(str(tmp_path / "strict"), use_ntl=True, steps=1), policy_dir)
    config = tiny_experiment(str(tmp_path / "fallback"), use_ntl=True, steps=2)
    config = config.replace(ntl=config.ntl.__class__(**{**config.ntl.__dict__, "fallback_on_error": True}))
    _, result = _run(config, policy_dir)
    assert result["end_step"] == 2
    last = read_metrics_jsonl(tmp_path / "fallback" / "metrics.jsonl")[-1]
    assert last["ntl/extraction_failures"] == 2
    assert "ntl/loss" not in last


def test_reward_errors_are_counted_not_fatal(tmp_path, policy_dir):
    reward_file = tmp_path / "flaky.py"
    reward_file.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n"
                           "    if extra_info['index'] % 2:\n"
                           "        raise ValueError('flaky')\n"
                           "    return 1.0\n")
    config = with_trainer(tiny_experiment(str(tmp_path), steps=1), reward_fn_path=str(reward_file),
                          reward_fallback_score=-1.0)
    _run(config, policy_dir)
    last = read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert last["reward/errors"] > 0
    assert last["critic/score/min"] == -1.0 and last["critic/score/max"] == 1.0


def test_batch_not_divisible_by_devices_is_refused(tmp_path, policy_dir):
    import jax

    from ntl_jax.distributed.mesh import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 simulated devices")
    config = tiny_experiment(str(tmp_path), ppo_micro_batch_size=2)
    with pytest.raises(ValueError, match="ppo_micro_batch_size=2 is invalid"):
        _trainer(config, policy_dir, mesh=make_mesh(data=8))


def test_sharded_run_over_8_devices(tmp_path, policy_dir):
    """The same loop on a (data=2, fsdp=2, tensor=2) mesh of simulated CPU devices."""
    import jax

    from ntl_jax.distributed.mesh import make_mesh

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 simulated devices")
    config = tiny_experiment(str(tmp_path), use_ntl=True, ppo_mini_batch_size=4, ppo_micro_batch_size=8)
    trainer, result = _run(config, policy_dir, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    assert result["end_step"] == 2
    shardings = {str(x.sharding.spec) for x in jax.tree.leaves(trainer.runtime.models.policy.params)}
    assert any("tensor" in s for s in shardings), shardings
    last = read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert np.isfinite(last["actor/pg_loss"]) and np.isfinite(last["ntl/loss"])


def test_reward_spec_object_accepted(tmp_path, policy_dir):
    trainer = _trainer(tiny_experiment(str(tmp_path)), policy_dir, reward_fn=RewardFnSpec(name="compute_score"))
    trainer.close()


@pytest.mark.parametrize("critic_warmup,first_actor_step", [(0, 1), (1, 1), (2, 2)])
def test_critic_warmup_counts_steps_from_one_like_verl(tmp_path, policy_dir, critic_warmup, first_actor_step):
    """verl updates the actor once ``critic_warmup <= global_steps``, with global_steps = 1 on the first step."""
    config = tiny_experiment(str(tmp_path), adv_estimator="gae", rollout_n=1, steps=2, critic_warmup=critic_warmup)
    _run(config, policy_dir, val_rows=[])
    rows = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    actor_steps = [r["step"] for r in rows if "actor/pg_loss" in r]
    assert actor_steps == list(range(first_actor_step, 3))
    assert all("critic/vf_loss" in r for r in rows)


def test_trainer_logs_and_applies_the_cosine_schedule(tmp_path, policy_dir):
    """GAE (actor + critic), 2 mini-batches per iteration, 3 iterations: rates 1, 0.75, 0.25 of the peak."""
    config = tiny_experiment(str(tmp_path), adv_estimator="gae", rollout_n=1, steps=3, lr_scheduler_type="cosine",
                             critic_lr=2e-3)
    trainer, _ = _run(config, policy_dir, val_rows=[])
    rows = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    np.testing.assert_allclose([r["actor/lr"] for r in rows], [1e-3, 0.75e-3, 0.25e-3], rtol=1e-9)
    np.testing.assert_allclose([r["critic/lr"] for r in rows], [2e-3, 1.5e-3, 0.5e-3], rtol=1e-9)
    assert config.ppo.updates_per_iteration == 2
    for state in (trainer.runtime.models.policy, trainer.runtime.models.critic):
        counts = [x for x in jax.tree.leaves(state.opt_state) if jnp.ndim(x) == 0 and x.dtype == jnp.int32]
        assert counts and all(int(c) == 6 for c in counts)


def test_kl_in_reward_through_the_trainer(tmp_path, policy_dir):
    """verl's GSM8K recipe path: KL folded into the token rewards, adaptive controller, GAE."""
    config = tiny_experiment(str(tmp_path), adv_estimator="gae", rollout_n=1, steps=3, use_kl_loss=False,
                             use_kl_in_reward=True, kl_penalty="low_var_kl", kl_ctrl_type="adaptive", kl_coef=0.05,
                             kl_target=0.01, kl_horizon=10, actor_lr=1e-2)
    trainer, _ = _run(config, policy_dir, val_rows=[])
    assert trainer.runtime.models.reference is not None
    rows = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["actor/reward_kl_penalty"] == pytest.approx(0.0, abs=1e-6)  # the policy is still the reference
    assert rows[0]["critic/rewards/mean"] == pytest.approx(rows[0]["critic/score/mean"], abs=1e-6)
    later = rows[-1]
    assert later["actor/reward_kl_penalty"] > 1e-4  # the policy moved; low_var_kl is >= 0
    assert later["critic/rewards/mean"] < later["critic/score/mean"]  # rewards = scores - beta * KL
    coefs = [r["actor/reward_kl_penalty_coeff"] for r in rows]
    assert coefs[0] == pytest.approx(0.05)
    # Adaptive controller: KL 0 (< target) at step 1 lowers beta by 20% * n / horizon = 0.2 * 4 / 10.
    assert coefs[1] == pytest.approx(0.05 * (1 - 0.2 * 4 / 10), rel=1e-5)
    assert trainer.kl_state.value != pytest.approx(0.05)


def test_log_prob_micro_batches_give_the_unchunked_result(tmp_path, policy_dir):
    whole_dir, chunked_dir = str(tmp_path / "whole"), str(tmp_path / "chunked")
    _run(tiny_experiment(whole_dir, use_ntl=True, adv_estimator="gae", rollout_n=2, steps=2), policy_dir)
    _run(tiny_experiment(chunked_dir, use_ntl=True, adv_estimator="gae", rollout_n=2, steps=2,
                         log_prob_micro_batch_size=2), policy_dir)
    whole = read_metrics_jsonl(os.path.join(whole_dir, "metrics.jsonl"))
    chunked = read_metrics_jsonl(os.path.join(chunked_dir, "metrics.jsonl"))
    for a, b in zip(whole, chunked):
        for key in ("actor/pg_loss", "actor/ppo_kl", "actor/kl_loss", "ntl/loss", "critic/values/mean",
                    "critic/vf_loss", "critic/score/mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


def test_generation_config_eos_tokens_stop_sampling(tmp_path, policy_dir):
    """A chat model's generation_config.json lists extra stop tokens (Qwen2.5: <|im_end|> and <|endoftext|>)."""
    import shutil

    model_dir = str(tmp_path / "policy")
    shutil.copytree(policy_dir, model_dir)
    with open(os.path.join(model_dir, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [1, 7]}, f)
    trainer = _trainer(tiny_experiment(str(tmp_path / "run")), model_dir)
    try:
        assert trainer.runtime.eos_ids == [1, 7] and trainer.runtime.sampler.eos_token_ids == (1, 7)
    finally:
        trainer.close()


def test_example_configs_are_the_preset_files():
    """EXAMPLE_CONFIGS[name] binds exactly what configs/presets/<name>.gin binds (NTL on, plus NTLConfig knobs)."""
    presets = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "presets")
    assert sorted(f[:-4] for f in os.listdir(presets) if f.endswith(".gin")) == sorted(factory.EXAMPLE_CONFIGS)
    for name, settings in factory.EXAMPLE_CONFIGS.items():
        bound = {}
        with open(os.path.join(presets, name + ".gin")) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line.startswith("ntl_jax.NTLConfig."):
                    key, value = (part.strip() for part in line[len("ntl_jax.NTLConfig."):].split("=", 1))
                    bound[key] = ast.literal_eval(value)
        assert bound == settings, name


def test_a_rollout_out_of_group_order_is_refused_while_prompts_are_shared(tmp_path, policy_dir):
    """The shared-prompt forward reads rows i * n .. i * n + n - 1 as prompt i's samples: a rollout whose rows are
    in another order is refused with one line, never trained on with the wrong prompts."""
    trainer = _trainer(tiny_experiment(str(tmp_path)), policy_dir)
    generate = trainer.runtime.rollout.generate

    def rows_shifted_by_one(*args, **kwargs):  # row 0 now holds the last prompt's second sample
        out = generate(*args, **kwargs)
        assert not np.array_equal(out.prompt_ids[0], out.prompt_ids[-1])  # the batch has different prompts
        return out._replace(**{name: np.roll(getattr(out, name), 1, axis=0) for name in (
            "prompt_ids", "prompt_mask", "response_ids", "response_mask")})

    trainer.runtime.rollout.generate = rows_shifted_by_one
    try:
        batch = trainer.loader.next_batch()
        with pytest.raises(RuntimeError, match="not in groups of rollout_n=2 rows per prompt"):
            trainer.generate(batch)
    finally:
        trainer.close()


def test_response_bucket_trains_on_the_longest_response_with_the_same_results(tmp_path, policy_dir, monkeypatch):
    """PPOConfig.response_bucket: responses that all stop by column 5 of 12 train on 8 columns (bucket 4), with the
    results of training on all 12 (the cut columns are padding). Stops are forced on the sampled rollout (a random
    tiny policy rarely samples EOS); both runs see the same rollout."""
    from ntl_jax.ppo.rollout import ColocatedRollout
    from ntl_jax.ppo.trainer import trim_responses

    original = ColocatedRollout.generate

    def stop_by_column_5(self, *args, **kwargs):
        gen = original(self, *args, **kwargs)
        mask = gen.response_mask.copy()
        mask[:, 5:] = 0
        ids = np.where(mask > 0, gen.response_ids, 0)
        return gen._replace(response_ids=ids, response_mask=mask)

    monkeypatch.setattr(ColocatedRollout, "generate", stop_by_column_5)
    widths, last = {}, {}
    original_update = PPOTrainer.update

    def record_width(self, rollout, ntl_weight, timings):
        widths.setdefault(self.ppo.response_bucket, set()).add(rollout.response_ids.shape[1])
        return original_update(self, rollout, ntl_weight, timings)

    monkeypatch.setattr(PPOTrainer, "update", record_width)
    for bucket in (0, 4):
        out = tmp_path / f"bucket_{bucket}"
        _run(tiny_experiment(str(out), use_ntl=True, response_bucket=bucket), policy_dir, val_rows=[])
        last[bucket] = read_metrics_jsonl(out / "metrics.jsonl")
    assert widths == {0: {12}, 4: {8}}
    for full, trimmed in zip(last[0], last[4]):
        for key in ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/kl_loss", "critic/score/mean",
                    "ntl/loss", "response_length/mean"):
            assert trimmed[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    with pytest.raises(ValueError, match="response_bucket=4 is invalid; allowed: 0 with loss_agg_mode"):
        tiny_experiment(str(tmp_path), response_bucket=4, loss_agg_mode="seq-mean-token-sum-norm")
    from ntl_jax.models.sampler import GenerationOutput
    out = GenerationOutput(np.zeros((2, 3)), np.ones((2, 3)), np.zeros((2, 10)), np.tile((np.arange(10) < 3), (2, 1)),
                           None, np.zeros((2, 10, 10)))
    assert trim_responses(out, 4).response_ids.shape == (2, 4)
    assert trim_responses(out, 4).digit_logits.shape == (2, 4, 10)
    assert trim_responses(out, 0) is out and trim_responses(out, 16) is out
