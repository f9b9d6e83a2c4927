"""The first iteration's updates compile in a background thread beside the rollout; their first calls compile nothing."""
from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import pytest

from ntl_jax.distributed.mesh import make_mesh
from ntl_jax.ppo.compile_ahead import CompileAhead, abstract_like
from ntl_jax.ppo.trainer import PPOTrainer
from tests.trainer_fixtures import (load_tiny_tokenizer, make_tiny_policy, tiny_experiment, tiny_rows,
                                    with_trainer)

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"


class CompileLog:
    """Every XLA compilation while active: (program name, thread name, whether inside `PPOTrainer.update`)."""

    def __init__(self):
        self.events: list[tuple[str, str, bool]] = []
        self.in_update = False

    def __call__(self, event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE:
            self.events.append((kwargs.get("fun_name", "?"), threading.current_thread().name, self.in_update))

    def __enter__(self) -> "CompileLog":
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self)


def _first_iteration_compiles(tmp_path, *, compile_ahead: bool, mesh_shape: dict | None = None,
                              **experiment) -> CompileLog:
    policy = make_tiny_policy(str(tmp_path / "policy"))
    config = with_trainer(tiny_experiment(str(tmp_path / "out"), steps=1, **experiment), compile_ahead=compile_ahead,
                          save_freq=100)
    mesh = make_mesh(**mesh_shape) if mesh_shape else make_mesh(devices=jax.devices()[:1])
    trainer = PPOTrainer(config, load_tiny_tokenizer(policy), policy_path=policy, train_rows=tiny_rows(16), mesh=mesh)
    log = CompileLog()
    update = trainer.update

    def logged_update(*args, **kwargs):
        trainer.runtime.compile_ahead.wait()  # what update does first; its compilations are the background thread's
        log.in_update = True
        try:
            return update(*args, **kwargs)
        finally:
            log.in_update = False

    trainer.update = logged_update
    try:
        with log:
            trainer.train_step(trainer.loader.next_batch())
    finally:
        trainer.close()
    return log


@pytest.mark.parametrize("experiment", [
    dict(use_ntl=False, use_kl_loss=False),  # the GRPO benchmark's path: one actor update, no reference
    dict(use_ntl=True),  # NTL targets, KL loss to the reference, two mini-batches
    dict(use_ntl=False, adv_estimator="gae", critic_warmup=0),  # critic and actor updates
    dict(use_ntl=True, ppo_mini_batch_size=4, ppo_micro_batch_size=8,  # sharded arguments, 8 simulated devices
         mesh_shape=dict(data=2, fsdp=2, tensor=2)),
], ids=["grpo", "ntl_kl", "gae_critic", "ntl_8_devices"])
def test_first_updates_are_compiled_ahead_and_their_calls_compile_nothing(tmp_path, experiment):
    if "mesh_shape" in experiment and len(jax.devices()) < 8:
        pytest.skip("needs 8 simulated devices")
    log = _first_iteration_compiles(tmp_path, compile_ahead=True, **experiment)
    ahead = {name for name, thread, _ in log.events if thread.startswith("compile-ahead")}
    expected = 2 if experiment.get("adv_estimator") == "gae" else 1
    assert len([e for e in log.events if e[1].startswith("compile-ahead")]) == expected, log.events
    in_update_main = [name for name, thread, inside in log.events if inside and not thread.startswith("compile-ahead")]
    assert not set(in_update_main) & ahead, (in_update_main, ahead)


def test_without_compile_ahead_the_first_update_compiles_in_the_loop(tmp_path):
    """The check above can fail: with the knob off the update's program is compiled inside `update`."""
    log = _first_iteration_compiles(tmp_path, compile_ahead=False, use_ntl=False, use_kl_loss=False)
    assert not [e for e in log.events if e[1].startswith("compile-ahead")]
    assert [name for name, _, inside in log.events if inside], log.events


def test_a_key_compiles_once_and_a_bad_signature_fails_at_start():
    ahead = CompileAhead()
    square = jax.jit(lambda x: x * x)
    args = (abstract_like(jnp.ones((3,))),)
    assert not ahead.seen("k") and ahead.start("k", [(square, args)])
    assert ahead.seen("k") and not ahead.start("k", [(square, args)])
    ahead.wait()
    with pytest.raises(TypeError):  # lowering runs in the caller: a wrong signature fails at once
        ahead.start("bad", [(square, (jax.ShapeDtypeStruct((2,), jnp.float32), 1, 2))])
    assert not ahead.seen("bad")  # nothing was queued for it, so it is not marked as started
    ahead.close()
    off = CompileAhead(enabled=False)
    assert off.seen("k") and not off.start("k", [(square, args)])
