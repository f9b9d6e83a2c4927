"""Training faults inside real trainer runs: non-finite updates, batches without any answer (NTL extraction has
nothing to work on), a corrupted newest checkpoint, and a resume exactly at an epoch boundary."""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.data.verl_parquet import PromptLoader
from ntl_jax.ppo.checkpoint import CORRUPT_SUFFIX
from ntl_jax.ppo.metrics import read_metrics_jsonl
from ntl_jax.ppo.ntl_step import NTLError
from ntl_jax.ppo.trainer import TrainingError
from test_reliability_support import (build_trainer, compile_cache, corrupt_checkpoint, fit,  # noqa: F401
                                      one_line, policy_dir)
from trainer_fixtures import load_tiny_tokenizer, tiny_experiment, tiny_rows, with_trainer

pytestmark = pytest.mark.usefixtures("compile_cache")

COMPARED = ("actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl", "critic/score/mean",
            "response_length/mean")


def host_copy(tree):
    return jax.tree.map(np.array, jax.device_get(tree))


def trees_equal(a, b) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ----------------------------------------------------------------------------------------------- non-finite updates
def test_non_finite_updates_are_skipped_counted_and_stop_after_n(tmp_path, policy_dir):
    """Poisoned advantages (NaN at step 1, +inf at step 3, NaN at step 4) make every update of those steps
    non-finite. 2 actor updates per step and max_consecutive_skipped_updates=3: step 1 skips 2 and goes on, step
    2 is clean (streak reset), step 3 skips 2, step 4's first skip makes 3 in a row -> TrainingError."""
    poison = {0: np.nan, 2: np.inf, 3: np.nan}  # keyed by global_step before the step (0-based)
    trainer = build_trainer(tiny_experiment(str(tmp_path), steps=6, max_consecutive_skipped_updates=3),
                            policy_dir)
    original = trainer.runtime.advantage_step

    def poisoned(*args):
        token_rewards, advantages, returns, kl_mean = original(*args)
        if trainer.global_step in poison:
            advantages = jnp.full_like(advantages, poison[trainer.global_step])
        return token_rewards, advantages, returns, kl_mean

    trainer.runtime.advantage_step = poisoned
    snapshots = []
    original_update = trainer.update

    policy = trainer.runtime.models.policy

    def update(rollout, ntl_weight, timings):
        before = host_copy((policy.params, policy.opt_state))
        try:
            return original_update(rollout, ntl_weight, timings)
        finally:
            snapshots.append((before, host_copy((policy.params, policy.opt_state))))

    trainer.update = update
    try:
        with pytest.raises(TrainingError) as raised:
            trainer.fit()
    finally:
        trainer.close()
    message = one_line(str(raised.value))
    streak = re.match(r"(\d+) consecutive updates had a non-finite loss or gradient", message)
    assert streak and int(streak.group(1)) >= 3 and "max_consecutive_skipped_updates=3" in message, message
    assert (tmp_path / "checkpoints" / "3").is_dir()  # the save in flight when the error came was finished
    rows = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # step 4 stopped the run before logging
    assert [r["actor/update_skipped"] for r in rows] == [1.0, 0.0, 1.0]
    assert [r["training/update_skipped_total"] for r in rows] == [2.0, 2.0, 4.0]
    assert np.isfinite(rows[1]["actor/pg_loss"]) and not np.isfinite(rows[0]["actor/pg_loss"])
    # A skipped step leaves parameters and optimiser state exactly as they were; a clean one changes them.
    assert trees_equal(*snapshots[0]) and trees_equal(*snapshots[2]) and trees_equal(*snapshots[3])
    assert not trees_equal(*snapshots[1])


# ------------------------------------------------------------------------------------------ NTL: no answer at all
def answerless(trainer):
    """Make every generated response text without a single digit (letters only): the model 'answers nothing'."""
    letter = trainer.tokenizer.convert_tokens_to_ids("x")
    original = trainer.runtime.rollout.generate

    def generate(*args, **kwargs):
        out = original(*args, **kwargs)
        ids = np.where(out.response_mask > 0, letter, out.response_ids)
        return out._replace(response_ids=ids)

    trainer.runtime.rollout.generate = generate


def ntl_config(output_dir, steps: int, **ntl_changes):
    config = tiny_experiment(str(output_dir), use_ntl=True, steps=steps)
    return config.replace(ntl=dataclasses.replace(config.ntl, **ntl_changes))


def run_answerless(config, policy_dir):
    trainer = build_trainer(config, policy_dir)
    answerless(trainer)
    try:
        return trainer.fit()
    finally:
        trainer.close()


def test_answerless_batch_runs_as_standard_ppo_and_is_counted(tmp_path, policy_dir):
    result = run_answerless(ntl_config(tmp_path, steps=1), policy_dir)
    assert result["end_step"] == 1
    last = read_metrics_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert last["ntl/batches_without_digits"] == 1 and last["ntl/total_digits"] == 0
    assert last["ntl/train_loss"] == 0.0 and np.isfinite(last["actor/pg_loss"])


def test_answerless_batch_with_require_digits_falls_back_or_raises(tmp_path, policy_dir):
    config = ntl_config(tmp_path / "fallback", steps=2, require_digits=True, fallback_on_error=True)
    result = run_answerless(config, policy_dir)
    assert result["end_step"] == 2
    rows = read_metrics_jsonl(tmp_path / "fallback" / "metrics.jsonl")
    assert [r["ntl/extraction_failures"] for r in rows] == [1.0, 2.0]
    assert all("ntl/loss" not in r and np.isfinite(r["actor/pg_loss"]) for r in rows)
    with pytest.raises(NTLError) as raised:
        run_answerless(ntl_config(tmp_path / "strict", steps=1, require_digits=True), policy_dir)
    message = one_line(str(raised.value))
    assert "step 0" in message and "require_digits=True" in message and "fallback_on_error=True" in message


# -------------------------------------------------------------------------------------------- corrupted checkpoint
def test_resume_skips_a_corrupted_newest_checkpoint(tmp_path, policy_dir, caplog):
    fit(tiny_experiment(str(tmp_path), steps=2), policy_dir)
    ckpt = tmp_path / "checkpoints"
    first = {r["step"]: r for r in read_metrics_jsonl(tmp_path / "metrics.jsonl")}
    corrupt_checkpoint(ckpt / "2")
    with caplog.at_level(logging.WARNING, logger="ntl_jax.ppo.checkpoint"):
        trainer, result = fit(tiny_experiment(str(tmp_path), steps=3), policy_dir)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("checkpoint step 2" in w and str(ckpt / "2") in w and "falling back" in w for w in warnings), warnings
    assert result["resumed"] and result["start_step"] == 1 and result["end_step"] == 3
    assert (ckpt / f"2{CORRUPT_SUFFIX}").is_dir()
    rerun = read_metrics_jsonl(tmp_path / "metrics.jsonl")[len(first):]
    assert [r["step"] for r in rerun] == [2, 3]
    for key in COMPARED:  # step 2 recomputed from step 1's state: the same numbers as the first time
        assert rerun[0][key] == pytest.approx(first[2][key], rel=1e-6, abs=1e-7), key


# ---------------------------------------------------------------------------------------- epoch-boundary resume
def test_resume_exactly_at_an_epoch_boundary_runs_the_remaining_steps(tmp_path, policy_dir):
    """verl ran zero steps here. 8 prompts, batch 4: a 1-epoch run stops at step 2 = the boundary; asking for 2
    epochs then resumes and runs steps 3-4 over epoch 2's shuffled order."""
    rows = tiny_rows(8)

    def config(epochs: int):
        return with_trainer(tiny_experiment(str(tmp_path), steps=0), total_epochs=epochs)

    _, first = fit(config(1), policy_dir, train_rows=rows)
    assert first["end_step"] == 2
    trainer = build_trainer(config(2), policy_dir, train_rows=rows)
    batches = []
    original = trainer.train_step

    def train_step(batch):
        batches.append(batch.indices)
        return original(batch)

    trainer.train_step = train_step
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    assert result["resumed"] and result["start_step"] == 2 and result["end_step"] == 4
    fresh = PromptLoader(rows, load_tiny_tokenizer(policy_dir), 4, seed=0, max_prompt_length=16)
    expected = [fresh.next_batch().indices for _ in range(4)][2:]
    assert batches == expected and sorted(sum(batches, [])) == list(range(8))
    logged = read_metrics_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["training/epoch"]) for r in logged] == [(1, 0), (2, 0), (3, 1), (4, 1)]
