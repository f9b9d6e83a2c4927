"""Shared helpers of the reliability tests (no tests here): trainers on the tiny policy, fault-injecting reward
files, checkpoint corruption, and a persistent XLA compilation cache so that the many short trainer runs and
subprocesses of these tests compile each step once per session instead of once per trainer.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import jax
import pytest

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.ppo import factory
from trainer_fixtures import load_tiny_tokenizer, make_tiny_policy, tiny_rows

_CACHE_OPTIONS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                  "jax_persistent_cache_min_entry_size_bytes")


def compile_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache folder per pytest session (shared by the in-process trainers and the subprocesses)."""
    path = tmp_path_factory.getbasetemp() / "jax_compile_cache"
    path.mkdir(exist_ok=True)
    return str(path)


def compile_cache_env(cache_dir: str) -> dict[str, str]:
    """Environment of a subprocess that should use (and fill) the same persistent compilation cache."""
    return {"JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """Turn the persistent compilation cache on for one module, and back off (as it was) afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
    cache_dir = compile_cache_dir(tmp_path_factory)
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    compilation_cache.reset_cache()
    yield cache_dir
    for name, value in previous.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    return make_tiny_policy(str(tmp_path_factory.mktemp("policy")))


def single_device_mesh():
    return make_mesh(devices=jax.devices()[:1])


def build_trainer(config, policy_dir: str, **kwargs: Any):
    """The trainer ``config`` asks for, on one device, trained on 32 arithmetic prompts, no validation."""
    kwargs.setdefault("mesh", single_device_mesh())
    kwargs.setdefault("val_rows", [])
    kwargs.setdefault("train_rows", tiny_rows())
    return factory.create_ppo_trainer(config, load_tiny_tokenizer(policy_dir), policy_path=policy_dir, **kwargs)


def fit(config, policy_dir: str, **kwargs: Any):
    trainer = build_trainer(config, policy_dir, **kwargs)
    try:
        return trainer, trainer.fit()
    finally:
        trainer.close()


def capture_rewards(trainer) -> list[tuple[list[dict], Any]]:
    """Record every (items, RewardResult) the trainer's reward runner produces."""
    calls: list[tuple[list[dict], Any]] = []
    original = trainer.runtime.reward_runner.score

    def score(items):
        result = original(items)
        calls.append(([dict(item) for item in items], result))
        return result

    trainer.runtime.reward_runner.score = score
    return calls


# A verl-style reward file whose faults are switched on per prompt index by files in a control folder, so a test
# decides at run time (after seeing the batch) which samples raise, hang or kill their process. Every call is
# appended to calls.log as "pid index outcome" (the "die" line is written before the process exits).
FAULTY_REWARD = textwrap.dedent('''
    import os, time
    from ntl_jax.rewards.registry import default_compute_score

    def _log(control, index, outcome):
        with open(os.path.join(control, "calls.log"), "a") as f:
            f.write(f"{os.getpid()} {index} {outcome}\\n")

    def compute_score(data_source, solution_str, ground_truth, extra_info=None, control=None, **kwargs):
        index = extra_info["index"]
        if os.path.exists(os.path.join(control, f"raise_{index}")):
            _log(control, index, "raise")
            raise RuntimeError(f"reward bug on prompt {index}")
        if os.path.exists(os.path.join(control, f"hang_{index}")):
            _log(control, index, "hang")
            time.sleep(60)
        die_marker = os.path.join(control, f"die_{index}")
        try:  # die once (the rename is atomic: exactly one call claims it); the recomputation then succeeds
            os.rename(die_marker, die_marker + ".taken")
        except FileNotFoundError:
            pass
        else:
            _log(control, index, "die")
            os._exit(1)
        if os.path.exists(os.path.join(control, f"slow_{index}")):
            open(os.path.join(control, f"running_{index}"), "w").close()
            time.sleep(1)
        _log(control, index, "ok")
        return default_compute_score(data_source, solution_str, ground_truth, extra_info)
''')


def write_faulty_reward(directory: Path) -> tuple[str, Path]:
    """(reward file path, control folder) for :data:`FAULTY_REWARD`."""
    control = directory / "control"
    control.mkdir(parents=True, exist_ok=True)
    path = directory / "faulty_reward.py"
    path.write_text(FAULTY_REWARD)
    return str(path), control


def set_faults(control: Path, **indices: list[int]) -> None:
    """``set_faults(control, raise_=[3], hang=[5])`` creates the marker files of those faults."""
    for kind, values in indices.items():
        for index in values:
            (control / f"{kind.rstrip('_')}_{index}").touch()


def clear_faults(control: Path) -> None:
    for marker in control.iterdir():
        if marker.name != "calls.log":
            marker.unlink()


def read_calls(control: Path) -> list[tuple[int, int, str]]:
    log_path = control / "calls.log"
    if not log_path.exists():
        return []
    rows = [line.split() for line in log_path.read_text().splitlines() if line.strip()]
    return [(int(pid), int(index), outcome) for pid, index, outcome in rows]


def corrupt_checkpoint(step_dir: Path) -> list[Path]:
    """Truncate every array data file of an orbax step folder to half its size (a write cut short)."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no array data files under {step_dir}"
    for path in files:
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    return files


def one_line(message: str) -> str:
    """The message, asserted to be a single non-empty line."""
    assert message.strip() and "\n" not in message.strip(), f"not one line: {message!r}"
    return message


def env_for_subprocess(cache_dir: str, devices: int = 1) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               **compile_cache_env(cache_dir))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).parent.parent),
                                                    env.get("PYTHONPATH", "")) if p)
    return env
