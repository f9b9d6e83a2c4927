"""Reward functions: verl GSM8K semantics, the arithmetic scorer, NTL rewards, the registry and file loading."""
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

from ntl_jax.rewards import arithmetic, gsm8k
from ntl_jax.rewards.ntl_rewards import custom_ntl_all, custom_ntl_final, ntl_bonus
from ntl_jax.rewards.registry import (
    KNOWN_DATA_SOURCES,
    RewardFnSpec,
    default_compute_score,
    load_reward_function,
    normalize_reward_output,
)

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"  # shared/ beside the repo
SLOW_BOUND_S = 5.0  # generous: measured worst cases are printed (-s) and are milliseconds


# ---------------------------------------------------------------- gsm8k (verl semantics)
def test_gsm8k_strict_takes_last_hash_answer_and_strips_commas():
    assert gsm8k.extract_solution("#### 3\nwait, #### 1,234", "strict") == "1234"
    assert gsm8k.compute_score("so #### 1,234", "1234") == 1.0
    assert gsm8k.compute_score("so #### -7", "-7") == 1.0
    assert gsm8k.extract_solution("the answer is 12", "strict") is None
    assert gsm8k.extract_solution("####12", "strict") is None  # verl's pattern needs the space


def test_gsm8k_exact_string_match_and_format_score():
    assert gsm8k.compute_score("#### 72.0", "72") == 0.0  # verl compares strings, not numbers
    assert gsm8k.compute_score("#### 72.0", "72", format_score=0.1) == 0.1
    assert gsm8k.compute_score("no answer", "72", format_score=0.1) == 0.0
    assert gsm8k.compute_score("#### 72", "72", score=2.5) == 2.5


def test_gsm8k_only_last_300_characters_are_searched():
    answer_then_text = "#### 42" + "x" * gsm8k.SOLUTION_CLIP_CHARS
    assert gsm8k.extract_solution(answer_then_text, "strict") is None
    assert gsm8k.compute_score("#### 42" + "x" * (gsm8k.SOLUTION_CLIP_CHARS - 7), "42") == 1.0


def test_gsm8k_flexible_keeps_verl_quirks():
    assert gsm8k.extract_solution("I think 12, then 15 apples.", "flexible") == "15"
    assert gsm8k.extract_solution("total: 1,000.", "flexible") == "1,000."  # commas are not stripped in flexible
    assert gsm8k.extract_solution("...", "flexible") == "..."
    assert gsm8k.extract_solution("Hello, world.", "flexible") == ","  # verl ignores only '' and '.'
    assert gsm8k.extract_solution("no digits here", "flexible") is None
    assert gsm8k.compute_score("it is 5", "5", method="flexible") == 1.0


def test_gsm8k_rejects_bad_method_and_types():
    with pytest.raises(ValueError, match="method='loose'"):
        gsm8k.extract_solution("#### 1", "loose")
    with pytest.raises(TypeError, match="solution_str must be str, got NoneType"):
        gsm8k.compute_score(None, "1")
    with pytest.raises(TypeError, match="ground_truth must be str, got int"):
        gsm8k.compute_score("#### 1", 1)


def _verl_gsm8k_ground_truth(answer: str) -> str:
    """verl's examples/data_preprocess/gsm8k.py extraction of the ground truth from the reference answer."""
    return re.search("#### (\\-?[0-9\\.\\,]+)", answer).group(0).split("#### ")[1].replace(",", "")


@pytest.mark.skipif(not GSM8K_TEST.exists(), reason="GSM8K test split not present")
def test_gsm8k_every_reference_answer_scores_one_and_a_wrong_one_zero():
    rows = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()]
    assert len(rows) == 1319
    for row in rows:
        truth = _verl_gsm8k_ground_truth(row["answer"])
        assert default_compute_score("openai/gsm8k", row["answer"], truth) == 1.0, row["answer"]
        wrong = row["answer"].rsplit("####", 1)[0] + "#### " + truth + "1"
        assert default_compute_score("openai/gsm8k", wrong, truth) == 0.0


# ---------------------------------------------------------------- arithmetic scorer
@pytest.mark.parametrize(
    "response, expected",
    [
        ("347+589=936", "936"),
        ("12*3=36\n#### 36", "36"),
        ("#### 7 and later 9", "7"),  # '####' wins over the last number
        ("5-8=-3", "-3"),
        ("7-3", "3"),  # a '-' after a digit is an operator, not a sign
        ("#### 1,234", "1,234"),
        ("#### 12.50", "12.50"),
        ("nothing here", None),
    ],
)
def test_arithmetic_extracts_hash_answer_first_else_last_number(response, expected):
    assert arithmetic.extract_answer(response) == expected


def test_arithmetic_scores_numerically_and_reports_abs_error():
    right = arithmetic.compute_score("#### 936", "936")
    assert right == {"score": 1.0, "acc": 1.0, "abs_error": 0.0, "digit_acc": 1.0, "has_answer": True}
    assert arithmetic.compute_score("#### 012.0", 12)["acc"] == 1.0
    assert arithmetic.compute_score("#### 1,234", "1234")["acc"] == 1.0
    wrong = arithmetic.compute_score("5-8=-3", "3", format_score=0.1)
    assert wrong == {"score": 0.1, "acc": 0.0, "abs_error": 6.0, "digit_acc": 0.0, "has_answer": True}
    none = arithmetic.compute_score("I do not know", "-37")
    assert none == {"score": 0.0, "acc": 0.0, "abs_error": 37.0, "digit_acc": 0.0, "has_answer": False}
    huge = arithmetic.compute_score("#### " + "9" * 200, "3")
    assert huge["abs_error"] == arithmetic.ABS_ERROR_CAP and huge["has_answer"]


@pytest.mark.parametrize(
    "response",
    ["#### \u0663", "#### \uff13", "#### nan", "#### inf", "Infinity", "NaN", "#### -inf", "\u0663\u0664 \uff15"],
)
def test_arithmetic_unicode_digits_and_nan_inf_give_no_answer(response):
    result = arithmetic.compute_score(response, "3")
    assert result["has_answer"] is False and result["score"] == 0.0


@pytest.mark.parametrize("answer, truth, expected", [
    ("1234", "1234", 1.0), ("1204", "1234", 0.75), ("234", "1234", 0.75), ("12345", "1234", 0.0),
    ("-1234", "1234", 0.0), ("-12", "-12", 1.0), ("012", "12", 1.0), ("1,234", "1234", 1.0), ("2.50", "2.5", 1.0),
    ("2.4", "2.5", 0.5), ("2", "2.5", 0.5), ("0", "0", 1.0), ("-0", "0", 1.0),
])
def test_arithmetic_digit_accuracy_by_place_value(answer, truth, expected):
    assert arithmetic.digit_accuracy(answer, truth) == pytest.approx(expected)
    assert arithmetic.compute_score(f"#### {answer}", truth)["digit_acc"] == pytest.approx(expected)


def test_arithmetic_unicode_digit_is_not_read_even_next_to_ascii():
    # '٣' (Arabic-Indic three) is text: the ASCII number after it is the answer, and it is not glued on
    assert arithmetic.extract_answer("#### \u06633 then 4") == "4"
    assert arithmetic.extract_answer("x = \u0663" + "5") == "5"


def test_arithmetic_rejects_bad_ground_truth():
    for bad in ("abc", "nan", "1e5", "\u0663", "", True):
        with pytest.raises((ValueError, TypeError), match="ground_truth"):
            arithmetic.compute_score("#### 1", bad)


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def test_adversarial_responses_are_scored_in_bounded_time():
    digits = "7" * 100_000
    cases = {
        "1e6 chars text then answer": ("a+b " * 250_000 + "#### 5", "5", True),
        "1e5 digits in a row": (digits, "7", False),
        "1e5 digits then answer": (digits + " #### 5", "5", True),
        "1e6 of '#### -'": ("#### -" * 166_667, "5", False),
        "1e6 of '1,'": ("1," * 500_000, "1", True),
        "1e6 of '-1.'": ("-1." * 333_333, "-1", True),
        "nested parens": ("(" * 500_000 + ")" * 500_000, "1", False),
        "1e6 of thousands groups": ("1" + ",111" * 250_000 + "1", "1", False),
    }
    worst = 0.0
    for name, (response, truth, correct) in cases.items():
        for scorer in (arithmetic.compute_score, gsm8k.compute_score):
            (result, elapsed) = _timed(scorer, response, truth)
            worst = max(worst, elapsed)
            assert elapsed < SLOW_BOUND_S, (name, scorer.__module__, elapsed)
        arith, _ = _timed(arithmetic.compute_score, response, truth)
        assert arith["acc"] == float(correct), name
    print(f"worst adversarial scoring time: {worst * 1e3:.2f} ms")


def test_a_digit_run_cut_by_the_window_is_not_read_as_its_tail():
    assert arithmetic.extract_answer("1" * 10_000 + "23") is None
    assert arithmetic.compute_score("1" * 10_000 + "23", "123")["has_answer"] is False


# ---------------------------------------------------------------- NTL rewards
def _info(error: float, has_answer: bool = True) -> dict:
    return {"ntl_loss": 0.5, "number_error": error, "answer_error": error, "has_answer": has_answer,
            "has_digits": has_answer, "digit_accuracy": 1.0, "total_digits": 3}


def test_ntl_bonus_formula_and_validation():
    assert ntl_bonus(0.0, 0.1) == 1.0
    assert ntl_bonus(0.05, 0.1) == pytest.approx(math.exp(-0.5))
    for error, tau in ((1.0, 0.0), (1.0, -1.0), (1.0, math.inf), (math.nan, 2.0), (-0.5, 2.0)):
        with pytest.raises(ValueError):
            ntl_bonus(error, tau)


@pytest.mark.parametrize("fn", [custom_ntl_final, custom_ntl_all])
def test_ntl_reward_combinations(fn):
    bonus = math.exp(-0.12 / 0.5)
    right = dict(data_source="openai/gsm8k", solution_str="#### 18", ground_truth="18")
    wrong = dict(data_source="openai/gsm8k", solution_str="#### 17", ground_truth="18")
    multiplied = fn(**right, ntl_info=_info(0.12), tau=0.5)  # default: 'multiply'
    assert multiplied["score"] == pytest.approx(bonus)
    assert multiplied["ntl_bonus"] == pytest.approx(bonus) and multiplied["number_error"] == 0.12
    assert multiplied["acc"] == 1.0 and multiplied["ntl_used"] == 1.0
    assert fn(**wrong, ntl_info=_info(0.12), tau=0.5)["score"] == 0.0
    added = fn(**right, ntl_info=_info(0.12), tau=0.5, combination="add")  # the verl NTL fork's 0.5 / 0.5
    assert added["score"] == pytest.approx(0.5 + 0.5 * bonus)
    weighted = fn(**wrong, ntl_info=_info(0.12), tau=0.5, combination="add", correct_weight=1.0, ntl_weight=0.2)
    assert weighted["score"] == pytest.approx(0.2 * bonus) and weighted["acc"] == 0.0


def test_ntl_reward_default_tau_and_arithmetic_extras():
    out = custom_ntl_final("arithmetic", "12+3=15\n#### 15", "15", ntl_info=_info(0.07))
    assert out["score"] == pytest.approx(math.exp(-0.07 / 0.1))
    assert out["abs_error"] == 0.0 and out["has_answer"] is True and out["ntl_used"] == 1.0


@pytest.mark.parametrize("ntl_info", [None, _info(3.0, has_answer=False)])
@pytest.mark.parametrize("combination", ["add", "multiply"])
def test_ntl_reward_without_an_aligned_answer_is_plain_correctness(ntl_info, combination):
    out = custom_ntl_all("openai/gsm8k", "#### 18", "18", ntl_info=ntl_info, combination=combination)
    assert out["score"] == 1.0 and out["ntl_bonus"] == 0.0 and out["number_error"] == 0.0 and out["ntl_used"] == 0.0


def test_ntl_reward_gives_no_bonus_to_an_answer_the_scorer_does_not_accept():
    # NTL's 'strict_then_last' reads 18 in an unformatted GSM8K response; verl's strict scorer finds no answer.
    out = custom_ntl_final("openai/gsm8k", "The answer is 18", "18", ntl_info=_info(0.0), combination="add")
    assert out["score"] == 0.0 and out["ntl_used"] == 0.0


def test_ntl_reward_bad_kwargs():
    with pytest.raises(ValueError, match="combination='replace' is invalid; allowed: multiply, add"):
        custom_ntl_final("openai/gsm8k", "#### 1", "1", ntl_info=_info(1.0), combination="replace")
    with pytest.raises(ValueError, match="tau=0"):
        custom_ntl_final("openai/gsm8k", "#### 1", "1", ntl_info=_info(1.0), tau=0)
    with pytest.raises(ValueError, match="number_error=nan"):
        custom_ntl_final("openai/gsm8k", "#### 1", "1", ntl_info=_info(math.nan))
    with pytest.raises(ValueError, match="no 'number_error'"):
        custom_ntl_final("openai/gsm8k", "#### 1", "1", ntl_info={"has_answer": True})
    with pytest.warns(UserWarning, match="'temprature'"):
        custom_ntl_final("openai/gsm8k", "#### 1", "1", temprature=1.0)


# ---------------------------------------------------------------- registry
def test_default_compute_score_dispatch_and_unknown_source():
    assert default_compute_score("gsm8k", "#### 3", "3") == 1.0
    assert default_compute_score("openai/gsm8k", "#### 3", "3", extra_info={"split": "test"}, ntl_info=None) == 1.0
    assert default_compute_score("arithmetic", "1+2=3", "3")["acc"] == 1.0
    with pytest.raises(ValueError, match=r"data_source='lighteval/MATH'.*known: arithmetic, gsm8k, openai/gsm8k"):
        default_compute_score("lighteval/MATH", "#### 3", "3")
    assert KNOWN_DATA_SOURCES == ("arithmetic", "gsm8k", "openai/gsm8k")


def test_normalize_reward_output():
    assert normalize_reward_output(1) == (1.0, {})
    assert normalize_reward_output(True) == (1.0, {})
    assert normalize_reward_output(np.float32(0.25)) == (0.25, {})
    assert normalize_reward_output(np.array(0.5)) == (0.5, {})
    assert normalize_reward_output({"score": np.bool_(False), "acc": 0.0}) == (0.0, {"acc": 0.0})
    with pytest.raises(TypeError, match="got str"):
        normalize_reward_output("1.0")
    with pytest.raises(TypeError, match="got list"):
        normalize_reward_output([1.0])
    with pytest.raises(TypeError, match="got NoneType"):
        normalize_reward_output({"score": None})
    with pytest.raises(ValueError, match="no 'score' key"):
        normalize_reward_output({"reward": 1.0})
    for bad in (math.nan, math.inf, {"score": -math.inf}):
        with pytest.raises(ValueError, match="finite"):
            normalize_reward_output(bad)


USER_REWARD_FILE = '''
import dataclasses

@dataclasses.dataclass
class Verdict:  # a dataclass needs its module in sys.modules: the loader must register it
    ok: bool

def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0, **kwargs):
    verdict = Verdict(ok=solution_str.strip().endswith(ground_truth))
    return {"score": float(verdict.ok) + bonus, "source": data_source, "saw_ntl": "ntl_info" in kwargs}

not_a_function = 3
'''


def test_load_reward_function_from_file_with_kwargs(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(USER_REWARD_FILE)
    fn = load_reward_function(RewardFnSpec(path=str(path), kwargs={"bonus": 0.5}))
    out = fn(data_source="d", solution_str="answer 4", ground_truth="4", extra_info=None, ntl_info={})
    assert out == {"score": 1.5, "source": "d", "saw_ntl": True}
    builtin = load_reward_function(RewardFnSpec(name="custom_ntl_all", kwargs={"combination": "add"}))
    assert builtin("openai/gsm8k", "#### 1", "2", ntl_info=_info(0.0))["score"] == 0.5
    assert load_reward_function(RewardFnSpec())("gsm8k", "#### 1", "1") == 1.0


def test_load_reward_function_errors_name_the_path_and_function(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(ValueError, match=f"reward function file not found: '{missing}'"):
        load_reward_function(RewardFnSpec(path=str(missing)))
    path = tmp_path / "my_reward.py"
    path.write_text(USER_REWARD_FILE)
    with pytest.raises(ValueError, match=rf"'score_fn' not found in '{re.escape(str(path))}'"):
        load_reward_function(RewardFnSpec(path=str(path), name="score_fn"))
    with pytest.raises(ValueError, match="not_a_function.*is a int, not a function"):
        load_reward_function(RewardFnSpec(path=str(path), name="not_a_function"))
    broken = tmp_path / "broken.py"
    broken.write_text("def compute_score(:\n")
    with pytest.raises(ValueError, match="broken.py.*failed to import: SyntaxError"):
        load_reward_function(RewardFnSpec(path=str(broken)))
    with pytest.raises(ValueError, match="built-in reward function 'nope'"):
        load_reward_function(RewardFnSpec(name="nope"))
    with pytest.raises(TypeError, match="spec must be RewardFnSpec, got dict"):
        load_reward_function({"path": None})
