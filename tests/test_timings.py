"""Phase timings wait for the phase's outputs (one sync per phase), so ``timing_s/*`` are true on async backends."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ntl_jax.ppo import trainer as trainer_module


def test_timed_waits_for_what_the_block_hands_it(monkeypatch):
    waited = []
    real = jax.block_until_ready
    monkeypatch.setattr(trainer_module.jax, "block_until_ready", lambda x: waited.append(x) or real(x))
    timings = {}
    with trainer_module.timed(timings, "phase") as wait:
        out = jnp.arange(4.0) * 2
        wait(out)
    with trainer_module.timed(timings, "phase") as wait:
        wait({"a": out})
    assert len(waited) == 2 and waited[0][0] is out and waited[1] == [{"a": out}]
    assert set(timings) == {"timing_s/phase"} and timings["timing_s/phase"] >= 0.0  # accumulated, never judged


def test_every_device_phase_of_the_step_hands_its_outputs_over():
    """The train step's source: each timed phase that dispatches device work calls ``wait`` on its outputs."""
    import inspect

    source = inspect.getsource(trainer_module.PPOTrainer)
    for phase in ("gen", "old_log_prob", "ref", "values", "adv", "update_critic", "update_actor"):
        block = source.split(f'timed(timings, "{phase}") as wait:', 1)
        assert len(block) == 2, phase
        body = block[1].split("\n\n", 1)[0].split("with timed(", 1)[0]
        assert "wait(" in body, phase


def test_ntl_targets_are_built_while_the_log_prob_pass_runs():
    """The old-log-prob pass is dispatched before the host builds NTL's digit targets (host and device overlap);
    ``timing_s/ntl_targets`` is that host work alone and the pass's wait is charged to ``timing_s/old_log_prob``."""
    import inspect

    source = inspect.getsource(trainer_module.PPOTrainer.train_step)
    assert source.index("rt.forward(rt.logprob_step") < source.index("self.ntl_stage.targets(")
    assert source.index("self.ntl_stage.targets(") < source.index('timed(timings, "old_log_prob") as wait:')
