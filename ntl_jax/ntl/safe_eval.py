"""Safe arithmetic evaluation for model-written expressions such as "12*3" or "(48 - 6) / 2".

Only `ast` parsing (mode='eval') and exact `fractions.Fraction` arithmetic: numeric literals, + - * /, unary + -,
parentheses. Everything is bounded before any work is done: input length (checked before parsing), parenthesis depth
(checked before parsing), AST depth, literal digit count and the magnitude of every intermediate value.
Nothing is ever handed to eval/exec.
"""
from __future__ import annotations

import ast
import math
import operator
from fractions import Fraction
from typing import Callable

_BINARY_OPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY_OPS: dict[type, Callable[[Fraction], Fraction]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class SafeEvalError(ValueError):
    """The expression is not plain bounded arithmetic (or divides by zero)."""


def _paren_depth(expr: str) -> int:
    """Maximum nesting of '(' in `expr` (a cheap bound checked before the parser recurses)."""
    depth = deepest = 0
    for char in expr:
        if char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    return deepest


def _ast_depth(root: ast.AST) -> int:
    """Depth of the tree, computed iteratively so a deep tree cannot exhaust the Python stack."""
    deepest = 0
    stack = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _literal(node: ast.Constant, source: str, max_literal_digits: int) -> Fraction:
    """Exact value of an int/float literal; floats go through their shortest repr so 0.1 means 1/10.
    The digit bound counts the digits as written in `source` ('0.0000001' has 8)."""
    value = node.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SafeEvalError(f"literal {value!r} is not allowed; only int and float numbers")
    if isinstance(value, float) and not math.isfinite(value):
        raise SafeEvalError(f"literal {value!r} is not finite")
    written = ast.get_source_segment(source, node) or repr(value)
    if sum(c.isdigit() for c in written) > max_literal_digits:
        raise SafeEvalError(f"literal {written[:40]!r} has more than {max_literal_digits} digits")
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def _check_bound(value: Fraction, max_abs: float) -> Fraction:
    if abs(value) > max_abs:
        raise SafeEvalError(f"intermediate value exceeds max_abs={max_abs:g}")
    return value


def _evaluate(node: ast.AST, source: str, max_abs: float, max_literal_digits: int) -> Fraction:
    """Recursive evaluation; recursion depth is bounded by the AST depth check done before."""
    if isinstance(node, ast.Constant):
        return _check_bound(_literal(node, source, max_literal_digits), max_abs)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPS:
        operand = _evaluate(node.operand, source, max_abs, max_literal_digits)
        return _check_bound(_UNARY_OPS[type(node.op)](operand), max_abs)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPS:
        left = _evaluate(node.left, source, max_abs, max_literal_digits)
        right = _evaluate(node.right, source, max_abs, max_literal_digits)
        if isinstance(node.op, ast.Div) and right == 0:
            raise SafeEvalError("division by zero")
        return _check_bound(_BINARY_OPS[type(node.op)](left, right), max_abs)
    raise SafeEvalError(f"{type(node).__name__} is not allowed; only numbers, + - * / ( ) and unary minus")


def safe_eval_arithmetic_strict(
    expr: str,
    *,
    max_len: int = 200,
    max_depth: int = 20,
    max_abs: float = 1e15,
    max_literal_digits: int = 24,
) -> Fraction:
    """Exact value of `expr`; raises SafeEvalError for anything that is not bounded + - * / arithmetic."""
    if not isinstance(expr, str):
        raise SafeEvalError(f"expression of type {type(expr).__name__} is not allowed; pass a str")
    if len(expr) > max_len:
        raise SafeEvalError(f"expression of length {len(expr)} exceeds max_len={max_len}")
    if _paren_depth(expr) > max_depth:
        raise SafeEvalError(f"parenthesis nesting exceeds max_depth={max_depth}")
    source = expr.strip()
    if not source:
        raise SafeEvalError("empty expression")
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise SafeEvalError(f"cannot parse expression: {type(error).__name__}") from None
    if _ast_depth(tree.body) > max_depth:
        raise SafeEvalError(f"expression tree depth exceeds max_depth={max_depth}")
    return _evaluate(tree.body, source, float(max_abs), max_literal_digits)


def safe_eval_arithmetic(
    expr: str,
    *,
    max_len: int = 200,
    max_depth: int = 20,
    max_abs: float = 1e15,
    max_literal_digits: int = 24,
) -> Fraction | None:
    """Exact value of `expr` as a Fraction, or None when it is not bounded + - * / arithmetic or divides by zero."""
    try:
        return safe_eval_arithmetic_strict(
            expr, max_len=max_len, max_depth=max_depth, max_abs=max_abs, max_literal_digits=max_literal_digits
        )
    except SafeEvalError:
        return None
