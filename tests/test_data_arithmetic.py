"""The embedded arithmetic task: determinism, split disjointness, correct worked steps and ground truth."""
import operator
import re

import pytest

from ntl_jax.data.arithmetic import (
    STEP_PATTERN,
    make_arithmetic_examples,
    parse_solution,
    place_value_parts,
    solution_for,
    split_of,
)

PY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _triple(row):
    info = row["extra_info"]
    return info["a"], info["op"], info["b"]


def test_same_seed_same_rows_other_seed_other_rows():
    first = make_arithmetic_examples(200, seed=3)
    again = make_arithmetic_examples(200, seed=3)
    other = make_arithmetic_examples(200, seed=4)
    assert first == again
    assert [_triple(r) for r in first] != [_triple(r) for r in other]


def test_train_and_test_are_disjoint_and_distinct():
    train = make_arithmetic_examples(3000, seed=0, split="train")
    test = make_arithmetic_examples(300, seed=0, split="test")
    train_triples = {_triple(r) for r in train}
    test_triples = {_triple(r) for r in test}
    assert len(train_triples) == len(train) and len(test_triples) == len(test)
    assert not train_triples & test_triples
    assert all(split_of(*t) == "test" for t in test_triples)
    assert all(r["extra_info"]["split"] == "train" for r in train)
    assert [r["extra_info"]["index"] for r in test] == list(range(len(test)))


def test_every_step_evaluates_and_ground_truth_is_the_python_result():
    rows = make_arithmetic_examples(1500, seed=11, ops="+-*", min_digits=1, max_digits=3)
    assert {r["extra_info"]["op"] for r in rows} == {"+", "-", "*"}
    for row in rows:
        a, op, b = _triple(row)
        expected = PY_OPS[op](a, b)
        assert row["reward_model"] == {"style": "rule", "ground_truth": str(expected)}
        assert row["prompt"] == [{"role": "user", "content": f"{a}{op}{b}"}]
        assert row["data_source"] == "arithmetic" and row["ability"] == "math"
        lines = row["solution"].split("\n")
        assert lines[-1] == f"#### {expected}"
        for line in lines[:-1]:
            match = re.fullmatch(r"(\d+)([+\-*])(\d+)=(\d+)", line)
            assert match is not None, line
            x, step_op, y, z = int(match[1]), match[2], int(match[3]), int(match[4])
            assert PY_OPS[step_op](x, y) == z, line
        assert int(lines[-2].split("=")[1]) == expected


def test_multiplication_by_multi_digit_b_is_worked_through_place_values():
    assert solution_for(47, "*", 36) == "47*30=1410\n47*6=282\n1410+282=1692\n#### 1692"
    assert solution_for(12, "*", 305) == "12*300=3600\n12*5=60\n3600+60=3660\n#### 3660"
    assert solution_for(12, "*", 30) == "12*30=360\n#### 360"
    assert solution_for(7, "*", 0) == "7*0=0\n#### 0"
    assert solution_for(58, "+", 7) == "58+7=65\n#### 65"
    assert solution_for(58, "-", 7) == "58-7=51\n#### 51"
    assert place_value_parts(4071) == [4000, 70, 1]


def test_parse_solution_round_trips_and_rejects_other_text():
    steps, answer = parse_solution(solution_for(123, "*", 456))
    assert answer == 123 * 456
    assert steps[:3] == [(123, "*", 400, 49200), (123, "*", 50, 6150), (123, "*", 6, 738)]
    assert all(STEP_PATTERN.match(f"{x}{o}{y}={z}") for x, o, y, z in steps)
    with pytest.raises(ValueError, match="####"):
        parse_solution("1+2=3")
    with pytest.raises(ValueError, match="form"):
        parse_solution("1 + 2 = 3\n#### 3")


def test_subtraction_is_never_negative_and_max_answer_digits_holds():
    rows = make_arithmetic_examples(400, seed=5, ops="-*", min_digits=2, max_digits=3, max_answer_digits=4)
    for row in rows:
        a, op, b = _triple(row)
        assert a >= 10 and b >= 10 and a <= 999 and b <= 999
        assert len(row["reward_model"]["ground_truth"]) <= 4
        if op == "-":
            assert a >= b


def test_bad_arguments_and_exhausted_space_raise():
    with pytest.raises(ValueError, match="ops="):
        make_arithmetic_examples(5, seed=0, ops="/")
    with pytest.raises(ValueError, match="split="):
        make_arithmetic_examples(5, seed=0, split="val")
    with pytest.raises(ValueError, match="min_digits"):
        make_arithmetic_examples(5, seed=0, min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="negative"):
        solution_for(3, "-", 5)
    # 1-digit '+' has 100 problems, about 10 of them in the test split.
    with pytest.raises(ValueError, match="distinct test problems"):
        make_arithmetic_examples(50, seed=0, ops="+", min_digits=1, max_digits=1, split="test")


@pytest.mark.parametrize("regime", ["regimes/sparse_reward.gin", "regimes/long_numbers.gin"])
def test_every_regime_config_builds_its_task_and_its_solutions_fit_the_lengths(regime):
    """The shipped regimes (docs/experiments/ntl_effect.md) draw their problems, and no reference solution or
    prompt is cut by the run's token limits (a cut solution would teach the warm start a wrong answer)."""
    import gin

    from ntl_jax.embedded import EmbeddedTaskConfig, embedded_rows
    from ntl_jax.gin_files import parse_gin
    from ntl_jax.ppo.config import PPOConfig

    gin.clear_config()
    try:
        parse_gin(["ntl_final.gin", regime], [])
        task, ppo = EmbeddedTaskConfig(), PPOConfig()
    finally:
        gin.clear_config()
    train, val, select = embedded_rows(task)
    assert (len(train), len(val), len(select)) == (task.num_train, task.num_val, task.num_val)
    held_out = {_triple(r) for r in val + select}
    assert len(held_out) == 2 * task.num_val and not held_out & {_triple(r) for r in train}
    for row in train + val:
        assert len(row["prompt"][-1]["content"]) <= ppo.max_prompt_length  # one character per token
        assert len(row["solution"]) + 1 <= ppo.max_response_length  # + end of sequence
    if task.ops == "+":  # long numbers: every answer has five or more digits
        assert min(len(r["reward_model"]["ground_truth"]) for r in train + val) >= 5
