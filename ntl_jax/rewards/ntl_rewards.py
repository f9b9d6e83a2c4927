"""The NTL reward: correctness plus a bonus for how close the *written* answer is to the truth.

    correct     = the data source's scorer (gsm8k: verl strict; arithmetic: by value): 1 right, 0 wrong
    a           = the number that scorer graded (``ntl_jax.answers``: one reader shared by scorer and NTL)
    e           = |a - Y| / max(|Y|, 1)                          the written answer's relative error
    closeness   = 1                                               if correct
                = exp(-e / tau) * (1 - kappa * (1 - q))           if a is a number
                = 0                                               if there is no answer, or it spells no number
    score       = correct_weight * correct + ntl_weight * closeness

``q`` is ``ntl_info['answer_confidence']``: the smallest probability (softmax over the ten digit logits) of a digit
the answer shows, or 0 when NTL did not read this same answer. ``kappa = confidence_weight`` in [0, 1] (default 0:
the model's confidence does not enter).

Why this form (the properties, each tested over all pairs in ``tests/test_reward_properties.py``):

(a) A correct answer scores ``correct_weight + ntl_weight``; a wrong one at most ``ntl_weight``: strictly less
    whenever ``correct_weight > 0`` (weights that break this are refused), in every format the scorer accepts.
(b) At one confidence, ``closeness`` falls strictly as ``e`` grows (until it underflows to 0): a closer wrong
    answer never scores lower. The seed's bonus used the *expected* digits, whose lean toward 4.5 is multiplied by
    the place value and paid ``1223`` more than ``1244`` against ``1234``.
(c) ``a`` is the scorer's number by construction; an answer the scorer cannot read as a number gets closeness 0,
    the floor of the scale, never the plain correctness above it.
(d) The same number written less surely has the same ``e`` and a ``q`` no higher: hedging never pays. Confidence
    can only lower a wrong answer's bonus (the factor is at most 1) and never touches a correct one.
(e) The score depends on the final answer only, in every reward mode: a sequence-level bonus for checked steps
    could be raised by hiding a wrong step or padding right ones. Steps get token-level credit instead, through
    the NTL loss on their digits (``reward_mode`` chooses which digits NTL targets).

``custom_ntl_final`` and ``custom_ntl_all`` are one function under two names (the verl NTL guide's).
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from ntl_jax.answers import Answer, number_value, read_answer
from ntl_jax.rewards.scoring import default_compute_score, normalize_reward_output

COMBINATIONS = ("add",)
DEFAULT_TAU = 0.1
_UNDERFLOW = 800.0  # exp(-800) is 0 in float64


def _check_real(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and (value > low if low_open else value >= low) and value <= high:
        return float(value)
    bound = f"{'>' if low_open else '>='} {low:g}" + ("" if high == math.inf else f" and <= {high:g}")
    raise ValueError(f"{name}={value!r} is not allowed; allowed: a finite number {bound}")


def check_reward_options(tau: float, combination: str, correct_weight: float, ntl_weight: float,
                         confidence_weight: float) -> None:
    """Refuse, in one line, every option that could rank a wrong answer above a correct one or is not a number."""
    if combination not in COMBINATIONS:
        raise ValueError(f"combination={combination!r} is invalid; allowed: {', '.join(COMBINATIONS)} ('multiply' was "
                         "removed: with a bonus on the written number it equals plain correctness, "
                         "reward_fn_name='compute_score')")
    _check_real("tau", tau, 0.0, low_open=True)
    _check_real("correct_weight", correct_weight, 0.0, low_open=True)  # 0 would tie a correct answer with '018'
    _check_real("ntl_weight", ntl_weight, 0.0)
    _check_real("confidence_weight", confidence_weight, 0.0, 1.0)


def relative_error(answer: Fraction, truth: Fraction) -> Fraction:
    """``|answer - truth| / max(|truth|, 1)``, exact."""
    return abs(answer - truth) / max(abs(truth), Fraction(1))


def closeness_of(error: Fraction, tau: float) -> float:
    """``exp(-error / tau)``, 0 where it underflows."""
    scaled = error / Fraction(tau)
    return 0.0 if scaled > _UNDERFLOW else math.exp(-float(scaled))


def answer_confidence(ntl_info: Any, answer: Answer) -> float:
    """``ntl_info['answer_confidence']`` when NTL read this same answer, else 0 (the floor: a blind spot never pays)."""
    if ntl_info is None:
        return 0.0
    if not isinstance(ntl_info, Mapping):
        raise TypeError(f"ntl_info must be a dict (NTLInfo.sample_view), got {type(ntl_info).__name__}")
    if not ntl_info.get("has_answer", False) or ntl_info.get("answer_text") != answer.text:
        return 0.0
    confidence = ntl_info.get("answer_confidence")
    return _check_real("ntl_info['answer_confidence']", confidence, 0.0, 1.0 + 1e-6)


def custom_ntl_reward(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    *,
    ntl_info: Mapping | None = None,
    tau: float = DEFAULT_TAU,
    combination: str = "add",
    correct_weight: float = 0.5,
    ntl_weight: float = 0.5,
    confidence_weight: float = 0.0,
    **unused: Any,
) -> dict:
    """Correctness plus the closeness of the written answer (module docstring).

    kwargs: ntl_info (NTLInfo.sample_view dict; read only when confidence_weight > 0), tau (default 0.1),
    combination ('add'), correct_weight, ntl_weight (default 0.5 each: the verl NTL fork's form), confidence_weight
    (default 0). Returns dict(score, acc, correctness, closeness, ntl_bonus (= closeness), ntl_reward
    (= ntl_weight * closeness, logged as ntl/reward), ntl_used (1 when the answer is a number), written_error
    (e, when the answer is a number), answer_confidence (q, when confidence_weight > 0)) plus the scorer's extras.
    """
    check_reward_options(tau, combination, correct_weight, ntl_weight, confidence_weight)
    for name in unused:
        # The trainer may pass more per-sample context in future; a typo in a reward kwarg should still be visible.
        warnings.warn(f"NTL reward ignores unknown keyword argument {name!r}", stacklevel=2)
    correctness, base_extras = normalize_reward_output(
        default_compute_score(data_source, solution_str, ground_truth, extra_info))
    correct = correctness >= 1.0
    answer = read_answer(data_source, solution_str)
    truth = number_value(ground_truth)
    readable = answer is not None and answer.value is not None
    extras = {**base_extras, "acc": float(base_extras.get("acc", 1.0 if correct else 0.0)),
              "correctness": float(correctness), "ntl_used": float(readable)}
    if correct:
        closeness = 1.0
        extras["written_error"] = 0.0
    elif not readable or truth is None:
        closeness = 0.0
    else:
        error = relative_error(answer.value, truth)
        closeness = closeness_of(error, tau)
        extras["written_error"] = float(min(error, Fraction(10**300)))
        if confidence_weight > 0:
            confidence = answer_confidence(ntl_info, answer)
            closeness *= 1.0 - confidence_weight * (1.0 - confidence)
            extras["answer_confidence"] = confidence
    return {**extras, "score": float(correct_weight * correctness + ntl_weight * closeness), "closeness": closeness,
            "ntl_bonus": closeness, "ntl_reward": ntl_weight * closeness}


#: The names the verl NTL guide uses.
custom_ntl_final = custom_ntl_reward
custom_ntl_all = custom_ntl_reward
