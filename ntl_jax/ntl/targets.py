"""Per-token target digits for the Number Token Loss (host side, numpy).

For a sampled response we decide, for every digit token, which digit it *should* have been:

- final answer (`final_answer`): the number after "####" (else the last number) is aligned with the ground truth by
  place value: integer digits right-aligned, fraction digits left-aligned. A response digit with no truth digit at
  its place targets 0; a truth digit with no response digit token at its place counts in `missing_digits`.
- arithmetic steps (`all_tokens`): the result `c` of `a op b = c` (chains allowed) or of a GSM8K calculator
  annotation `<<a op b=c>>c` targets the digits of the true value from `safe_eval_arithmetic`, aligned the same way.
- every other digit token targets itself (`is_self_target`).
`hybrid` weighs final-answer positions `hybrid_weight` and all other targeted positions `1 - hybrid_weight`.

Characters are mapped to tokens with exact per-token offsets (`token_char_offsets`), never by counting characters.
All regular expressions are linear-time; the answer is searched in the last 300 characters, like verl's GSM8K scorer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Sequence

import chex
import numpy as np

from ntl_jax.ntl.digits import digit_value_of_tokens
from ntl_jax.ntl.safe_eval import safe_eval_arithmetic

REWARD_MODES: tuple[str, ...] = ("final_answer", "all_tokens", "hybrid")
ANSWER_EXTRACTIONS: tuple[str, ...] = ("strict", "last", "strict_then_last")
ANSWER_SEARCH_CHARS = 300  # verl's GSM8K scorer only looks at the tail
MAX_FRACTION_DIGITS = 6  # arithmetic results beyond this precision are not targeted
MAX_EXPRESSION_CHARS = 100
MAX_ARITHMETIC_STEPS = 1024
_OFFSET_WINDOW = 8

# Thousands groups need at least one ",ddd" and nothing may fail after them, so matching never backtracks far.
_NUMBER = r"(?P<prefix>-\$?|\$-?)?(?P<body>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?)"
NUMBER_RE = re.compile(_NUMBER)
STRICT_ANSWER_RE = re.compile(r"####[ \t]*" + _NUMBER)
_RESULT_RE = re.compile(r"=[ \t]*" + _NUMBER)
_TRUTH_RE = re.compile(r"-?(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?")
_NUMBER_CHARS = "0123456789.,$-"
_EXPRESSION_CHARS = "0123456789.,$+-*/x×÷() \t"
_HAS_BINARY_OP_RE = re.compile(r"[0-9)][ \t]*[-+*/]")
_THOUSANDS_COMMA_RE = re.compile(r"(?<=[0-9]),(?=[0-9]{3})")


@dataclass(frozen=True)
class NumberSpan:
    """A number in a text: char span (sign and '$' included) and the char offsets of its digits."""

    start: int
    end: int
    int_positions: np.ndarray  # int64 [n_int], most significant first
    frac_positions: np.ndarray  # int64 [n_frac]


@dataclass
class TargetResult:
    target_digits: np.ndarray  # int32 [T], -1 where no target
    weights: np.ndarray  # float32 [T], 0 where no target
    is_self_target: np.ndarray  # bool [T]
    is_final_answer: np.ndarray  # bool [T]
    missing_digits: int
    answer_span: tuple[int, int] | None  # char span in the text returned by token_char_offsets


@dataclass
class BatchTargets:
    target_digits: np.ndarray  # int32 [B, T]
    weights: np.ndarray  # float32 [B, T]
    is_self_target: np.ndarray  # bool [B, T]
    missing_digits: np.ndarray  # int32 [B]
    is_final_answer: np.ndarray  # bool [B, T]


# ---------------------------------------------------------------------------------------------- token offsets


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _batch_decode(tokenizer: Any, sequences: list[list[int]]) -> list[str]:
    return tokenizer.batch_decode(sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _windowed_lengths(ids: list[int], tokenizer: Any) -> np.ndarray:
    """len_i = len(decode(ids[s:i+1])) - len(decode(ids[s:i])), s = i - window: linear-time, exact for decoders whose
    effect is local (byte-level merges, a stripped leading space); verified by the caller."""
    starts = [max(0, i - _OFFSET_WINDOW) for i in range(len(ids))]
    with_token = _batch_decode(tokenizer, [ids[s : i + 1] for i, s in enumerate(starts)])
    without_token = _batch_decode(tokenizer, [ids[s:i] for i, s in enumerate(starts)])
    return np.asarray([len(a) - len(b) for a, b in zip(with_token, without_token)], dtype=np.int64)


def _prefix_lengths(ids: list[int], tokenizer: Any, text: str) -> np.ndarray:
    """len_i = len(decode(ids[:i+1])) - len(decode(ids[:i])) (clamped monotone): exact, quadratic."""
    ends = np.asarray([len(_decode(tokenizer, ids[: i + 1])) for i in range(len(ids))], dtype=np.int64)
    ends = np.minimum(np.maximum.accumulate(ends), len(text))
    return np.diff(ends, prepend=0)


def _lengths_consistent(text: str, lengths: np.ndarray, pieces: list[str]) -> bool:
    """Lengths tile `text`, and every token whose lone decode is whole characters of its in-context length reads the
    same in `text` (a lone byte of a multi-byte character decodes to U+FFFD and is not comparable)."""
    if lengths.min(initial=0) < 0 or int(lengths.sum()) != len(text):
        return False
    ends = np.cumsum(lengths)
    return all(
        text[end - length : end] == piece
        for piece, length, end in zip(pieces, lengths.tolist(), ends.tolist())
        if len(piece) == length and "\ufffd" not in piece
    )


def _token_lengths(ids: np.ndarray, tokenizer: Any, reference_text: str | None) -> tuple[str, np.ndarray]:
    """(text, int64 [T] characters each token contributes to text); special tokens contribute 0."""
    special = np.asarray(sorted(int(t) for t in getattr(tokenizer, "all_special_ids", ())), dtype=np.int64)
    kept = ~np.isin(ids, special)
    unique, inverse = np.unique(ids[kept], return_inverse=True)
    unique_pieces = np.asarray(_batch_decode(tokenizer, [[t] for t in unique.tolist()]), dtype=object)
    pieces = unique_pieces[inverse].tolist()
    concat = "".join(pieces)
    kept_ids = ids[kept].tolist()
    text = concat if reference_text is not None and concat == reference_text else _decode(tokenizer, kept_ids)
    lengths = np.asarray([len(p) for p in unique_pieces.tolist()], dtype=np.int64)[inverse]
    if concat != text:
        lengths = _windowed_lengths(kept_ids, tokenizer)
        if not _lengths_consistent(text, lengths, pieces):
            lengths = _prefix_lengths(kept_ids, tokenizer, text)
    all_lengths = np.zeros(len(ids), dtype=np.int64)
    all_lengths[kept] = lengths
    return text, all_lengths


def token_char_offsets(
    token_ids: Sequence[int], tokenizer: Any, *, reference_text: str | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """(text, spans): text = decode of the non-special tokens; spans[i] = (start, end) of token i in text.

    Special tokens (eos, pad, ...) get empty spans. Tries, in order: lone-token decodes concatenated (checked against
    `reference_text` or the full decode), windowed in-context decodes, and exact prefix decodes.
    """
    text, lengths = _token_lengths(np.asarray(token_ids, dtype=np.int64).reshape(-1), tokenizer, reference_text)
    ends = np.cumsum(lengths)
    return text, list(zip((ends - lengths).tolist(), ends.tolist()))


# ---------------------------------------------------------------------------------------------- numbers in text


def _number_from_match(match: re.Match) -> NumberSpan:
    body_start, body = match.start("body"), match.group("body")
    point = body.find(".")
    int_text = body if point < 0 else body[:point]
    int_positions = body_start + np.flatnonzero(np.frombuffer(int_text.encode("ascii"), np.uint8) != ord(","))
    frac_len = 0 if point < 0 else len(body) - point - 1
    frac_positions = body_start + point + 1 + np.arange(frac_len)
    start = match.start("prefix") if match.group("prefix") else body_start
    return NumberSpan(start, match.end("body"), int_positions.astype(np.int64), frac_positions.astype(np.int64))


def _last_match(pattern: re.Pattern, text: str, pos: int) -> re.Match | None:
    last = None
    for last in pattern.finditer(text, pos):
        pass
    return last


def _answer_search_start(text: str) -> int:
    """Start of the last ANSWER_SEARCH_CHARS characters, moved back to the start of a number cut by the limit."""
    start = max(0, len(text) - ANSWER_SEARCH_CHARS)
    return len(text[:start].rstrip(_NUMBER_CHARS))


def find_final_answer(text: str, strategy: str = "strict_then_last") -> NumberSpan | None:
    """The final answer in the tail of `text`: 'strict' = last `#### <number>`, 'last' = last number,
    'strict_then_last' = strict, else last."""
    if strategy not in ANSWER_EXTRACTIONS:
        raise ValueError(f"answer_extraction={strategy!r} is not allowed; allowed: {ANSWER_EXTRACTIONS}")
    start = _answer_search_start(text)
    if strategy != "last":
        match = _last_match(STRICT_ANSWER_RE, text, start)
        if match is not None or strategy == "strict":
            return None if match is None else _number_from_match(match)
    match = _last_match(NUMBER_RE, text, start)
    return None if match is None else _number_from_match(match)


def ground_truth_digits(ground_truth: str) -> tuple[str, str]:
    """(integer digits, fraction digits) of a ground-truth number: '$1,234.50' -> ('1234', '5'), '-0.5' -> ('0', '5').

    Text after the last '####' is used when present (a full GSM8K answer); sign, '$', commas and spaces are dropped.
    """
    text = str(ground_truth)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    cleaned = re.sub(r"[\s,$]", "", text)
    match = _TRUTH_RE.fullmatch(cleaned)
    if match is None or not (match["int"] or match["frac"]):
        raise ValueError(
            f"ground_truth={ground_truth!r} is not a number; allowed: digits with optional sign, '$', commas, one '.'"
        )
    return match["int"].lstrip("0") or "0", (match["frac"] or "").rstrip("0")


def fraction_digits(value: Fraction, max_fraction_digits: int = MAX_FRACTION_DIGITS) -> tuple[str, str] | None:
    """(integer digits, fraction digits) of |value|, or None if it is not a decimal with <= max_fraction_digits."""
    scaled = abs(value) * 10**max_fraction_digits
    if scaled.denominator != 1:
        return None
    int_part, frac_part = divmod(scaled.numerator, 10**max_fraction_digits)
    return str(int_part), f"{frac_part:0{max_fraction_digits}d}".rstrip("0")


def align_digits(
    number: NumberSpan, int_digits: str, frac_digits: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Place-value alignment of a response number with true digits.

    Returns (char positions, target digits, has_true_digit, unmatched): integer digit at place p (units p=0) targets
    int_digits[-1-p]; fraction digit j targets frac_digits[j]; places the truth lacks target 0 (has_true_digit False);
    unmatched = true digits whose place has no response digit.
    """
    truth_int = np.frombuffer(int_digits.encode("ascii"), np.uint8).astype(np.int32) - ord("0")
    truth_frac = np.frombuffer(frac_digits.encode("ascii"), np.uint8).astype(np.int32) - ord("0")
    n_int, n_frac = len(number.int_positions), len(number.frac_positions)
    int_places = np.arange(n_int - 1, -1, -1)
    int_known = int_places < len(truth_int)
    int_targets = np.zeros(n_int, np.int32)
    int_targets[int_known] = truth_int[len(truth_int) - 1 - int_places[int_known]]
    frac_known = np.arange(n_frac) < len(truth_frac)
    frac_targets = np.zeros(n_frac, np.int32)
    frac_targets[frac_known] = truth_frac[: int(frac_known.sum())]
    unmatched = max(0, len(truth_int) - n_int) + max(0, len(truth_frac) - n_frac)
    positions = np.concatenate([number.int_positions, number.frac_positions])
    targets = np.concatenate([int_targets, frac_targets])
    return positions, targets, np.concatenate([int_known, frac_known]), unmatched


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


def arithmetic_steps(text: str) -> list[tuple[NumberSpan, tuple[str, str]]]:
    """(result number, true digits) for each `expr = c` step whose true value is a short finite decimal.

    A GSM8K annotation `<<expr=c>>c'` also yields the number c' rendered right after '>>'. At most
    MAX_ARITHMETIC_STEPS '=' signs are examined.
    """
    steps: list[tuple[NumberSpan, tuple[str, str]]] = []
    for examined, match in enumerate(_RESULT_RE.finditer(text)):
        if examined >= MAX_ARITHMETIC_STEPS:
            break
        value = _expression_value(text, match.start())
        digits = None if value is None else fraction_digits(value)
        if digits is None:
            continue
        steps.append((_number_from_match(match), digits))
        if text.startswith(">>", match.end()):
            rendered = NUMBER_RE.match(text, match.end() + 2)
            if rendered is not None:
                steps.append((_number_from_match(rendered), digits))
    return steps


# ---------------------------------------------------------------------------------------------- targets


def _char_to_token(token_lengths: np.ndarray) -> np.ndarray:
    """int64 [len(text)]: index of the token covering each character (token spans tile the text)."""
    return np.repeat(np.arange(len(token_lengths), dtype=np.int64), token_lengths)


def _place_targets(
    positions: np.ndarray,
    targets: np.ndarray,
    char_token: np.ndarray,
    char_digit: np.ndarray,
    token_digit: np.ndarray,
    target_digits: np.ndarray,
    marked: np.ndarray | None = None,
) -> np.ndarray:
    """Writes targets on the still-free digit tokens covering `positions` (and sets `marked` there); returns which
    positions were placed."""
    tokens = char_token[positions]
    placeable = token_digit[tokens] == char_digit[positions]  # a single-digit token that is exactly this char
    placeable &= target_digits[tokens] < 0
    target_digits[tokens[placeable]] = targets[placeable]
    if marked is not None:
        marked[tokens[placeable]] = True
    return placeable


def _check_options(reward_mode: str, answer_extraction: str, hybrid_weight: float) -> None:
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"reward_mode={reward_mode!r} is not allowed; allowed: {REWARD_MODES}")
    if answer_extraction not in ANSWER_EXTRACTIONS:
        raise ValueError(f"answer_extraction={answer_extraction!r} is not allowed; allowed: {ANSWER_EXTRACTIONS}")
    if not 0.0 <= float(hybrid_weight) <= 1.0:
        raise ValueError(f"hybrid_weight={hybrid_weight!r} is not allowed; allowed: a float in [0, 1]")


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
) -> TargetResult:
    """Target digit per response token (-1 where none) with weights; see the module docstring for the rules.

    weights: final_answer -> 1 on final-answer digits; all_tokens -> 1 on every digit token;
    hybrid -> hybrid_weight on final-answer digits, 1 - hybrid_weight on the other digit tokens.
    """
    _check_options(reward_mode, answer_extraction, hybrid_weight)
    digit_ids = np.asarray(digit_ids)
    chex.assert_shape(digit_ids, (10,))
    ids = np.asarray(response_ids, dtype=np.int64).reshape(-1)
    truth_int, truth_frac = ground_truth_digits(ground_truth)
    text, token_lengths = _token_lengths(ids, tokenizer, response_text)
    char_token = _char_to_token(token_lengths)
    char_codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    char_digit = np.where((char_codes >= ord("0")) & (char_codes <= ord("9")), char_codes - ord("0"), -2)
    token_digit = digit_value_of_tokens(ids, digit_ids)
    num_tokens = len(ids)
    target_digits = np.full(num_tokens, -1, dtype=np.int32)
    is_final = np.zeros(num_tokens, dtype=bool)
    place = dict(char_token=char_token, char_digit=char_digit, token_digit=token_digit, target_digits=target_digits)

    answer = find_final_answer(text, answer_extraction)
    if answer is None:
        missing, answer_span = len(truth_int) + len(truth_frac), None
    else:
        positions, targets, has_truth, unmatched = align_digits(answer, truth_int, truth_frac)
        placed = _place_targets(positions, targets, marked=is_final, **place)
        missing, answer_span = unmatched + int(np.sum(has_truth & ~placed)), (answer.start, answer.end)

    is_self = np.zeros(num_tokens, dtype=bool)
    if reward_mode != "final_answer":
        for result, (int_digits, frac_digits) in arithmetic_steps(text):
            positions, targets, _, _ = align_digits(result, int_digits, frac_digits)
            _place_targets(positions, targets, **place)
        is_self = (token_digit >= 0) & (target_digits < 0)
        target_digits[is_self] = token_digit[is_self]

    if reward_mode == "final_answer":
        weights = is_final.astype(np.float32)
    elif reward_mode == "all_tokens":
        weights = (target_digits >= 0).astype(np.float32)
    else:
        weights = np.where(is_final, hybrid_weight, np.where(target_digits >= 0, 1.0 - hybrid_weight, 0.0))
    return TargetResult(
        target_digits=target_digits,
        weights=weights.astype(np.float32),
        is_self_target=is_self,
        is_final_answer=is_final,
        missing_digits=int(missing),
        answer_span=answer_span,
    )


def build_batch_targets(
    response_ids: np.ndarray,
    response_mask: np.ndarray,
    ground_truths: Sequence[str],
    tokenizer: Any,
    digit_ids: np.ndarray,
    reward_mode: str,
    *,
    response_texts: Sequence[str | None] | None = None,
    **kwargs: Any,
) -> BatchTargets:
    """Row-wise build_targets over the tokens where response_mask is set; masked-out positions get -1 / weight 0."""
    response_ids = np.asarray(response_ids)
    response_mask = np.asarray(response_mask).astype(bool)
    chex.assert_rank(response_ids, 2)
    chex.assert_equal_shape([response_ids, response_mask])
    batch, length = response_ids.shape
    if len(ground_truths) != batch:
        raise ValueError(f"len(ground_truths)={len(ground_truths)} does not match the batch size {batch}")
    if response_texts is not None and len(response_texts) != batch:
        raise ValueError(f"len(response_texts)={len(response_texts)} does not match the batch size {batch}")
    out = BatchTargets(
        target_digits=np.full((batch, length), -1, dtype=np.int32),
        weights=np.zeros((batch, length), dtype=np.float32),
        is_self_target=np.zeros((batch, length), dtype=bool),
        missing_digits=np.zeros(batch, dtype=np.int32),
        is_final_answer=np.zeros((batch, length), dtype=bool),
    )
    for row in range(batch):
        columns = np.flatnonzero(response_mask[row])
        result = build_targets(
            response_ids[row, columns].tolist(),
            ground_truths[row],
            tokenizer,
            digit_ids,
            reward_mode,
            response_text=None if response_texts is None else response_texts[row],
            **kwargs,
        )
        out.target_digits[row, columns] = result.target_digits
        out.weights[row, columns] = result.weights
        out.is_self_target[row, columns] = result.is_self_target
        out.is_final_answer[row, columns] = result.is_final_answer
        out.missing_digits[row] = result.missing_digits
    return out
