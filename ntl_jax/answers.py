"""Answer readers: which number in a response is its final answer, shared by the scorers and by NTL's targets.

A scorer grades one number; NTL's digit targets and the NTL reward's closeness bonus must grade that same number,
or a policy can show the scorer one answer and NTL another (``#### 5\\n#### $18``). So each built-in data source
has exactly one reader, and ``ntl_jax.rewards.gsm8k``, ``ntl_jax.rewards.arithmetic`` and
``ntl_jax.ntl.targets`` all call it:

- ``'strict'`` (``openai/gsm8k``, ``gsm8k``): verl's strict GSM8K extraction, quirks included: the last match of
  ``#### (\\-?[0-9\\.\\,]+)`` in the last 300 characters, with ``,`` and ``$`` removed. The scorer compares that
  text as a string; its value is the decimal it spells (``'1,8'`` -> ``18``, ``'018'`` -> ``18``), or none
  (``'1.2.3'``, ``'.'``, ``''``).
- ``'strict_then_last'`` (``arithmetic``): the number after the last ``####`` (spaces or tabs between), else the
  last number, in the last 300 characters; thousands groups of exactly three digits (``1,0000`` is ``1`` then
  ``0000``); a ``-`` is a sign only where it does not follow a digit (``10-3`` is 10 then 3). Compared by value.
- ``'last'``: the last number as ``'strict_then_last'`` reads numbers, ignoring ``####``.

A data source without a built-in scorer is read with the reader the config names (``NTLConfig.answer_extraction``).
Every pattern is linear-time (no nested quantifiers) and runs on at most ``ANSWER_TAIL_CHARS`` characters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

ANSWER_TAIL_CHARS = 300  # verl's GSM8K scorer reads only the tail; so does every reader here

# The arithmetic scorer's number: the look-behinds stop a match from starting inside a digit run or a decimal part,
# including a run that begins before the tail (``finditer(text, pos)`` lets a look-behind see text before ``pos``).
_NUMBER = r"(?:(?<![0-9])-)?(?<![0-9.])(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![0-9])"
_SCORER_NUMBER_RE = re.compile(_NUMBER)
_HASH_NUMBER_RE = re.compile(r"####[ \t]*(" + _NUMBER + ")")
_VERL_STRICT_RE = re.compile(r"#### (\-?[0-9\.\,]+)")  # verl.utils.reward_score.gsm8k, verbatim
_DECIMAL_RE = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")


@dataclass(frozen=True)
class NumberSpan:
    """A number in a text: char span (sign included), the char offsets of its digits, and its sign."""

    start: int
    end: int
    int_positions: np.ndarray  # int64 [n_int], most significant first
    frac_positions: np.ndarray  # int64 [n_frac]
    negative: bool = False  # the value is below 0 ('-0' is not negative)


@dataclass(frozen=True)
class Answer:
    """The answer a scorer grades: the text it compares, the number that text spells, and where its digits are."""

    text: str  # what the scorer compares with the truth (gsm8k: ',' and '$' removed)
    value: Fraction | None  # None when the text spells no number ('1.2.3', '.', '')
    span: NumberSpan | None  # None exactly when value is None


def _span(text: str, start: int, end: int, value: Fraction) -> NumberSpan:
    """Digit offsets of ``text[start:end]``: digits before the first '.' are the integer part, after it the fraction;
    every other character (sign, ',', '$') carries no digit."""
    chars = np.frombuffer(text[start:end].encode("utf-32-le"), np.uint32)
    is_digit = (chars >= ord("0")) & (chars <= ord("9"))
    points = np.flatnonzero(chars == ord("."))
    split = int(points[0]) if points.size else len(chars)
    offsets = np.arange(len(chars), dtype=np.int64)
    return NumberSpan(start, end, start + offsets[:split][is_digit[:split]], start + offsets[split:][is_digit[split:]],
                      negative=value < 0)


def _tail_start(text: str) -> int:
    return max(0, len(text) - ANSWER_TAIL_CHARS)


def _last(pattern: re.Pattern, text: str, pos: int) -> re.Match | None:
    last = None
    for last in pattern.finditer(text, pos):
        pass
    return last


def _arithmetic_answer(match: re.Match | None, group: int) -> Answer | None:
    if match is None:
        return None
    text = match.group(group)
    value = Fraction(text.replace(",", ""))
    return Answer(text, value, _span(match.string, match.start(group), match.end(group), value))


def _check_text(solution_str: object) -> str:
    if not isinstance(solution_str, str):
        raise TypeError(f"solution_str must be str, got {type(solution_str).__name__}")
    return solution_str


def read_strict_then_last(solution_str: str) -> Answer | None:
    """The arithmetic scorer's answer: the number after the last ``####``, else the last number (module docstring)."""
    text = _check_text(solution_str)
    start = _tail_start(text)
    hashed = _last(_HASH_NUMBER_RE, text, start)
    if hashed is not None:
        return _arithmetic_answer(hashed, 1)
    return _arithmetic_answer(_last(_SCORER_NUMBER_RE, text, start), 0)


def read_last(solution_str: str) -> Answer | None:
    """The last number in the tail (numbers read as :func:`read_strict_then_last` reads them)."""
    text = _check_text(solution_str)
    return _arithmetic_answer(_last(_SCORER_NUMBER_RE, text, _tail_start(text)), 0)


def read_verl_strict(solution_str: str) -> Answer | None:
    """verl's strict GSM8K answer (module docstring): the text verl compares, and the decimal it spells if any."""
    text = _check_text(solution_str)
    start = _tail_start(text)
    # verl searches text[-300:] as its own string: a match may not look behind the cut, so search the slice.
    match = _last(_VERL_STRICT_RE, text[start:], 0)
    if match is None:
        return None
    graded = match.group(1).replace(",", "").replace("$", "")
    if _DECIMAL_RE.fullmatch(graded) is None:
        return Answer(graded, None, None)
    value = Fraction(graded)
    return Answer(graded, value, _span(text, start + match.start(1), start + match.end(1), value))


READERS: dict[str, Callable[[str], Answer | None]] = {
    "strict": read_verl_strict, "last": read_last, "strict_then_last": read_strict_then_last}
ANSWER_EXTRACTIONS: tuple[str, ...] = tuple(READERS)
#: The reader of each data source that has a built-in scorer; the scorer and NTL both use it.
DATA_SOURCE_READERS: dict[str, str] = {"openai/gsm8k": "strict", "gsm8k": "strict", "arithmetic": "strict_then_last"}


def number_value(text: str) -> Fraction | None:
    """The decimal a ground truth spells (``'18'``, ``'-2.5'``, ``'1,234'``, ``'$5'``), or None (``'3/4'``, words)."""
    cleaned = str(text).strip().replace(",", "").replace("$", "")
    return Fraction(cleaned) if _DECIMAL_RE.fullmatch(cleaned) and len(cleaned) <= ANSWER_TAIL_CHARS else None


def reader_name(data_source: str | None, answer_extraction: str = "strict_then_last") -> str:
    """The reader of ``data_source``: its scorer's, else ``answer_extraction``."""
    if answer_extraction not in READERS:
        raise ValueError(f"answer_extraction={answer_extraction!r} is not allowed; allowed: {ANSWER_EXTRACTIONS}")
    return DATA_SOURCE_READERS.get(data_source or "", answer_extraction)


def read_answer(data_source: str | None, solution_str: str,
                answer_extraction: str = "strict_then_last") -> Answer | None:
    """The answer of ``solution_str`` as the scorer of ``data_source`` reads it (:func:`reader_name`)."""
    return READERS[reader_name(data_source, answer_extraction)](solution_str)
