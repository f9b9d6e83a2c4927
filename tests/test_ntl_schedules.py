"""Temperature schedules: values, clamping, string parsing, gin, adaptive tau."""

import math
import pickle

import pytest

from ntl_jax.ntl import schedules


def test_schedule_values_and_clamping():
    lin = schedules.linear(2.0, 0.5, 1000)
    assert [lin(s) for s in (-10, 0, 500, 1000, 5000)] == pytest.approx([2.0, 2.0, 1.25, 0.5, 0.5])
    cos = schedules.cosine(2.0, 0.5, 1000)
    assert cos(0) == pytest.approx(2.0) and cos(1000) == pytest.approx(0.5) and cos(99999) == pytest.approx(0.5)
    assert cos(500) == pytest.approx(1.25)
    assert cos(250) == pytest.approx(0.5 + 1.5 * (1 + math.cos(math.pi / 4)) / 2)
    exp = schedules.exponential(2.0, 0.5, 1000)
    assert exp(0) == pytest.approx(2.0) and exp(1000) == pytest.approx(0.5) and exp(-3) == pytest.approx(2.0)
    assert exp(500) == pytest.approx(1.0)  # geometric midpoint of 2 and 0.5
    const = schedules.constant(1.5)
    assert const(0) == const(10**9) == 1.5


def test_parse_schedule_forms():
    assert schedules.parse_schedule("constant:2.0")(123) == 2.0
    assert schedules.parse_schedule(" 0.75 ")(0) == 0.75
    assert schedules.parse_schedule(3)(7) == 3.0
    assert schedules.parse_schedule("linear:2.0->0.5@1000") == schedules.linear(2.0, 0.5, 1000)
    assert schedules.parse_schedule("cosine: 2 -> 1e-1 @ 10") == schedules.cosine(2.0, 0.1, 10)
    parsed = schedules.parse_schedule("exponential:2.0->0.5@1000")
    assert parsed == schedules.exponential(2.0, 0.5, 1000)
    assert schedules.parse_schedule(parsed.spec) == parsed  # spec round-trips
    assert schedules.parse_schedule(schedules.constant(2.0).spec) == schedules.constant(2.0)
    assert pickle.loads(pickle.dumps(parsed))(500) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", ["linear:2.0->0.5", "cubic:2->1@10", "linear:2->0.5@0", "exponential:2->-1@10",
                                 "", "constant:abc", "linear:2.0->0.5@1e3", "nan"])
def test_parse_schedule_errors_name_the_string(bad):
    with pytest.raises(ValueError) as err:
        schedules.parse_schedule(bad)
    message = str(err.value)
    assert f"tau schedule {bad!r} is invalid" in message
    assert "'linear:START->END@STEPS'" in message and "\n" not in message


def test_constructor_validation():
    with pytest.raises(ValueError, match="steps=0 is invalid"):
        schedules.linear(1.0, 0.5, 0)
    with pytest.raises(ValueError, match="start=inf is invalid"):
        schedules.cosine(float("inf"), 0.5, 10)
    with pytest.raises(ValueError, match="both > 0"):
        schedules.exponential(0.0, 0.5, 10)
    with pytest.raises(ValueError, match="schedule True"):
        schedules.parse_schedule(True)


def test_adaptive_tau_and_running_mean():
    assert schedules.adaptive_tau(2.0, 0.5) == pytest.approx(1.0)
    assert schedules.adaptive_tau(2.0, 3.0, reference_loss=1.5) == pytest.approx(4.0)
    assert schedules.adaptive_tau(2.0, 0.0) == pytest.approx(0.2)  # clipped at min_scale 0.1
    assert schedules.adaptive_tau(2.0, 1e6) == pytest.approx(20.0)  # clipped at max_scale 10
    assert schedules.adaptive_tau(2.0, float("nan")) == 2.0
    with pytest.raises(ValueError, match="adaptive_tau"):
        schedules.adaptive_tau(-1.0, 1.0)
    assert schedules.update_running_mean(None, 4.0) == 4.0
    assert schedules.update_running_mean(4.0, 2.0, decay=0.75) == pytest.approx(3.5)
    assert schedules.update_running_mean(4.0, float("nan")) == 4.0
    with pytest.raises(ValueError, match="decay=1.0 is invalid"):
        schedules.update_running_mean(1.0, 1.0, decay=1.0)
