"""The embedded default task: integer arithmetic for a tiny character-level model on CPU.

Rows are verl-format (the same columns as verl's GSM8K parquet) plus a ``solution`` key holding the reference
response used by the supervised warm start.

Prompt and response format (short on purpose: the model is tiny)::

    prompt    "47+36"                  (user message; no chat template needed)
    solution  "47+36=83\n#### 83"

Every line before the final one is one step of the form ``x op y=z`` with non-negative integers and op in
``+ - *`` (regex :data:`STEP_PATTERN`); the last line is ``#### <answer>`` (:data:`FINAL_ANSWER_PATTERN`), the
marker the GSM8K-style scorers look for. Subtraction is posed with the larger operand first, so every number is
non-negative and every character of a number is a digit token.

Multiplication by a ``b`` with more than one non-zero digit is worked through its place-value parts, so the
all-tokens NTL mode has intermediate results to supervise::

    prompt    "47*36"
    solution  "47*30=1410\n47*6=282\n1410+282=1692\n#### 1692"

    prompt    "12*305"
    solution  "12*300=3600\n12*5=60\n3600+60=3660\n#### 3660"

(zero digits of ``b`` produce no step; the partial products are summed left to right, one step per addition).

Train and test splits are disjoint by construction: the split of a problem is a fixed function of its
``(a, op, b)`` triple (a stable hash, :func:`split_of`), and each call returns distinct problems.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np

SPLITS = ("train", "test")
ALLOWED_OPS = "+-*"
DATA_SOURCE = "arithmetic"
STEP_PATTERN = re.compile(r"^(\d+)([+\-*])(\d+)=(\d+)$")
FINAL_ANSWER_PATTERN = re.compile(r"^#### (\d+)$")
_MAX_DRAWS_PER_EXAMPLE = 200


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"op={op!r} is not supported; allowed: {list(ALLOWED_OPS)}")


def _check_operands(a: int, op: str, b: int) -> None:
    if op not in ALLOWED_OPS or len(op) != 1:
        raise ValueError(f"op={op!r} is not supported; allowed: {list(ALLOWED_OPS)}")
    if a < 0 or b < 0:
        raise ValueError(f"operands ({a}, {b}) must be non-negative integers")
    if op == "-" and a < b:
        raise ValueError(f"subtraction {a}-{b} would be negative; the task poses the larger operand first")


def place_value_parts(b: int) -> list[int]:
    """Non-zero place-value parts of ``b``, most significant first: 305 -> [300, 5]; 0 -> [0]."""
    digits = str(b)
    parts = [int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]
    return parts or [0]


def solution_steps(a: int, op: str, b: int) -> list[tuple[int, str, int, int]]:
    """The worked steps ``(x, op, y, z)`` with ``z = x op y`` whose last result is ``a op b``."""
    _check_operands(a, op, b)
    parts = place_value_parts(b) if op == "*" else [b]
    if len(parts) == 1:
        return [(a, op, b, _apply(a, op, b))]
    steps = [(a, "*", part, a * part) for part in parts]
    running = steps[0][3]
    for _, _, _, partial in steps[1 : len(parts)]:
        steps.append((running, "+", partial, running + partial))
        running += partial
    return steps


def solution_for(a: int, op: str, b: int) -> str:
    """Reference response for ``a op b``: one ``x op y=z`` line per step, then ``#### <answer>``."""
    steps = solution_steps(a, op, b)
    lines = [f"{x}{step_op}{y}={z}" for x, step_op, y, z in steps]
    answer = steps[-1][3]
    return "\n".join(lines + [f"#### {answer}"])


def parse_solution(solution: str) -> tuple[list[tuple[int, str, int, int]], int]:
    """Inverse of :func:`solution_for`: ``(steps, final_answer)``; ValueError on any line off the format."""
    lines = solution.split("\n")
    final = FINAL_ANSWER_PATTERN.match(lines[-1])
    if final is None:
        raise ValueError(f"last line {lines[-1]!r} is not of the form '#### <digits>'")
    steps = []
    for line in lines[:-1]:
        step = STEP_PATTERN.match(line)
        if step is None:
            raise ValueError(f"line {line!r} is not of the form '<digits><op><digits>=<digits>' with op in +-*")
        steps.append((int(step.group(1)), step.group(2), int(step.group(3)), int(step.group(4))))
    return steps, int(final.group(1))


def split_of(a: int, op: str, b: int, test_fraction: float = 0.1) -> str:
    """'test' for a fixed ``test_fraction`` of all triples (blake2b of ``"a op b"``), else 'train'."""
    digest = hashlib.blake2b(f"{a}{op}{b}".encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "little") / 2.0**64
    return "test" if bucket < test_fraction else "train"


def _operand_bounds(num_digits: int) -> tuple[int, int]:
    """Inclusive range of integers with exactly ``num_digits`` digits (1 digit includes 0)."""
    low = 0 if num_digits == 1 else 10 ** (num_digits - 1)
    return low, 10**num_digits - 1


def _draw_operand(rng: np.random.Generator, min_digits: int, max_digits: int) -> int:
    low, high = _operand_bounds(int(rng.integers(min_digits, max_digits + 1)))
    return int(rng.integers(low, high + 1))


def _validate_args(n: int, ops: str, min_digits: int, max_digits: int, split: str, test_fraction: float,
                   max_answer_digits: int | None) -> None:
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    if not ops or any(op not in ALLOWED_OPS for op in ops):
        raise ValueError(f"ops={ops!r} must be a non-empty string of characters from {ALLOWED_OPS!r}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"min_digits={min_digits}, max_digits={max_digits}: need 1 <= min_digits <= max_digits")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    if max_answer_digits is not None and max_answer_digits < 1:
        raise ValueError(f"max_answer_digits={max_answer_digits} must be >= 1 or None")


def make_arithmetic_row(a: int, op: str, b: int, *, split: str, index: int) -> dict:
    """One verl-format row for ``a op b`` (with the reference ``solution``)."""
    answer = _apply(a, op, b)
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "user", "content": f"{a}{op}{b}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(answer)},
        "extra_info": {"split": split, "index": index, "a": a, "b": b, "op": op},
        "solution": solution_for(a, op, b),
    }


def make_arithmetic_examples(n: int, seed: int, ops: str = ALLOWED_OPS, min_digits: int = 1, max_digits: int = 3,
                             split: str = "train", *, max_answer_digits: int | None = None,
                             test_fraction: float = 0.1) -> list[dict]:
    """``n`` distinct problems of ``split``, deterministic for ``(seed, split)`` and the other arguments.

    Each problem: op uniform over ``ops``; each operand's digit count uniform in [min_digits, max_digits], then the
    value uniform among integers with that many digits; for '-' the operands are ordered larger first. Problems
    whose answer has more than ``max_answer_digits`` digits, that belong to the other split, or that were already
    drawn are redrawn. Raises ValueError when the space is too small to supply ``n`` of them.
    """
    _validate_args(n, ops, min_digits, max_digits, split, test_fraction, max_answer_digits)
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    seen: set[tuple[int, str, int]] = set()
    rows: list[dict] = []
    for _ in range(_MAX_DRAWS_PER_EXAMPLE * n + 1000):
        if len(rows) == n:
            return rows
        op = ops[int(rng.integers(len(ops)))]
        a, b = _draw_operand(rng, min_digits, max_digits), _draw_operand(rng, min_digits, max_digits)
        if op == "-" and a < b:
            a, b = b, a
        triple = (a, op, b)
        if triple in seen or split_of(a, op, b, test_fraction) != split:
            continue
        if max_answer_digits is not None and len(str(_apply(a, op, b))) > max_answer_digits:
            continue
        seen.add(triple)
        rows.append(make_arithmetic_row(a, op, b, split=split, index=len(rows)))
    if len(rows) == n:
        return rows
    raise ValueError(
        f"n={n} distinct {split} problems not found (got {len(rows)}) for ops={ops!r}, digits "
        f"{min_digits}..{max_digits}, max_answer_digits={max_answer_digits}; ask for fewer or widen the ranges")
