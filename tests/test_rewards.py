"""Reward functions: verl GSM8K semantics, the arithmetic scorer, NTL rewards, the registry and file loading."""
import json
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from ntl_jax.answers import read_strict_then_last, read_verl_strict
from ntl_jax.rewards import arithmetic, gsm8k
from ntl_jax.rewards.ntl_rewards import closeness_of, custom_ntl_all, custom_ntl_final, relative_error
from ntl_jax.rewards.registry import (
    KNOWN_DATA_SOURCES,
    RewardFnSpec,
    default_compute_score,
    load_reward_function,
    normalize_reward_output,
)

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"  # shared/ beside the repo


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


def test_adversarial_responses_are_scored_with_bounded_work():
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
    for name, (response, truth, correct) in cases.items():
        assert arithmetic.compute_score(response, truth)["acc"] == float(correct), name
        gsm8k.compute_score(response, truth)
        # Bounded work, asserted without a clock: every reader looks at the last 300 characters only.
        for reader in (read_verl_strict, read_strict_then_last):
            answer = reader(response)
            assert answer is None or answer.span is None or answer.span.start >= len(response) - 300, name


def test_a_digit_run_cut_by_the_window_is_not_read_as_its_tail():
    assert arithmetic.extract_answer("1" * 10_000 + "23") is None
    assert arithmetic.compute_score("1" * 10_000 + "23", "123")["has_answer"] is False


# ---------------------------------------------------------------- NTL rewards
def _info(answer_text: str | None, confidence: float, has_answer: bool = True) -> dict:
    return {"ntl_loss": 0.5, "number_error": 0.3, "answer_error": 0.3, "has_answer": has_answer,
            "answer_confidence": confidence, "answer_text": answer_text, "has_digits": has_answer}


def test_closeness_formula():
    assert closeness_of(Fraction(0), 0.1) == 1.0
    assert closeness_of(Fraction(1, 20), 0.1) == pytest.approx(math.exp(-0.5))
    assert closeness_of(Fraction(10**400), 0.1) == 0.0  # no overflow, no error
    assert relative_error(Fraction(17), Fraction(18)) == Fraction(1, 18)
    assert relative_error(Fraction(1, 2), Fraction(0)) == Fraction(1, 2)  # |truth| < 1: absolute error


@pytest.mark.parametrize("fn", [custom_ntl_final, custom_ntl_all])
def test_ntl_reward_is_correctness_plus_the_written_answers_closeness(fn):
    right = dict(data_source="openai/gsm8k", solution_str="#### 18", ground_truth="18")
    wrong = dict(data_source="openai/gsm8k", solution_str="#### 17", ground_truth="18")
    closeness = math.exp(-(1 / 18) / 0.5)
    out = fn(**right, tau=0.5)
    assert out["score"] == 1.0 and out["closeness"] == 1.0 and out["acc"] == 1.0 and out["ntl_used"] == 1.0
    out = fn(**wrong, tau=0.5)  # default: 0.5 * correct + 0.5 * closeness (the verl NTL fork's weights)
    assert out["score"] == pytest.approx(0.5 * closeness) and out["written_error"] == pytest.approx(1 / 18)
    assert out["ntl_reward"] == pytest.approx(0.5 * closeness) and out["acc"] == 0.0
    out = fn(**wrong, tau=0.5, correct_weight=1.0, ntl_weight=0.2)
    assert out["score"] == pytest.approx(0.2 * closeness)
    # ntl_info does not enter unless confidence_weight > 0; then only as a factor <= 1 on a wrong answer.
    assert fn(**wrong, tau=0.5, ntl_info=_info("17", 0.2))["score"] == out["score"] / 0.2 * 0.5
    hedged = fn(**wrong, tau=0.5, ntl_info=_info("17", 0.2), confidence_weight=1.0)
    assert hedged["score"] == pytest.approx(0.5 * closeness * 0.2) and hedged["answer_confidence"] == 0.2
    assert fn(**right, tau=0.5, ntl_info=_info("18", 0.2), confidence_weight=1.0)["score"] == 1.0


def test_ntl_reward_arithmetic_extras():
    out = custom_ntl_final("arithmetic", "12+3=15\n#### 15", "15")
    assert out["score"] == 1.0 and out["abs_error"] == 0.0 and out["has_answer"] is True and out["ntl_used"] == 1.0


@pytest.mark.parametrize("ntl_info", [None, _info(None, 0.9, has_answer=False), _info("5", 0.9)])
def test_a_confidence_ntl_did_not_read_for_this_answer_counts_as_zero(ntl_info):
    """A blind spot never pays: without a matching NTL reading the confidence factor takes its floor."""
    out = custom_ntl_all("openai/gsm8k", "#### 17", "18", ntl_info=ntl_info, confidence_weight=0.5)
    assert out["answer_confidence"] == 0.0
    assert out["score"] == pytest.approx(0.5 * math.exp(-(1 / 18) / 0.1) * 0.5)


def test_ntl_reward_gives_no_bonus_to_an_answer_the_scorer_does_not_read():
    out = custom_ntl_final("openai/gsm8k", "The answer is 18", "18")  # verl's strict scorer finds no answer
    assert out["score"] == 0.0 and out["ntl_used"] == 0.0 and out["closeness"] == 0.0
    out = custom_ntl_final("openai/gsm8k", "#### 1.8.0", "18")  # read, but spells no number
    assert out["score"] == 0.0 and out["ntl_used"] == 0.0


def test_ntl_reward_bad_kwargs():
    cases = [(dict(combination="replace"), "combination='replace' is invalid; allowed: add"),
             (dict(combination="multiply"), "'multiply' was removed"),
             (dict(tau=0), "tau=0 is not allowed"), (dict(tau=math.inf), "tau=inf"),
             (dict(correct_weight=0.0), "correct_weight=0.0 is not allowed; allowed: a finite number > 0"),
             (dict(ntl_weight=-0.1), "ntl_weight=-0.1"), (dict(ntl_weight=math.nan), "ntl_weight=nan"),
             (dict(confidence_weight=1.5), "confidence_weight=1.5 is not allowed; allowed: a finite number >= 0 and "
                                           "<= 1")]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            custom_ntl_final("openai/gsm8k", "#### 1", "1", **kwargs)
    with pytest.raises(ValueError, match="answer_confidence"):
        custom_ntl_final("openai/gsm8k", "#### 2", "1", ntl_info=_info("2", math.nan), confidence_weight=1.0)
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
    assert builtin("openai/gsm8k", "#### 2", "2")["score"] == 1.0
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
