"""Safe arithmetic evaluator: exact answers for plain arithmetic, refusals for everything else, bounded cost."""
import ast
from fractions import Fraction
from pathlib import Path

import pytest

import ntl_jax
from ntl_jax.ntl import safe_eval as safe_eval_module
from ntl_jax.ntl.safe_eval import SafeEvalError, safe_eval_arithmetic, safe_eval_arithmetic_strict


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("2*3+4", Fraction(10)),
        ("-(5-7)*3", Fraction(6)),
        ("1.5*2", Fraction(3)),
        ("0.1+0.2", Fraction(3, 10)),
        ("48/2", Fraction(24)),
        ("10/4", Fraction(5, 2)),
        ("+3 - -2", Fraction(5)),
        ("  (12 + 30) * 2  ", Fraction(84)),
        ("1e3 + 1", Fraction(1001)),
    ],
)
def test_plain_arithmetic_is_exact(expr, expected):
    assert safe_eval_arithmetic(expr) == expected
    assert isinstance(safe_eval_arithmetic(expr), Fraction)


@pytest.mark.parametrize(
    "expr",
    [
        "9**9**9",
        "10**10**10",
        "2**3",
        "__import__('os')",
        "__import__('os').system('echo hi')",
        "x + 1",
        "(1).real",
        "abs(-3)",
        "lambda: 1",
        "'12' + '3'",
        "True + 1",
        "1j * 2",
        "7 // 2",
        "7 % 2",
        "[1, 2]",
        "1 if 1 else 2",
        "1, 2",
        "1 < 2",
        "",
        "   ",
        "1 +",
        "1/0",
        "3 / (2 - 2)",
        "1e400 - 1e400",
    ],
)
def test_everything_else_is_refused(expr):
    assert safe_eval_arithmetic(expr) is None
    with pytest.raises(SafeEvalError):
        safe_eval_arithmetic_strict(expr)


def test_strict_error_is_a_value_error_and_non_strings_are_refused():
    assert issubclass(SafeEvalError, ValueError)
    assert safe_eval_arithmetic(12) is None
    with pytest.raises(SafeEvalError, match="division by zero"):
        safe_eval_arithmetic_strict("1/0")


def test_magnitude_bounds_apply_to_literals_and_intermediates():
    assert safe_eval_arithmetic("1000000 * 1000000") == Fraction(10**12)
    assert safe_eval_arithmetic("1000000 * 1000000 * 1000000") is None  # 1e18 > max_abs
    assert safe_eval_arithmetic("1000000 * 1000000 * 1000000 / 1000000") is None  # intermediate too large
    assert safe_eval_arithmetic("9" * 20) is None
    assert safe_eval_arithmetic("0.0000000000000000000000001") is None  # too many literal digits
    assert safe_eval_arithmetic("5 * 5", max_abs=10) is None


def test_huge_input_is_refused_by_length_before_parsing(monkeypatch):
    def parse_must_not_run(*args, **kwargs):
        raise AssertionError("ast.parse was called on an over-long input")

    monkeypatch.setattr(safe_eval_module.ast, "parse", parse_must_not_run)
    huge = "1+" * 500_000
    assert safe_eval_arithmetic(huge) is None
    with pytest.raises(SafeEvalError, match="max_len"):
        safe_eval_arithmetic_strict(huge)


def test_deep_nesting_is_refused():
    nested = "(" * 1000 + "1" + ")" * 1000
    assert safe_eval_arithmetic(nested) is None
    assert safe_eval_arithmetic(nested, max_len=10_000) is None
    assert safe_eval_arithmetic("(" * 20 + "1" + ")" * 20) == 1
    assert safe_eval_arithmetic("-" * 150 + "1") is None  # unary chain deeper than max_depth
    assert safe_eval_arithmetic("-" * 5000 + "1", max_len=10_000, max_depth=10_000) is None  # parser limit
    assert safe_eval_arithmetic("+".join(["1"] * 30)) is None  # a 30-term chain is 30 levels deep
    assert safe_eval_arithmetic("+".join(["1"] * 10)) == 10


def _eval_exec_calls(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [
        f"{path}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec")
    ]


def test_no_eval_or_exec_calls_anywhere_in_the_package():
    package_dir = Path(ntl_jax.__file__).parent
    files = sorted(package_dir.rglob("*.py"))
    assert any(f.name == "safe_eval.py" for f in files)
    offenders = [hit for f in files for hit in _eval_exec_calls(f)]
    assert offenders == []
