"""NTLConfig: contract defaults, one-line validation errors, gin binding, tau_at."""

import dataclasses

import gin
import pytest

from ntl_jax.ntl.config import NTLConfig

CONTRACT_DEFAULTS = dict(
    enabled=False, method="wasserstein", weight=0.1, extract_during_generation=False, extract_during_log_prob=True,
    pass_to_reward_function=True, reward_mode="final_answer", tau=0.1, adaptive_tau=False,
    tau_schedule=None, hybrid_weight=0.5, answer_extraction="strict_then_last",
    debug_mode=False, save_digit_info=False, cache_digit_mappings=True, fallback_on_error=False, require_digits=False,
    digit_credit=0.0,  # ntl-jax's own: token-level credit at digit targets, off by default
)


def _own_message(error: ValueError) -> str:
    """Our one-line message; gin appends '\n  In call to configurable ...' to errors raised inside configurables."""
    first_line, *rest = str(error).split("\n")
    assert all(line.startswith("  In call to configurable") for line in rest)
    return first_line


def test_defaults_match_contract_and_frozen():
    config = NTLConfig()
    assert dataclasses.asdict(config) == CONTRACT_DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.method = "mse"


@pytest.mark.parametrize("key, value, allowed", [
    ("method", "foo", "'mse', 'wasserstein', 'number'"),
    ("reward_mode", "tokens", "'final_answer', 'all_tokens', 'hybrid'"),
    ("answer_extraction", "first", "'strict', 'last', 'strict_then_last'"),
    ("weight", -0.1, "a finite number >= 0"),
    ("weight", float("inf"), "a finite number >= 0"),
    ("tau", 0.0, "a finite number > 0"),
    ("hybrid_weight", 1.5, "a finite number >= 0 and <= 1"),
    ("enabled", "yes", "True, False"),
    ("tau_schedule", "linear:2->1", "a float, 'constant:T'"),
    ("tau_schedule", "linear:1.0->-1.0@10", "a schedule whose values stay > 0"),
    ("tau_schedule", 2.0, "None or a string"),
])
def test_invalid_values_get_one_line_error(key, value, allowed):
    with pytest.raises(ValueError) as err:
        NTLConfig(**{key: value})
    message = _own_message(err.value)
    assert message.startswith(f"NTLConfig.{key}={value!r} is invalid; allowed: ")
    assert allowed in message


def test_exact_method_error_message():
    with pytest.raises(ValueError) as err:
        NTLConfig(method="foo")
    assert _own_message(err.value) == "NTLConfig.method='foo' is invalid; allowed: 'mse', 'wasserstein', 'number'"


def test_flags_that_would_silently_drop_ntl_info_are_refused():
    with pytest.raises(ValueError) as err:
        NTLConfig(enabled=True, extract_during_generation=False, extract_during_log_prob=False)
    message = _own_message(err.value)
    assert message.startswith("NTLConfig.(extract_during_generation, extract_during_log_prob)=(False, False) is "
                              "invalid; allowed: at least one True while NTL is enabled")
    assert "\n" not in message
    # Off, the flags do nothing and are not checked; either source alone is fine.
    NTLConfig(enabled=False, extract_during_generation=False, extract_during_log_prob=False)
    NTLConfig(enabled=True, extract_during_generation=True, extract_during_log_prob=False)


def test_tau_at():
    assert NTLConfig(tau=1.5).tau_at(10_000) == 1.5
    scheduled = NTLConfig(tau=9.0, tau_schedule="linear:2.0->0.5@100")
    assert scheduled.tau_at(0) == pytest.approx(2.0)
    assert scheduled.tau_at(50) == pytest.approx(1.25)
    assert scheduled.tau_at(1000) == pytest.approx(0.5)
    adaptive = NTLConfig(tau=0.2, adaptive_tau=True)
    assert adaptive.tau_at(0) == 0.2  # no running mean yet
    # tau follows the running mean number error, clipped to [0.1, 10] x the scheduled tau.
    assert adaptive.tau_at(0, mean_number_error=0.5) == pytest.approx(0.5)
    assert adaptive.tau_at(0, mean_number_error=0.001) == pytest.approx(0.02)
    assert adaptive.tau_at(0, mean_number_error=50.0) == pytest.approx(2.0)
    assert NTLConfig(tau=0.2).tau_at(0, mean_number_error=0.5) == 0.2  # adaptive off ignores the mean


def test_gin_binding():
    try:
        gin.parse_config("""
            NTLConfig.enabled = True
            ntl_jax.NTLConfig.method = 'number'
            NTLConfig.reward_mode = 'hybrid'
            NTLConfig.hybrid_weight = 0.25
            NTLConfig.tau_schedule = 'cosine:2.0->0.5@10'
        """)
        config = NTLConfig()
    finally:
        gin.clear_config()
    assert (config.enabled, config.method, config.reward_mode, config.hybrid_weight) == (True, "number", "hybrid", 0.25)
    assert config.tau_at(10) == pytest.approx(0.5)
    try:
        gin.parse_config("NTLConfig.method = 'l2'")
        with pytest.raises(ValueError, match="NTLConfig.method='l2' is invalid"):
            NTLConfig()
    finally:
        gin.clear_config()
