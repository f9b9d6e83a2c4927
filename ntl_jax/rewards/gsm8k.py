"""GSM8K reward, behaviour-compatible with verl's ``verl.utils.reward_score.gsm8k``.

A verl user's validation numbers must not move when they switch trainers, so this module keeps verl's
semantics exactly, quirks included:

- only the last ``SOLUTION_CLIP_CHARS`` (300) characters of the response are searched;
- ``strict``: the last match of ``#### (\\-?[0-9\\.\\,]+)``, with ``,`` and ``$`` removed (the pattern can never
  capture ``$``; verl strips it anyway and so do we);
- ``flexible``: the last match of ``(\\-?[0-9\\.\\,]+)`` that is not ``''`` or ``'.'``. Commas are *not* stripped
  (verl does not). If every match is ``'.'``, verl's loop leaves the *first* match as the answer; kept as is;
- the extracted answer is compared to ``ground_truth`` as an exact string:
  match -> ``score``, extracted but different -> ``format_score``, nothing extracted -> ``0.0``.

Bounded time: both patterns are a single character class with no nested quantifier, so matching is linear in
the input; the input is cut to 300 characters before any regex runs. A 10^6-character response or 10^5 digits
in a row costs one slice plus a 300-character scan (tests/test_rewards.py checks the window).
"""
from __future__ import annotations

import re

from ntl_jax.answers import ANSWER_TAIL_CHARS, read_verl_strict

SOLUTION_CLIP_CHARS = ANSWER_TAIL_CHARS
EXTRACTION_METHODS = ("strict", "flexible")

_NUMBER_LIKE_RE = re.compile(r"(\-?[0-9\.\,]+)")
_FLEXIBLE_INVALID = ("", ".")


def _check_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, got {type(value).__name__}")
    return value


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    """Return the answer string verl's GSM8K scorer would extract, or None.

    strict:   last ``#### <number-like>`` in the tail, with ',' and '$' removed.
    flexible: last number-like token in the tail other than '' and '.'.
    """
    _check_str("solution_str", solution_str)
    if method not in EXTRACTION_METHODS:
        raise ValueError(f"method={method!r} is not one of {EXTRACTION_METHODS}")
    if method == "strict":  # the reader NTL's targets and the NTL reward use too (ntl_jax.answers)
        answer = read_verl_strict(solution_str)
        return None if answer is None else answer.text
    tail = solution_str[-SOLUTION_CLIP_CHARS:]
    matches = _NUMBER_LIKE_RE.findall(tail)
    if not matches:
        return None
    final_answer = matches[0]  # verl's fall-through value when every match is invalid
    for candidate in reversed(matches):
        if candidate not in _FLEXIBLE_INVALID:
            final_answer = candidate
            break
    return final_answer


def compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    """verl's GSM8K score: ``score`` if extracted == ground_truth, ``format_score`` if extracted but different,
    0.0 if nothing was extracted."""
    _check_str("ground_truth", ground_truth)
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0.0
    return float(score) if answer == ground_truth else float(format_score)
