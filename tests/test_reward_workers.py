"""Reward runners under real faults: raising, hanging and crashing reward functions; a Ray actor killed mid-batch."""
import logging
import os
import shutil
import tempfile
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from ntl_jax.rewards.registry import RewardFnSpec, load_reward_function
from ntl_jax.rewards.workers import LocalRewardRunner, RayRewardRunner, RewardResult, ensure_ray

# Each sample's behaviour is chosen by its solution_str; a healthy sample returns a value unique to its index.
REWARD_FILE = '''
import os, time

def _log(path, line):
    if path:
        with open(path, "a") as f:
            f.write(line + "\\n")

def compute_score(data_source, solution_str, ground_truth, extra_info=None, log_path=None, delay_s=0.0, **kwargs):
    index = extra_info["index"]
    _log(log_path, f"start {index} {os.getpid()}")
    time.sleep(delay_s)
    if solution_str == "raise":
        raise RuntimeError(f"reward bug on sample {index}")
    if solution_str == "hang":
        time.sleep(1000)
    if solution_str == "nan":
        return float("nan")
    if solution_str == "text":
        return "1.0"
    if solution_str == "exit":
        raise SystemExit(3)
    if solution_str == "crash":
        os._exit(1)
    _log(log_path, f"end {index} {os.getpid()}")
    return {"score": index + 0.25 + kwargs.get("tau", 0.0), "index": index, "pid": os.getpid()}
'''


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("reward") / "user_reward.py"
    path.write_text(REWARD_FILE)
    return str(path)


def _items(behaviours: list[str]) -> list[dict]:
    return [
        dict(data_source="custom", solution_str=b, ground_truth="0", extra_info={"index": i}, tau=0.5)
        for i, b in enumerate(behaviours)
    ]


def _expected_healthy_score(index: int) -> float:
    return index + 0.25 + 0.5


def _check_healthy(result: RewardResult, behaviours: list[str]) -> None:
    for index, behaviour in enumerate(behaviours):
        if behaviour == "ok":
            assert result.scores[index] == np.float32(_expected_healthy_score(index))
            assert result.extras[index]["index"] == index


# ---------------------------------------------------------------- local runner
def test_local_runner_errors_get_fallback_and_are_counted(reward_file, caplog):
    behaviours = ["ok", "raise", "ok", "nan", "text", "exit", "ok"]
    runner = LocalRewardRunner(RewardFnSpec(path=reward_file), timeout_s=5.0, fallback_score=-1.0)
    with caplog.at_level(logging.WARNING, logger="ntl_jax.rewards.workers"):
        result = runner.score(_items(behaviours))
    assert result.num_errors == 4 and result.num_timeouts == 0
    assert result.to_metrics() == {"reward/errors": 4.0, "reward/timeouts": 0.0}
    assert result.scores.dtype == np.float32
    assert [result.scores[i] for i in (1, 3, 4, 5)] == [-1.0] * 4
    assert [result.extras[i] for i in (1, 3, 4, 5)] == [{}] * 4
    _check_healthy(result, behaviours)
    messages = caplog.text
    assert "reward sample 1: error (RuntimeError: reward bug on sample 1)" in messages
    assert "reward sample 3: error (ValueError: reward is nan" in messages
    assert "reward sample 4: error (TypeError:" in messages and "got str" in messages
    assert "reward sample 5: error (SystemExit: 3)" in messages


def test_local_runner_abandons_a_hung_call_and_keeps_going(reward_file):
    behaviours = ["ok", "hang", "ok", "ok"]
    runner = LocalRewardRunner(RewardFnSpec(path=reward_file), timeout_s=0.5, fallback_score=0.0)
    result = runner.score(_items(behaviours))  # returns although sample 1 never does (else pytest's timeout fails it)
    assert result.num_timeouts == 1 and result.num_errors == 0 and result.scores[1] == 0.0
    _check_healthy(result, behaviours)
    again = runner.score(_items(["ok", "ok"]))  # a fresh worker thread serves the next batch
    assert again.num_timeouts == 0 and again.scores.tolist() == [0.75, 1.75]
    runner.close()


def test_local_runner_limits_each_call_not_the_batch(reward_file):
    """Calls run back to back on one thread, yet each has its own limit: four 0.3 s calls under a 0.5 s limit all
    finish (1.2 s in all), and two hangs in one batch each time out while the samples between and after them score."""
    runner = LocalRewardRunner(RewardFnSpec(path=reward_file), timeout_s=0.5, fallback_score=-1.0)
    slow = [{**item, "delay_s": 0.3} for item in _items(["ok"] * 4)]
    result = runner.score(slow)
    assert result.num_timeouts == 0 and result.scores.tolist() == [0.75, 1.75, 2.75, 3.75]
    behaviours = ["hang", "ok", "hang", "ok", "ok"]
    result = runner.score(_items(behaviours))
    assert result.num_timeouts == 2 and result.scores[0] == result.scores[2] == -1.0
    _check_healthy(result, behaviours)
    runner.close()


def test_runner_rejects_bad_items_and_arguments(reward_file):
    runner = LocalRewardRunner(RewardFnSpec(path=reward_file), timeout_s=None)
    with pytest.raises(ValueError, match=r"reward item 0 lacks keys \['ground_truth'\]"):
        runner.score([{"data_source": "d", "solution_str": "s"}])
    with pytest.raises(TypeError, match="reward item 0 must be a dict, got str"):
        runner.score(["text"])
    with pytest.raises(ValueError, match="timeout_s=0"):
        LocalRewardRunner(RewardFnSpec(path=reward_file), timeout_s=0)
    with pytest.raises(ValueError, match="fallback_score=nan"):
        LocalRewardRunner(RewardFnSpec(path=reward_file), fallback_score=float("nan"))
    assert runner.score([]).scores.shape == (0,)


# ---------------------------------------------------------------- Ray runner (one ray.init for the module)
@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    was_running = ray.is_initialized()
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    start = time.perf_counter()
    ensure_ray(num_cpus=2, temp_dir=temp_dir)
    print(f"\nray init: {time.perf_counter() - start:.1f} s")
    yield SimpleNamespace(ray=ray, temp_dir=None if was_running else temp_dir)
    if not was_running:
        ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_runner_raising_and_hanging_rewards(ray_session, reward_file):
    behaviours = ["ok", "raise", "ok", "hang", "ok", "exit", "ok", "nan", "ok", "ok"]
    spec = RewardFnSpec(path=reward_file)
    with RayRewardRunner(spec, num_workers=2, timeout_s=2.0, fallback_score=-1.0) as runner:
        result = runner.score(_items(behaviours))
        assert result.num_errors == 3 and result.num_timeouts == 1
        assert [result.scores[i] for i in (1, 3, 5, 7)] == [-1.0] * 4
        _check_healthy(result, behaviours)
        assert runner.num_restarts == 1  # only the hung actor was replaced; 'exit' and 'raise' kept theirs
        pids = {extras["pid"] for extras in result.extras if extras}
        assert os.getpid() not in pids  # scored in actor processes, loaded there from the file path
        without_hang = [item for item in _items(behaviours) if item["solution_str"] != "hang"]
        # the same samples without the hang, scored in-process: the healthy rewards must be identical
        local = LocalRewardRunner(spec, timeout_s=None, fallback_score=-1.0).score(without_hang)
        for item, score, extras in zip(without_hang, local.scores, local.extras):
            index = item["extra_info"]["index"]
            assert result.scores[index] == score
            assert {k: v for k, v in result.extras[index].items() if k != "pid"} == {
                k: v for k, v in extras.items() if k != "pid"}
        again = runner.score(_items(["ok"] * 4))  # the replacement actor serves the next batch
        assert again.num_timeouts == 0 and again.scores.tolist() == [0.75, 1.75, 2.75, 3.75]


def test_ray_runner_actor_killed_mid_batch_loses_nothing(ray_session, reward_file, tmp_path):
    log_path = tmp_path / "calls.log"
    num_items = 24
    spec = RewardFnSpec(path=reward_file, kwargs={"log_path": str(log_path), "delay_s": 0.15})
    with RayRewardRunner(spec, num_workers=2, timeout_s=30.0, max_inflight_per_worker=3) as runner:
        victim_pid = ray_session.ray.get(runner.actors[0].ready.remote())
        victim = runner.actors[0]

        def kill_when_busy():  # kill the actor while it is inside a call (a 'start' without an 'end')
            deadline = time.monotonic() + 300  # generous: a busy machine must not decide this test
            while time.monotonic() < deadline:
                lines = log_path.read_text().splitlines() if log_path.exists() else []
                started = [line for line in lines if line.startswith("start") and line.endswith(f" {victim_pid}")]
                if len(started) >= 3:
                    ray_session.ray.kill(victim)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_when_busy)
        start = time.perf_counter()
        killer.start()
        result = runner.score(_items(["ok"] * num_items))
        killer.join()
        print(f"ray batch with an actor killed: {time.perf_counter() - start:.1f} s")
        assert result.num_errors == 0 and result.num_timeouts == 0
        assert result.scores.tolist() == [_expected_healthy_score(i) for i in range(num_items)]
        assert [extras["index"] for extras in result.extras] == list(range(num_items))
        assert runner.num_restarts == 1 and runner.num_recomputed >= 1
        calls = [line.split() for line in log_path.read_text().splitlines()]
        ended = {int(index) for kind, index, _ in calls if kind == "end"}
        assert ended == set(range(num_items))
        interrupted = {int(i) for k, i, p in calls if k == "start" and int(p) == victim_pid} - {
            int(i) for k, i, p in calls if k == "end" and int(p) == victim_pid
        }
        assert interrupted, "the kill did not land inside a call"
        finished_elsewhere = {int(i) for k, i, p in calls if k == "end" and int(p) != victim_pid}
        assert interrupted <= finished_elsewhere  # the interrupted sample was recomputed on another actor


def test_ray_runner_gives_up_on_a_sample_that_kills_its_actor(ray_session, reward_file):
    behaviours = ["ok", "crash", "ok", "ok"]
    # One sample in flight: a death is then always blamed on the sample that caused it (with pipelining, a reply
    # the dying actor had not yet delivered is lost too, and that innocent sample is retried as well).
    spec = RewardFnSpec(path=reward_file)
    runner_kw = dict(num_workers=1, timeout_s=10.0, max_sample_retries=1, max_inflight_per_worker=1)
    with RayRewardRunner(spec, **runner_kw) as runner:
        result = runner.score(_items(behaviours))
        state = (result, runner.num_restarts, runner.num_recomputed)
        assert result.num_errors == 1 and result.scores[1] == 0.0 and result.extras[1] == {}, state
        _check_healthy(result, behaviours)
        assert runner.num_restarts == 2, state  # the crashing sample was tried max_sample_retries + 1 times


def test_ensure_ray_settings(ray_session):
    if ray_session.temp_dir is None:
        pytest.skip("Ray was started by someone else in this session")
    assert "session_latest" in os.listdir(ray_session.temp_dir)  # Ray's files went to the temp_dir we gave
    assert ray_session.ray.cluster_resources()["CPU"] == 2.0
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0" and os.environ["RAY_AUTH_MODE"] == "disabled"
    ensure_ray(num_cpus=2)  # already running: a no-op, not a second init


def test_ensure_ray_rejects_a_temp_dir_too_long_for_ray_sockets(ray_session):
    too_long = "/tmp/" + "output_dir_of_a_run/" * 3 + "ray"
    with pytest.raises(ValueError, match=r"temp_dir='/tmp/output_dir.*' is 68 characters;.*at most 43"):
        ensure_ray(temp_dir=too_long)


def test_ray_runner_rejects_a_bad_spec_before_starting_actors(ray_session, tmp_path):
    with pytest.raises(ValueError, match="reward function file not found"):
        RayRewardRunner(RewardFnSpec(path=str(tmp_path / "missing.py")), num_workers=1)
    with pytest.raises(ValueError, match="num_workers=0"):
        RayRewardRunner(RewardFnSpec(), num_workers=0)


def test_ray_runner_reports_a_function_that_fails_to_load_in_the_actor(ray_session, tmp_path):
    path = tmp_path / "edited_reward.py"
    path.write_text("def compute_score(**kwargs):\n    return 1.0\n")
    load_reward_function(RewardFnSpec(path=str(path)))  # the driver imports (and caches) it, then it breaks on disk
    path.write_text("raise ImportError('module only importable on the driver')\n")
    with RayRewardRunner(RewardFnSpec(path=str(path)), num_workers=1, timeout_s=10.0) as runner:
        with pytest.raises(RuntimeError, match="reward actor failed to start"):
            runner.score(_items(["ok"]))
