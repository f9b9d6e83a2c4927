"""Per-token target digits for the Number Token Loss (host side, numpy). The rules, with worked examples, are in
``docs/NTL.md``; in short:

- **final answer** (every mode): the number the data source's scorer grades (``ntl_jax.answers``: one reader per
  data source, shared with the scorer; ``answer_extraction`` for other sources) is aligned with the ground truth
  by place value: integer digits
  right-aligned at the units, fraction digits left-aligned at the point. Each answer digit targets the truth's
  digit at its place, or 0 where the truth has none (an extra digit). Truth digits at places the answer lacks are
  ``missing_digits``; an answer whose sign differs from the truth's has ``sign_wrong``. Neither is free: both
  count in the per-sequence NTL (``ntl_jax.ntl.info``), and the number-level error of the answer sees them.
- **arithmetic steps** (``all_tokens``, ``hybrid``): the result ``c`` of ``a op b = c`` (chains allowed) or of a
  GSM8K annotation ``<<a op b=c>>c`` targets the true value from ``safe_eval_arithmetic``, aligned the same way. A
  checked step wins over the final answer when both claim a digit (the step is locally verifiable).
- no other digit has a target: a digit that is neither a checked result nor the answer cannot be checked, and
  targeting it with itself would reward confidence, not correctness.
- ``hybrid`` weighs final-answer digits ``hybrid_weight`` and step digits ``1 - hybrid_weight``.

Every targeted digit also gets its place (``10**place``: units 0, tens 1, first decimal -1), the index of its number
(0 = the final answer, k >= 1 = the k-th checked step) and that number's true value as the response's sign sees it
(``sign * truth``), so number-level losses and errors compare whole numbers, thousands separators included.

A ground truth that is not a number (``3/4``, ``5%``, words) gives the sample no targets and sets
``bad_ground_truth``; it never raises. Characters are mapped to tokens with exact per-token offsets
(``token_char_offsets``), never by counting characters. All regular expressions are linear-time.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import chex
import numpy as np

from ntl_jax.answers import ANSWER_EXTRACTIONS, NumberSpan, READERS, reader_name
from ntl_jax.ntl.digits import digit_value_of_tokens
from ntl_jax.ntl.offsets import token_char_offsets, token_lengths  # noqa: F401 (token_char_offsets re-exported)
from ntl_jax.ntl.safe_eval import safe_eval_arithmetic

REWARD_MODES: tuple[str, ...] = ("final_answer", "all_tokens", "hybrid")
MAX_FRACTION_DIGITS = 6  # arithmetic results beyond this precision are not targeted
MAX_EXPRESSION_CHARS = 100
MAX_ARITHMETIC_STEPS = 1024
FINAL_ANSWER = 0  # number index of the final answer; checked steps are 1, 2, ...

# Thousands groups need at least one ",ddd" and nothing may fail after them, so matching never backtracks far.
_NUMBER = r"(?P<prefix>-\$?|\$-?)?(?P<body>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?)"
_STEP_NUMBER_RE = re.compile(_NUMBER)  # a step result: "= $5", "= -3"
_RESULT_RE = re.compile(r"=[ \t]*" + _NUMBER)
_TRUTH_RE = re.compile(r"(?P<sign>[-+]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?")
_EXPRESSION_CHARS = "0123456789.,$+-*/x×÷() \t"
_HAS_BINARY_OP_RE = re.compile(r"[0-9)][ \t]*[-+*/]")
_THOUSANDS_COMMA_RE = re.compile(r"(?<=[0-9]),(?=[0-9]{3})")
_MINUS_SIGNS = "\u2212\u2012\u2013\ufe63\uff0d"  # typographic minus signs a dataset may carry


@dataclass(frozen=True)
class TrueNumber:
    """A true value split for place-value alignment: ``value = sign * int(int_digits + '.' + frac_digits)``."""

    negative: bool
    int_digits: str  # no leading zeros ('0' for values below 1)
    frac_digits: str  # no trailing zeros

    @property
    def value(self) -> float:
        magnitude = float(Fraction(f"{self.int_digits}.{self.frac_digits or '0'}"))
        return -magnitude if self.negative else magnitude


@dataclass
class TargetResult:
    """Targets of one response (T tokens); see the module docstring."""

    target_digits: np.ndarray  # int32 [T], -1 where no target
    weights: np.ndarray  # float32 [T], 0 where no target
    places: np.ndarray  # int32 [T], place exponent of a targeted digit (units 0), 0 elsewhere
    number_index: np.ndarray  # int32 [T], FINAL_ANSWER, k >= 1 for the k-th checked step, -1 elsewhere
    number_truth: np.ndarray  # float32 [T], sign * true value of the digit's number (response sign), 0 elsewhere
    is_final_answer: np.ndarray  # bool [T], the digits of the final answer (also those a checked step targets)
    written_digits: np.ndarray  # int32 [T], the digit a final-answer token shows, -1 elsewhere
    answer_digit_count: int  # digits the final answer shows, those on merged multi-digit tokens included
    missing_digits: int  # truth digits of the final answer at places the answer has no digit
    missing_digit_sum: float  # sum of those digits (their Wasserstein loss against an implicit 0)
    missing_digit_square_sum: float  # sum of their squares (their MSE loss against an implicit 0)
    sign_wrong: bool  # the final answer's sign differs from the truth's
    answer_truth: float  # the truth as the answer's sign sees it (answer sign * truth), 0 without an answer
    has_answer: bool  # a final answer was found (and the ground truth is a number)
    bad_ground_truth: bool  # the ground truth is not a number: no targets at all
    answer_span: tuple[int, int] | None  # char span in the text returned by token_char_offsets
    answer_text: str | None  # the final answer as its scorer compares it (ntl_jax.answers.Answer.text)


@dataclass
class BatchTargets:
    """``TargetResult`` of every row: per-token arrays [B, T], per-row arrays [B]."""

    target_digits: np.ndarray
    weights: np.ndarray
    places: np.ndarray
    number_index: np.ndarray
    number_truth: np.ndarray
    is_final_answer: np.ndarray
    written_digits: np.ndarray
    answer_digit_count: np.ndarray  # int32 [B]
    missing_digits: np.ndarray  # int32 [B]
    missing_digit_sum: np.ndarray  # float32 [B]
    missing_digit_square_sum: np.ndarray  # float32 [B]
    sign_wrong: np.ndarray  # bool [B]
    answer_truth: np.ndarray  # float32 [B]
    has_answer: np.ndarray  # bool [B]
    bad_ground_truth: np.ndarray  # bool [B]
    answer_texts: list[str | None]  # [B]


# ---------------------------------------------------------------------------------------------- numbers in text


def _number_from_match(match: re.Match) -> NumberSpan:
    body_start, body = match.start("body"), match.group("body")
    point = body.find(".")
    int_text = body if point < 0 else body[:point]
    int_positions = body_start + np.flatnonzero(np.frombuffer(int_text.encode("ascii"), np.uint8) != ord(","))
    frac_len = 0 if point < 0 else len(body) - point - 1
    frac_positions = body_start + point + 1 + np.arange(frac_len)
    prefix = match.group("prefix") or ""
    start = match.start("prefix") if prefix else body_start
    return NumberSpan(start, match.end("body"), int_positions.astype(np.int64), frac_positions.astype(np.int64),
                      negative="-" in prefix and body.strip("0,.") != "")


def find_final_answer(text: str, strategy: str = "strict_then_last") -> NumberSpan | None:
    """The final answer's number as the reader ``strategy`` reads it (``ntl_jax.answers``); None when there is no
    answer or its text spells no number."""
    if strategy not in READERS:
        raise ValueError(f"answer_extraction={strategy!r} is not allowed; allowed: {ANSWER_EXTRACTIONS}")
    answer = READERS[strategy](text)
    return None if answer is None else answer.span


def parse_true_number(ground_truth: str) -> TrueNumber:
    """'$1,234.50' -> (+, '1234', '5'); '-0.5' and '\u22120.5' -> (-, '0', '5'); a full GSM8K answer -> its '####' part.

    Allowed: digits with an optional sign ('+', '-' or a typographic minus), '$', thousands commas, spaces and one
    '.'; anything else ('3/4', '5%', words) raises ValueError naming the value.
    """
    text = str(ground_truth)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    cleaned = re.sub(r"[\s,$]", "", text.translate({ord(c): "-" for c in _MINUS_SIGNS}))
    match = _TRUTH_RE.fullmatch(cleaned)
    if match is None or not (match["int"] or match["frac"]):
        raise ValueError(f"ground_truth={str(ground_truth)[:50]!r} is not a number; allowed: digits with an optional "
                         "sign, '$', thousands commas and one '.'")
    int_digits, frac_digits = match["int"].lstrip("0") or "0", (match["frac"] or "").rstrip("0")
    is_zero = int_digits == "0" and not frac_digits
    return TrueNumber(negative=match["sign"] == "-" and not is_zero, int_digits=int_digits, frac_digits=frac_digits)


def ground_truth_digits(ground_truth: str) -> tuple[str, str]:
    """(integer digits, fraction digits) of a ground-truth number (see :func:`parse_true_number`)."""
    truth = parse_true_number(ground_truth)
    return truth.int_digits, truth.frac_digits


def true_number_of(value: Fraction, max_fraction_digits: int = MAX_FRACTION_DIGITS) -> TrueNumber | None:
    """``value`` as a TrueNumber, or None when it is not a decimal with at most ``max_fraction_digits`` decimals."""
    scaled = abs(value) * 10**max_fraction_digits
    if scaled.denominator != 1:
        return None
    int_part, frac_part = divmod(scaled.numerator, 10**max_fraction_digits)
    return TrueNumber(negative=value < 0, int_digits=str(int_part),
                      frac_digits=f"{frac_part:0{max_fraction_digits}d}".rstrip("0"))


@dataclass(frozen=True)
class Alignment:
    """Place-value alignment of a response number with a true number (one entry per response digit)."""

    positions: np.ndarray  # int64 char offsets of the response digits
    targets: np.ndarray  # int32 true digit at each digit's place (0 where the truth has no digit there)
    places: np.ndarray  # int32 place exponent of each digit (units 0, tens 1, first decimal -1)
    missing: np.ndarray  # int32 true digits at places the response has no digit


def align_digits(number: NumberSpan, truth: TrueNumber) -> Alignment:
    """Integer digit at place p (units p = 0) targets the truth's digit at p; fraction digit j (place -1-j) targets
    the truth's j-th decimal; a place the truth lacks targets 0; truth digits at places the response lacks are
    ``missing``."""
    truth_int = np.frombuffer(truth.int_digits.encode("ascii"), np.uint8).astype(np.int32) - ord("0")
    truth_frac = np.frombuffer(truth.frac_digits.encode("ascii"), np.uint8).astype(np.int32) - ord("0")
    if truth.int_digits == "0":
        truth_int = truth_int[:0]  # a leading 0 is no digit to miss ('0.5' vs '.5')
    n_int, n_frac = len(number.int_positions), len(number.frac_positions)
    int_places = np.arange(n_int - 1, -1, -1)
    int_known = int_places < len(truth_int)
    int_targets = np.zeros(n_int, np.int32)
    int_targets[int_known] = truth_int[len(truth_int) - 1 - int_places[int_known]]
    frac_known = np.arange(n_frac) < len(truth_frac)
    frac_targets = np.zeros(n_frac, np.int32)
    frac_targets[frac_known] = truth_frac[: int(frac_known.sum())]
    missing = np.concatenate([truth_int[: max(0, len(truth_int) - n_int)], truth_frac[n_frac:]])
    return Alignment(positions=np.concatenate([number.int_positions, number.frac_positions]),
                     targets=np.concatenate([int_targets, frac_targets]),
                     places=np.concatenate([int_places, -1 - np.arange(n_frac)]).astype(np.int32),
                     missing=missing.astype(np.int32))


# ---------------------------------------------------------------------------------------------- arithmetic steps


def _expression_value(text: str, equals_at: int) -> Fraction | None:
    """True value of the arithmetic expression ending at text[equals_at] ('='); None when there is none, it is too
    long, or the safe evaluator refuses it."""
    window_start = max(0, equals_at - MAX_EXPRESSION_CHARS)
    window = text[window_start:equals_at]
    expr_start = len(window.rstrip(_EXPRESSION_CHARS))
    if expr_start == 0 and window_start > 0 and text[window_start - 1] in _EXPRESSION_CHARS:
        return None
    expr = window[expr_start:]
    # Longest suffix starting at a word boundary first: "Total is 5. 3 + 4" falls back to "3 + 4".
    for start in range(len(expr)):
        if (start == 0 or expr[start - 1] in " \t") and expr[start] in "-($0123456789":
            candidate = _normalize_expression(expr[start:])
            if candidate is None:
                continue
            if not _HAS_BINARY_OP_RE.search(candidate):
                return None  # shorter suffixes have no operator either
            value = safe_eval_arithmetic(candidate)
            if value is not None:
                return value
    return None


def _normalize_expression(expr: str) -> str | None:
    expr = expr.strip()
    while expr.startswith("(") and expr.count("(") > expr.count(")"):
        expr = expr[1:].lstrip()
    expr = _THOUSANDS_COMMA_RE.sub("", expr.replace("$", ""))
    if "," in expr:
        return None
    return expr.replace("×", "*").replace("x", "*").replace("÷", "/")


def arithmetic_steps(text: str) -> list[tuple[NumberSpan, TrueNumber]]:
    """(result number, true value) for each `expr = c` step whose true value is a short finite decimal.

    A GSM8K annotation `<<expr=c>>c'` also yields the number c' rendered right after '>>'. At most
    MAX_ARITHMETIC_STEPS '=' signs are examined.
    """
    steps: list[tuple[NumberSpan, TrueNumber]] = []
    for examined, match in enumerate(_RESULT_RE.finditer(text)):
        if examined >= MAX_ARITHMETIC_STEPS:
            break
        value = _expression_value(text, match.start())
        truth = None if value is None else true_number_of(value)
        if truth is None:
            continue
        steps.append((_number_from_match(match), truth))
        if text.startswith(">>", match.end()):
            rendered = _STEP_NUMBER_RE.match(text, match.end() + 2)
            if rendered is not None:
                steps.append((_number_from_match(rendered), truth))
    return steps


# ---------------------------------------------------------------------------------------------- targets


def _char_to_token(token_lengths: np.ndarray) -> np.ndarray:
    """int64 [len(text)]: index of the token covering each character (token spans tile the text)."""
    return np.repeat(np.arange(len(token_lengths), dtype=np.int64), token_lengths)


def _check_options(reward_mode: str, answer_extraction: str, hybrid_weight: float) -> None:
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode={reward_mode!r} is not allowed; allowed: {REWARD_MODES}")
    if answer_extraction not in ANSWER_EXTRACTIONS:
        raise ValueError(f"answer_extraction={answer_extraction!r} is not allowed; allowed: {ANSWER_EXTRACTIONS}")
    if not 0.0 <= float(hybrid_weight) <= 1.0:
        raise ValueError(f"hybrid_weight={hybrid_weight!r} is not allowed; allowed: a float in [0, 1]")


class _TokenTargets:
    """The per-token arrays of one response being filled in, and the char -> token mapping they are written by."""

    def __init__(self, ids: np.ndarray, tokenizer: Any, digit_ids: np.ndarray, response_text: str | None):
        self.text, lengths = token_lengths(ids, tokenizer, response_text)
        self.char_token = _char_to_token(lengths)
        codes = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        self.char_digit = np.where((codes >= ord("0")) & (codes <= ord("9")), codes - ord("0"), -2)
        self.token_digit = digit_value_of_tokens(ids, digit_ids)
        n = len(ids)
        self.target_digits = np.full(n, -1, np.int32)
        self.places = np.zeros(n, np.int32)
        self.number_index = np.full(n, -1, np.int32)
        self.number_truth = np.zeros(n, np.float32)

    def place(self, number: NumberSpan, truth: TrueNumber, index: int) -> tuple[Alignment, np.ndarray, np.ndarray]:
        """Target the still-free single-digit tokens of ``number``. Returns the alignment, the token of each of its
        digits, and which digits sit on a single-digit token (a merged multi-digit token cannot carry a target)."""
        alignment = align_digits(number, truth)
        tokens = self.char_token[alignment.positions]
        single = self.token_digit[tokens] == self.char_digit[alignment.positions]
        free = single & (self.target_digits[tokens] < 0)
        chosen = tokens[free]
        self.target_digits[chosen] = alignment.targets[free]
        self.places[chosen] = alignment.places[free]
        self.number_index[chosen] = index
        self.number_truth[chosen] = -truth.value if number.negative else truth.value
        return alignment, tokens, single


def _empty_result(num_tokens: int, *, bad_ground_truth: bool) -> TargetResult:
    return TargetResult(
        target_digits=np.full(num_tokens, -1, np.int32), weights=np.zeros(num_tokens, np.float32),
        places=np.zeros(num_tokens, np.int32), number_index=np.full(num_tokens, -1, np.int32),
        number_truth=np.zeros(num_tokens, np.float32), is_final_answer=np.zeros(num_tokens, bool),
        written_digits=np.full(num_tokens, -1, np.int32), answer_digit_count=0, missing_digits=0,
        missing_digit_sum=0.0, missing_digit_square_sum=0.0, sign_wrong=False, answer_truth=0.0,
        has_answer=False, bad_ground_truth=bad_ground_truth, answer_span=None, answer_text=None)


def build_targets(
    response_ids: Sequence[int],
    ground_truth: str,
    tokenizer: Any,
    digit_ids: np.ndarray,
    reward_mode: str,
    *,
    answer_extraction: str = "strict_then_last",
    hybrid_weight: float = 0.5,
    response_text: str | None = None,
    data_source: str | None = None,
) -> TargetResult:
    """Target digit per response token (-1 where none) with weights; the rules are in the module docstring.

    The final answer is read by ``data_source``'s scorer's reader, or by ``answer_extraction`` for a data source
    without a built-in scorer (``ntl_jax.answers.reader_name``).

    weights: final_answer -> 1 on final-answer digits; all_tokens -> 1 on final-answer and checked-step digits;
    hybrid -> hybrid_weight on final-answer digits, 1 - hybrid_weight on checked-step digits.
    """
    _check_options(reward_mode, answer_extraction, hybrid_weight)
    digit_ids = np.asarray(digit_ids)
    chex.assert_shape(digit_ids, (10,))
    ids = np.asarray(response_ids, dtype=np.int64).reshape(-1)
    try:
        truth = parse_true_number(ground_truth)
    except ValueError:
        return _empty_result(len(ids), bad_ground_truth=True)
    tokens = _TokenTargets(ids, tokenizer, digit_ids, response_text)

    if reward_mode != "final_answer":  # checked steps first: a verifiable result keeps its own target
        index = FINAL_ANSWER + 1
        for result, step_truth in arithmetic_steps(tokens.text):
            _, step_tokens, single = tokens.place(result, step_truth, index)
            index += bool(np.any(tokens.number_index[step_tokens[single]] == index))  # dense: at most T numbers
    is_step = tokens.target_digits >= 0
    read = READERS[reader_name(data_source, answer_extraction)](tokens.text)
    answer = None if read is None else read.span
    is_final = np.zeros(len(ids), bool)  # digits of the answer, also those a checked step targets
    written = np.full(len(ids), -1, np.int32)
    missing = np.zeros(0, np.int32)
    sign_wrong, answer_span, answer_truth, answer_digits = False, None, 0.0, 0
    if answer is not None:
        alignment, answer_tokens, single = tokens.place(answer, truth, FINAL_ANSWER)
        is_final[answer_tokens[single]] = True
        written[answer_tokens[single]] = tokens.char_digit[alignment.positions[single]]
        # A digit the answer shows on a merged multi-digit token carries no target: it counts as missing too.
        missing = np.concatenate([alignment.missing, alignment.targets[~single]])
        sign_wrong, answer_span = answer.negative != truth.negative, (answer.start, answer.end)
        answer_truth = -truth.value if answer.negative else truth.value
        answer_digits = len(alignment.positions)

    if reward_mode == "final_answer":
        weights = is_final.astype(np.float32)
    elif reward_mode == "all_tokens":
        weights = (tokens.target_digits >= 0).astype(np.float32)
    else:
        weights = np.where(is_final, hybrid_weight, np.where(is_step, 1.0 - hybrid_weight, 0.0))
    return TargetResult(
        target_digits=tokens.target_digits, weights=weights.astype(np.float32), places=tokens.places,
        number_index=tokens.number_index, number_truth=tokens.number_truth, is_final_answer=is_final,
        written_digits=written, answer_digit_count=answer_digits, missing_digits=int(missing.size),
        missing_digit_sum=float(missing.sum()),
        missing_digit_square_sum=float(np.square(missing).sum()), sign_wrong=bool(sign_wrong),
        answer_truth=float(answer_truth), has_answer=answer is not None, bad_ground_truth=False,
        answer_span=answer_span, answer_text=None if answer is None else read.text)


_PER_TOKEN = ("target_digits", "weights", "places", "number_index", "number_truth", "is_final_answer",
              "written_digits")
_PER_ROW = {"answer_digit_count": np.int32, "missing_digits": np.int32, "missing_digit_sum": np.float32,
            "missing_digit_square_sum": np.float32,
            "sign_wrong": bool, "answer_truth": np.float32, "has_answer": bool, "bad_ground_truth": bool}


def build_batch_targets(
    response_ids: np.ndarray,
    response_mask: np.ndarray,
    ground_truths: Sequence[str],
    tokenizer: Any,
    digit_ids: np.ndarray,
    reward_mode: str,
    *,
    response_texts: Sequence[str | None] | None = None,
    data_sources: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> BatchTargets:
    """Row-wise build_targets over the tokens where response_mask is set; masked-out positions get no target.
    ``data_sources[i]`` picks row i's answer reader (default: ``answer_extraction`` for every row)."""
    response_ids = np.asarray(response_ids)
    response_mask = np.asarray(response_mask).astype(bool)
    chex.assert_rank(response_ids, 2)
    chex.assert_equal_shape([response_ids, response_mask])
    batch, length = response_ids.shape
    if len(ground_truths) != batch:
        raise ValueError(f"len(ground_truths)={len(ground_truths)} does not match the batch size {batch}")
    for name, values in (("response_texts", response_texts), ("data_sources", data_sources)):
        if values is not None and len(values) != batch:
            raise ValueError(f"len({name})={len(values)} does not match the batch size {batch}")
    empty = _empty_result(length, bad_ground_truth=False)
    per_token = {k: np.stack([getattr(empty, k)] * batch) for k in _PER_TOKEN}
    per_row = {k: np.zeros(batch, dtype) for k, dtype in _PER_ROW.items()}
    answer_texts: list[str | None] = []
    for row in range(batch):
        columns = np.flatnonzero(response_mask[row])
        result = build_targets(
            response_ids[row, columns].tolist(), ground_truths[row], tokenizer, digit_ids, reward_mode,
            response_text=None if response_texts is None else response_texts[row],
            data_source=None if data_sources is None else data_sources[row], **kwargs)
        for key in _PER_TOKEN:
            per_token[key][row, columns] = getattr(result, key)
        for key in _PER_ROW:
            per_row[key][row] = getattr(result, key)
        answer_texts.append(result.answer_text)
    return BatchTargets(**per_token, **per_row, answer_texts=answer_texts)
