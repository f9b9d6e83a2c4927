"""Faults inside real trainer runs: reward functions that raise, hang or kill their Ray actor, a Ray reward actor
killed from outside mid-batch, and a Ray rollout actor that dies mid-batch.

Each run injects the fault for real (a reward file loaded by path, a real ``ray.kill``, a real ``os._exit`` in the
actor process) and checks the run goes on: the faulty samples get the fallback score and are counted
(``reward/errors``, ``reward/timeouts``), every other sample's reward is what the clean function gives for the same
response, no sample is lost or counted twice, and Ray rollout samples equal the colocated sampler's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ntl_jax.ppo.metrics import read_metrics_jsonl
from ntl_jax.ppo.rollout import ColocatedRollout
from ntl_jax.rewards.registry import default_compute_score, normalize_reward_output
from test_reliability_support import (build_trainer, capture_rewards, clear_faults, compile_cache,  # noqa: F401
                                      compile_cache_env, policy_dir, read_calls, set_faults, write_faulty_reward)
from trainer_fixtures import tiny_experiment, with_trainer

pytestmark = [pytest.mark.usefixtures("compile_cache"),
              pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]  # Ray starts its processes

FALLBACK = -1.0


def clean_score(item: dict) -> float:
    """What the reward function returns for ``item`` without any fault."""
    keys = ("data_source", "solution_str", "ground_truth", "extra_info")
    return normalize_reward_output(default_compute_score(**{k: item[k] for k in keys}))[0]


def faulty_config(output_dir, reward_path, control, *, steps: int, runner: str, timeout_s: float, **changes):
    config = tiny_experiment(str(output_dir), steps=steps)
    return with_trainer(config, reward_fn_path=reward_path, reward_fn_kwargs=(("control", str(control)),),
                        reward_runner=runner, reward_timeout_s=timeout_s, reward_fallback_score=FALLBACK,
                        **changes)


def prompt_indices(items: list[dict]) -> list[int]:
    """Distinct prompt indices of a batch, in order (each prompt has rollout_n samples)."""
    return list(dict.fromkeys(item["extra_info"]["index"] for item in items))


def check_scores(items: list[dict], result, faulty: dict[int, str]) -> None:
    """Faulty prompts got the fallback; every other sample's reward equals the clean function's."""
    assert len(result.scores) == len(items)
    for item, score in zip(items, result.scores):
        index = item["extra_info"]["index"]
        if faulty.get(index) in ("raise", "hang"):
            assert score == FALLBACK, (index, faulty[index])
        else:
            assert score == np.float32(clean_score(item)), index


def inject_before_scoring(trainer, plan):
    """Wrap the reward runner so that ``plan(step, items)`` can set faults after seeing the batch."""
    calls = capture_rewards(trainer)
    recorded = trainer.runtime.reward_runner.score

    def score(items):
        plan(len(calls) + 1, items)
        return recorded(items)

    trainer.runtime.reward_runner.score = score
    return calls


# ---------------------------------------------------------------------------------------------------- local runner
def test_local_runner_raise_and_hang_inside_a_run(tmp_path, policy_dir):
    reward_path, control = write_faulty_reward(tmp_path)
    config = faulty_config(tmp_path / "run", reward_path, control, steps=2, runner="local", timeout_s=1.0)
    trainer = build_trainer(config, policy_dir)
    faults: dict[int, str] = {}

    def plan(step, items):
        clear_faults(control)
        if step == 1:
            raising, hanging = prompt_indices(items)[:2]
            faults.update({raising: "raise", hanging: "hang"})
            set_faults(control, raise_=[raising], hang=[hanging])

    calls = inject_before_scoring(trainer, plan)
    start = time.perf_counter()
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    print(f"\nlocal run with a raising and a hanging reward: {time.perf_counter() - start:.1f} s")
    assert result["end_step"] == 2
    (items1, result1), (items2, result2) = calls
    check_scores(items1, result1, faults)
    check_scores(items2, result2, {})
    rows = read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [(r["reward/errors"], r["reward/timeouts"]) for r in rows] == [(2.0, 2.0), (0.0, 0.0)]
    assert rows[0]["critic/score/min"] == FALLBACK


# ------------------------------------------------------------------------------------------ Ray (one init, module)
@pytest.fixture(scope="module")
def ray_session(compile_cache):
    ray = pytest.importorskip("ray")
    from ntl_jax.rewards.workers import ensure_ray

    was_running = ray.is_initialized()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must fit in 107 bytes
    saved = {key: os.environ.get(key) for key in compile_cache_env(compile_cache)}
    os.environ.update(compile_cache_env(compile_cache))  # the rollout actors compile through the same cache
    start = time.perf_counter()
    try:
        ensure_ray(num_cpus=4, temp_dir=temp_dir)  # 2 reward + 2 rollout actors, 1 CPU each
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    print(f"\nray init: {time.perf_counter() - start:.1f} s")
    yield ray
    if not was_running:
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_reward_run(ray_session, policy_dir, tmp_path_factory):
    """Two steps with reward_runner='ray'. Step 1: one prompt raises, one hangs, one kills its actor (os._exit).
    Step 2: one prompt is slow and every reward actor is ray.kill-ed from a thread while it runs."""
    tmp = tmp_path_factory.mktemp("ray_reward")
    reward_path, control = write_faulty_reward(tmp)
    config = faulty_config(tmp / "run", reward_path, control, steps=2, runner="ray", timeout_s=2.0,
                           reward_num_workers=2)
    trainer = build_trainer(config, policy_dir)
    faults: dict[int, str] = {}
    killed: list[int] = []

    def kill_all_when_running(index: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (control / f"running_{index}").exists():
            time.sleep(0.01)
        for actor in trainer.runtime.reward_runner.actors:
            ray_session.kill(actor)
            killed.append(1)

    def plan(step, items):
        clear_faults(control)
        indices = prompt_indices(items)
        if step == 1:
            faults.update({indices[0]: "raise", indices[1]: "hang", indices[2]: "die"})
            set_faults(control, raise_=[indices[0]], hang=[indices[1]], die=[indices[2]])
        else:
            set_faults(control, slow=[indices[0]])
            threading.Thread(target=kill_all_when_running, args=(indices[0],), daemon=True).start()

    calls = inject_before_scoring(trainer, plan)
    restarts = []
    original_update = trainer.update

    def update(*args, **kwargs):  # runs right after the rewards of a step
        restarts.append(trainer.runtime.reward_runner.num_restarts)
        return original_update(*args, **kwargs)

    trainer.update = update
    start = time.perf_counter()
    try:
        result = trainer.fit()
    finally:
        trainer.close()
    elapsed = time.perf_counter() - start
    print(f"\nray reward run (raise, hang, os._exit, ray.kill): {elapsed:.1f} s")
    return SimpleNamespace(result=result, calls=calls, faults=faults, control=control, restarts=restarts,
                           killed=killed, rows=read_metrics_jsonl(tmp / "run" / "metrics.jsonl"))


def test_ray_reward_raise_and_hang_inside_a_run(ray_reward_run):
    run = ray_reward_run
    assert run.result["end_step"] == 2
    items, result = run.calls[0]
    check_scores(items, result, run.faults)
    assert (run.rows[0]["reward/errors"], run.rows[0]["reward/timeouts"]) == (2.0, 2.0)
    assert (run.rows[1]["reward/errors"], run.rows[1]["reward/timeouts"]) == (0.0, 0.0)


def test_ray_reward_actor_death_recomputes_samples(ray_reward_run):
    run = ray_reward_run
    calls = read_calls(run.control)
    # Step 1: the actor that ran the 'die' prompt exited; its samples were recomputed on a new actor.
    died = [index for index, kind in run.faults.items() if kind == "die"][0]
    assert [(i, o) for _, i, o in calls].count((died, "die")) == 1
    assert [(i, o) for _, i, o in calls].count((died, "ok")) == 2  # both samples of that prompt, once each
    # Step 2: all actors were killed from outside while the slow sample ran; the batch still completed.
    assert len(run.killed) == 2
    items2, result2 = run.calls[1]
    check_scores(items2, result2, {})
    assert result2.num_errors == 0 and result2.num_timeouts == 0
    # 1 death + 2 timeouts (hung samples) in step 1, 2 kills in step 2.
    assert run.restarts[0] == 3 and run.restarts[1] >= 4
    # Every sample of each batch has exactly one score: nothing lost, nothing counted twice.
    for items, result in run.calls:
        assert len(result.scores) == len(items) == len(result.extras)


# ---------------------------------------------------------------------------------------------------- Ray rollout
def dying_rollout_worker(marker: str):
    """A rollout actor class whose first ``generate`` after ``marker`` appears exits its process (os._exit).

    Defined in a function so Ray ships it by value to the actor processes."""
    from ntl_jax.ppo.rollout import _RolloutWorker

    class DyingOnceRolloutWorker(_RolloutWorker):
        def generate(self, *args, **kwargs):
            try:
                os.rename(marker, marker + ".taken")  # atomic: exactly one worker claims the marker
            except FileNotFoundError:
                return super().generate(*args, **kwargs)
            os._exit(1)

    return DyingOnceRolloutWorker


@pytest.fixture(scope="module")
def ray_rollout_run(ray_session, policy_dir, tmp_path_factory):
    """Two steps with rollout_mode='ray' (2 actors); one actor dies inside step 2's generate call. Every Ray
    generation is compared with the colocated sampler on the same weights, prompts and key."""
    tmp = tmp_path_factory.mktemp("ray_rollout")
    marker = str(tmp / "die_now")
    monkeypatch = pytest.MonkeyPatch()
    from ntl_jax.ppo import rollout as rollout_module

    monkeypatch.setattr(rollout_module, "_RolloutWorker", dying_rollout_worker(marker))
    config = with_trainer(tiny_experiment(str(tmp / "run"), steps=2), rollout_mode="ray", rollout_num_workers=2)
    try:
        trainer = build_trainer(config, policy_dir)
        original = trainer.runtime.rollout.generate  # Ray samplers start on first use: here, with the patched worker
    finally:
        monkeypatch.undo()
    colocated = ColocatedRollout(trainer.runtime.sampler)
    pairs = []

    def generate(state, prompts, params, rng, **kwargs):
        if len(pairs) == 1:
            open(marker, "w").close()  # the second batch kills one actor mid-call
        reference = colocated.generate(state, prompts, params, rng, **kwargs)
        pairs.append((original(state, prompts, params, rng, **kwargs), reference))
        return pairs[-1][0]

    trainer.runtime.rollout.generate = generate
    start = time.perf_counter()
    try:
        result = trainer.fit()
        restarts = trainer.runtime.rollout.restarts
    finally:
        trainer.close()
    print(f"\nray rollout run with a worker killed: {time.perf_counter() - start:.1f} s")
    return SimpleNamespace(result=result, pairs=pairs, restarts=restarts, marker=marker)


def assert_same_samples(ray_out, colocated_out) -> None:
    for field in ("prompt_ids", "prompt_mask", "response_ids", "response_mask"):
        np.testing.assert_array_equal(getattr(ray_out, field), getattr(colocated_out, field), err_msg=field)
    assert ray_out.response_logprobs is None and colocated_out.response_logprobs is None  # the trainer recomputes


def test_ray_and_colocated_rollout_give_identical_samples(ray_rollout_run):
    ray_out, colocated_out = ray_rollout_run.pairs[0]
    assert ray_out.response_ids.shape[0] == 8
    assert_same_samples(ray_out, colocated_out)


def test_ray_rollout_actor_killed_mid_batch_is_restarted(ray_rollout_run):
    run = ray_rollout_run
    assert run.result["end_step"] == 2
    assert os.path.exists(run.marker + ".taken") and run.restarts == 1  # one actor died inside generate
    ray_out, colocated_out = run.pairs[1]
    # The dead actor's prompts were generated again: all 8 rows, in order, equal to the colocated samples.
    assert ray_out.response_ids.shape[0] == 8
    assert_same_samples(ray_out, colocated_out)
