"""Learning-rate schedules over PPO iterations, as verl's actor / critic optimisers step them.

verl steps its ``LambdaLR`` once per iteration (after ``update_policy``), so every optimiser step of one iteration
(``ppo_epochs`` x mini-batches) uses the same rate, and warm-up and decay are counted in iterations. With
``i`` the number of iterations this optimiser has already updated on, ``W`` the warm-up iterations and ``N`` the
total iterations (verl's ``get_constant_schedule_with_warmup`` / ``get_cosine_schedule_with_warmup``):

    warm-up (i < W):  lr(i) = peak * i / max(1, W)
    constant:         lr(i) = peak
    cosine:           p = (i - W) / max(1, N - W)
                      lr(i) = peak * max(m, (1 - m)/2 * cos(2 pi c p) + (1 + m)/2)

where ``m`` is ``min_lr_ratio`` and ``c`` is ``num_cycles`` (0.5: one half-cosine from ``peak`` down to ``m * peak``
at the last iteration). The optimiser indexes the schedule by its own update count, which a skipped (non-finite)
update does not advance: after such a skip the applied rate runs that many updates behind the logged ``actor/lr``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax.numpy as jnp

LR_SCHEDULER_TYPES = ("constant", "cosine")


def schedule_settings(ppo: Any) -> dict[str, Any]:
    """The schedule keywords of ``lr_multiplier`` / ``per_update_schedule`` from a ``PPOConfig`` (one unpacking)."""
    return dict(scheduler_type=ppo.lr_scheduler_type, warmup_iterations=ppo.lr_warmup_steps,
                min_lr_ratio=ppo.min_lr_ratio, num_cycles=ppo.num_cycles)


def is_flat(*, scheduler_type: str, warmup_iterations: int, **_: Any) -> bool:
    """True when every iteration uses the peak rate (constant, no warm-up)."""
    return scheduler_type == "constant" and warmup_iterations == 0


def lr_multiplier(iteration, *, scheduler_type: str, warmup_iterations: int, total_iterations: int,
                  min_lr_ratio: float = 0.0, num_cycles: float = 0.5):
    """lr(i) / peak for iteration count ``i`` (a Python number or a traced array; formula in the module docstring)."""
    if scheduler_type not in LR_SCHEDULER_TYPES:
        raise ValueError(f"lr_scheduler_type={scheduler_type!r} is invalid; allowed: {', '.join(LR_SCHEDULER_TYPES)}")
    xp = math if isinstance(iteration, (int, float)) else jnp
    warm = iteration / max(1, warmup_iterations)
    if scheduler_type == "constant":
        after = 1.0
    else:
        progress = (iteration - warmup_iterations) / max(1, total_iterations - warmup_iterations)
        cosine = (1.0 - min_lr_ratio) * 0.5 * xp.cos(math.pi * num_cycles * 2.0 * progress) + (1.0 + min_lr_ratio) * 0.5
        after = max(min_lr_ratio, cosine) if xp is math else jnp.maximum(min_lr_ratio, cosine)
    if xp is math:
        return warm if iteration < warmup_iterations else after
    return jnp.where(iteration < warmup_iterations, warm, after)


def per_update_schedule(peak_lr: float, *, updates_per_iteration: int, scheduler_type: str = "constant",
                        warmup_iterations: int = 0, total_iterations: int = 1, min_lr_ratio: float = 0.0,
                        num_cycles: float = 0.5) -> float | Callable:
    """An optax learning rate indexed by optimiser updates: ``peak * lr_multiplier(count // updates_per_iteration)``.

    Returns the plain float when the schedule is flat (constant, no warm-up), so that optimiser is exactly AdamW
    with a fixed rate, as before schedules existed.
    """
    if is_flat(scheduler_type=scheduler_type, warmup_iterations=warmup_iterations):
        return peak_lr
    if updates_per_iteration < 1:
        raise ValueError(f"updates_per_iteration={updates_per_iteration!r} is invalid; allowed: an int >= 1")

    def schedule(count):
        iteration = (count // updates_per_iteration).astype(jnp.float32)
        return peak_lr * lr_multiplier(iteration, scheduler_type=scheduler_type, warmup_iterations=warmup_iterations,
                                       total_iterations=total_iterations, min_lr_ratio=min_lr_ratio,
                                       num_cycles=num_cycles)

    return schedule
