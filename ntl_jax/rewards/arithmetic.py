"""Scorer for the embedded arithmetic task (``data_source='arithmetic'``).

Answer extraction, in order, on the last ``ANSWER_TAIL_CHARS`` characters of the response:

1. the number after the last ``####`` (spaces/tabs allowed between), else
2. the last number in the tail.

A number is ``-?[0-9]+(\\.[0-9]+)?`` in ASCII digits, or thousands-grouped ``1,234`` (groups of exactly three
digits; ``3,4`` is 3 then 4). A ``-`` is a sign only when it does not follow a digit (``7-3`` is 7 then 3,
``=-4`` is -4). The value is compared to the ground truth exactly (``fractions.Fraction``), so ``12``, ``12.0`` and
``012`` all equal ``12``; no float conversion, hence no ``nan``/``inf``/overflow.

Untrusted text:

- Only ASCII ``0-9`` are digits. Arabic-Indic (``٣``), fullwidth (``３``) and other Unicode digits are ordinary text:
  ``#### ٣`` has no answer after ``####``. (Python's ``int('٣')`` would accept it; we never call ``int`` on
  anything the ASCII pattern did not match.) NTL's digit tokens are ASCII too, so the two agree on what a digit is.
- ``nan``, ``inf``, ``Infinity``, ``1e309`` contain no number, or only their ASCII digit runs (``309``).
- The tail cut respects digit runs: a run that starts before the tail (e.g. the end of 10^5 digits in a row) is not
  read as its last 300 digits; such a response has no answer. (A comma-grouped number longer than the tail may be
  read from a group boundary; its value is then wrong anyway.)
- All patterns are linear (no nested quantifiers) and run on at most 300 characters.

``compute_score`` returns ``{'score', 'acc', 'abs_error', 'digit_acc', 'has_answer'}`` where
``abs_error = min(|pred - truth|, ABS_ERROR_CAP)``, and ``|truth|`` (the error of answering 0) when there is no
answer, so a mean over a batch stays finite and comparable: one unanswered problem moves it by its truth's size,
not by the cap; ``digit_acc`` is the place-value digit accuracy of the answer (:func:`digit_accuracy`).
"""
from __future__ import annotations

import re
from fractions import Fraction

from ntl_jax.answers import ANSWER_TAIL_CHARS, read_strict_then_last

ABS_ERROR_CAP = 1e6

_GROUND_TRUTH_RE = re.compile(r"-?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")


def _to_fraction(number_text: str) -> Fraction:
    return Fraction(number_text.replace(",", ""))


def extract_answer(solution_str: str) -> str | None:
    """Return the answer text (``####`` answer first, else last number in the tail), or None; the reader NTL's
    targets and the NTL reward use too (``ntl_jax.answers.read_strict_then_last``)."""
    answer = read_strict_then_last(solution_str)
    return None if answer is None else answer.text


def parse_ground_truth(ground_truth: str | int) -> Fraction:
    """Parse a ground truth like ``'936'``, ``'-12'``, ``'1,234'`` or ``'2.5'`` (ints accepted) into a Fraction."""
    if isinstance(ground_truth, bool) or not isinstance(ground_truth, (str, int)):
        raise TypeError(f"ground_truth must be str or int, got {type(ground_truth).__name__}")
    text = str(ground_truth).strip()
    if len(text) > ANSWER_TAIL_CHARS or not _GROUND_TRUTH_RE.fullmatch(text):
        raise ValueError(f"ground_truth={text[:50]!r} is not an ASCII number like '-12', '1,234' or '2.5'")
    return _to_fraction(text)


def _place_digits(number_text: str) -> tuple[bool, str, str]:
    """(negative, integer digits without leading zeros, fraction digits without trailing zeros)."""
    text = number_text.replace(",", "").strip()
    negative = text.startswith("-")
    int_part, _, frac_part = text.lstrip("-").partition(".")
    int_part, frac_part = int_part.lstrip("0") or "0", frac_part.rstrip("0")
    return negative and (int_part != "0" or bool(frac_part)), int_part, frac_part


def digit_accuracy(answer_text: str, truth_text: str) -> float:
    """Share of places where the answer's digit equals the truth's, over every place either has.

    Integer digits are right-aligned at the units, fraction digits left-aligned at the point (leading integer and
    trailing fraction zeros dropped); a place only one of them has counts as wrong, so a missing or an extra digit
    costs a place. A wrong sign makes every place wrong: ``digit_accuracy('1234', '1234') = 1``,
    ``('1204', '1234') = 0.75``, ``('234', '1234') = 0.75``, ``('-1234', '1234') = 0``.
    """
    answer_negative, answer_int, answer_frac = _place_digits(answer_text)
    truth_negative, truth_int, truth_frac = _place_digits(truth_text)
    int_places, frac_places = max(len(answer_int), len(truth_int)), max(len(answer_frac), len(truth_frac))
    if answer_negative != truth_negative:
        return 0.0
    correct = sum(a == t for a, t in zip(answer_int.rjust(int_places, " "), truth_int.rjust(int_places, " "))
                  if a != " ")
    correct += sum(a == t for a, t in zip(answer_frac.ljust(frac_places, " "), truth_frac.ljust(frac_places, " "))
                   if a != " ")
    return correct / (int_places + frac_places)


def compute_score(
    solution_str: str, ground_truth: str | int, format_score: float = 0.0, score: float = 1.0
) -> dict:
    """Exact numeric match of the extracted answer with the ground truth.

    score = ``score`` if pred == truth, ``format_score`` if an answer was found but differs, 0.0 if none;
    acc = 1.0 if pred == truth else 0.0; abs_error = min(|pred - truth|, ABS_ERROR_CAP) (|truth| when no answer);
    digit_acc = :func:`digit_accuracy` of the answer (0 when no answer).
    """
    truth = parse_ground_truth(ground_truth)
    answer_text = extract_answer(solution_str)
    if answer_text is None:
        return {"score": 0.0, "acc": 0.0, "abs_error": float(min(abs(truth), Fraction(ABS_ERROR_CAP))),
                "digit_acc": 0.0, "has_answer": False}
    error = abs(_to_fraction(answer_text) - truth)
    correct = error == 0
    return {
        "score": float(score) if correct else float(format_score),
        "acc": 1.0 if correct else 0.0,
        "abs_error": float(min(error, Fraction(ABS_ERROR_CAP))),
        "digit_acc": digit_accuracy(answer_text, str(ground_truth).strip()),
        "has_answer": True,
    }
