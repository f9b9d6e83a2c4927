"""Reward functions that combine answer correctness with a Number Token Loss bonus.

    correctness = score of default_compute_score(data_source, solution_str, ground_truth)   (gsm8k, arithmetic: 1/0)
    ntl_bonus   = exp(-number_error / tau)       in (0, 1]

``number_error`` (``ntl_jax.ntl.info``) is the relative error ``|Yhat - Y| / max(|Y|, 1)`` of the answer the model
*expects* (``Yhat`` from its digit distributions at the answer's places, with the answer's sign and digit count),
and in all_tokens / hybrid mode the largest such error over the checked arithmetic steps too. It grows with
``|answer - truth|``, so the bonus ranks a near miss above a far miss; a per-digit loss cannot (``999`` vs ``1000``
differs in every digit, ``0`` in one). ``tau`` is the relative error at which the bonus falls to 1/e.

combination (keyword argument, default 'multiply'):
    'multiply': score = correctness * ntl_bonus   (a wrong answer gets nothing; a right one is scaled by how surely
                the model meant it; with a ``format_score`` > 0 a formatted-but-wrong answer gets
                ``format_score * ntl_bonus``)
    'add':      score = correct_weight * correctness + ntl_weight * ntl_bonus
                (0.5 / 0.5 is the public verl NTL fork's form; here its bonus is number-level)

Both satisfy, for any truth and any confident policy (``tests/test_reward_properties.py``): a correct answer scores
strictly above every wrong one; among wrong answers the bonus does not grow as ``|answer - truth|`` grows; a response
without an answer never scores above a formatted near miss. A score that ignores correctness (the bonus alone)
cannot rank a hesitant right answer above a confident wrong one, so it is not offered.

The bonus applies only when the sample has a final answer that NTL aligned (``ntl_info['has_answer']``) and the
scorer found an answer too; otherwise the score is the plain correctness and ``ntl_bonus = 0.0``,
``ntl_used = 0.0`` are logged.

``custom_ntl_final`` and ``custom_ntl_all`` are one function under two names: which errors ``number_error`` covers
is set by the trainer's ``reward_mode``.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from typing import Any

from ntl_jax.rewards.scoring import default_compute_score, normalize_reward_output, scorer_found_answer

COMBINATIONS = ("multiply", "add")
DEFAULT_TAU = 0.1


def ntl_bonus(error: float, tau: float) -> float:
    """exp(-error / tau); error must be finite and >= 0, tau finite and > 0."""
    if not (isinstance(tau, numbers.Real) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau={tau!r} must be a finite number > 0")
    if not (isinstance(error, numbers.Real) and math.isfinite(error) and error >= 0):
        raise ValueError(f"number_error={error!r} must be a finite number >= 0")
    return math.exp(-float(error) / float(tau))


def combine_scores(
    correctness: float, bonus: float, combination: str, correct_weight: float = 0.5, ntl_weight: float = 0.5
) -> float:
    """The ``combination`` formula from the module docstring."""
    if combination == "multiply":
        return correctness * bonus
    if combination == "add":
        if correct_weight <= 0 or ntl_weight < 0:
            raise ValueError(f"correct_weight={correct_weight}, ntl_weight={ntl_weight}: allowed: correct_weight > 0, "
                             "ntl_weight >= 0")
        return correct_weight * correctness + ntl_weight * bonus
    raise ValueError(f"combination={combination!r} is invalid; allowed: {', '.join(COMBINATIONS)}")


def _number_error_of(ntl_info: Any) -> float | None:
    """The sample's number-level error, or None when NTL found no aligned answer for it."""
    if ntl_info is None:
        return None
    if not isinstance(ntl_info, Mapping):
        raise TypeError(f"ntl_info must be a dict (NTLInfo.sample_view), got {type(ntl_info).__name__}")
    if not ntl_info.get("has_answer", False):
        return None
    if "number_error" not in ntl_info:
        raise ValueError(f"ntl_info has has_answer=True but no 'number_error' (keys: {sorted(ntl_info)})")
    return float(ntl_info["number_error"])


def custom_ntl_reward(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    ntl_info: Mapping | None = None,
    tau: float = DEFAULT_TAU,
    combination: str = "multiply",
    correct_weight: float = 0.5,
    ntl_weight: float = 0.5,
    **unused: Any,
) -> dict:
    """Correctness combined with the NTL bonus (module docstring).

    kwargs: ntl_info (NTLInfo.sample_view dict), tau (default 0.1), combination ('multiply' | 'add'),
    correct_weight, ntl_weight (for 'add', default 0.5 each). Returns dict(score, acc, correctness, ntl_bonus,
    number_error, ntl_used) plus the base scorer's extras.
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination={combination!r} is invalid; allowed: {', '.join(COMBINATIONS)}")
    for name in unused:
        # The trainer may pass more per-sample context in future; a typo in a reward kwarg should still be visible.
        warnings.warn(f"NTL reward ignores unknown keyword argument {name!r}", stacklevel=2)
    correctness, base_extras = normalize_reward_output(
        default_compute_score(data_source, solution_str, ground_truth, extra_info)
    )
    acc = float(base_extras.get("acc", 1.0 if correctness >= 1.0 else 0.0))
    error = _number_error_of(ntl_info)
    if error is not None and scorer_found_answer(data_source, solution_str, base_extras) is False:
        error = None  # NTL read an answer the scorer does not accept: no bonus for an unformatted response
    if error is None:
        score, bonus, error, used = correctness, 0.0, 0.0, 0.0
    else:
        bonus = ntl_bonus(error, tau)
        score, used = combine_scores(correctness, bonus, combination, correct_weight, ntl_weight), 1.0
    return {
        **base_extras,
        "score": float(score),
        "acc": acc,
        "correctness": float(correctness),
        "ntl_bonus": float(bonus),
        "number_error": float(error),
        "ntl_used": used,
    }


#: The names the verl NTL guide uses; the trainer's reward_mode decides which numbers ``number_error`` covers.
custom_ntl_final = custom_ntl_reward
custom_ntl_all = custom_ntl_reward
