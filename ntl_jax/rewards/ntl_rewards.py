"""Reward functions that combine answer correctness with a Number Token Loss bonus.

    correctness = score of default_compute_score(data_source, solution_str, ground_truth)   (gsm8k, arithmetic: 1/0)
    ntl_bonus   = exp(-ntl_loss / tau)          in (0, 1]; 1 when the model put all digit mass on the target digits

combination (keyword argument, default 'add'):
    'add':      score = correct_weight * correctness + ntl_weight * ntl_bonus
                (defaults 0.5 / 0.5: the public verl NTL fork's ``0.5*exact_match + 0.5*exp(-ntl_loss/tau)``)
    'multiply': score = correctness * ntl_bonus   (a wrong answer gets nothing; a right one is scaled by
                confidence; with a ``format_score`` > 0 a formatted-but-wrong answer gets ``format_score * ntl_bonus``)
    'replace':  score = ntl_bonus                  (correctness is still computed and logged as ``acc``)

Without NTL (``ntl_info`` absent, or ``ntl_info['has_digits']`` False: no digit targets for this sample) the score is
the plain correctness for every combination, and ``ntl_bonus = ntl_loss = 0.0``, ``ntl_used = 0.0`` are logged.

``custom_ntl_final`` and ``custom_ntl_all`` compute the same formula; they differ in which ``ntl_info`` the trainer
passes: with ``reward_mode='final_answer'`` the NTL targets cover only the digits of the final answer, with
``reward_mode='all_tokens'`` every digit of the response. Name the one that matches the trainer's ``reward_mode``
in the reward spec so the configuration reads as what it does. Both accept the same keyword arguments.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

from ntl_jax.rewards.registry import default_compute_score, normalize_reward_output

COMBINATIONS = ("add", "multiply", "replace")
DEFAULT_TAU = 2.0


def ntl_bonus(ntl_loss: float, tau: float) -> float:
    """exp(-ntl_loss / tau); ntl_loss must be finite and >= 0, tau finite and > 0."""
    if not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau={tau!r} must be a finite number > 0")
    if not (isinstance(ntl_loss, numbers.Real) and math.isfinite(ntl_loss) and ntl_loss >= 0):
        raise ValueError(f"ntl_loss={ntl_loss!r} must be a finite number >= 0")
    return math.exp(-float(ntl_loss) / float(tau))


def combine_scores(
    correctness: float, bonus: float, combination: str, correct_weight: float = 0.5, ntl_weight: float = 0.5
) -> float:
    """The ``combination`` formula from the module docstring."""
    if combination == "add":
        if correct_weight < 0 or ntl_weight < 0:
            raise ValueError(f"correct_weight={correct_weight}, ntl_weight={ntl_weight}: weights must be >= 0")
        return correct_weight * correctness + ntl_weight * bonus
    if combination == "multiply":
        return correctness * bonus
    if combination == "replace":
        return bonus
    raise ValueError(f"combination={combination!r} is not one of {COMBINATIONS}")


def _ntl_loss_of(ntl_info: Any) -> float | None:
    """The sample's NTL loss, or None when NTL does not apply to it."""
    if ntl_info is None:
        return None
    if not isinstance(ntl_info, Mapping):
        raise TypeError(f"ntl_info must be a dict (NTLInfo.sample_view), got {type(ntl_info).__name__}")
    if not ntl_info.get("has_digits", False):
        return None
    if "ntl_loss" not in ntl_info:
        raise ValueError(f"ntl_info has has_digits=True but no 'ntl_loss' (keys: {sorted(ntl_info)})")
    return float(ntl_info["ntl_loss"])


def _ntl_reward(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None,
    *,
    ntl_info: Mapping | None = None,
    tau: float = DEFAULT_TAU,
    combination: str = "add",
    correct_weight: float = 0.5,
    ntl_weight: float = 0.5,
    **unused: Any,
) -> dict:
    if combination not in COMBINATIONS:
        raise ValueError(f"combination={combination!r} is not one of {COMBINATIONS}")
    for name in unused:
        # The trainer may pass more per-sample context in future; a typo in a reward kwarg should still be visible.
        warnings.warn(f"NTL reward ignores unknown keyword argument {name!r}", stacklevel=3)
    correctness, base_extras = normalize_reward_output(
        default_compute_score(data_source, solution_str, ground_truth, extra_info)
    )
    acc = float(base_extras.get("acc", 1.0 if correctness >= 1.0 else 0.0))
    ntl_loss = _ntl_loss_of(ntl_info)
    if ntl_loss is None:
        score, bonus, ntl_loss, used = correctness, 0.0, 0.0, 0.0
    else:
        bonus = ntl_bonus(ntl_loss, tau)
        score, used = combine_scores(correctness, bonus, combination, correct_weight, ntl_weight), 1.0
    return {
        **base_extras,
        "score": float(score),
        "acc": acc,
        "correctness": float(correctness),
        "ntl_bonus": float(bonus),
        "ntl_loss": float(ntl_loss),
        "ntl_used": used,
    }


def custom_ntl_final(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> dict:
    """Correctness combined with the final-answer NTL bonus (trainer ``reward_mode='final_answer'``).

    kwargs: ntl_info (NTLInfo.sample_view dict), tau (default 2.0), combination ('add' | 'multiply' | 'replace'),
    correct_weight, ntl_weight (for 'add', default 0.5 each). Returns dict(score, acc, correctness, ntl_bonus,
    ntl_loss, ntl_used) plus the base scorer's extras.
    """
    return _ntl_reward(data_source, solution_str, ground_truth, extra_info, **kwargs)


def custom_ntl_all(
    data_source: str, solution_str: str, ground_truth: str, extra_info: dict | None = None, **kwargs: Any
) -> dict:
    """Correctness combined with the all-digit-tokens NTL bonus (trainer ``reward_mode='all_tokens'``).

    Same kwargs and result as ``custom_ntl_final``; the trainer's ntl_info covers every digit of the response.
    """
    return _ntl_reward(data_source, solution_str, ground_truth, extra_info, **kwargs)
