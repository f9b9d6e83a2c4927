"""The console: one line per validation, a compact line every N iterations, plain lines off a terminal."""
from __future__ import annotations

import io

from ntl_jax.ppo.console import Console, compact_line, validation_line


def test_lines_off_a_terminal():
    stream = io.StringIO()  # not a terminal: no bar, plain lines
    console = Console(25, enabled=True, every=10, stream=stream)
    assert console.bar is None
    metrics = {"critic/score/mean": 0.4567, "reward_extra/acc/mean": 0.25, "actor/pg_loss": -0.01,
               "timing_s/step": 1.234, "ntl/reward": 0.1}
    for step in range(1, 26):
        console.step(step, metrics)
    console.validation(25, {"val-core/arithmetic/acc/mean@1": 0.512, "val-aux/arithmetic/abs_error/mean@1": 170.25,
                            "val-core/arithmetic/reward/mean@1": 0.6})
    console.close()
    assert stream.getvalue().splitlines() == [
        "step 10/25 | score 0.457 | acc 0.250 | pg_loss -0.0100 | ntl_reward 0.100 | s/it 1.23",
        "step 20/25 | score 0.457 | acc 0.250 | pg_loss -0.0100 | ntl_reward 0.100 | s/it 1.23",
        "step 25/25 | score 0.457 | acc 0.250 | pg_loss -0.0100 | ntl_reward 0.100 | s/it 1.23",
        "validation at step 25: arithmetic acc 0.5120, answer MAE 170.25"]


def test_silent_and_no_validation_keys():
    stream = io.StringIO()
    console = Console(5, enabled=False, stream=stream)
    console.step(5, {"critic/score/mean": 1.0})
    console.validation(5, {"val-core/x/acc/mean@1": 1.0})
    assert stream.getvalue() == ""
    assert validation_line(3, {"critic/score/mean": 1.0}) is None
    assert compact_line(1, 2, {}) == "step 1/2"
    assert validation_line(4, {"val-core/openai/gsm8k/acc/mean@1": 0.5, "val-core/arithmetic/acc/mean@1": 0.25}) == (
        "validation at step 4: arithmetic acc 0.2500; openai/gsm8k acc 0.5000")
