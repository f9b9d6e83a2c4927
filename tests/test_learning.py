"""PPO must learn: from a small warm start built here, 40 GRPO iterations must raise greedy accuracy a lot.

Task: two-operand addition with 1-2 digit operands (``47+36`` -> ``47+36=83\\n#### 83``), the embedded task's
format. A width-64 two-layer decoder is warm-started by supervised training until its held-out greedy accuracy
reaches 0.3, then trained by the real loop (``create_ppo_trainer``: sampler, rewards, GRPO advantages, jitted
updates) on a pool of 64 training prompts for 40 iterations (16 prompts x 8 samples, learning rate 1e-4, two epochs
of two mini-batches). Greedy accuracy on the pool is measured before and after with the warm start's evaluator.

How the margins were chosen (seeds 0, 1, 2 of this exact procedure, 2-core CPU, 2026-12-01):
- real rewards: pool accuracy 0.453 -> 0.953, 0.406 -> 0.828, 0.406 -> 0.875 (gains 0.50, 0.42, 0.47); mean
  training score of the last 10 iterations minus the first 10: +0.31, +0.28, +0.27;
- the same run with rewards drawn at random (os.urandom, independent of the response): 0.453 -> 0.250 and
  0.406 -> 0.156 on seeds 0 and 1 (gains -0.20 and -0.25), training score change -0.01 and 0.00;
- a loop that does not update the policy leaves both unchanged (gain 0).
So the test asks for a gain of at least 0.25 in accuracy and 0.15 in training score: half the smallest gain seen
with real rewards, and far above what training without a learning signal does. The run is deterministic on one
machine (seed 0 gave 0.453 -> 0.953 in two separate processes). About 70 s on 2 cores.
"""
from __future__ import annotations

import numpy as np
from flax import nnx

from ntl_jax.data.arithmetic import make_arithmetic_examples
from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.embedded import EmbeddedTaskConfig, tiny_model_config
from ntl_jax.models.decoder import CausalLM
from ntl_jax.models.hf_io import save_pretrained
from ntl_jax.models.sampler import Sampler
from ntl_jax.models.tokenizers import build_char_tokenizer, load_tokenizer
from ntl_jax.ntl.digits import digit_token_ids
from ntl_jax.ppo.config import ExperimentConfig, PPOConfig, TrainerConfig
from ntl_jax.ppo.factory import create_ppo_trainer
from ntl_jax.warm_start import WarmStartConfig, greedy_eval, supervised_warm_start

SEED = 0
ITERATIONS = 40
MIN_ACCURACY_GAIN = 0.25
MIN_SCORE_GAIN = 0.15


def test_ppo_raises_greedy_accuracy_far_beyond_noise(tmp_path):
    import jax

    task = dict(ops="+", min_digits=1, max_digits=2)
    train = make_arithmetic_examples(4000, 7, split="train", **task)
    selection = make_arithmetic_examples(800, 8, split="test", **task)[1::2]
    pool = train[:64]
    tokenizer = build_char_tokenizer()
    model = CausalLM(tiny_model_config(tokenizer, EmbeddedTaskConfig()), rngs=nnx.Rngs(SEED))
    warm = WarmStartConfig(max_steps=1500, batch_size=64, eval_every=25, eval_samples=200, target_accuracy=0.3,
                           seed=SEED)
    model, stats = supervised_warm_start(model, tokenizer, train, selection, warm,
                                         digit_ids=digit_token_ids(tokenizer), max_new_tokens=24, progress=False)
    assert stats["reached_target"]
    policy_dir = str(tmp_path / "warm")
    save_pretrained(model, policy_dir, tokenizer=tokenizer)

    ppo = PPOConfig(train_batch_size=16, rollout_n=8, ppo_mini_batch_size=8, ppo_micro_batch_size=64, ppo_epochs=2,
                    max_prompt_length=8, max_response_length=24, adv_estimator="grpo", actor_lr=1e-4,
                    weight_decay=0.0, use_kl_loss=True, kl_loss_coef=0.001)
    run = TrainerConfig(output_dir=str(tmp_path / "ppo"), seed=SEED, total_training_steps=ITERATIONS,
                        test_freq=10**6, save_freq=10**6, resume_mode="disable", val_before_train=False,
                        use_tensorboard=False, progress_bar=False)
    trainer = create_ppo_trainer(ExperimentConfig(ppo=ppo, trainer=run), load_tokenizer(policy_dir),
                                 policy_path=policy_dir, train_rows=pool, val_rows=[],
                                 mesh=make_mesh(devices=jax.devices()[:1]))
    sampler = Sampler(trainer.runtime.models.policy.graphdef, trainer.runtime.models.model_config,
                      eos_token_ids=[tokenizer.eos_token_id], pad_token_id=tokenizer.pad_token_id)
    prompts = [tokenizer(r["prompt"][-1]["content"], add_special_tokens=False)["input_ids"] for r in pool]

    def pool_accuracy() -> float:
        return greedy_eval(sampler, trainer.runtime.models.policy.params, pool, prompts, tokenizer, 24)["acc"]

    before = pool_accuracy()
    try:
        trainer.fit()
    finally:
        trainer.close()
    after = pool_accuracy()
    scores = [h["critic/score/mean"] for h in trainer.history]
    score_gain = float(np.mean(scores[-10:]) - np.mean(scores[:10]))
    assert len(scores) == ITERATIONS
    assert after - before >= MIN_ACCURACY_GAIN, (before, after)
    assert score_gain >= MIN_SCORE_GAIN, score_gain
    # The signal-quality diagnostics are logged every iteration.
    assert 0.0 <= trainer.history[-1]["critic/score/same_frac"] <= 1.0
    assert trainer.history[-1]["critic/score/group_std"] >= 0.0
    assert 0.0 <= trainer.history[-1]["reward_extra/acc/none_frac"] <= trainer.history[-1]["reward_extra/acc/same_frac"]
