"""Learning-rate schedules: verl's formulas, stepped once per iteration, and what the optimiser really applies."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntl_jax.ppo.config import PPOConfig
from ntl_jax.ppo.lr_schedule import lr_multiplier, per_update_schedule
from ntl_jax.ppo.steps import make_optimizer


def verl_lr_lambda(step, *, scheduler_type, warmup, total, min_lr_ratio=0.0, num_cycles=0.5):
    """verl/utils/torch_functional.py get_{constant,cosine}_schedule_with_warmup's ``lr_lambda`` (init_lr_ratio 0)."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    if scheduler_type == "constant":
        return 1.0
    coef, intercept = (1 - min_lr_ratio) * 0.5, (1 + min_lr_ratio) * 0.5
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(min_lr_ratio, math.cos(math.pi * float(num_cycles) * 2.0 * progress) * coef + intercept)


@pytest.mark.parametrize("scheduler_type,warmup,min_lr_ratio,num_cycles", [
    ("constant", 0, 0.0, 0.5), ("constant", 4, 0.0, 0.5), ("cosine", 0, 0.0, 0.5), ("cosine", 3, 0.1, 0.5),
    ("cosine", 2, 0.0, 1.0), ("cosine", 0, 0.3, 0.25)])
def test_multiplier_is_verls_lambda_on_host_and_traced(scheduler_type, warmup, min_lr_ratio, num_cycles):
    total = 12
    kw = dict(scheduler_type=scheduler_type, min_lr_ratio=min_lr_ratio, num_cycles=num_cycles)
    expected = [verl_lr_lambda(i, warmup=warmup, total=total, **kw) for i in range(total + 2)]
    host = [lr_multiplier(i, warmup_iterations=warmup, total_iterations=total, **kw) for i in range(total + 2)]
    traced = jax.jit(lambda i: lr_multiplier(i, warmup_iterations=warmup, total_iterations=total, **kw))(
        jnp.arange(total + 2, dtype=jnp.float32))
    np.testing.assert_allclose(host, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(traced), expected, rtol=0, atol=1e-6)


def test_every_update_of_an_iteration_uses_that_iterations_rate():
    """optax counts updates; verl steps its scheduler once per iteration (epochs x mini-batches updates)."""
    schedule = per_update_schedule(2e-3, updates_per_iteration=3, scheduler_type="cosine", warmup_iterations=1,
                                   total_iterations=5)
    rates = [float(schedule(jnp.int32(count))) for count in range(15)]
    per_iteration = [2e-3 * verl_lr_lambda(i, scheduler_type="cosine", warmup=1, total=5) for i in range(5)]
    np.testing.assert_allclose(rates, np.repeat(per_iteration, 3), rtol=1e-6, atol=1e-12)
    assert per_update_schedule(1e-4, updates_per_iteration=4) == 1e-4  # flat: plain AdamW with a fixed float rate


def test_adamw_applies_the_scheduled_rate():
    """With a constant gradient Adam's bias-corrected step is lr * g / (|g| + eps): each update moves by the rate."""
    schedule = per_update_schedule(1e-2, updates_per_iteration=2, scheduler_type="cosine", total_iterations=3,
                                   min_lr_ratio=0.2)
    tx = make_optimizer(schedule, weight_decay=0.0, grad_clip=1e9)
    params = {"w": jnp.zeros((3,))}
    state = tx.init(params)
    moves = []
    for _ in range(6):
        updates, state = tx.update({"w": jnp.ones((3,))}, state, params)
        moves.append(-float(updates["w"][0]))
    expected = [1e-2 * verl_lr_lambda(i // 2, scheduler_type="cosine", warmup=0, total=3, min_lr_ratio=0.2)
                for i in range(6)]
    np.testing.assert_allclose(moves, expected, rtol=1e-4)  # float32 bias correction; rates differ by >= 20%


def test_bad_schedule_values_get_one_line():
    with pytest.raises(ValueError, match="lr_scheduler_type='linear' is invalid; allowed: 'constant', 'cosine'"):
        PPOConfig(lr_scheduler_type="linear")
    with pytest.raises(ValueError, match="min_lr_ratio"):
        PPOConfig(min_lr_ratio=1.5)
    with pytest.raises(ValueError, match="num_cycles"):
        PPOConfig(num_cycles=0.0)
